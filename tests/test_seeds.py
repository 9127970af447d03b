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
        assert "band/reward/mean/low" in tags["kinds/aggregate/band"]
        # the Custom Scalars tab opens on the headline panels: each run's held-out pass rates, reward and KL, and
        # each experiment's mean with its 95% band drawn from the aggregate run (a margin chart)
        layout = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/custom_scalars/layout", timeout=10).read())
        categories = {c["title"]: {ch["title"]: ch for ch in c["chart"]} for c in layout["category"]}
        assert categories["rlvr: every run"]["reward"]["multiline"]["tag"] == ["^reward/mean$"]
        margin = categories["rlvr: mean over seeds, 95% band"]["reward/mean: mean and 95% interval over seeds"]["margin"]["series"]
        assert margin == [{"value": "band/reward/mean/mean", "lower": "band/reward/mean/low", "upper": "band/reward/mean/high"}]
        # and the band it names is there to draw (reward/mean is logged at steps 1..6): the mean lies within it at every step
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=kinds/aggregate/band&tag="
        series = {k: json.loads(urllib.request.urlopen(url + f"band/reward/mean/{k}", timeout=10).read()) for k in ("mean", "low", "high")}
        assert [p[1] for p in series["mean"]] == [1, 2, 3, 4, 5, 6] and all(lo[2] <= m[2] <= hi[2] for lo, m, hi in zip(series["low"], series["mean"], series["high"]))
    finally:
        tb.terminate()
        tb.wait(timeout=10)


def test_halving_then_extend_adds_exactly_n_steps_to_culled_and_kept_seeds(tmp_path):
    from rlvr.config import load_config

    # the transformers engine: these runs are about the launcher, and it starts in a second
    args = ["--train.steps", "8", "--train.eval_every", "2", "--train.checkpoint_every", "2", "--rollout.engine", "hf"]
    proc = run("seeds", "--config", str(TINY), "--seeds", "0-2", "--max-parallel", "2", "--output_dir", str(tmp_path),
               "--halving-every", "2", "--halving-metric", "max:reward/mean", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "kinds"
    last_step = {s: read_metrics(root / f"seed_{s}")[-1]["step"] for s in range(3)}
    assert sorted(last_step.values()) == [2, 4, 8]  # 3 seeds -> 2 at step 2 -> 1 at step 4 -> the end
    finished = [s for s in range(3) if (root / f"seed_{s}" / "summary.json").exists()]
    assert finished == [s for s, v in last_step.items() if v == 8]
    # the seeds kept at step 2 had the highest reward/mean there
    at2 = {s: next(r["reward/mean"] for r in read_metrics(root / f"seed_{s}") if r["step"] == 2) for s in range(3)}
    kept = sorted(s for s, v in last_step.items() if v >= 4)
    assert kept == sorted(sorted(at2, key=lambda s: -at2[s])[:2])
    assert "halving at step 2" in proc.stderr and "culled at 2" in proc.stderr
    assert "last step" in proc.stderr  # the launcher's table

    # every seed 2 more steps, from its own checkpoint under its own config: the culled ones go on along
    # their 8-step schedule (stop_at), the finished one gets a 10-step schedule
    proc = run("seeds", "extend", str(root), "--top", "3", "--by", "max:reward/mean", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ranked by max:reward/mean at step 2, the largest step every seed logged it" in " ".join(proc.stderr.split())
    after = {s: read_metrics(root / f"seed_{s}")[-1]["step"] for s in range(3)}
    assert after == {s: v + 2 for s, v in last_step.items()}
    # what finishes the extension, should it stop halfway: each seed's own command, to its own target
    plan = json.loads((root / "extend.json").read_text())
    assert sorted(plan["resume"]) == ["0", "1", "2"] and "--resume" in plan["resume"]["0"]
    for s, v in last_step.items():
        saved = load_config(root / f"seed_{s}" / "config.yaml").train
        assert (saved.steps, saved.stop_at) == ((8, v + 2) if v < 8 else (10, 0))
    (done,) = finished
    assert json.loads((root / f"seed_{done}" / "summary.json").read_text())["steps"] == 10
    # the first command again: the extended seed is past its 8 steps and stays as it is
    proc = run("seeds", "--config", str(TINY), "--seeds", str(done), "--output_dir", str(tmp_path), *args)
    assert proc.returncode == 0 and "started" not in proc.stderr and "resumed" not in proc.stderr, proc.stderr[-2000:]
    assert json.loads((root / f"seed_{done}" / "summary.json").read_text())["steps"] == 10


def test_resume_under_another_config_is_refused(seeded):
    out, _ = seeded
    proc = run("train", "--config", str(TINY), "--output_dir", str(out), "--seed", "0", *SHORT, "--ppo.clip_low", "0.3",
               "--algo.baseline", "rloo", "--resume")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "was started with another config (algo.baseline 'gae' -> 'rloo'; ppo.clip_low 0.2 -> 0.3)" in proc.stderr
    # only the run-length fields may change: the run is at its last step, so 6 -> 4 steps trains nothing
    proc = run("train", "--config", str(TINY), "--output_dir", str(out), "--seed", "0", *SHORT, "--train.steps", "4", "--resume")
    assert proc.returncode == 0 and "the run is at step 6, at or past step 4: nothing to train" in proc.stderr, proc.stderr[-2000:]
    assert json.loads((out / "kinds" / "seed_0" / "summary.json").read_text())["steps"] == 6


def test_a_gpu_reserved_but_not_there_is_an_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run("train", "--config", str(TINY), "--output_dir", str(tmp_path), "--resources.gpus", "0.5")
    assert proc.returncode == 2 and proc.stderr.startswith("rlvr: error: resources.gpus is 0.5 but this process sees no CUDA device")
    assert not (tmp_path / "kinds").exists()
    proc = run("seeds", "--config", str(TINY), "--seeds", "0-1", "--output_dir", str(tmp_path), "--resources.gpus", "0.25")
    assert proc.returncode == 2 and "rlvr: error: resources.gpus is 0.25 per seed, but the Ray cluster has 0 GPUs" in proc.stderr


def test_gpu_shares():
    from rlvr.config import ConfigError, engine_gpu_memory, load_config
    from rlvr.seeds import Job, _job_env, check_gpus

    cfg = lambda *o: load_config(TINY, list(o))  # noqa: E731
    # four seeds on one GPU: each engine takes half of its seed's quarter; an actor 0.9 of its own share
    assert engine_gpu_memory(cfg("--resources.gpus", "0.25")) == 0.125
    assert engine_gpu_memory(cfg("--resources.gpus", "1")) == 0.5
    assert engine_gpu_memory(cfg("--rollout.num_engines", "1", "--rollout.engine_gpus", "0.5")) == pytest.approx(0.45)
    assert engine_gpu_memory(cfg("--resources.gpus", "0.25", "--rollout.gpu_memory_utilization", "0.2")) == 0.2
    with pytest.raises(ConfigError, match=r"must lie in \[0, 0.25\]: the engine runs in a share of 0.25 GPU \(resources.gpus\)"):
        cfg("--resources.gpus", "0.25", "--rollout.gpu_memory_utilization", "0.3")
    # a seed that reserved no GPU sees none (Ray would leave them all visible); one that did keeps Ray's choice
    assert _job_env(Job("x", cfg(), 0, []), None)["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in _job_env(Job("x", cfg("--resources.gpus", "0.5"), 0, []), None)
    check_gpus([Job("x", cfg("--resources.gpus", "0.5"), 0, [])], 1.0)
    with pytest.raises(ValueError, match="resources.gpus is 2 per seed"):
        check_gpus([Job("x", cfg("--resources.gpus", "2"), 0, [])], 1.0)
    # engine actors' GPUs count too: 0.5 for the learner and 2 × 0.5 for the engines is 1.5 per seed
    with pytest.raises(ValueError, match=r"resources.gpus is 0.5 per seed \(and 1.5 with its engine actors' rollout.engine_gpus\)"):
        check_gpus([Job("x", cfg("--resources.gpus", "0.5", "--rollout.num_engines", "2", "--rollout.engine_gpus", "0.5"), 0, [])], 1.0)


def test_launcher_input_errors(tmp_path):
    from rlvr.seeds import extend, parse_grid

    assert parse_grid(["ppo.lr=1e-3,3e-3", "--algo.baseline=grpo"]) == [("ppo.lr", ["1e-3", "3e-3"]), ("algo.baseline", ["grpo"])]
    for bad, why in ((["ppo.lr"], "cannot read 'ppo.lr'"), (["seed=0,1"], "seed is set by the sweep itself"),
                     (["ppo.lr=1e-3,1e-3"], "lists a value twice"), (["ppo.lr=1", "ppo.lr=2"], "a field is given twice")):
        with pytest.raises(ValueError, match=why):
            parse_grid(bad)
    with pytest.raises(ValueError, match="--steps must be > 0, got 0"):
        extend(str(tmp_path), 1, "max:reward/mean", 0)


def test_every_node_must_see_the_run_folder(tmp_path):
    import ray

    from rlvr.seeds import nodes_missing

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert nodes_missing(tmp_path / "runs") == []
        # a node whose folder of that name holds something else (its own local disk): the marker does not match
        (node,) = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        assert nodes_missing(tmp_path / "runs", token="another disk") == [node]
        assert list((tmp_path / "runs").iterdir()) == []  # the marker is gone
    finally:
        ray.shutdown()


def test_sweep_of_two_fields_times_two_seeds(tmp_path):
    fast = ["--rollout.engine", "hf", "--train.steps", "2", "--train.eval_every", "2", "--train.checkpoint_every", "2",
            "--data.num_eval", "16", "--monitor.entropy_min", "100"]  # an entropy floor no policy meets: every seed raises the alert
    args = ["sweep", "--config", str(TINY), "--grid", "algo.baseline=grpo,rloo", "ppo.lr=1e-3,3e-3", "--seeds", "0-1",
            "--max-parallel", "2", "--output_dir", str(tmp_path), *fast]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "kinds"
    cells = sorted(d.name for d in root.iterdir() if d.is_dir())
    assert cells == ["algo.baseline=grpo,ppo.lr=1e-3", "algo.baseline=grpo,ppo.lr=3e-3", "algo.baseline=rloo,ppo.lr=1e-3",
                     "algo.baseline=rloo,ppo.lr=3e-3"]
    from rlvr.config import load_config

    for cell in cells:
        for seed in (0, 1):
            saved = load_config(root / cell / f"seed_{seed}" / "config.yaml")
            values = dict(kv.split("=") for kv in cell.split(","))
            assert (saved.algo.baseline, saved.ppo.lr) == (values["algo.baseline"], float(values["ppo.lr"]))
            assert json.loads((root / cell / f"seed_{seed}" / "summary.json").read_text())["steps"] == 2
    assert "entropy_collapse (1)" in proc.stderr  # the launcher's table lists each seed's alerts
    again = run(*args)
    assert again.returncode == 0 and "started" not in again.stderr, again.stderr[-2000:]
    cmp = run("compare", str(root), "--metric", "reward/mean", "--out", str(tmp_path / "cmp"))
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert sorted(r["experiment"] for r in result["ranking"]["reward/mean"]) == cells
    assert result["aligned"]["reward/mean"]["step"] == 2
    assert "UNRELIABLE with fewer than 5 seeds per method (here 2)" in " ".join(cmp.stderr.split())
