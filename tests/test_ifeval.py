"""`ifeval`: every instruction id followed and not followed, kwarg errors, loose variant, adversarial rows."""

import json
import time

import pytest

from rlvr.verifiers import VerifierPool, get_verifier
from rlvr.verifiers.ifeval import INSTRUCTIONS, IFEvalError, count_sentences, parse_ground_truth

ifeval = get_verifier("ifeval")
ENGLISH = "The quick brown fox jumps over the lazy dog near the river bank every single morning before breakfast"


def gt(iid, **kwargs):
    return json.dumps({"key": 7, "prompt": "p", "instruction_id_list": [iid], "kwargs": [kwargs]})


# (instruction id, kwargs, a response that follows it, a response that does not)
TABLE = [
    ("keywords:existence", {"keywords": ["apple", "pie"]}, "An APPLE pie.", "An apple tart."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat Cat", "one cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badge is fine", "this is Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "zZz", "zz"),
    ("language:response_language", {"language": "en"}, ENGLISH, "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer jeden Morgen"),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two.", "One. Two. Three."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Dr. Smith came. He left!", "Dr. Smith came home."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "first\n***\nsecond", "first\n***\n***\nsecond"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", "one two three four"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two three four", "one two three four five"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"}, "Start here.\n\n\"Then, more.", "Start here.\n\nNow more."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name] at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. bye", "Hello. PS bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hello.\nP.P.S bye", "Hello.\nP.S. bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", "* a\n* b\n- c"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1\na\nSection 2\nb", "Section 1\na"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "<< >> text"),
    ("combination:two_responses", {}, "first answer\n******\nsecond answer", "same\n******\nsame"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. Any other questions?"', "Any other questions? Done."),
    ("startend:quotation", {}, '"quoted"', 'quoted"'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "THIS IS it", "This IS it"),
    ("change_case:english_capital", {}, ENGLISH.upper(), ENGLISH),
    ("change_case:english_lowercase", {}, ENGLISH.lower(), ENGLISH),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
]


def test_table_covers_all_25_instruction_ids():
    assert len(INSTRUCTIONS) == 25
    assert {row[0] for row in TABLE} == set(INSTRUCTIONS)


@pytest.mark.parametrize("iid, kwargs, good, bad", TABLE, ids=[f"{r[0]}-{i}" for i, r in enumerate(TABLE)])
def test_followed_and_not_followed(iid, kwargs, good, bad):
    r = ifeval(good, gt(iid, **kwargs))
    assert (r.score, r.status) == (1.0, "ok"), r.info
    r = ifeval(bad, gt(iid, **kwargs))
    assert (r.score, r.status) == (0.0, "wrong"), r.info
    assert r.info["followed"] == [[iid, False]]


def test_score_is_the_fraction_followed_and_null_kwargs_are_ignored():
    truth = {
        "instruction_id_list": ["punctuation:no_comma", "detectable_format:title", "length_constraints:number_words"],
        # the Hugging Face copy of IFEval carries every kwarg, null where unused
        "kwargs": [{"num_words": None}, {}, {"num_words": 3, "relation": "at least", "keywords": None}],
    }
    r = ifeval("<<T>> one two three, four", truth)
    assert r.score == pytest.approx(2 / 3)
    assert r.info["followed"] == [["punctuation:no_comma", False], ["detectable_format:title", True], ["length_constraints:number_words", True]]


def test_all_caps_english_is_english_and_detection_failure_fails():
    # langdetect alone calls some all-caps English text another language; we detect on lower case
    assert ifeval("HELLO WORLD, THIS IS A TEST OF THE CAPITAL LETTERS CHECK.", gt("change_case:english_capital")).score == 1.0
    # nothing to detect: undecidable, so not followed (Google's code would count it as followed)
    assert ifeval("12345 !!!", gt("language:response_language", language="en")).score == 0.0
    assert ifeval("12345", gt("change_case:english_lowercase")).score == 0.0


def test_loose_variant():
    truth = gt("startend:quotation")
    response = 'Sure, here it is:\n"quoted"'
    assert ifeval(response, truth).score == 0.0
    assert get_verifier("ifeval_loose")(response, truth).score == 1.0
    truth = gt("punctuation:no_comma")
    assert get_verifier("ifeval_loose")("Sure, here:\nno commas\nBye, then", truth).score == 1.0
    assert get_verifier("ifeval_loose")("a, b\nc, d\ne, f", truth).score == 0.0


@pytest.mark.parametrize(
    "truth, message",
    [
        ("not json", "ground truth is not valid JSON"),
        ({"kwargs": [{}]}, "needs a non-empty 'instruction_id_list'"),
        ({"instruction_id_list": ["nope:x"], "kwargs": [{}]}, "unknown instruction id 'nope:x'"),
        ({"instruction_id_list": ["keywords:frequency"], "kwargs": [{"keyword": "a", "frequency": 2}]}, "keywords:frequency: missing kwarg 'relation'"),
        ({"instruction_id_list": ["keywords:frequency"], "kwargs": [{"keyword": "a", "frequency": 2, "relation": "more"}]}, "must be 'less than' or 'at least'"),
        ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": "ten", "relation": "at least"}]}, "kwarg 'num_words' must be a non-negative integer"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": 3}]}, "unexpected kwarg 'num_words'"),
        ({"instruction_id_list": ["punctuation:no_comma", "detectable_format:title"], "kwargs": [{}]}, "one object per instruction"),
        ({"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "English"}]}, "ISO 639-1"),
    ],
)
def test_invalid_ground_truth_is_an_error(truth, message):
    with pytest.raises(IFEvalError, match=message):
        parse_ground_truth(truth)
    r = get_verifier("ifeval").validate  # the check a dataset load runs
    with pytest.raises(IFEvalError):
        r(truth)


def test_sentence_counter():
    assert count_sentences("Hello there. How are you? Fine!") == 3
    assert count_sentences("Mr. Smith met Dr. Jones at 5 p.m. today. Then he left.") == 2
    assert count_sentences("It costs 3.5 dollars. OK.") == 2
    assert count_sentences("") == 0


def test_adversarial_rows_fail_closed_in_time():
    truth = json.dumps({
        "instruction_id_list": ["detectable_format:json_format", "length_constraints:number_sentences", "language:response_language"],
        "kwargs": [{}, {"num_sentences": 3, "relation": "at least"}, {"language": "en"}],
    })
    rows = [
        "",
        "   \n\t ",
        "word. " * 200_000,  # 1.2 MB
        "{" * 100_000,  # deeply nested json
        "__import__('os').system('touch /tmp/rlvr_pwned')",
        "*" * 50_000 + "\n" * 50_000,
    ]
    with VerifierPool(workers=2, timeout_s=5.0) as pool:
        t = time.monotonic()
        batch = pool.score(rows, [{"ground_truth": truth, "verifier": "ifeval"}] * len(rows))
        assert time.monotonic() - t < 30
    for r in batch.results:
        assert r.score < 1.0 and r.status in ("wrong", "unparsable", "timeout", "error"), r
    import os

    assert not os.path.exists("/tmp/rlvr_pwned")


# ------------------------------------------------------------------------------------ Tulu 3's form (allenai/RLVR-IFeval)
NULLS = dict.fromkeys(["N", "quantifier", "end_phrase", "keyword_list", "word", "forbidden_words", "letter", "i",
                       "first_word", "postscript_marker", "options", "section_splitter", "original_prompt"])


def tulu3(func_name, **args):
    """A ground truth as RLVR-IFeval stores it: every argument key present, unused ones null."""
    return json.dumps({"func_name": func_name, **NULLS, **args})


# (func_name, arguments, a response that passes open-instruct's check, one that does not)
TULU3_TABLE = [
    ("verify_keywords", {"keyword_list": ["apple", "Pie"]}, "an APPLE pie", "an apple tart"),
    ("verify_keyword_frequency", {"word": "cat", "N": 2}, "Cat, cat!", "cat cat cat"),  # exactly N whole words
    ("validate_forbidden_words", {"forbidden_words": ["bad"]}, "all good", "a badge"),  # substrings count
    ("verify_letter_frequency", {"letter": "z", "N": 2}, "zZz", "zz z"),  # case-sensitive, exact
    ("verify_paragraph_count", {"N": 2}, "one\n* * *\ntwo", "one\n***\ntwo"),  # open-instruct's divider is * * *
    ("validate_word_constraint", {"N": 10, "quantifier": "around"}, " ".join(["w"] * 11), " ".join(["w"] * 12)),  # +-1 at N=10
    ("validate_word_constraint", {"N": 3, "quantifier": "at most"}, "a b c", "a b c d"),
    ("verify_sentence_constraint", {"N": 3, "quantifier": "at least"}, "One. Two! Three?", "One. Two."),
    ("validate_paragraphs", {"N": 2, "first_word": "Then", "i": 2}, "Start.\n\nThen more.", "Start.\n\nNow more."),
    ("verify_postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi. P.S."),  # text must follow the marker
    ("validate_placeholders", {"N": 2}, "[a] and [b]", "[a]"),
    ("verify_bullet_points", {"N": 2}, "* a\n- b", "* a\n* b\n* c"),
    ("validate_title", {}, "<<Poem>> text", "Poem text"),
    ("validate_choice", {"options": "I know or I don't know"}, "Well, I don't know.", "Maybe."),
    ("validate_choice", {"options": "('My answer is yes.', 'My answer is no.')"}, "My answer is no.", "No."),
    ("validate_highlighted_sections", {"N": 2}, "*a* and *b*", "*a* and b"),
    ("validate_sections", {"N": 2, "section_splitter": "SECTION"}, "Section 1 a Section 2 b", "Section 1 a"),
    ("validate_json_format", {}, '{"a": 1}', '```json\n{"a": 1}\n```'),  # no fence stripping in open-instruct
    ("validate_repeat_prompt", {"original_prompt": "Say hi."}, "Say hi. Hi!", "say hi. Hi!"),
    ("validate_two_responses", {}, "one******two", "one******one"),
    ("validate_uppercase", {}, "HELLO 1", "Hello"),
    ("validate_lowercase", {}, "hello 1", "Hello"),
    ("validate_frequency_capital_words", {"N": 2, "quantifier": "at least"}, "THE BIG dog", "THE dog"),
    ("validate_end", {"end_phrase": "That's all."}, "Done. That's all.", "Done. That's all. "),  # no strip
    ("validate_quotation", {}, '"quoted"', ' "quoted"'),
    ("validate_no_commas", {}, "no commas here", "a, b"),
]


@pytest.mark.parametrize("func_name, args, good, bad", TULU3_TABLE, ids=[f"{r[0]}-{i}" for i, r in enumerate(TULU3_TABLE)])
def test_tulu3_checks_as_open_instruct_wrote_them(func_name, args, good, bad):
    truth = tulu3(func_name, **args)
    assert ifeval(good, truth).score == 1.0 and ifeval(good, truth).info["followed"] == [[f"tulu3:{func_name}", True]]
    assert ifeval(bad, truth).score == 0.0 and ifeval(bad, truth).status == "wrong"


def test_every_tulu3_check_is_tested():
    from rlvr.verifiers.tulu3_if import CHECKS

    assert {r[0] for r in TULU3_TABLE} | {"validate_response_language"} == set(CHECKS)


@pytest.mark.parametrize("truth, error", [
    (tulu3("validate_end"), "validate_end: missing argument 'end_phrase'"),
    (tulu3("validate_lowercase", N=3), "validate_lowercase: unexpected argument 'N'"),
    (tulu3("validate_word_constraint", N=3, quantifier="exactly"), "argument 'quantifier' must be one of at least, at most, around"),
    (tulu3("verify_letter_frequency", letter="ab", N=1), "argument 'letter' must be a single character"),
    (tulu3("no_such_check"), "unknown func_name 'no_such_check'"),
])
def test_bad_tulu3_ground_truth_is_rejected_at_load(truth, error):
    with pytest.raises(IFEvalError, match=error):
        parse_ground_truth(truth)
