"""IFEval: the 25 instruction ids of Google's IFEval, with its kwarg names and strict semantics.

Ground truth, in IFEval's input format (extra keys such as `prompt` or `key` are allowed; kwargs
whose value is null are ignored, as in the Hugging Face copy of the data, where every kwargs
dict carries every key):

    {"instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
     "kwargs": [{}, {"num_words": 300, "relation": "at least"}]}

Tulu 3's form is read too: allenai/RLVR-IFeval's `{"func_name": "validate_word_constraint",
"N": 36, "quantifier": "at least", ...}` is checked by open-instruct's own function
(rlvr.verifiers.tulu3_if), as Tulu 3 was rewarded, reported as instruction `tulu3:<func_name>`.

Score: the fraction of instructions followed; `info["followed"]` lists each id with its verdict.
`ifeval` is strict; `ifeval_loose` also accepts the response with its first and/or last line
removed and/or with `*` removed (IFEval's "loose" accuracy).

Where we differ from Google's code, on purpose:
- A missing or invalid kwarg is an error (the row is rejected when a dataset is loaded), never a
  random default. An unexpected kwarg is an error too.
- An undecidable check fails: if language detection raises, `language:response_language`,
  `change_case:english_capital` and `change_case:english_lowercase` are not followed (Google
  counts them as followed).
- Language is detected on the lower-cased text (langdetect labels all-caps English as other
  languages), with langdetect's seed fixed so a verdict is reproducible.
- Sentences are counted by a small rule-based splitter (nltk's punkt data cannot be downloaded
  at run time): a sentence ends at `.`, `!` or `?` (runs included) followed by a space and an
  upper-case letter, digit or quote, except after common abbreviations (Mr., Dr., e.g., ...) and
  single initials. Results can differ from punkt's at the margins.
- `change_case:capital_word_frequency` tokenizes with `\\w+|[^\\w\\s]+` instead of nltk's
  `word_tokenize`; "DON'T" counts as two capital words in both.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any, Callable

from rlvr.verifiers.base import VerifierResult
from rlvr.verifiers.registry import register_verifier
from rlvr.verifiers.tulu3_if import CHECKS as TULU3_CHECKS
from rlvr.verifiers.tulu3_if import parse_tulu3

RELATIONS = ("less than", "at least")


class IFEvalError(ValueError):
    """A ground truth that IFEval cannot check: unknown id, missing or invalid kwarg."""


# ------------------------------------------------------------------------------------ text utilities

_ABBREV = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd", "co",
    "no", "fig", "approx", "dept", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m",
}


def count_sentences(text: str) -> int:
    sentences, start = 0, 0
    for m in re.finditer(r"[.!?]+(?=[\"'”’)\]]*\s+[\"'“‘(\[]*[A-Z0-9])", text):
        before = text[start : m.start()].split()
        last = before[-1].lower().rstrip(".") if before else ""
        if m.group(0) == "." and (last in _ABBREV or re.fullmatch(r"[a-z]", last)):
            continue
        if text[start : m.end()].strip():
            sentences += 1
        start = m.end()
    if text[start:].strip():
        sentences += 1
    return sentences


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def detect_language(text: str) -> str | None:
    import langdetect
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    try:
        return langdetect.detect(text.lower())
    except langdetect.LangDetectException:
        return None


def _compare(count: int, relation: str, n: int) -> bool:
    return count < n if relation == "less than" else count >= n


# ------------------------------------------------------------------------------------ checks
# Each check: (response, **kwargs) -> bool, with IFEval's semantics (instructions.py).


def keywords_existence(value: str, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), value, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(value: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(re.escape(keyword), value, flags=re.IGNORECASE)), relation, frequency)


def keywords_forbidden(value: str, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", value, flags=re.IGNORECASE) for w in forbidden_words)


def keywords_letter_frequency(value: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _compare(collections.Counter(value.lower())[letter.lower()], let_relation, let_frequency)


def response_language(value: str, language: str) -> bool:
    return detect_language(value) == language


def number_sentences(value: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(value), relation, num_sentences)


def number_paragraphs(value: str, num_paragraphs: int) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", value)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i == 0 or i == len(paragraphs) - 1:
                count -= 1
            else:
                return False
    return count == num_paragraphs


def number_words(value: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(value), relation, num_words)


def nth_paragraph_first_word(value: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", value)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()


def number_placeholders(value: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", value)) >= num_placeholders


def postscript(value: str, postscript_marker: str) -> bool:
    value = value.lower()
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.findall(pattern, value, flags=re.MULTILINE))


def number_bullet_lists(value: str, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(value: str) -> bool:
    value = value.strip()
    return any(opt in value for opt in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def number_highlighted_sections(value: str, num_highlights: int) -> bool:
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def multiple_sections(value: str, section_spliter: str, num_sections: int) -> bool:
    sections = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", value)
    return len(sections) - 1 >= num_sections


def json_format(value: str) -> bool:
    value = (
        value.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def title(value: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", value))


def two_responses(value: str) -> bool:
    valid = []
    parts = value.split("******")
    for i, part in enumerate(parts):
        if not part.strip():
            if i != 0 and i != len(parts) - 1:
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(value: str, prompt_to_repeat: str) -> bool:
    return value.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(value: str, end_phrase: str) -> bool:
    return value.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(value: str) -> bool:
    value = value.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def capital_word_frequency(value: str, capital_frequency: int, capital_relation: str) -> bool:
    words = re.findall(r"\w+|[^\w\s]+", value)
    return _compare(sum(1 for w in words if w.isupper()), capital_relation, capital_frequency)


def english_capital(value: str) -> bool:
    return value.isupper() and detect_language(value) == "en"


def english_lowercase(value: str) -> bool:
    return value.islower() and detect_language(value) == "en"


def no_comma(value: str) -> bool:
    return not re.search(r",", value)


# ------------------------------------------------------------------------------------ registry

_STR, _INT, _REL, _STRS = "str", "int", "relation", "list[str]"

# id -> (check, {kwarg: kind}); every listed kwarg is required, no other is accepted.
INSTRUCTIONS: dict[str, tuple[Callable[..., bool], dict[str, str]]] = {
    "keywords:existence": (keywords_existence, {"keywords": _STRS}),
    "keywords:frequency": (keywords_frequency, {"keyword": _STR, "frequency": _INT, "relation": _REL}),
    "keywords:forbidden_words": (keywords_forbidden, {"forbidden_words": _STRS}),
    "keywords:letter_frequency": (
        keywords_letter_frequency,
        {"letter": _STR, "let_frequency": _INT, "let_relation": _REL},
    ),
    "language:response_language": (response_language, {"language": _STR}),
    "length_constraints:number_sentences": (number_sentences, {"num_sentences": _INT, "relation": _REL}),
    "length_constraints:number_paragraphs": (number_paragraphs, {"num_paragraphs": _INT}),
    "length_constraints:number_words": (number_words, {"num_words": _INT, "relation": _REL}),
    "length_constraints:nth_paragraph_first_word": (
        nth_paragraph_first_word,
        {"num_paragraphs": _INT, "nth_paragraph": _INT, "first_word": _STR},
    ),
    "detectable_content:number_placeholders": (number_placeholders, {"num_placeholders": _INT}),
    "detectable_content:postscript": (postscript, {"postscript_marker": _STR}),
    "detectable_format:number_bullet_lists": (number_bullet_lists, {"num_bullets": _INT}),
    "detectable_format:constrained_response": (constrained_response, {}),
    "detectable_format:number_highlighted_sections": (number_highlighted_sections, {"num_highlights": _INT}),
    "detectable_format:multiple_sections": (multiple_sections, {"section_spliter": _STR, "num_sections": _INT}),
    "detectable_format:json_format": (json_format, {}),
    "detectable_format:title": (title, {}),
    "combination:two_responses": (two_responses, {}),
    "combination:repeat_prompt": (repeat_prompt, {"prompt_to_repeat": _STR}),
    "startend:end_checker": (end_checker, {"end_phrase": _STR}),
    "startend:quotation": (quotation, {}),
    "change_case:capital_word_frequency": (
        capital_word_frequency,
        {"capital_frequency": _INT, "capital_relation": _REL},
    ),
    "change_case:english_capital": (english_capital, {}),
    "change_case:english_lowercase": (english_lowercase, {}),
    "punctuation:no_comma": (no_comma, {}),
}


def _check_kwarg(iid: str, name: str, kind: str, value: Any) -> Any:
    where = f"{iid}: kwarg {name!r}"
    if kind == _INT:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise IFEvalError(f"{where} must be a non-negative integer, got {value!r}")
    elif kind == _REL:
        if value not in RELATIONS:
            raise IFEvalError(f"{where} must be 'less than' or 'at least', got {value!r}")
    elif kind == _STRS:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise IFEvalError(f"{where} must be a non-empty list of strings, got {value!r}")
    elif not isinstance(value, str) or not value:
        raise IFEvalError(f"{where} must be a non-empty string, got {value!r}")
    if iid == "keywords:letter_frequency" and name == "letter" and len(value) != 1:
        raise IFEvalError(f"{where} must be a single letter, got {value!r}")
    if iid == "language:response_language" and not re.fullmatch(r"[a-z]{2}(-[a-z]{2})?", value):
        raise IFEvalError(f"{where} must be an ISO 639-1 code such as 'en', got {value!r}")
    return value


def parse_ground_truth(ground_truth: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (instruction id, kwargs) pairs of an IFEval ground truth; IFEvalError says what is wrong."""
    gt = ground_truth
    if isinstance(gt, list) and len(gt) == 1:
        gt = gt[0]
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as e:
            raise IFEvalError(f"ground truth is not valid JSON ({e.msg})") from None
    if not isinstance(gt, dict):
        raise IFEvalError("ground truth must be an object with 'instruction_id_list' and 'kwargs' (or Tulu 3's 'func_name')")
    if "func_name" in gt:
        name, args = parse_tulu3(gt, IFEvalError)
        return [(f"tulu3:{name}", args)]
    ids, kwargs_list = gt.get("instruction_id_list"), gt.get("kwargs")
    if not isinstance(ids, list) or not ids:
        raise IFEvalError("ground truth needs a non-empty 'instruction_id_list'")
    if kwargs_list is None:
        kwargs_list = [{} for _ in ids]
    if not isinstance(kwargs_list, list) or len(kwargs_list) != len(ids):
        raise IFEvalError(f"'kwargs' must be a list with one object per instruction ({len(ids)})")
    out = []
    for iid, kw in zip(ids, kwargs_list):
        if iid not in INSTRUCTIONS:
            raise IFEvalError(f"unknown instruction id {iid!r}")
        if kw is None:
            kw = {}
        if not isinstance(kw, dict):
            raise IFEvalError(f"{iid}: kwargs must be an object, got {kw!r}")
        kw = {k: v for k, v in kw.items() if v is not None}
        spec = INSTRUCTIONS[iid][1]
        extra = sorted(set(kw) - set(spec))
        if extra:
            raise IFEvalError(f"{iid}: unexpected kwarg {extra[0]!r} (takes: {', '.join(spec) or 'none'})")
        missing = [k for k in spec if k not in kw]
        if missing:
            raise IFEvalError(f"{iid}: missing kwarg {missing[0]!r}")
        out.append((iid, {k: _check_kwarg(iid, k, spec[k], kw[k]) for k in spec}))
    return out


def _loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    variants = [response, first, last, both]
    return variants + [v.replace("*", "") for v in variants]


def check_ifeval(completion: str, ground_truth: Any, loose: bool = False) -> VerifierResult:
    instructions = parse_ground_truth(ground_truth)
    candidates = _loose_variants(completion) if loose else [completion]
    followed = []
    for iid, kw in instructions:
        fn = TULU3_CHECKS[iid.removeprefix("tulu3:")][0] if iid.startswith("tulu3:") else INSTRUCTIONS[iid][0]
        followed.append(any(r.strip() and fn(r, **kw) for r in candidates))
    score = sum(followed) / len(followed)
    verdicts = [[iid, ok] for (iid, _), ok in zip(instructions, followed)]
    return VerifierResult(score, {"status": "ok" if all(followed) else "wrong", "followed": verdicts})


@register_verifier("ifeval")
def ifeval(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    return check_ifeval(completion, ground_truth, loose=False)


@register_verifier("ifeval_loose")
def ifeval_loose(completion: str, ground_truth: Any, **meta) -> VerifierResult:
    return check_ifeval(completion, ground_truth, loose=True)


# checked when a dataset is loaded: a bad row is rejected before training starts
ifeval.validate = ifeval_loose.validate = parse_ground_truth  # type: ignore[attr-defined]
