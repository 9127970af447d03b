import json

import pytest

from rlvr.verifiers import (
    UnknownVerifierError,
    VerifierResult,
    available_verifiers,
    get_verifier,
    load_verifier_file,
    register_verifier,
    score_batch,
)

DIGITS = json.dumps({"allowed": list("0123456789"), "min_words": 4})


@pytest.mark.parametrize(
    "completion, score, status",
    [
        ("1 2 3 4", 1.0, "ok"),
        (" 1 2 3 4 5 6 7 8", 1.0, "ok"),
        ("1 2 a 4", 0.75, "wrong"),
        ("a b c d", 0.0, "wrong"),
        ("1 2 3", 0.0, "wrong"),  # fewer than min_words
        ("", 0.0, "wrong"),
        ("   \n\t ", 0.0, "wrong"),
        ("12 3 4 5", 0.75, "wrong"),  # "12" is one word, not a digit
    ],
)
def test_allowed_words_table(completion, score, status):
    r = get_verifier("allowed_words")(completion, DIGITS)
    assert r.score == pytest.approx(score)
    assert r.status == status


@pytest.mark.parametrize(
    "completion, pattern, score",
    [("abc", "a.c", 1.0), ("  abc\n", "a.c", 1.0), ("abcd", "a.c", 0.0), ("", ".+", 0.0)],
)
def test_regex_table(completion, pattern, score):
    assert get_verifier("regex")(completion, pattern).score == score


def test_unknown_name_lists_available():
    with pytest.raises(UnknownVerifierError) as e:
        get_verifier("no_such_verifier")
    assert str(e.value).startswith("unknown verifier 'no_such_verifier'; available: ")
    for name in ("allowed_words", "regex"):
        assert name in str(e.value)


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):

        @register_verifier("regex")
        def other(completion, ground_truth, **meta):
            return VerifierResult(1.0)


def test_result_validates_score_and_status():
    with pytest.raises(ValueError):
        VerifierResult(1.5)
    with pytest.raises(ValueError):
        VerifierResult(float("nan"))
    with pytest.raises(ValueError):
        VerifierResult(0.0, {"status": "maybe"})
    assert VerifierResult(1.0).status == "ok" and VerifierResult(0.2).status == "wrong"


def test_scoring_fails_closed_and_counts_by_status(tmp_path):
    plugin = tmp_path / "my_verifiers.py"
    plugin.write_text(
        "from rlvr.verifiers import register_verifier, VerifierResult\n"
        "@register_verifier('test_crashes')\n"
        "def crashes(completion, ground_truth, **meta):\n"
        "    raise RuntimeError('boom')\n"
        "@register_verifier('test_bad_return')\n"
        "def bad(completion, ground_truth, **meta):\n"
        "    return 1.0\n"
    )
    load_verifier_file(plugin)
    assert {"test_crashes", "test_bad_return"} <= set(available_verifiers())
    rows = [
        {"ground_truth": DIGITS, "verifier": "allowed_words"},
        {"ground_truth": DIGITS, "verifier": "allowed_words"},
        {"ground_truth": "x", "verifier": "test_crashes"},
        {"ground_truth": "x", "verifier": "test_bad_return"},
        {"ground_truth": "not json", "verifier": "allowed_words"},
        {"ground_truth": DIGITS, "verifier": "not_registered"},
    ]
    batch = score_batch(["1 2 3 4", "a b c d", "1", "1", "1 2 3 4", "1"], rows)
    assert batch.scores == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert [r.status for r in batch.results] == ["ok", "wrong", "error", "error", "error", "error"]
    assert "RuntimeError: boom" in batch.results[2].info["reason"]
    assert "unknown verifier 'not_registered'" in batch.results[5].info["reason"]
    m = batch.metrics()
    assert m["reward/allowed_words/pass_rate"] == pytest.approx(1 / 3)
    assert m["reward/allowed_words/error_rate"] == pytest.approx(1 / 3)
    assert m["reward/test_crashes/error_rate"] == 1.0
    assert batch.status_counts["allowed_words"] == {"ok": 1, "wrong": 1, "error": 1}


def test_megabyte_output_is_not_checked():
    r = score_batch(["1 " * 600_000], [{"ground_truth": DIGITS, "verifier": "allowed_words"}]).results[0]
    assert r.score == 0.0 and r.status == "unparsable"
