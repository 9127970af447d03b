"""Math answers: find the final answer of a completion, read it into a value, decide equivalence.

Where the answer is (`extract_answer`), latest first:
- an answer statement: `\\boxed{}`/`\\fbox{}` (several boxes joined only by "or", "and" or commas
  are one answer: `x = \\boxed{3}` or `x = \\boxed{-3}` is the set {3, -3}), "the (final) answer
  is ...", "Answer: ...", `#### ...`; the one that comes last in the text wins (a box retracted by a
  later "so the answer is 4" is not the answer);
- otherwise (`math`, not `math_strict`) the last sentence that holds any mathematics: its trailing
  run of `$...$`, `\\(...\\)`, `\\[...\\]` spans joined by "and", "or" or commas, or in plain text
  what follows its last "is", "are", "=" or ":", else its last number.
A hedge is an answer too: "it might be 4 or 8" is the list {4, 8}, which equals no single value.

What the answer is (`read_answer`): a scalar, a list of values (order-free: bare lists, `\\{\\}`
sets, `\\pm` expanded, alternatives), a tuple (ordered: `(a, b, c)`, a column or row vector,
`\\langle a, b \\rangle`, assignments to distinct variables `a = 2, b = -3`), an interval or a
union of intervals (order-free; inequalities such as `x \\ge 2` and `-1 < x \\le 4` are intervals;
`\\mathbb{R}` and "all real numbers", with `\\setminus`/"except", too), a matrix, or an equation
`x = value` (equal to `value`, and to another equation only with the same variable). A set
`\\{-3, 3\\}` is never the interval `[-3, 3]`, and bracket types matter.

When two scalars are equal, cheapest test first, each exact:
1. the same text after normalisation (`normalize`: `\\dfrac`, `\\left`, spacing, `$`, degrees,
   units in `\\text{}`, money, `\\frac12`, `\\sqrt51`, ...);
2. exact rationals (`parse_number`): integers and decimals (`1,000`, `86{,}400`), fractions,
   mixed numbers (`2\\frac{1}{2}`, `2 2/3`), percentages, scientific notation, powers of integers
   (`10^{9}`), repeating decimals (`0.\\overline{3}`, `0.1\\overline{6}`). A decimal written with k
   places equals a rational q when it is q rounded to k places and shows at least 3 significant
   digits (`0.6667` and `0.333` pass for 2/3 and 1/3; `0.67` and `0.33` do not);
3. multiple-choice letters (`(B)`, `\\text{(B)}`, "The correct option is (B).");
4. symbolic equality, only for answers of bounded size (never nested or huge exponents or
   factorials: those score 0 as `unparsable`): math-verify's LaTeX parser gives sympy
   expressions, and we compare them exactly (`simplify(a - b) == 0`, `i` read as the imaginary
   unit), never with a float tolerance (math-verify's own `verify` rounds: it calls 1/3^41 equal
   to 1/3^40). This stage needs sympy and runs in the pool's workers; stages 1-3 run anywhere
   (`fast_check`), and most answers end there.

We never call `sympify`/`parse_expr` on model output (they `eval` Python).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from rlvr.verifiers.base import VerifierResult
from rlvr.verifiers.registry import register_verifier

MAX_ANSWER_CHARS = 1000  # an extracted answer longer than this is not an answer
MAX_SYMBOLIC_CHARS = 300  # longer answers never reach sympy
MAX_ITEMS = 64  # a list answer with more items than this is not compared


class NeedsSymbolic(Exception):
    """A scalar comparison that only the symbolic stage can decide (raised when it is not allowed here)."""


class _Unsafe(Exception):
    """An answer too large to compare safely (nested or huge exponents, factorials, length)."""


# ------------------------------------------------------------------------------------ text clean-up

_UNICODE = {
    "\u2212": "-", "\u00d7": r"\times ", "\u00b7": r"\cdot ", "\u00f7": r"\div ", "\u03c0": r"\pi ",
    "\u221a": r"\sqrt ", "\u221e": r"\infty ", "\u2264": r"\le ", "\u2265": r"\ge ", "\u2260": r"\ne ",
    "\u222a": r"\cup ", "\u2229": r"\cap ", "\u2208": r"\in ", "\u00b0": r"^\circ ", "\u00a0": " ",
    "\u2009": " ", "\u202f": " ", "\u2019": "'", "\u2192": r"\to ", "\u2248": r"\approx ", "\u21d2": r"\Rightarrow ",
    "\u00b2": "^2", "\u00b3": "^3", "\u03b8": r"\theta ", "\u03b1": r"\alpha ", "\u03b2": r"\beta ", "\u03b3": r"\gamma ",
    "\u03bb": r"\lambda ", "\u03c6": r"\phi ", "\u2713": " ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))


def clean_text(text: str) -> str:
    """Unicode maths as LaTeX, `\\( \\)` / `\\[ \\]` as `$ $` / `$$ $$` delimiters, and runs of
    white space as one space or newline (which also keeps every pattern below linear in time)."""
    text = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], text)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" ?\n(?: ?\n)+ ?", "\n\n", re.sub(r" ?\n ?", "\n", text))
    text = re.sub(r"(?<!\\)\\\(|(?<!\\)\\\)", "$", text)
    return re.sub(r"(?<!\\)\\\[|(?<!\\)\\\]", "$$", text)


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


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each `$...$` / `$$...$$` span. A `$` before a number that the
    next `$` closes over plain words ("$24 and $30") is money, not a delimiter."""
    spans, i, n = [], 0, len(text)
    while i < n:
        if text[i] != "$" or (i and text[i - 1] == "\\"):
            i += 1
            continue
        double = text.startswith("$$", i)
        open_len = 2 if double else 1
        j = i + open_len
        while True:
            j = text.find("$$" if double else "$", j)
            if j < 0 or text[j - 1] != "\\":
                break
            j += 1
        if j < 0:
            break
        content = text[i + open_len : j]
        if not double and re.match(r"\d", content) and re.search(r"\s[A-Za-z]{2,}", content) and "\\" not in content:
            i += 1  # money
            continue
        spans.append((i, j + open_len, content))
        i = j + open_len
    return spans


def _sentences(text: str, spans: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """(start, end) of each sentence: ends are `.`, `?`, `!` before white space or the end of the
    text, and newlines, outside maths (a decimal point never ends one)."""
    out, start, k, n = [], 0, 0, len(text)
    span_at = {s: e for s, e, _ in spans}
    while k < n:
        if k in span_at:
            k = span_at[k]
            continue
        c = text[k]
        if c == "\n" or (c in ".?!" and (k + 1 == n or text[k + 1].isspace())):
            if text[start:k].strip():
                out.append((start, k))
            start = k + 1
        k += 1
    if text[start:].strip():
        out.append((start, n))
    return out


# ------------------------------------------------------------------------------------ extraction

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_VAR = r"(?:[a-zA-Z](?:_\{?\w+\}?)?|\\(?:alpha|beta|gamma|delta|theta|phi|lambda|mu|omega|psi|rho|sigma|tau))"
_ASSIGN_TAIL = re.compile(rf"(?<![\w\\}}]){_VAR}\s*(?:=|\\in)\s*$")
_CONNECTOR = re.compile(r"[\s,;]*(?:(?:or|and|&)[\s,;]*)?", re.IGNORECASE)
_ANSWER_IS = re.compile(
    r"(?:\bfinal\s+answer|\bthe\s+(?:correct\s+)?answer|\banswer)(?:\s(?:to|for)\s(?:the|this)\s(?:question|problem))?\s?(?:\*\*\s?)?"
    r"(?:(?:is|should\sbe|would\sbe|must\sbe|will\sbe)\b|:|=)(?:\s?\*\*)?\s?:?\s?",
    re.IGNORECASE,
)


@dataclass
class Extracted:
    answer: str | None
    how: str  # boxed, answer_is, hashes, last_sentence, last_number, none
    text: str = ""  # the cleaned completion


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of the last 20 complete boxes (`\\boxed{...}`, `\\fbox{...}`, `\\boxed 5`)."""
    out = []
    for m in list(_BOX.finditer(text))[-20:]:
        end = m.end()
        if end < len(text) and text[end] == "{":
            got = _braced(text, end)
            if got is not None:
                out.append((m.start(), got[1], got[0]))
        elif m.group(0).endswith((" ", "\t")):
            tok = re.match(r"[^\s$.,]+", text[end:])
            if tok:
                out.append((m.start(), end + tok.end(), tok.group(0)))
    return out


def _strip_between(between: str) -> str:
    between = between.replace("$", " ")
    between = re.sub(r"\\(?:text|mbox|textrm)\{([^{}]*)\}", r" \1 ", between)
    between = re.sub(r"\\(?:quad|qquad|,|;|:| )", " ", between)
    return between


def _joined(between: str) -> bool:
    """Whether the text between two answers only joins them ("or", "and", commas)."""
    return len(between) <= 60 and bool(_CONNECTOR.fullmatch(between))


def _box_group(text: str, boxes: list[tuple[int, int, str]]) -> tuple[int, list[str]]:
    """(start, items) of the last run of boxes joined only by connectors; an item keeps the
    variable it is assigned to (`x = \\boxed{3}` -> `x=3`)."""
    first = len(boxes) - 1
    while first > 0:
        between = _ASSIGN_TAIL.sub("", _strip_between(text[boxes[first - 1][1] : boxes[first][0]]))
        if not _joined(between):
            break
        first -= 1
    # a system's solution boxed one variable at a time ("so $\\boxed{x = 2}$. Then ... $\\boxed{y = 3}$"): a tuple
    if first == len(boxes) - 1 and (m := re.match(rf"({_VAR})\s*=", boxes[first][2].strip())):
        seen, k = {m.group(1)}, first - 1
        while k >= 0 and boxes[first][0] - boxes[k][1] < 300 and not _CORRECTION.search(text, boxes[k][1], boxes[first][0]):
            mk = re.match(rf"({_VAR})\s*=", boxes[k][2].strip())
            if not mk or mk.group(1) in seen:
                break
            seen.add(mk.group(1))
            k -= 1
        first = k + 1
    items = []
    for k in range(first, len(boxes)):
        before = text[max(boxes[k - 1][1] if k > first else 0, boxes[k][0] - 40) : boxes[k][0]]
        m = _ASSIGN_TAIL.search(_strip_between(before))
        content = boxes[k][2].strip()
        var = re.sub(r"\s", "", m.group(0)) if m else ""
        items.append(var + content if var and not re.match(rf"{_VAR}\s*(?:=|\\in)", content) else content)
    return boxes[first][0], items


def _span_run(text: str, spans: list[tuple[int, int, str]], start: int, end: int) -> tuple[list[str], str]:
    """The trailing run of math spans in text[start:end] joined only by connectors (a parenthetical
    remark between them is allowed), and the plain text after the last one."""
    inside = [sp for sp in spans if sp[0] >= start and sp[1] <= end]
    if not inside:
        return [], text[start:end]
    run = [inside[-1]]
    for sp in reversed(inside[:-1]):
        between = re.sub(r"\([^()$]*\)", " ", text[sp[1] : run[0][0]])
        if not _joined(_strip_between(between)):
            break
        run.insert(0, sp)
    return [c for _, _, c in run], text[run[-1][1] : end]


_CLAUSE = re.compile(
    r"\s(?:is|are|was|were|equals|be|gives|to|of|at|so|thus|hence|therefore|then|get|obtain|becomes)\s|:|\bi\.e\.,?\s", re.IGNORECASE
)
_EXPLANATION = re.compile(r"(?i),?\s+(?:since|because)\b|,\s+as\b|;")
_PLAIN_NUMBER = re.compile(r"-?\d+\s+\d+/\d+|-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?|-?\.\d+")
_WORD = re.compile(r"(?:[A-Za-z]{2,}(?:'[a-z]+)?(?:\^\{?\d\}?)?|[aAI])[.,;:!?)]*")


def _is_word(tokens: list[str], i: int) -> bool:
    """A plain word (not maths): two letters or more, or an article; a letter before `=` or an
    operator is a variable."""
    if not _WORD.fullmatch(tokens[i]):
        return False
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    return not (len(tokens[i]) == 1 and re.match(r"[=<>+\-*/^]|\\(?:le|ge|ne|cdot|times)", nxt))


def _math_run(seg: str) -> str:
    """The maths of a plain-text clause: leading words dropped, and it ends at the first word that
    is not maths (a unit, "ways to arrange the letters"); "or"/"and" between maths is kept."""
    seg = re.sub(r"(?i)\b(?:maybe|perhaps|possibly|probably)\s+", "", re.sub(r"\s*\bpercent\b", "%", seg))  # "3 or maybe 4": a hedge
    tokens = seg.strip().rstrip(".!?,;:").split()
    i = 0
    while i < len(tokens) and _is_word(tokens, i):
        i += 1
    out: list[str] = []
    while i < len(tokens):
        if _is_word(tokens, i):
            if tokens[i].lower().strip(",") in ("or", "and") and i + 1 < len(tokens) and not _is_word(tokens, i + 1) and out:
                out.append(tokens[i])
                i += 1
                continue
            break
        out.append(tokens[i])
        i += 1
    return " ".join(out).strip(" ,")


def _plain_answer(segment: str) -> str:
    """What a plain-text sentence or answer statement gives: the maths of its last clause (after
    "is", "so", ":", ... where maths follows), without markdown, units or trailing words.
    "All real numbers [except ...]" is kept whole."""
    seg = re.sub(r"\*\*|\$", " ", segment[-500:]).strip()
    seg = re.split(r"(?i)\bI hope\b", seg)[0]
    if m := re.search(r"(?i)\ball real\b", seg):
        return seg[m.start() :].strip(" .")
    clauses = [c for c in _CLAUSE.finditer(seg) if re.search(r"[\d\\]", seg[c.end() :])]
    if clauses:
        seg = seg[clauses[-1].end() :]
    return _math_run(seg)


def _statement_answer(text: str, spans, start: int, end: int) -> str:
    """The answer an answer statement (or a last sentence) text[start:end] gives: its trailing run
    of maths, unless plain text before an explanation clause ("7, since $7^2 = 49$") is the answer."""
    head_end = end
    if m := _EXPLANATION.search(re.sub(r"\$[^$]*\$", lambda x: "_" * len(x.group(0)), text[start:end])):
        head_end = start + m.start()
    run, tail = _span_run(text, spans, start, head_end)
    if run and not re.search(r"\d", re.sub(r"(?i)\bI hope.*", "", tail)):
        return ", ".join(run)
    return _plain_answer(text[start:head_end])


# A sentence that checks the answer given before it ("Check: 2(6) + 7 = 19.", "Let me double check: ...").
_CHECK = re.compile(r"(?i)(?:let me |let's |let us |we can |to )?(?:double[- ]?check|check|verify|verification|sanity check|recheck|confirm)\w*\b")
# An answer taken back ("... no wait, ...", "I made a mistake"): what follows is the answer.
_CORRECTION = re.compile(r"(?i)\b(?:wait|oops|mistake|I made an error|correction|redo|start over|that'?s (?:wrong|not right))\b")
# "check our answer: ...", "I estimate the answer is around 30": no final answer stated
_NOT_THE_ANSWER = re.compile(r"(?i)\b(?:check|checking|verify|verifying|our|my|your|this|that|an|each|estimate|guess|expect|suspect|think)\s+(?:that\s+)?$")
_HEDGED = re.compile(r"(?i)(?:around|about|approximately|roughly|probably|maybe|perhaps)\b")
_VERDICT_WORD = re.compile(r"(?i)(?:correct|right|wrong|incorrect|valid|invalid|reasonable|consistent|confirmed|verified|true|false)\b")


def _last_sentence_answer(text: str, spans, sentences: list[tuple[int, int]]) -> str:
    """The answer of the last sentence (among `sentences`) that holds any mathematics, checks of
    an earlier answer left out."""
    kept, in_check = [], False
    for s, e in sentences:
        if s == 0 or "\n\n" in text[max(0, s - 3) : s + 1]:
            in_check = False  # a new paragraph
        if s > 0 and _CHECK.match(text[s:e].lstrip("(*# ")):
            in_check = True
        if not in_check:
            kept.append((s, e))
    if any(re.search(r"[\d$\\]", text[s:e]) for s, e in kept):
        sentences = kept
    for start, end in reversed(sentences):
        sentence = text[start:end]
        if not re.search(r"[\d$\\]|\ball real\b", sentence, re.IGNORECASE):
            continue  # "I hope it is correct."
        if re.search(r"(?i)\ball real\b", sentence):
            return _plain_answer(sentence)
        answer = _statement_answer(text, spans, start, end)
        if answer:
            return answer
    return ""


def extract_answer(completion: str, last_number: bool = True) -> Extracted:
    text = clean_text(completion)
    spans = _math_spans(text)
    candidates: list[tuple[int, str, str]] = []  # (position, answer, how)
    boxes = _boxes(text)
    if boxes:
        start, items = _box_group(text, boxes)
        items = [i for i in items if i.strip()]
        if items:
            candidates.append((start, ", ".join(items), "boxed"))
    sentences = _sentences(text, spans)
    for m in _ANSWER_IS.finditer(text):
        if any(s <= m.start() < e for s, e, _ in spans) or _NOT_THE_ANSWER.search(text[max(0, m.start() - 30) : m.start()]):
            continue
        end = next((e for s, e in sentences if s <= m.end() <= e), len(text))
        if re.search(r"\\(?:boxed|fbox)", text[m.end() : end]):
            continue  # the box inside it is the statement
        answer = _statement_answer(text, spans, m.end(), end)
        segment_start = text[m.end() : m.end() + 20]
        if answer and not _VERDICT_WORD.match(answer) and not _HEDGED.match(segment_start.lstrip("$* ")):
            candidates.append((m.start(), answer, "answer_is"))
    if "####" in text:
        pos = text.rfind("####")
        ans = text[pos + 4 :].split("\n")[0].strip().rstrip(".")
        if ans:
            candidates.append((pos, ans, "hashes"))
    if candidates:
        pos, answer, how = max(candidates, key=lambda c: c[0])
        # a statement taken back afterwards ("... no wait, ... It is 1/3."): the correction is the answer
        after = next((e for s, e in sentences if s <= pos < e), pos)
        if cue := _CORRECTION.search(text, after):
            corrected = _last_sentence_answer(text, spans, [(s, e) for s, e in sentences if e > cue.end()])
            return Extracted(corrected or None, "correction", text)
        return Extracted(answer, how, text)
    if not last_number:
        return Extracted(None, "none", text)
    answer = _last_sentence_answer(text, spans, sentences)
    if answer:
        return Extracted(answer, "last_sentence", text)
    nums = _PLAIN_NUMBER.findall(text)
    if nums:
        return Extracted(nums[-1].rstrip(","), "last_number", text)
    return Extracted(None, "none", text)


# ------------------------------------------------------------------------------------ normalisation

_TEXT_CMD = r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|operatorname)"


def _fix_shorthand(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}`, `\\sqrt2`, `\\sqrt51` -> `\\sqrt{51}`."""
    s = re.sub(r"\\sqrt\s*(\d+|[a-zA-Z])", r"\\sqrt{\1}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    return s


def clean_answer(ans: str) -> str:
    """An extracted answer with presentation removed, spaces kept (they separate words)."""
    s = clean_text(ans).strip()
    s = s.replace("\n", " ").replace("\\!", "")
    s = re.sub(r"(?<!\\)\\(?:,|;|:|quad|qquad| )", " ", s)  # spacing commands, not the row break `\\`
    s = s.replace("~", " ").replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\left\b|\\right\b|\\big[lr]?\b|\\Big[lr]?\b", "", s)
    s = re.sub(r"\\displaystyle", "", s)
    s = re.sub(r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\degree)(?:\s*[CF]\b)?", "", s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\%|\s*\bpercent\b", "%", s)
    s = re.sub(r"\\(?:leq|leqslant)(?![a-zA-Z])", r"\\le", s)
    s = re.sub(r"\\(?:geq|geqslant)(?![a-zA-Z])", r"\\ge", s)
    s = re.sub(r"\\neq(?![a-zA-Z])", r"\\ne", s)
    s = s.replace("\\lt", "<").replace("\\gt", ">")
    s = re.sub(r"(?<![\w)}])\+\s*\\infty", r"\\infty", s)  # +\infty
    # units inside \text after something (`40 \text{ km/h}`, `5 \text{ cm}^2`, `12\mbox{ inches}`)
    s = re.sub(rf"(?<=\S)\s*{_TEXT_CMD}\{{\s*[a-zA-Z][a-zA-Z ./]*\}}(\^\{{?\d\}}?)?\s*$", "", s)
    # `\text{(C)}`, `\text{Evelyn}`, `\text{ or }`: keep the content
    for _ in range(3):
        s = re.sub(rf"{_TEXT_CMD}\{{([^{{}}]*)\}}", r"\1", s)
    s = _fix_shorthand(s)
    s = re.sub(r"(?<![\d.])(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d/])", r"\1\\frac{\2}{\3}", s)  # 2 2/3
    s = s.strip().rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?", s):  # 1,000,000 is one number, not a list
        s = s.replace(",", "")
    return s


def normalize(ans: str) -> str:
    """A scalar's canonical text: clean_answer without spaces, `.5` as `0.5`."""
    return _compact(clean_answer(ans))


def _compact(s: str) -> str:
    """Canonical text of an already cleaned scalar."""
    return _LEADING_POINT.sub(r"0.\1", s.replace(" ", "").rstrip("."))


_LEADING_POINT = re.compile(r"(?<![\d)}])\.(\d)")


# ------------------------------------------------------------------------------------ numbers

_NUM = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


@dataclass(frozen=True)
class Number:
    value: Fraction
    decimals: int | None = None  # places shown when written as a (terminating) decimal
    significant: int = 0  # significant digits shown (decimals only)


def _decimal(s: str) -> Number:
    digits = s.lstrip("+-").replace(".", "").lstrip("0")
    decimals = len(s.split(".")[1]) if "." in s else None
    return Number(Fraction(s), decimals if decimals else None, len(digits))


def parse_number(s: str) -> Fraction | None:
    """An exact rational for plain numeric answers, else None. Percentages are divided by 100."""
    n = read_number(s)
    return n.value if n else None


def read_number(s: str) -> Number | None:
    pct = s.endswith("%")
    if pct:
        s = s[:-1]
    if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    out: Number | None = None
    if _NUM.fullmatch(s):
        out = _decimal(s)
    elif m := re.fullmatch(r"([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}", s):  # 0.1\overline{6}
        whole, fixed, rep = m.group(2) or "0", m.group(3), m.group(4)
        value = int(whole) + Fraction(int(fixed or "0"), 10 ** len(fixed)) + Fraction(int(rep), 10 ** len(fixed) * (10 ** len(rep) - 1))
        out = Number(-value if m.group(1) == "-" else value)
    elif m := re.fullmatch(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]|\\times10\^|\*10\^|\\cdot10\^)\{?([+-]?\d{1,3})\}?", s):
        out = Number(Fraction(m.group(1)) * Fraction(10) ** int(m.group(2)))
    elif m := re.fullmatch(r"([+-]?\d{1,6})\^\{?([+-]?\d{1,3})\}?", s):  # 10^{9}, 2^{-3}
        base, exp = int(m.group(1)), int(m.group(2))
        if base != 0 or exp >= 0:
            out = Number(Fraction(base) ** exp)
    elif m := re.fullmatch(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}", s):
        if int(m.group(3)) != 0:
            out = Number(Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) == "-" else 1))
    elif m := re.fullmatch(r"([+-]?\d+)/([+-]?\d+)", s):
        if int(m.group(2)) != 0:
            out = Number(Fraction(int(m.group(1)), int(m.group(2))))
    elif m := re.fullmatch(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s):  # mixed number 2\frac{1}{2}
        num, den = int(m.group(3)), int(m.group(4))
        if den != 0 and num < den:
            out = Number((int(m.group(2)) + Fraction(num, den)) * (-1 if m.group(1) == "-" else 1))
    if out is not None and pct:
        out = Number(out.value / 100, None if out.decimals is None else out.decimals + 2, out.significant)
    return out


def numbers_equal(a: Number, b: Number) -> bool:
    """Exact, except that a decimal of k places with at least 3 significant digits equals a
    rational it is the rounding of (`0.6667` = 2/3; `0.67` is not)."""
    if a.value == b.value:
        return True
    for d, q in ((a, b), (b, a)):
        if d.decimals and q.decimals is None and d.significant >= 3:
            if abs(q.value - d.value) * 2 * 10**d.decimals <= 1:
                return True
    return False


# ------------------------------------------------------------------------------------ structure


def split_top_level(s: str, seps: tuple[str, ...] = (",",)) -> list[str]:
    """Split on separators outside (), [], {} (and `\\{ \\}`)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if s.startswith(("\\langle", "\\rangle"), i):
            depth += 1 if s.startswith("\\langle", i) else -1
            cur.append(s[i : i + 7])
            i += 7
            continue
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
    """(open, inner, close) when the whole string is one bracket group like (a,b], \\{a,b\\}, \\langle a,b\\rangle."""
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        return ("{", inner, "}") if _balanced(inner) else None
    if s.startswith("\\langle") and s.endswith("\\rangle"):
        inner = s[len("\\langle") : -len("\\rangle")]
        return ("<", inner, ">") if _balanced(inner) else None
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner = s[1:-1]
        return (s[0], inner, s[-1]) if _balanced(inner) else None
    return None


_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}")


@dataclass(frozen=True)
class Value:
    """A read answer. kind: scalar (text), list (items, order-free), tuple (items, ordered),
    interval (items = two endpoints, brackets), pair (`(a, b)`/`[a, b]`: a point or an interval),
    union (items = intervals, order-free), matrix (rows of items), eq (var = items[0])."""

    kind: str
    text: str = ""
    items: tuple = ()
    brackets: str = ""
    var: str = ""


_REL = r"(?:<|>|\\le|\\ge|\\ne|=)"
_RELATION = re.compile(r"\\le(?![a-zA-Z])|\\ge(?![a-zA-Z])|<|>")
_ALL_REAL = re.compile(r"(?i)^all\s+real\s+(?:numbers|values|x|numbers\s+x)?\s*(?:except\s+(?:for\s+)?(.*))?$")


def _expand_pm(s: str) -> list[str]:
    """`a \\pm b` as [`a + b`, `a - b`] (each \\pm or \\mp once; at most three)."""
    out = [s]
    for _ in range(3):
        nxt = []
        for x in out:
            m = re.search(r"\\(pm|mp)", x)
            if not m:
                nxt.append(x)
                continue
            first, second = ("+", "-") if m.group(1) == "pm" else ("-", "+")
            for sign in (first, second):
                nxt.append(x[: m.start()] + sign + x[m.end() :])
        out = nxt
    return [re.sub(r"^\+", "", re.sub(r"([(\[{,=])\+", r"\1", x.strip())) for x in out]


@functools.lru_cache(maxsize=4096)
def read_answer(ans: str, depth: int = 0) -> Value:
    """Read an answer's text into a Value (see the module docstring). Values are immutable, so a
    ground truth shared by a group of samples is read once."""
    s = clean_answer(ans) if depth == 0 else ans.strip()
    if depth > 6:
        return Value("scalar", _compact(s))
    s = re.sub(r"(?i)^(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*", "", s)  # \boxed{\text{The answer is } 42}
    # a chain of implications or approximations ends in its answer: `2x > 4 \Rightarrow x > 2`, `5/11 \approx 0.455`
    if len(chain := split_top_level(s, ("\\Rightarrow", "\\implies", "\\iff", "\\Longrightarrow", "\\approx"))) > 1:
        return read_answer(chain[-1], depth + 1)
    if m := _ALL_REAL.match(s):
        return _reals_except(m.group(1), depth)
    # set-builder: \{x \mid -3 < x \le 2\}, \{x : x \geq 1\}, \{x \in \mathbb{R} : ...\}
    if m := re.fullmatch(rf"\\\{{\s*{_VAR}\s*(?:\\in\s*\\mathbb\{{R\}}\s*)?(?:\\mid|\||:)\s*(.+?)\s*\\\}}", s):
        return read_answer(m.group(1), depth + 1)
    if re.fullmatch(r"\\mathbb\{R\}|\(-\\infty,\s*\\infty\)", s.replace(" ", "")):
        return Value("interval", items=(Value("scalar", "-\\infty"), Value("scalar", "\\infty")), brackets="()")
    if m := re.fullmatch(r"\\mathbb\{R\}\s*\\setminus\s*(.+)", s):
        return _reals_except(m.group(1), depth)
    # lists: top-level commas, semicolons, "or", "and"
    parts = [p for p in split_top_level(s, (",", ";", " or ", " and ", "\\text{or}", "\\text{and}")) if p.strip()]
    if len(parts) > 1:
        return _list([read_answer(p, depth + 1) for p in parts[:MAX_ITEMS]])
    s = parts[0].strip() if parts else s
    if re.search(r"\\(?:pm|mp)", s):
        expanded = _expand_pm(s)
        if len(expanded) > 1:
            return _list([read_answer(x, depth + 1) for x in expanded])
    # equations: the value of a chain `a = b = c` is its last part; so is that of `(a, b) = (3, 5)`,
    # `2 + 3 = 5`, `f(2) = 5` or `\sum ... = 385` (the left side names or computes the value)
    sides = [x for x in split_top_level(s, ("=",))]
    if len(sides) > 2 or (len(sides) == 2 and _names_or_computes(sides[0])):
        return read_answer(sides[-1], depth + 1)
    if len(sides) == 2 and not re.fullmatch(rf"\s*{_VAR}\s*", sides[0]):
        rhs = read_answer(sides[1], depth + 1)
        if rhs.kind in ("tuple", "pair", "matrix"):  # `b - a = \langle -1, 4, 2 \rangle` states a vector
            return rhs
    # assignments: x = 3, \theta = ..., x \in [a, b]
    if m := re.fullmatch(rf"({_VAR})\s*(=|\\in)\s*(.+)", s):
        value = read_answer(m.group(3), depth + 1)
        if m.group(2) == "\\in" or value.kind in ("list", "union", "interval"):
            return value
        return Value("eq", text=_compact(s), var=m.group(1).replace(" ", ""), items=(value,))
    # inequalities; x \ne a (all reals but a); |x| < a, |x| > a
    if m := re.fullmatch(rf"{_VAR}\s*\\ne\s*(.+)", s):
        return _reals_except(m.group(1), depth)
    if m := re.fullmatch(rf"\|\s*{_VAR}\s*\|\s*(<|>|\\le|\\ge)\s*(.+)", s):
        a, op = m.group(2), m.group(1)
        inner = "\\le" if op in ("<", "\\le") else None
        if inner:
            return read_answer(f"-{a} {op} x {op} {a}", depth + 1)
        return read_answer(f"x {op.replace('>', '<').replace('ge', 'le')} -{a} or x {op} {a}", depth + 1)
    if _RELATION.search(s) and (interval := _inequality(s, depth)) is not None:
        return interval
    # unions
    if len(u := split_top_level(s, ("\\cup",))) > 1:
        return Value("union", items=tuple(read_answer(p, depth + 1) for p in u))
    s_compact = s.replace(" ", "")
    if (mat := _MATRIX.fullmatch(s_compact)) is not None:
        rows = [[c for c in row.split("&")] for row in mat.group(2).split("\\\\") if row.strip()]
        if all(len(r) == 1 for r in rows) or len(rows) == 1:  # a column or row vector is a tuple
            cells = [c for r in rows for c in r]
            return Value("tuple", items=tuple(read_answer(c, depth + 1) for c in cells))
        return Value("matrix", items=tuple(tuple(read_answer(c, depth + 1) for c in r) for r in rows))
    if (b := _bracketed(s_compact)) is not None:
        open_, inner, close = b
        items = [i for i in split_top_level(inner)]
        values = tuple(read_answer(i, depth + 1) for i in items)
        if open_ == "{":
            return Value("list", items=values, brackets="{}")
        if open_ == "<":
            return Value("tuple", items=values)
        if len(values) > 1 and all(v.kind in ("pair", "tuple") and v.brackets == "[]" for v in values):
            if len({len(v.items) for v in values}) == 1:  # [[1, 2], [3, 4]]
                return Value("matrix", items=tuple(v.items for v in values))
        if len(items) == 2:
            return Value("pair", items=values, brackets=open_ + close)
        if len(items) > 2:
            return Value("tuple", items=values, brackets=open_ + close)
    return Value("scalar", _compact(s))


def _names_or_computes(lhs: str) -> bool:
    """A left side whose equation states a value: a tuple of variables, plain arithmetic, a
    function at a point, a sum, product, integral or limit."""
    t = lhs.replace(" ", "")
    if re.fullmatch(rf"\(({_VAR},)+{_VAR}\)", t):
        return True
    if re.fullmatch(r"[\d.+\-*/^(){}]+|(?:[\d.+\-*/^(){}]|\\(?:frac|cdot|times|sqrt|div))+", t) and re.search(r"\d", t):
        return True
    # a command applied to something (\sum, \lim, \log_2 64, \det, \tan 30^\circ) or a function at a point: f(1), f^{-1}(x)
    if re.search(r"\\(?:mathbf|vec|overrightarrow|hat)\{", t) and not re.search(r"\d", t):  # \mathbf{b} - \mathbf{a} = ...
        return True
    return bool(re.match(r"\\(?:sum|prod|int|lim|log|ln|det|sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|binom|dbinom)(?![a-zA-Z])", t)
                or re.fullmatch(r"[a-zA-Z](?:\^\{?-?\d\}?)?\([^()]*\)", t))


def _list(values: list[Value]) -> Value:
    """Several values: assignments to distinct variables are a tuple in order; intervals a union;
    anything else an order-free list (equations `x = 3` stand for their values)."""
    if len(values) > 1 and all(v.kind == "eq" for v in values) and len({v.var for v in values}) == len(values):
        return Value("tuple", items=tuple(v.items[0] for v in values))
    flat: list[Value] = []
    for v in values:
        v = v.items[0] if v.kind == "eq" else v
        flat.extend(v.items if v.kind == "list" and not v.brackets else [v])
    if all(v.kind in ("interval", "union") for v in flat):
        return Value("union", items=tuple(flat))
    return Value("list", items=tuple(flat))


def _inequality(s: str, depth: int) -> Value | None:
    """`x \\ge 2`, `-1 < x \\le 4`, `2 > x`: an interval; None if it is not one variable's bounds."""
    tokens = [t.strip() for t in re.split(r"(\\le(?![a-zA-Z])|\\ge(?![a-zA-Z])|<|>)", s)]
    if len(tokens) not in (3, 5):
        return None
    ops, terms = tokens[1::2], [t.replace(" ", "") for t in tokens[0::2]]
    var_at = [i for i, t in enumerate(terms) if re.fullmatch(_VAR, t)]
    if len(var_at) != 1:
        return None
    lo, hi = Value("scalar", "-\\infty"), Value("scalar", "\\infty")
    if len(tokens) == 5:
        if var_at != [1] or not (all(o in ("<", "\\le") for o in ops) or all(o in (">", "\\ge") for o in ops)):
            return None
        if ops[0] in (">", "\\ge"):  # 5 > x > 2  ->  2 < x < 5
            terms, ops = terms[::-1], [{">": "<", "\\ge": "\\le"}[o] for o in ops[::-1]]
        lo, hi = read_answer(terms[0], depth + 1), read_answer(terms[2], depth + 1)
        return Value("interval", items=(lo, hi), brackets=("[" if ops[0] == "\\le" else "(") + ("]" if ops[1] == "\\le" else ")"))
    op = ops[0]
    if var_at == [1]:  # 2 < x  ->  x > 2
        op = {"<": ">", ">": "<", "\\le": "\\ge", "\\ge": "\\le"}[op]
        bound = terms[0]
    else:
        bound = terms[1]
    b = read_answer(bound, depth + 1)
    if op in (">", "\\ge"):
        return Value("interval", items=(b, hi), brackets=("[" if op == "\\ge" else "(") + ")")
    return Value("interval", items=(lo, b), brackets="(" + ("]" if op == "\\le" else ")"))


def _reals_except(rest: str | None, depth: int) -> Value:
    """All reals, or all reals but finitely many points: a union of open intervals."""
    inf = (Value("scalar", "-\\infty"), Value("scalar", "\\infty"))
    if not rest or not rest.strip():
        return Value("interval", items=inf, brackets="()")
    removed = read_answer(rest.strip(), depth + 1)
    if removed.kind in ("interval", "pair") and len(removed.items) == 2:  # R \ (0, 4) = (-inf, 0] U [4, inf)
        flip = {"(": "]", "[": ")", ")": "[", "]": "("}
        return Value("union", items=(
            Value("interval", items=(inf[0], removed.items[0]), brackets="(" + flip[removed.brackets[0]]),
            Value("interval", items=(removed.items[1], inf[1]), brackets=flip[removed.brackets[1]] + ")"),
        ))
    points = read_answer(re.sub(r"^\\\{|\\\}$", "", rest.strip()), depth + 1)
    pts = [p.items[0] if p.kind == "eq" else p for p in (points.items if points.kind == "list" else (points,))]
    nums = [read_number(p.text) for p in pts if p.kind == "scalar"]
    if len(nums) != len(pts) or any(n is None for n in nums):
        return Value("scalar", _compact(rest))
    cuts = sorted(p for p in pts if p.kind == "scalar")
    cuts = [p for _, p in sorted(zip([n.value for n in nums], pts), key=lambda t: t[0])]
    edges = [inf[0], *cuts, inf[1]]
    return Value("union", items=tuple(Value("interval", items=(a, b), brackets="()") for a, b in zip(edges, edges[1:])))


# ------------------------------------------------------------------------------------ equivalence

_CHOICE = re.compile(r"\(?([A-E])\)?")


def _distinct(items: tuple) -> list:
    """The items with repeats of one value dropped (`15\\frac{39}{40}` or `\\frac{639}{40}`: one
    answer). Repeats are found by the exact stages only, so that a verdict never depends on
    whether sympy was at hand."""
    out: list = []
    for x in items:
        if not any(_cheaply_equal(y, x) for y in out):
            out.append(x)
    return out


def _cheaply_equal(a: Value, b: Value) -> bool:
    try:
        return values_equal(a, b, allow_symbolic=False)
    except NeedsSymbolic:
        return False


def _multiset(a: tuple, b: tuple, allow_symbolic: bool) -> bool:
    """Order-free: the same distinct values on both sides. Pairs the exact stages settle are
    matched first; only if some item is left does a comparison that needs sympy decide."""
    a, b = _distinct(a), _distinct(b)
    if len(a) != len(b):
        return False
    remaining = list(b)
    unsettled = []
    for x in a:
        j = next((j for j, y in enumerate(remaining) if _cheaply_equal(x, y)), None)
        if j is None:
            unsettled.append(x)
        else:
            del remaining[j]
    for x in unsettled:
        j = next((j for j, y in enumerate(remaining) if values_equal(x, y, allow_symbolic)), None)
        if j is None:
            return False
        del remaining[j]
    return True


def _ordered(a: tuple, b: tuple, allow_symbolic: bool) -> bool:
    return len(a) == len(b) and all(values_equal(x, y, allow_symbolic) for x, y in zip(a, b))


def values_equal(gold: Value, pred: Value, allow_symbolic: bool = True) -> bool:
    """Whether two read answers are the same answer; NeedsSymbolic when only sympy can tell and
    `allow_symbolic` is off; _Unsafe when an answer is too large for sympy."""
    g, p = gold, pred
    if g.kind == "eq" and p.kind == "eq":
        return g.var == p.var and values_equal(g.items[0], p.items[0], allow_symbolic)
    if g.kind == "eq" and p.kind == "scalar" and "=" in p.text or p.kind == "eq" and g.kind == "scalar" and "=" in g.text:
        return scalars_equal(g.text, p.text, allow_symbolic)  # y = -2x + 5 against 2x + y = 5: the same line
    if g.kind == "eq":
        return values_equal(g.items[0], p, allow_symbolic)
    if p.kind == "eq":
        return values_equal(g, p.items[0], allow_symbolic)
    # a list of one value (however many times written) stands for that value
    if g.kind == "list" and not g.brackets and len(g.items) > 1 and p.kind != "list":
        g = Value("list", items=tuple(_distinct(g.items)))
    if p.kind == "list" and not p.brackets and len(p.items) > 1 and g.kind != "list":
        p = Value("list", items=tuple(_distinct(p.items)))
    if g.kind == "list" and len(g.items) == 1 and not g.brackets:
        return values_equal(g.items[0], p, allow_symbolic)
    if p.kind == "list" and len(p.items) == 1 and not p.brackets:
        return values_equal(g, p.items[0], allow_symbolic)
    if g.kind == "union" and len(g.items) == 1:
        return values_equal(g.items[0], p, allow_symbolic)
    if p.kind == "union" and len(p.items) == 1:
        return values_equal(g, p.items[0], allow_symbolic)
    kinds = {g.kind, p.kind}
    if kinds == {"list"}:
        return _multiset(g.items, p.items, allow_symbolic)
    if kinds == {"union"}:
        return _multiset(g.items, p.items, allow_symbolic)
    if kinds <= {"interval", "pair"}:
        return g.brackets == p.brackets and _ordered(g.items, p.items, allow_symbolic)
    if kinds <= {"tuple", "pair"}:
        if "pair" in kinds and (g.kind == "pair" and g.brackets != "()" or p.kind == "pair" and p.brackets != "()"):
            return False  # [a, b] is an interval, not a point
        if g.kind == p.kind == "tuple" and g.brackets and p.brackets and g.brackets != p.brackets:
            return False
        return _ordered(g.items, p.items, allow_symbolic)
    if kinds == {"matrix"}:
        return len(g.items) == len(p.items) and all(_ordered(a, b, allow_symbolic) for a, b in zip(g.items, p.items))
    if kinds == {"scalar"}:
        return scalars_equal(g.text, p.text, allow_symbolic)
    return False


def scalars_equal(gold: str, pred: str, allow_symbolic: bool = True) -> bool:
    if gold == pred:
        return True
    g_num, p_num = read_number(gold), read_number(pred)
    if g_num is not None and p_num is not None:
        if numbers_equal(g_num, p_num):
            return True
        # "50%" against "50": the percent sign is a unit here
        return (gold.endswith("%") and p_num.value == g_num.value * 100) or (pred.endswith("%") and g_num.value == p_num.value * 100)
    if m := _CHOICE.fullmatch(gold):
        pm = _CHOICE.fullmatch(pred)
        return bool(pm) and pm.group(1) == m.group(1)
    if not (symbolic_safe(gold) and symbolic_safe(pred)):
        raise _Unsafe()
    if not allow_symbolic:
        raise NeedsSymbolic()
    return _symbolic_equal(gold, pred)


# ------------------------------------------------------------------------------------ symbolic

_HUGE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\{?\s*\d{5,}|\d{4,}\s*!|\^\s*\{[^{}]*\{|\\uparrow|\*\*")
_EXPONENT_TOKEN = re.compile(r"\s*(?:\\[a-zA-Z]+|[\w.]+)")


def symbolic_safe(s: str) -> bool:
    """Whether sympy may see `s`: short, no exponent that holds another exponent or a factorial
    (towers: `2^{2^{100}}`, `2^(2^100)`, `e^{10!}`), no huge exponent, and factorials only of
    operands without powers, factorials or numbers over 999 (`5!`, `(n-k)!`; never `(10!)!`,
    `10^{10}!`, `3!!`, `1000!`)."""
    if len(s) > MAX_SYMBOLIC_CHARS or _HUGE.search(s) or "\\" + "begin" in s:
        return False
    for m in re.finditer(r"\^", s):
        exponent = _operand_after(s, m.end())
        if "^" in exponent or "!" in exponent:
            return False
    for m in re.finditer(r"!", s):
        operand, start = _operand_before(s, m.start())
        if not operand or "!" in operand or "^" in operand or s[:start].rstrip().endswith(("^", "_")):
            return False  # (10!)!, 3!!, 10^{10}!, 2^{10}!
        if any(int(n) > 999 for n in re.findall(r"\d+", operand)):
            return False  # 1000!, (2000+1)!
    return True


def _operand_before(s: str, i: int) -> tuple[str, int]:
    """What the factorial sign at s[i] applies to, and where it starts: a group closed just before
    it (to its opening), else one token; ("", i) when there is none."""
    j = i
    while j > 0 and s[j - 1] == " ":
        j -= 1
    if j and s[j - 1] in ")}":
        close = s[j - 1]
        opening, depth = "(" if close == ")" else "{", 0
        for k in range(j - 1, -1, -1):
            depth += s[k] == close
            depth -= s[k] == opening
            if depth == 0:
                return s[k:j], k
        return "", i
    m = re.search(r"[\w.]+$", s[:j])
    return (m.group(0), m.start()) if m else ("", i)


def _operand_after(s: str, i: int) -> str:
    """The exponent starting at s[i]: a brace or parenthesis group (to its match, or to the end if
    unclosed), else one token."""
    j = i
    while j < len(s) and s[j] == " ":
        j += 1
    if j < len(s) and s[j] in "{(":
        depth, close = 0, "}" if s[j] == "{" else ")"
        for k in range(j, len(s)):
            depth += s[k] == s[j]
            depth -= s[k] == close
            if depth == 0:
                return s[j : k + 1]
        return s[j:]
    m = _EXPONENT_TOKEN.match(s, j)
    return m.group(0) if m else ""


def _sympy_of(latex: str):
    import logging

    import sympy
    from math_verify import LatexExtractionConfig, parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": the pool bounds time
    got = parse(f"${latex}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    expr = next((x for x in got if isinstance(x, sympy.Basic)), None)
    if expr is None:
        return None
    for sym in expr.free_symbols:
        if getattr(sym, "name", None) == "i":
            expr = expr.subs(sym, sympy.I)  # `i` is the imaginary unit in a final answer
    return expr.replace(lambda x: isinstance(x, sympy.Float), lambda x: sympy.Rational(str(x)))


def _symbolic_equal(gold: str, pred: str) -> bool:
    """Exact symbolic equality: simplify(g - p) == 0 (equations: their sides' differences agree up to sign)."""
    import sympy

    g, p = _sympy_of(gold), _sympy_of(pred)
    if g is None or p is None:
        return False
    try:
        if isinstance(g, sympy.Equality) or isinstance(p, sympy.Equality):
            if not (isinstance(g, sympy.Equality) and isinstance(p, sympy.Equality)):
                return False
            dg, dp = g.lhs - g.rhs, p.lhs - p.rhs
            return sympy.simplify(dg - dp) == 0 or sympy.simplify(dg + dp) == 0
        if not isinstance(g, sympy.Expr) or not isinstance(p, sympy.Expr):
            return g == p
        return sympy.simplify(g - p) == 0
    except (TypeError, ValueError, AttributeError, RecursionError):
        return False


# ------------------------------------------------------------------------------------ the verifiers


def _gold_answer(ground_truth: Any) -> str:
    if isinstance(ground_truth, (int, float)):
        return str(ground_truth)
    if isinstance(ground_truth, list) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"math ground truth must be a non-empty string, got {ground_truth!r}")
    boxes = _boxes(clean_text(ground_truth))
    return boxes[-1][2] if boxes else ground_truth


_LETTER = r"\(?\b([A-E])\b\)?"
_WRAP = r"(?:\$\s?)?(?:\\(?:text|textbf|textrm|mathrm|mathbf)\{\s?)?"
_CHOICE_STATEMENT = re.compile(rf"(?i)\b(?:answer|option|choice)(?:\s?(?:is|:))?\s?{_WRAP}{_LETTER}")
_CHOICE_LINE = re.compile(rf"(?m)^\s?(?:#+\s?)?{_WRAP}\(?([A-E])(?:\)|\.|:|\}}|\s?$)")
_CHOICE_BOX = re.compile(rf"\\boxed\{{\s?{_WRAP}{_LETTER}")
_GOLD_CHOICE = re.compile(r"\(?([A-E])\)?(?:\s*,\s*\(?([A-E])\)?)*")


def _choice_answer(text: str) -> set[str] | None:
    """The multiple-choice letters a completion settles on: the last "answer/option/choice (B)",
    boxed letter, or line that starts with a letter label ("(C)", "D) 7", "C. 24", "\\textbf{(C)}");
    with every letter that follows it on that line ("Answer: C, A")."""
    plain = text.replace("**", "")
    found = [m for pattern in (_CHOICE_STATEMENT, _CHOICE_LINE, _CHOICE_BOX) for m in pattern.finditer(plain)]
    if not found:
        return None
    m = max(found, key=lambda x: x.start())
    line_end = plain.find("\n", m.end())
    rest = plain[m.end() : line_end if line_end >= 0 else len(plain)]
    letters = {m.group(1).upper()}
    # more letters listed on the same line: "C, A", "(A) and (C)"
    for extra in re.finditer(r"(?:,|\band\b|\bor\b|&)\s?" + _WRAP + r"\(?\b([A-E])\b\)?", rest):
        letters.add(extra.group(1))
    return letters


def _gold_choices(gold: Value) -> set[str] | None:
    """The letters of a multiple-choice ground truth (`(B)`, `\\text{(B)}`, `A, C`), else None."""
    texts = [gold.text] if gold.kind == "scalar" else [v.text for v in gold.items] if gold.kind == "list" else []
    if not texts or not all(v and _GOLD_CHOICE.fullmatch(v) for v in texts):
        return None
    return {c for v in texts for c in re.findall(r"[A-E]", v)}


def check_math(completion: str, ground_truth: Any, last_number: bool = True, allow_symbolic: bool = True) -> VerifierResult:
    """Score a completion; with allow_symbolic off, raises NeedsSymbolic where sympy would be needed."""
    gold_text = _gold_answer(ground_truth)
    extracted = extract_answer(completion, last_number=last_number)
    gold = read_answer(gold_text)
    if (letters := _gold_choices(gold)) is not None:
        picked = _choice_answer(extracted.text)
        if picked is None:
            return VerifierResult.fail("unparsable", "no choice letter found", how="choice")
        ok = picked == letters
        return VerifierResult(1.0 if ok else 0.0, {"status": "ok" if ok else "wrong", "extracted": ", ".join(sorted(picked)), "how": "choice"})
    pred, how = extracted.answer, extracted.how
    if pred is None or not pred.strip():
        return VerifierResult.fail("unparsable", "no final answer found", how=how)
    if len(pred) > MAX_ANSWER_CHARS:
        return VerifierResult.fail("unparsable", f"answer longer than {MAX_ANSWER_CHARS} characters", how=how)
    info = {"extracted": pred[:200], "how": how}
    try:
        ok = values_equal(gold, read_answer(pred), allow_symbolic)
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
    """`math` without the last-sentence fallback: the answer must be boxed, stated, or after ####."""
    return check_math(completion, ground_truth, last_number=False)


def _fast(last_number: bool):
    def fast(completion: str, ground_truth: Any, **meta) -> VerifierResult | None:
        """The verdict without sympy, or None when only the symbolic stage can decide."""
        try:
            return check_math(completion, ground_truth, last_number=last_number, allow_symbolic=False)
        except NeedsSymbolic:
            return None

    return fast


def _warm() -> None:
    """Import sympy and math-verify's parser (a worker does this before it says it is ready)."""
    _sympy_of("1")


math_verifier.validate = math_strict.validate = _validate_math  # type: ignore[attr-defined]
math_verifier.warm = math_strict.warm = _warm  # type: ignore[attr-defined]
math_verifier.fast = _fast(True)  # type: ignore[attr-defined]
math_strict.fast = _fast(False)  # type: ignore[attr-defined]


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
gsm8k.fast = gsm8k  # pure Python and linear in its input: always decided without a worker  # type: ignore[attr-defined]
