"""Tulu 3's instruction checks: the ground truth of allenai/RLVR-IFeval, read by the `ifeval` verifier.

Those rows name a function of open-instruct's `open_instruct/if_functions.py` and its arguments,
unused ones null: `{"func_name": "validate_word_constraint", "N": 36, "quantifier": "at least",
"end_phrase": null, ...}`. Several of these checks differ from Google's IFEval (exact counts,
"around" tolerances, `* * *` as the paragraph divider, case-sensitive prefixes), so they are
reproduced here as open-instruct wrote them (the version with the fixed placeholder and
section checks, commit 021dd06), not translated into Google's ids, whose semantics would
change the reward Tulu 3 trained with.

One deviation: `validate_choice`'s `options` is a string in the data ("I know or I don't know");
open-instruct iterates over its characters, which passes almost any answer. Here a string of
options is split on " or " (or read as a list literal), and the answer must contain one option.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Callable

QUANTIFIERS = ("at least", "at most", "around")


def _quantified(count: int, n: int, quantifier: str, around: int) -> bool:
    if quantifier == "at least":
        return count >= n
    if quantifier == "at most":
        return count <= n
    return abs(count - n) <= around  # "around"


def verify_keywords(text: str, keyword_list: list[str]) -> bool:
    return all(k.lower() in text.lower() for k in keyword_list)


def verify_keyword_frequency(text: str, word: str, N: int) -> bool:
    return sum(w == word.lower() for w in re.findall(r"\b\w+\b", text.lower())) == N


def validate_forbidden_words(text: str, forbidden_words: list[str]) -> bool:
    return not any(w.lower() in text.lower() for w in forbidden_words)


def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    return text.count(letter) == N


def validate_response_language(text: str, language: str) -> bool:
    from rlvr.verifiers.ifeval import detect_language

    return detect_language(text) == language


def verify_paragraph_count(text: str, N: int) -> bool:
    clean = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = clean.split("* * *")
    return all(p.strip() for p in paragraphs) and len(paragraphs) == N


def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(text.strip().split()), N, quantifier, max(round(N * 0.1), 1))


def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    sentences = re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s", text)
    return _quantified(len(sentences), N, quantifier, 1)


def validate_paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and 1 <= i <= N and paragraphs[i - 1].strip().startswith(first_word)


def verify_postscript(text: str, postscript_marker: str) -> bool:
    idx = text.find(postscript_marker)
    return idx != -1 and len(text[idx:].strip()) > len(postscript_marker)


def validate_placeholders(text: str, N: int) -> bool:
    return len(re.findall(r"\[(.*?)\]", text)) >= N


def verify_bullet_points(text: str, N: int) -> bool:
    return sum(line.strip().startswith(("*", "-")) for line in text.split("\n")) == N


def validate_title(text: str) -> bool:
    return bool(re.findall(r"<<(.*?)>>", text))


def _options(options: str | list[str]) -> list[str]:
    if isinstance(options, list):
        return options
    if options.strip().startswith(("(", "[")):
        try:
            parsed = ast.literal_eval(options.strip())  # literals only: never evaluates code
            if isinstance(parsed, (list, tuple)) and all(isinstance(o, str) for o in parsed):
                return list(parsed)
        except (ValueError, SyntaxError):
            pass
    return [o.strip() for o in options.split(" or ") if o.strip()]


def validate_choice(text: str, options: str | list[str]) -> bool:
    return any(option in text for option in _options(options))


def validate_highlighted_sections(text: str, N: int) -> bool:
    return len(re.findall(r"\*(.*?)\*", text)) >= N


def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    sections = re.split(r"\s?" + re.escape(section_splitter) + r"\s?\d+\s?", text, flags=re.IGNORECASE)
    return len(sections) - 1 >= N


def validate_json_format(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    return text.startswith(original_prompt)


def validate_two_responses(text: str) -> bool:
    if text.count("******") != 1:
        return False
    first, second = text.split("******")
    return first.strip() != second.strip()


def validate_uppercase(text: str) -> bool:
    return text == text.upper()


def validate_lowercase(text: str) -> bool:
    return text == text.lower()


def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(re.findall(r"\b[A-Z]+\b", text)), N, quantifier, max(round(N * 0.1), 1))


def validate_end(text: str, end_phrase: str) -> bool:
    return text.endswith(end_phrase)


def validate_quotation(text: str) -> bool:
    return text.startswith('"') and text.endswith('"')


def validate_no_commas(text: str) -> bool:
    return "," not in text


_STR, _INT, _QUANT, _STRS, _OPTIONS = "str", "int", "quantifier", "list[str]", "options"

# func_name -> (check, {argument: kind}); every listed argument is required, no other is accepted
CHECKS: dict[str, tuple[Callable[..., bool], dict[str, str]]] = {
    "verify_keywords": (verify_keywords, {"keyword_list": _STRS}),
    "verify_keyword_frequency": (verify_keyword_frequency, {"word": _STR, "N": _INT}),
    "validate_forbidden_words": (validate_forbidden_words, {"forbidden_words": _STRS}),
    "verify_letter_frequency": (verify_letter_frequency, {"letter": _STR, "N": _INT}),
    "validate_response_language": (validate_response_language, {"language": _STR}),
    "verify_paragraph_count": (verify_paragraph_count, {"N": _INT}),
    "validate_word_constraint": (validate_word_constraint, {"N": _INT, "quantifier": _QUANT}),
    "verify_sentence_constraint": (verify_sentence_constraint, {"N": _INT, "quantifier": _QUANT}),
    "validate_paragraphs": (validate_paragraphs, {"N": _INT, "first_word": _STR, "i": _INT}),
    "verify_postscript": (verify_postscript, {"postscript_marker": _STR}),
    "validate_placeholders": (validate_placeholders, {"N": _INT}),
    "verify_bullet_points": (verify_bullet_points, {"N": _INT}),
    "validate_title": (validate_title, {}),
    "validate_choice": (validate_choice, {"options": _OPTIONS}),
    "validate_highlighted_sections": (validate_highlighted_sections, {"N": _INT}),
    "validate_sections": (validate_sections, {"N": _INT, "section_splitter": _STR}),
    "validate_json_format": (validate_json_format, {}),
    "validate_repeat_prompt": (validate_repeat_prompt, {"original_prompt": _STR}),
    "validate_two_responses": (validate_two_responses, {}),
    "validate_uppercase": (validate_uppercase, {}),
    "validate_lowercase": (validate_lowercase, {}),
    "validate_frequency_capital_words": (validate_frequency_capital_words, {"N": _INT, "quantifier": _QUANT}),
    "validate_end": (validate_end, {"end_phrase": _STR}),
    "validate_quotation": (validate_quotation, {}),
    "validate_no_commas": (validate_no_commas, {}),
}


def parse_tulu3(gt: dict[str, Any], error: type[Exception]) -> tuple[str, dict[str, Any]]:
    """(func_name, arguments) of a `{"func_name": ..., ...}` ground truth; `error` says what is wrong."""
    name = gt.get("func_name")
    if name not in CHECKS:
        raise error(f"unknown func_name {name!r} (open-instruct's checks: {', '.join(sorted(CHECKS))})")
    args = {k: v for k, v in gt.items() if k != "func_name" and v is not None}
    spec = CHECKS[name][1]
    extra = sorted(set(args) - set(spec))
    if extra:
        raise error(f"{name}: unexpected argument {extra[0]!r} (takes: {', '.join(spec) or 'none'})")
    for arg, kind in spec.items():
        if arg not in args:
            raise error(f"{name}: missing argument {arg!r}")
        value = args[arg]
        if isinstance(value, float) and value.is_integer():
            args[arg] = value = int(value)
        ok = {
            _INT: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            _QUANT: value in QUANTIFIERS,
            _STRS: isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value),
            _OPTIONS: (isinstance(value, str) and bool(value.strip())) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
            _STR: isinstance(value, str) and bool(value),
        }[kind]
        if not ok:
            raise error(f"{name}: argument {arg!r} must be {'one of ' + ', '.join(QUANTIFIERS) if kind == _QUANT else 'a ' + kind}, got {value!r}")
    if name == "verify_letter_frequency" and len(args["letter"]) != 1:
        raise error(f"{name}: argument 'letter' must be a single character, got {args['letter']!r}")
    return name, args
