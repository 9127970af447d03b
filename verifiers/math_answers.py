"""Math answers: extract the final answer of a completion and decide equivalence with the ground truth.

`math`: the last `\\boxed{}`/`\\fbox{}`, else "the answer is ...", else `#### ...`, else (unless
`last_number=False`, or the `math_strict` verifier) the last number of the completion.

Equivalence is decided in stages, cheapest first, each one exact:
1. the two answers after normalisation (`normalize`: `\\dfrac`→`\\frac`, `\\left`/`\\right`, spacing
   commands, `$`, degrees, `\\%`, trailing units in `\\text{}`, `\\frac12`→`\\frac{1}{2}`, ...) are equal;
2. both read as exact rationals (`parse_number`: integers and decimals with `1,000` separators,
   `\\frac`, `a/b`, mixed numbers, percentages, `1.5e3`, `1.5\\times10^{3}`) and are equal;
3. structure: intervals and tuples compare item by item with the same brackets (open vs closed
   matters); sets `\\{...\\}` and bare lists `1, -2` compare as multisets; matrices cell by cell;
   `x = 3` against `3` compares the right-hand side; multiple-choice letters `(C)`/`C`/`\\text{(C)}`;
4. symbolic equality by math-verify (LaTeX parsed by latex2sympy, then sympy), only for answers of
   bounded size, with no nested or huge exponents or factorials (those score 0 as `unparsable`
   instead of hanging). math-verify's own Unix-signal timeouts are off: the pool's parent process
   bounds every call. We never call `sympify`/`parse_expr` on model output (they `eval` Python).

On top of math-verify this adds stages 1-3 (most answers end there, far faster than a parse),
the extraction order above, the structural rules, and the guards on what reaches sympy.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from rlvr.verifiers.base import VerifierResult
from rlvr.verifiers.registry import register_verifier

MAX_ANSWER_CHARS = 1000  # an extracted answer longer than this is not an answer
MAX_SYMBOLIC_CHARS = 300  # longer answers never reach sympy

# ------------------------------------------------------------------------------------ extraction


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[start] == '{', and the index after it; None if unclosed."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`), else None."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*", text))):
        end = m.end()
        if end < len(text) and text[end] == "{":
            got = _braced(text, end)
            if got is not None:
                return got[0]
        elif m.group(0).endswith((" ", "\t")):
            tok = re.match(r"[^\s$.,]+", text[end:])
            if tok:
                return tok.group(0)
    return None


_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*", re.IGNORECASE)


def _first_math(segment: str) -> str:
    m = re.search(r"\$+([^$]+)\$+", segment)
    return m.group(1) if m else segment


def extract_answer(text: str, last_number: bool = True) -> tuple[str | None, str]:
    """(answer, how): how is one of boxed, answer_is, hashes, last_number, none."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed, "boxed"
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        rest = text[matches[-1].end() :].split("\n")[0]
        rest = re.split(r"\.\s+I hope", rest)[0]
        ans = _first_math(rest).strip().rstrip(".").strip()
        if ans:
            return ans, "answer_is"
    if "####" in text:
        ans = text.rsplit("####", 1)[1].split("\n")[0].strip().rstrip(".")
        if ans:
            return ans, "hashes"
    if last_number:
        nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+", text)
        if nums:
            return nums[-1].rstrip(","), "last_number"
    return None, "none"


# ------------------------------------------------------------------------------------ normalisation

_TEXT_CMD = r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|operatorname)"


def _fix_shorthand(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`."""
    s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    return s


def normalize(ans: str) -> str:
    s = ans.strip()
    s = s.replace("\n", " ").replace("\\!", "")
    s = re.sub(r"(?<!\\)\\(?:,|;|:|quad|qquad| )", " ", s)  # spacing commands, not the row break `\\`
    s = s.replace("~", " ")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\displaystyle", "", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "%")
    # trailing units, e.g. `5 \text{ cm}^2` or `12\mbox{ inches}`, when something precedes them
    s = re.sub(rf"(?<=\S)\s*{_TEXT_CMD}\{{\s*[a-zA-Z][a-zA-Z .]*\}}(\^\{{?\d\}}?)?\s*$", "", s)
    # `\text{(C)}`, `\text{Evelyn}`: keep the content
    for _ in range(3):
        s = re.sub(rf"{_TEXT_CMD}\{{([^{{}}]*)\}}", r"\1", s)
    s = _fix_shorthand(s)
    s = s.replace(" ", "")
    s = s.rstrip(".")
    s = re.sub(r"(?<![\d)])\.(\d)", r"0.\1", s)  # .5 -> 0.5
    return s


# ------------------------------------------------------------------------------------ numbers

_NUM = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def parse_number(s: str) -> Fraction | None:
    """An exact rational for plain numeric answers, else None. Percentages are divided by 100."""
    pct = s.endswith("%")
    if pct:
        s = s[:-1]
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    value: Fraction | None = None
    if _NUM.fullmatch(s):
        value = Fraction(s)
    elif m := re.fullmatch(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]|\\times10\^|\*10\^|\\cdot10\^)\{?([+-]?\d{1,3})\}?", s):
        value = Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    elif m := re.fullmatch(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}", s):
        if int(m.group(3)) != 0:
            value = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) == "-" else 1)
    elif m := re.fullmatch(r"([+-]?\d+)/([+-]?\d+)", s):
        if int(m.group(2)) != 0:
            value = Fraction(int(m.group(1)), int(m.group(2)))
    elif m := re.fullmatch(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s):  # mixed number 2\frac{1}{2}
        num, den = int(m.group(3)), int(m.group(4))
        if den != 0 and num < den:
            value = (int(m.group(2)) + Fraction(num, den)) * (-1 if m.group(1) == "-" else 1)
    if value is not None and pct:
        value /= 100
    return value


# ------------------------------------------------------------------------------------ structure


def split_top_level(s: str, seps: tuple[str, ...] = (",",)) -> list[str]:
    """Split on separators outside (), [], {} (and `\\{ \\}`)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0:
            sep = next((x for x in seps if s.startswith(x, i)), None)
            if sep is not None:
                parts.append("".join(cur))
                cur = []
                i += len(sep)
                continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _bracketed(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) when the whole string is one bracket group like (a,b] or \\{a,b\\}."""
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        return ("{", inner, "}") if _balanced(inner) else None
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner = s[1:-1]
        return (s[0], inner, s[-1]) if _balanced(inner) else None
    return None


_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}")


def _matrix(s: str) -> list[list[str]] | None:
    m = _MATRIX.fullmatch(s)
    if not m:
        return None
    return [[c for c in row.split("&")] for row in m.group(2).split("\\\\") if row.strip()]


_CHOICE = re.compile(r"\(?([A-E])\)?")


def _multiset_equal(a: list[str], b: list[str], depth: int) -> bool:
    if len(a) != len(b):
        return False
    remaining = list(b)
    for x in a:
        for j, y in enumerate(remaining):
            if _equiv(x, y, depth + 1):
                del remaining[j]
                break
        else:
            return False
    return True


# ------------------------------------------------------------------------------------ symbolic

_HUGE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\{?\s*\d{5,}|\d{4,}\s*!|\^\s*\{[^{}]*\{")


def symbolic_safe(s: str) -> bool:
    return len(s) <= MAX_SYMBOLIC_CHARS and not _HUGE.search(s) and "\\" + "begin" not in s


def _symbolic_equal(gold: str, pred: str) -> bool:
    import logging

    from math_verify import LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": the pool bounds time

    cfg = [LatexExtractionConfig()]
    g = parse(f"${gold}$", extraction_config=cfg, parsing_timeout=None)
    p = parse(f"${pred}$", extraction_config=cfg, parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


class _Unsafe(Exception):
    pass


# ------------------------------------------------------------------------------------ equivalence


def _equiv(gold: str, pred: str, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if gold == pred:
        return True
    g_num, p_num = parse_number(gold), parse_number(pred)
    if g_num is not None and p_num is not None:
        if g_num == p_num:
            return True
        # "50%" against "50": the percent sign is a unit here
        return (gold.endswith("%") and p_num == g_num * 100) or (pred.endswith("%") and g_num == p_num * 100)
    # multiple choice
    if m := _CHOICE.fullmatch(gold):
        pm = _CHOICE.fullmatch(pred)
        return bool(pm) and pm.group(1) == m.group(1)
    # equations: "x=3" vs "3" compares right-hand sides (both sides equations: compare as they are)
    g_eq, p_eq = split_top_level(gold, ("=",)), split_top_level(pred, ("=",))
    if len(g_eq) == 2 and len(p_eq) == 1 and re.fullmatch(r"[a-zA-Z](?:_\{?\w+\}?)?", g_eq[0]):
        return _equiv(g_eq[1], pred, depth + 1)
    if len(p_eq) == 2 and len(g_eq) == 1 and re.fullmatch(r"[a-zA-Z](?:_\{?\w+\}?)?", p_eq[0]):
        return _equiv(gold, p_eq[1], depth + 1)
    # matrices
    gm, pm_ = _matrix(gold), _matrix(pred)
    if gm is not None or pm_ is not None:
        if gm is None or pm_ is None or [len(r) for r in gm] != [len(r) for r in pm_]:
            return False
        return all(_equiv(a, b, depth + 1) for ra, rb in zip(gm, pm_) for a, b in zip(ra, rb))
    # unions of intervals, in order
    g_u, p_u = split_top_level(gold, ("\\cup",)), split_top_level(pred, ("\\cup",))
    if len(g_u) > 1 or len(p_u) > 1:
        return len(g_u) == len(p_u) and all(_equiv(a, b, depth + 1) for a, b in zip(g_u, p_u))
    # intervals, tuples, sets
    gb, pb = _bracketed(gold), _bracketed(pred)
    g_items = split_top_level(gb[1]) if gb else split_top_level(gold)
    p_items = split_top_level(pb[1]) if pb else split_top_level(pred)
    if gb and gb[0] == "{" or pb and pb[0] == "{":  # a set: order does not matter
        return _multiset_equal(g_items, p_items, depth)
    if len(g_items) > 1 or len(p_items) > 1:
        if gb and pb:  # intervals and tuples: same brackets, items in order
            return (gb[0], gb[2]) == (pb[0], pb[2]) and len(g_items) == len(p_items) and all(
                _equiv(a, b, depth + 1) for a, b in zip(g_items, p_items)
            )
        if not gb and not pb:  # bare lists of solutions: any order
            return _multiset_equal(g_items, p_items, depth)
        return False
    if gb and pb and gb[0] == pb[0] and gb[2] == pb[2]:
        return _equiv(gb[1], pb[1], depth + 1)
    # symbolic, bounded
    if not (symbolic_safe(gold) and symbolic_safe(pred)):
        raise _Unsafe()
    return _symbolic_equal(gold, pred)


def answers_equivalent(gold: str, pred: str) -> bool:
    """Whether two final answers (LaTeX or plain) are equal; raises `_Unsafe` for answers too big to check."""
    return _equiv(normalize(gold), normalize(pred))


def _gold_answer(ground_truth: Any) -> str:
    if isinstance(ground_truth, (int, float)):
        return str(ground_truth)
    if isinstance(ground_truth, list) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"math ground truth must be a non-empty string, got {ground_truth!r}")
    boxed = last_boxed(ground_truth)
    return boxed if boxed is not None else ground_truth


def check_math(completion: str, ground_truth: Any, last_number: bool = True) -> VerifierResult:
    gold = _gold_answer(ground_truth)
    pred, how = extract_answer(completion, last_number=last_number)
    if pred is None:
        return VerifierResult.fail("unparsable", "no final answer found", how=how)
    if len(pred) > MAX_ANSWER_CHARS:
        return VerifierResult.fail("unparsable", f"answer longer than {MAX_ANSWER_CHARS} characters", how=how)
    info = {"extracted": pred[:200], "how": how}
    try:
        ok = answers_equivalent(gold, pred)
    except _Unsafe:
        return VerifierResult.fail("unparsable", "answer too large to compare safely", **info)
    return VerifierResult(1.0 if ok else 0.0, {"status": "ok" if ok else "wrong", **info})


def _validate_math(ground_truth: Any) -> None:
    _gold_answer(ground_truth)


@register_verifier("math")
def math_verifier(completion: str, ground_truth: Any, last_number: bool = True, **meta) -> VerifierResult:
    """Final answer of a math solution vs the ground-truth answer (a string, or a solution with \\boxed{})."""
    return check_math(completion, ground_truth, last_number=last_number)


@register_verifier("math_strict")
def math_strict(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    """`math` without the last-number fallback: the answer must be boxed, stated, or after ####."""
    return check_math(completion, ground_truth, last_number=False)


math_verifier.validate = math_strict.validate = _validate_math  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ GSM8K

_GSM_NUM = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def _gsm_number(s: str) -> Fraction | None:
    s = s.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _first_number(s: str) -> Fraction | None:
    m = _GSM_NUM.search(s)
    return _gsm_number(m.group(0)) if m else None


def _gsm8k_gold(ground_truth: Any) -> Fraction:
    gt = str(ground_truth[0] if isinstance(ground_truth, list) and len(ground_truth) == 1 else ground_truth)
    gold = _first_number(gt.rsplit("####", 1)[1]) if "####" in gt else _gsm_number(gt.strip())
    if gold is None:
        raise ValueError(f"gsm8k ground truth has no final number: {gt[-80:]!r}")
    return gold


@register_verifier("gsm8k")
def gsm8k(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    """GSM8K: the number after `####` (or `A:` / "the answer is"), else the last number, vs the
    ground truth's final number (a full GSM8K answer ending `#### N`, or the bare number)."""
    gold = _gsm8k_gold(ground_truth)
    how, pred = "none", None
    for pattern, name in ((r"####", "hashes"), (r"\bA:", "a_colon"), (r"(?i)the (?:final )?answer is", "answer_is")):
        found = list(re.finditer(pattern, completion))
        if found:
            pred, how = _first_number(completion[found[-1].end() :]), name
            if pred is not None:
                break
    if pred is None:
        nums = _GSM_NUM.findall(completion)
        if nums:
            pred, how = _gsm_number(nums[-1]), "last_number"
    if pred is None:
        return VerifierResult.fail("unparsable", "no number found", how=how)
    ok = pred == gold
    return VerifierResult(1.0 if ok else 0.0, {"status": "ok" if ok else "wrong", "extracted": str(pred), "how": how})


gsm8k.validate = _gsm8k_gold  # type: ignore[attr-defined]
