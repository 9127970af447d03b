"""The plugin surface: an installed package's entry point, a local file, the small built-ins, the pool."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO
from rlvr.data import DataError, normalize_rows
from rlvr.verifiers import VerifierPool, get_verifier

PLUGIN = REPO / "examples" / "verifier_plugin"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The example package as pip would install it: its code and a dist-info with the entry point."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(PLUGIN / "rlvr_palindrome", site / "rlvr_palindrome")
    info = site / "rlvr_palindrome-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rlvr-palindrome\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[rlvr.verifiers]\npalindrome = rlvr_palindrome:palindrome\n")
    return site


def test_entry_point_plugin_scores_through_rlvr_verify(installed_plugin, tmp_path):
    rows = [
        {"completion": "Never odd or even", "ground_truth": {"min_letters": 5}, "verifier": "palindrome"},
        {"completion": "Never odd", "ground_truth": {"min_letters": 5}, "verifier": "palindrome"},
        {"completion": r"\boxed{4}", "ground_truth": "4", "verifier": "math"},
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**__import__("os").environ, "PYTHONPATH": str(installed_plugin)}
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "verify", "--input", str(inp), "--output", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["score"], r["status"]) for r in out] == [(1.0, "ok"), (0.0, "wrong"), (1.0, "ok")]
    assert "palindrome" in proc.stderr  # in the summary
    # without the package installed, the name is unknown: a one-line error, exit 2
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", "verify", "--input", str(inp)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("rlvr: error: ") and "unknown verifier 'palindrome'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_local_verifier_file_in_the_pool(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "import time\n"
        "from rlvr.verifiers import register_verifier, VerifierResult\n"
        "@register_verifier('test_len_parity')\n"
        "def parity(completion, ground_truth, **meta):\n"
        "    print('verifiers may print; it must not break the pool')\n"
        "    return VerifierResult(float(len(completion) % 2 == int(ground_truth)))\n"
        "@register_verifier('test_sleeps')\n"
        "def sleeps(completion, ground_truth, **meta):\n"
        "    time.sleep(60)\n"
        "@register_verifier('test_exits')\n"
        "def exits(completion, ground_truth, **meta):\n"
        "    import os; os._exit(7)\n"
    )
    with VerifierPool(workers=2, timeout_s=1.0, verifier_files=[path]) as pool:
        names = ["test_len_parity", "test_sleeps", "test_len_parity", "test_exits", "test_len_parity", "math"]
        rows = [{"ground_truth": "1", "verifier": n} for n in names]
        t = time.monotonic()
        batch = pool.score(["abc", "x", "ab", "x", "abcde", r"\boxed{1}"], rows)
        assert time.monotonic() - t < 10
        assert [r.status for r in batch.results] == ["ok", "timeout", "wrong", "error", "ok", "ok"]
        assert "exit code 7" in batch.results[3].info["reason"]
        assert pool.restarts == 2
        # the replaced workers serve the next batch, and a batch scores the same every time
        again = pool.score(["abc", "ab", "abcde"] * 20, [{"ground_truth": "1", "verifier": "test_len_parity"}] * 60)
        assert again.scores == [1.0, 0.0, 1.0] * 20
        m = batch.metrics()
        assert m["reward/test_sleeps/timeout_rate"] == 1.0 and m["reward/test_exits/error_rate"] == 1.0


def test_a_bad_verifier_file_stops_the_pool_with_a_clear_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise ImportError('missing dependency')\n")
    with pytest.raises(RuntimeError, match="failed to start"):
        with VerifierPool(workers=1, verifier_files=[path]) as pool:
            pool.score(["x"], [{"ground_truth": "1", "verifier": "exact"}])


@pytest.mark.parametrize(
    "verifier, completion, truth, score",
    [
        ("exact", " yes \n", "yes", 1.0),
        ("exact", "Yes", "yes", 0.0),
        ("format", "<think>a</think> <answer>4</answer>", {"required_tags": ["think", "answer"]}, 1.0),
        ("format", "<answer>4</answer><think>a</think>", {"required_tags": ["think", "answer"]}, 0.5),
        ("format", "one two three", {"min_words": 2, "max_words": 2}, 0.5),
        ("format", "abc", {"max_chars": 2, "regex": "^a"}, 0.5),
        ("format", "", {"min_chars": 1}, 0.0),
    ],
)
def test_small_verifiers(verifier, completion, truth, score):
    assert get_verifier(verifier)(completion, truth).score == pytest.approx(score)


def test_combine_weights_and_worst_status():
    truth = {"verifiers": [
        {"name": "math", "ground_truth": "4", "weight": 3},
        {"name": "format", "ground_truth": {"required_tags": ["answer"]}, "weight": 1},
    ]}
    r = get_verifier("combine")(r"<answer>\boxed{4}</answer>", truth)
    assert (r.score, r.status) == (1.0, "ok")
    r = get_verifier("combine")(r"\boxed{4}", truth)
    assert (r.score, r.status) == (0.75, "wrong")
    # math finds no answer (unparsable), format passes: the worse status wins
    r = get_verifier("combine")("<answer>no number</answer>", truth)
    assert r.score == pytest.approx(0.25) and r.status == "unparsable"
    assert r.info["parts"] == [["math", 0.0, "unparsable"], ["format", 1.0, "ok"]]
    with pytest.raises(ValueError, match="weight must be a non-negative number"):
        get_verifier("combine").validate({"verifiers": [{"name": "exact", "ground_truth": "a", "weight": -1}]})


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "ground_truth": {"instruction_id_list": ["nope:x"]}, "verifier": "ifeval"}, "row 1: invalid ground truth for ifeval: unknown instruction id 'nope:x'"),
        ({"prompt": "p", "ground_truth": "no number", "verifier": "gsm8k"}, "row 1: invalid ground truth for gsm8k: gsm8k ground truth has no final number"),
        ({"prompt": "p", "ground_truth": {"max_chars": -1}, "verifier": "format"}, "row 1: invalid ground truth for format: format: max_chars must be a non-negative integer"),
    ],
)
def test_training_rejects_bad_ground_truth_at_load(row, message):
    good = {"prompt": "p", "ground_truth": "4", "verifier": "math"}
    with pytest.raises(DataError) as e:
        normalize_rows([good, row], "data.jsonl")
    assert str(e.value).startswith(f"data.jsonl {message}")


ADVERSARIAL = [
    "",
    "   \n\t  ",
    "x" * 1_100_000,  # over a megabyte
    "{" * 20_000 + "}" * 20_000,
    r"\boxed{" + "{" * 3000 + "7",  # unclosed
    r"\boxed{10^{10^{10}}}",
    "__import__('os').system('touch /tmp/rlvr_pwned_small')",
]
GROUND_TRUTHS = {
    "exact": "42",
    "regex": r"\d+",
    "format": {"required_tags": ["answer"]},
    "combine": {"verifiers": [{"name": "exact", "ground_truth": "42"}, {"name": "math", "ground_truth": "42"}]},
    "allowed_words": {"allowed": ["1", "2"], "min_words": 1},
    "ifeval_loose": {"instruction_id_list": ["detectable_format:json_format", "startend:quotation"], "kwargs": [{}, {}]},
    "math_strict": "42",
}


@pytest.mark.parametrize("verifier", sorted(GROUND_TRUTHS))
def test_small_builtins_fail_closed_on_adversarial_rows(verifier):
    import os

    with VerifierPool(workers=2, timeout_s=5.0) as pool:
        t = time.monotonic()
        batch = pool.score(ADVERSARIAL, [{"ground_truth": GROUND_TRUTHS[verifier], "verifier": verifier}] * len(ADVERSARIAL))
        assert time.monotonic() - t < 30
    for completion, r in zip(ADVERSARIAL, batch.results):
        assert r.score == 0.0 and r.status in ("wrong", "unparsable", "timeout", "error"), (completion[:40], r)
    assert not os.path.exists("/tmp/rlvr_pwned_small")
