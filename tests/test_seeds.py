"""`rlvr seeds` on a local Ray cluster: parallel seeds, each equal to a single run; skip and resume; TensorBoard."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO
from rlvr.runlog import read_metrics
from rlvr.seeds import parse_seeds

TINY = REPO / "experiments" / "tiny" / "kinds.yaml"
SHORT = ["--train.steps", "6", "--train.eval_every", "3", "--train.checkpoint_every", "3"]
WALL_CLOCK = ("time/", "rollout/tokens_per_s")


def test_parse_seeds():
    assert parse_seeds("0-3,8, 2") == [0, 1, 2, 3, 8]
    with pytest.raises(ValueError, match="cannot read 'x'"):
        parse_seeds("0,x")


def run(*args, cwd=REPO, **env_vars):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **env_vars}
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    proc = run("seeds", "--config", str(TINY), "--seeds", "0-1", "--max-parallel", "2", "--output_dir", str(out), *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_each_seed_equals_a_single_run(seeded, tmp_path):
    out, proc = seeded
    assert "seed 0: started" in proc.stderr and "seed 1: started" in proc.stderr
    # the launcher gives each seed OMP_NUM_THREADS = resources.cpus (1): bit-for-bit equality needs the
    # same thread count (float sums are ordered by threads), and holds on one machine (tests/numerics.py)
    single = run("train", "--config", str(TINY), "--output_dir", str(tmp_path), "--seed", "1", "--no-progress", *SHORT, OMP_NUM_THREADS="1")
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = read_metrics(out / "kinds" / "seed_1"), read_metrics(tmp_path / "kinds" / "seed_1")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(WALL_CLOCK)} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    # and seeds differ
    assert strip(read_metrics(out / "kinds" / "seed_0")) != strip(a)
    # the same command again: both seeds finished, nothing runs
    again = run("seeds", "--config", str(TINY), "--seeds", "0-1", "--output_dir", str(out), *SHORT)
    assert again.returncode == 0 and "started" not in again.stderr and again.stderr.count("finished") >= 2


def test_a_killed_seed_fails_alone_and_resumes_from_its_checkpoint(tmp_path):
    import psutil

    longer = ["--train.steps", "16", "--train.eval_every", "8", "--train.checkpoint_every", "4"]
    args = [sys.executable, "-m", "rlvr.cli", "seeds", "--config", str(TINY), "--seeds", "0-1", "--max-parallel", "2",
            "--output_dir", str(tmp_path), *longer]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    ckpt = tmp_path / "kinds" / "seed_0" / "checkpoints" / "step_4"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.02)
    victims = [
        p for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "train" in p.info["cmdline"] and str(tmp_path) in p.info["cmdline"]
        and p.info["cmdline"][p.info["cmdline"].index("--seed") + 1:][:1] == ["0"]
    ]
    assert len(victims) == 1
    victims[0].kill()
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 1, err[-2000:]
    assert "1 of 2 seeds failed (0)" in err
    assert (tmp_path / "kinds" / "seed_1" / "summary.json").exists()  # the other seed finished
    assert not (tmp_path / "kinds" / "seed_0" / "summary.json").exists()
    proc = run("seeds", "--config", str(TINY), "--seeds", "0-1", "--output_dir", str(tmp_path), *longer)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed 0: resumed" in proc.stderr and "seed 1: started" not in proc.stderr
    rows = read_metrics(tmp_path / "kinds" / "seed_0")
    assert [r["step"] for r in rows] == list(range(17))


def test_tensorboard_server_sees_every_seed_and_the_aggregate(seeded, tmp_path):
    out, _ = seeded
    cmp = run("compare", str(out / "kinds"), "--out", str(tmp_path / "cmp"))
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(out), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline, runs = time.time() + 90, []
        while time.time() < deadline:
            try:
                runs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5).read())
                if "kinds/aggregate/mean" in runs:
                    break
            except OSError:
                pass
            time.sleep(1)
        for name in ("kinds/seed_0", "kinds/seed_1", "kinds/aggregate/mean", "kinds/aggregate/ci_low", "kinds/aggregate/ci_high"):
            assert name in runs, runs
        tags = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=10).read())
        for tag in ("reward/mean", "eval/heldout/greedy_pass_rate", "policy/kl", "loss/value"):
            assert tag in tags["kinds/seed_0"]
        assert "eval/heldout/greedy_pass_rate" in tags["kinds/aggregate/mean"]
    finally:
        tb.terminate()
        tb.wait(timeout=10)


def test_extend_continues_the_best_seeds(seeded):
    out, _ = seeded
    from rlvr.seeds import final_metric

    values = {s: final_metric(out / "kinds" / f"seed_{s}", "reward/mean") for s in (0, 1)}
    best = max(values, key=values.get)
    proc = run("seeds", "extend", str(out / "kinds"), "--top", "1", "--by", "reward/mean", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"extending seed {best}" in proc.stderr and f"seed {best}: resumed" in proc.stderr
    rows = read_metrics(out / "kinds" / f"seed_{best}")
    assert rows[-1]["step"] == 8
    other = read_metrics(out / "kinds" / f"seed_{1 - best}")
    assert other[-1]["step"] == 6


def test_successive_halving_culls_by_the_held_out_metric(tmp_path):
    from rlvr.seeds import final_metric

    args = ["--train.steps", "8", "--train.eval_every", "2", "--train.checkpoint_every", "2"]
    proc = run("seeds", "--config", str(TINY), "--seeds", "0-3", "--max-parallel", "2", "--output_dir", str(tmp_path),
               "--halving-every", "2", "--halving-metric", "reward/mean", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "kinds"
    last_step = {s: read_metrics(root / f"seed_{s}")[-1]["step"] for s in range(4)}
    assert sorted(last_step.values()) == [2, 2, 4, 8]  # 4 seeds -> 2 at step 2 -> 1 at step 4 -> the end
    finished = [s for s in range(4) if (root / f"seed_{s}" / "summary.json").exists()]
    assert finished == [s for s, v in last_step.items() if v == 8]
    # the seeds kept at step 2 had the highest reward/mean there
    at2 = {s: next(r["reward/mean"] for r in read_metrics(root / f"seed_{s}") if r["step"] == 2) for s in range(4)}
    kept = sorted(s for s, v in last_step.items() if v >= 4)
    assert kept == sorted(sorted(at2, key=lambda s: -at2[s])[:2])
    assert "halving at step 2" in proc.stderr and "culled at 2" in proc.stderr
    assert final_metric(root / f"seed_{finished[0]}", "reward/mean") is not None
