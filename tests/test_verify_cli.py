"""`rlvr verify` as a user runs it."""

import json
import subprocess
import sys

import pytest


def verify(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "rlvr.cli", "verify", *args], capture_output=True, text=True, cwd=tmp_path)


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_out_with_score_status_info_and_a_summary(tmp_path):
    inp = write(tmp_path / "in.jsonl", [
        {"id": 1, "completion": r"so \boxed{\frac{1}{2}}", "ground_truth": "0.5", "verifier": "math"},
        {"id": 2, "completion": "#### 7", "ground_truth": "#### 8", "verifier": "gsm8k"},
        {"id": 3, "completion": "hi", "ground_truth": "not json", "verifier": "ifeval"},
        {"id": 4, "completion": "hi", "ground_truth": {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}, "verifier": "ifeval"},
        {"id": 5, "completion": "no answer here", "ground_truth": "3", "verifier": "math_strict"},
    ])
    proc = verify(tmp_path, "--input", str(inp), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in out] == [1, 2, 3, 4, 5]
    assert [(r["score"], r["status"]) for r in out] == [(1.0, "ok"), (0.0, "wrong"), (0.0, "error"), (1.0, "ok"), (0.0, "unparsable")]
    assert out[2]["info"]["reason"].startswith("invalid ground truth: ground truth is not valid JSON")
    assert out[0]["completion"] == r"so \boxed{\frac{1}{2}}" and out[0]["info"]["extracted"] == r"\frac{1}{2}"
    summary = proc.stderr.strip().splitlines()
    assert summary[0].split() == ["verifier", "rows", "mean", "score", "ok", "wrong", "unparsable", "timeout", "error"]
    assert summary[2].split() == ["ifeval", "2", "0.5000", "1", "0", "0", "0", "1"]

    # --verifier for every row, --output to a file
    inp = write(tmp_path / "in2.jsonl", [{"completion": "42", "ground_truth": "42"}, {"completion": "41", "ground_truth": "42"}])
    proc = verify(tmp_path, "--input", str(inp), "--verifier", "exact", "--output", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 0 and proc.stdout == ""
    assert [json.loads(line)["score"] for line in (tmp_path / "o.jsonl").read_text().splitlines()] == [1.0, 0.0]


@pytest.mark.parametrize(
    "rows, args, message",
    [
        (None, [], "rlvr: error: input file not found: missing.jsonl"),
        (['{"completion": "a", "ground_truth": "a", "verifier": "exact"}', "{not json"], [], "line 2: not valid JSON"),
        ([{"completion": "a", "ground_truth": "a", "verifier": "nope"}], [], "line 1: unknown verifier 'nope'; available: "),
        ([{"completion": "a", "ground_truth": "a"}], ["--verifier", "nope"], "rlvr: error: unknown verifier 'nope'; available: "),
        ([{"ground_truth": "a", "verifier": "exact"}], [], "line 1: needs a 'completion' string"),
        ([{"completion": "a", "ground_truth": "a"}], [], "line 1: needs a 'verifier' (or pass --verifier)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, rows, args, message):
    path = "missing.jsonl" if rows is None else str(write(tmp_path / "in.jsonl", rows))
    proc = verify(tmp_path, "--input", path, "--output", str(tmp_path / "out.jsonl"), *args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()
