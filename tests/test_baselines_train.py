"""The baselines through the real loop (`rlvr train`, vLLM): each critic-free baseline learns the
tiny task without building a critic; a critic-free run with dynamic sampling resumes exactly;
best-of-n and rejection sampling run as commands on a partly trained checkpoint."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from numerics import LOGPROB_ATOL
from rlvr.runlog import read_metrics

BASELINES = REPO / "experiments" / "tiny" / "baselines"
NONDETERMINISTIC = ("time/", "rollout/tokens_per_s")


def rlvr(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp", "dapo"])
def test_critic_free_baseline_learns_the_tiny_task(tmp_path, name):
    """The shipped experiment file, on a 40-step schedule: held-out greedy pass rate from ~0 to >= 0.6."""
    rlvr("train", "--config", str(BASELINES / f"{name}.yaml"), "--output_dir", str(tmp_path), "--no-progress",
         "--train.steps", "40", "--train.eval_every", "40", "--train.checkpoint_every", "40")
    run = tmp_path / name / "seed_0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["initial"]["eval/heldout/greedy_pass_rate"] <= 0.2
    assert summary["final"]["eval/heldout/greedy_pass_rate"] >= 0.6
    assert summary["final"]["eval/heldout/sampled_pass_rate"] > summary["initial"]["eval/heldout/sampled_pass_rate"]
    # no critic: none saved, no value loss logged
    assert not (run / "checkpoints" / "step_40" / "critic").exists()
    assert (run / "checkpoints" / "step_40" / "policy" / "config.json").exists()
    rows = read_metrics(run)[1:]
    assert all("loss/value" not in r and "value/mean" not in r for r in rows)
    assert max(r["rollout/sampler_logprob_diff"] for r in rows) <= LOGPROB_ATOL
    if name == "dapo":
        # dynamic sampling: every step trains on full groups of 4 with varying rewards
        assert all(r["rollout/dynamic_rounds"] >= 1 for r in rows)
        assert sum(r["rollout/groups"] == 32 for r in rows) >= 0.9 * len(rows)


def test_critic_free_run_with_dynamic_sampling_resumes_exactly(tmp_path):
    common = ["train", "--config", str(BASELINES / "dapo.yaml"), "--no-progress", "--train.steps", "4",
              "--train.eval_every", "2", "--train.checkpoint_every", "2"]
    rlvr(*common, "--output_dir", str(tmp_path / "straight"))
    rlvr(*common, "--output_dir", str(tmp_path / "stopped"), "--train.stop_at", "2")
    rlvr(*common, "--output_dir", str(tmp_path / "stopped"), "--resume")
    a = read_metrics(tmp_path / "straight" / "dapo" / "seed_0")
    b = read_metrics(tmp_path / "stopped" / "dapo" / "seed_0")
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    # exactly: one machine, one code path, one thread count (tests/numerics.py)
    for ra, rb in zip(a, b):
        ka = {k: v for k, v in ra.items() if not k.startswith(NONDETERMINISTIC)}
        assert ka == {k: v for k, v in rb.items() if not k.startswith(NONDETERMINISTIC)}, ra["step"]


@pytest.fixture(scope="module")
def partly_trained(tmp_path_factory):
    """GRPO on the tiny task stopped after 25 of 100 steps: it passes some held-out prompts, not all."""
    out = tmp_path_factory.mktemp("partly")
    rlvr("train", "--config", str(BASELINES / "grpo.yaml"), "--output_dir", str(out), "--no-progress",
         "--train.stop_at", "25", "--train.checkpoint_every", "25", "--train.eval_every", "25")
    return out / "grpo" / "seed_0" / "checkpoints" / "step_25" / "policy"


def test_best_of_n_command(tmp_path, partly_trained):
    rlvr("bestofn", "--config", str(REPO / "experiments" / "tiny" / "bestofn.yaml"), "--no-progress",
         "--model.name_or_path", str(partly_trained), "--output_dir", str(tmp_path), "--n", "8", "--k", "[1, 2, 8]")
    run = tmp_path / "bestofn" / "seed_0"
    result = json.loads((run / "results.json").read_text())
    m = result["metrics"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 64 * 8 and result["prompts"] == 64
    # pass@1 is the plain pass rate of all samples; pass@k grows with k; a vote never beats the oracle pick
    assert m["pass@1"] == pytest.approx(sum(s["score"] >= 1.0 for s in samples) / len(samples))
    assert 0.0 < m["pass@1"] < m["pass@2"] < m["pass@8"]
    assert all(m[f"maj@{k}"] <= m[f"pass@{k}"] + 1e-9 for k in (1, 2, 8))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run)).Reload()
    assert acc.Scalars("bestofn/pass@8")[0].value == pytest.approx(m["pass@8"])
    assert (run / "bestofn.png").stat().st_size > 0
    # a second run into the same folder is refused, with exit 2 and one line
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", "bestofn", "--config", str(REPO / "experiments" / "tiny" / "bestofn.yaml"),
                           "--model.name_or_path", str(partly_trained), "--output_dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "already holds a best-of-n result" in proc.stderr


def test_rejection_sampling_fine_tuning_command(tmp_path, partly_trained):
    args = ["rft", "--config", str(REPO / "experiments" / "tiny" / "rft.yaml"), "--no-progress", "--model.name_or_path",
            str(partly_trained), "--output_dir", str(tmp_path), "--rounds", "2"]
    rlvr(*args)
    run = tmp_path / "rft" / "seed_0"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    kept = [json.loads(line) for line in (run / "round_1" / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == rows[1]["rft/kept"] > 0
    summary = json.loads((run / "summary.json").read_text())
    first, final = summary["initial"], summary["final"]
    assert final["eval/heldout/sampled_pass_rate"] > first["eval/heldout/sampled_pass_rate"]
    assert final["eval/heldout/greedy_pass_rate"] >= first["eval/heldout/greedy_pass_rate"]
    # run again with --resume: both rounds are done, nothing changes
    before = (run / "metrics.jsonl").read_text()
    rlvr(*args, "--resume")
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("command", ["bestofn", "rft"])
def test_bad_model_path_is_one_line_and_writes_nothing(tmp_path, command):
    proc = subprocess.run([sys.executable, "-m", "rlvr.cli", command, "--config", str(REPO / "experiments" / "tiny" / f"{command}.yaml"),
                           "--model.name_or_path", str(tmp_path / "no_such_model"), "--output_dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"rlvr: error: model.name_or_path '{tmp_path / 'no_such_model'}' is not a model folder or hub id")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
