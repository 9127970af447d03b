"""Faults a long run meets, done to real pools and runs: dead verifier workers (busy, idle, at
start), plugin results the parent cannot read, hostile model output."""

import os
import signal
import time

import pytest

from rlvr.verifiers import VerifierPool
from rlvr.verifiers.pool import _result_of

ROW = {"ground_truth": "4", "verifier": "math"}


def _plugin(tmp_path, body: str, name: str = "faulty.py") -> str:
    path = tmp_path / name
    path.write_text("from rlvr.verifiers import VerifierResult, register_verifier\n" + body)
    return str(path)


def test_an_idle_worker_killed_between_calls_is_replaced(tmp_path):
    rows = [{"ground_truth": "x^2", "verifier": "math"}] * 3
    symbolic = ["\\boxed{x \\cdot x}", "\\boxed{x^3}", "\\boxed{2 x}"]  # only sympy decides these: the workers do
    with VerifierPool(workers=2, timeout_s=5.0) as pool:
        assert pool.score(symbolic, rows).scores == [1.0, 0.0, 0.0]
        for w in pool._pool:  # the OOM killer, a signal: both idle workers die
            os.kill(w.proc.pid, signal.SIGKILL)
            w.proc.wait()
        scored = pool.score(symbolic, rows)
        assert scored.scores == [1.0, 0.0, 0.0] and [r.status for r in scored.results] == ["ok", "wrong", "wrong"]
        assert pool.restarts == 2


def test_a_plugin_that_exits_its_worker_costs_its_rows_only(tmp_path):
    """A verifier whose lazily imported module calls os._exit kills its worker mid-call, every time:
    its rows are `error` with the exit code, the other rows score, the pool never raises."""
    (tmp_path / "lazy_module.py").write_text("import os\nos._exit(3)\n")
    path = _plugin(
        tmp_path,
        f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})

@register_verifier("exits_on_import")
def exits_on_import(completion, ground_truth, **meta):
    import lazy_module  # noqa: F401
    return VerifierResult(1.0)
""",
    )
    rows = [{"ground_truth": "", "verifier": "exits_on_import"}, ROW, ROW, {"ground_truth": "", "verifier": "exits_on_import"}]
    with VerifierPool(workers=2, timeout_s=5.0, verifier_files=[path]) as pool:
        for _ in range(2):
            scored = pool.score(["a", "\\boxed{4}", "\\boxed{x^2+1}", "b"], rows)
            assert [r.status for r in scored.results] == ["error", "ok", "wrong", "error"]
            assert "died (exit code 3)" in scored.results[0].info["reason"]
        assert pool.restarts == 4


def test_results_the_parent_cannot_read_become_plain(tmp_path):
    path = _plugin(
        tmp_path,
        """
class Detail:  # a class the trainer's process never imported
    def __repr__(self):
        return "Detail(7)"

@register_verifier("odd_info")
def odd_info(completion, ground_truth, **meta):
    return VerifierResult(1.0, {"status": "ok", "detail": Detail(), "parts": (Detail(), 2)})
""",
    )
    with VerifierPool(workers=1, timeout_s=5.0, verifier_files=[path]) as pool:
        r = pool.score(["x"], [{"ground_truth": "", "verifier": "odd_info"}]).results[0]
    assert r.score == 1.0 and r.info["detail"] == "Detail(7)" and r.info["parts"] == ["Detail(7)", 2]
    # and what a worker could still send wrong is an error, never an exception
    assert _result_of((3, 1.0, {"status": "ok"}), 3).score == 1.0
    for bad in [(4, 1.0, {}), (3, 2.0, {}), (3, "1", {}), (3, True, {}), (3, 1.0, []), (3, 1.0), "oops", (3, 1.0, {"status": "great"})]:
        assert _result_of(bad, 3) is None, bad


def test_replacements_that_cannot_start_make_rows_errors(tmp_path):
    """The first start works; then the plugin breaks (a file it needs vanishes): the pool retries,
    gives up, and the rows left are errors naming the cause, without an exception."""
    marker = tmp_path / "broken"
    path = _plugin(
        tmp_path,
        f"""
import os
if os.path.exists({str(marker)!r}):
    raise ImportError("the plugin's model file is gone")

@register_verifier("fine")
def fine(completion, ground_truth, **meta):
    return VerifierResult(1.0)
""",
    )
    rows = [{"ground_truth": "", "verifier": "fine"}] * 3
    with VerifierPool(workers=1, timeout_s=5.0, verifier_files=[path], start_retries=2) as pool:
        assert pool.score(["a"] * 3, rows).scores == [1.0] * 3
        marker.write_text("")
        os.kill(pool._pool[0].proc.pid, signal.SIGKILL)
        pool._pool[0].proc.wait()
        scored = pool.score(["a"] * 3, rows)
    assert [r.status for r in scored.results] == ["error"] * 3
    assert "could start" in scored.results[0].info["reason"] and pool.start_failures == 2


HOSTILE = [
    # (completion, why it is hostile)
    ("\\boxed{" * 100_000, "700 KB of unclosed boxes"),
    ("{" * 200_000, "deep braces, no box"),
    ("$" * 100_000, "a hundred thousand dollar signs"),
    ("\\boxed{2^(2^100)}", "a tower in parentheses"),
    ("\\boxed{2^{2^{2^{2^{2}}}}}", "a braced tower"),
    ("\\boxed{10^{10}!}", "the factorial of a power"),
    ("\\boxed{(10!)!}", "a nested factorial"),
    ("\\boxed{1000000!}", "a huge factorial"),
    ("\\boxed{9^{9^{9}}}", "nine to the nine to the nine"),
    ("The answer is " + "9" * 50_000, "a 50,000-digit number"),
    ("\\boxed{\\frac{1}{" * 5000 + "}" * 5000, "nested fractions"),
    ("\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "deep parentheses"),
    ("\x00\ufffd\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace") * 1000, "control and replacement characters"),
]


BUILTIN_TRUTHS = {
    "math": "4",
    "math_strict": "4",
    "gsm8k": "4",
    "exact": "42",
    "regex": r"\d+",
    "format": {"required_tags": ["answer"]},
    "combine": {"verifiers": [{"name": "exact", "ground_truth": "42"}, {"name": "math", "ground_truth": "42"}]},
    "allowed_words": {"allowed": ["1", "2"], "min_words": 1},
    "ifeval": {"instruction_id_list": ["detectable_format:json_format", "length_constraints:number_words"],
               "kwargs": [{}, {"relation": "at least", "num_words": 5}]},
    "ifeval_loose": {"instruction_id_list": ["startend:quotation", "change_case:english_capital"], "kwargs": [{}, {}]},
}


def test_every_builtin_verifier_takes_hostile_output_in_its_stride():
    """Every built-in verifier against every hostile completion: a score in [0, 1] with a status, no
    worker killed for a timeout or lost to a crash, all of it well inside the time limits."""
    from rlvr.verifiers.registry import _REGISTRY, available_verifiers

    # a new built-in joins this table (other tests register plugins of their own in this process: not built-ins)
    builtin = {n for n in available_verifiers() if getattr(_REGISTRY[n], "__module__", "").startswith("rlvr.verifiers")}
    assert set(BUILTIN_TRUTHS) == builtin
    comps = [c for c, _ in HOSTILE]
    with VerifierPool(workers=2, timeout_s=10.0) as pool:
        t = time.perf_counter()
        for name, truth in BUILTIN_TRUTHS.items():
            scored = pool.score(comps, [{"ground_truth": truth, "verifier": name}] * len(comps))
            assert all(0.0 <= r.score <= 1.0 for r in scored.results)
            bad = [(why, r.info) for (_, why), r in zip(HOSTILE, scored.results) if r.status in ("timeout", "error")]
            assert not bad, (name, bad)
        assert pool.restarts == 0
        assert time.perf_counter() - t < 60


@pytest.mark.parametrize("verifier,truth", [("math", "4"), ("math_strict", "4"), ("gsm8k", "4")])
def test_hostile_output_is_scored_fast_without_restarts(verifier, truth):
    """Every hostile completion gets a score in [0, 1] with a status, each well inside the time limit,
    and no worker has to be killed for it."""
    with VerifierPool(workers=2, timeout_s=10.0) as pool:
        t = time.perf_counter()
        scored = pool.score([c for c, _ in HOSTILE], [{"ground_truth": truth, "verifier": verifier}] * len(HOSTILE))
        elapsed = time.perf_counter() - t
        assert pool.restarts == 0, [(why, r.info) for (_, why), r in zip(HOSTILE, scored.results) if r.status in ("timeout", "error")]
    assert all(r.score == 0.0 for r in scored.results), [why for (_, why), r in zip(HOSTILE, scored.results) if r.score]
    assert elapsed < 10.0, elapsed


# ------------------------------------------------------------------------------------ runs

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import torch  # noqa: E402

from rlvr.backends import NonFiniteError  # noqa: E402
from rlvr.config import load_config  # noqa: E402
from rlvr.monitors import VerifierFailure  # noqa: E402
from rlvr.runlock import RunLock, RunLockedError  # noqa: E402
from rlvr.tasks import make_task  # noqa: E402

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
FAST = ["--rollout.engine", "hf", "--train.eval_every", "100", "--data.num_eval", "8", "--verify.workers", "1"]

FLAKY = """
import hashlib
from rlvr.verifiers.builtin import allowed_words

@register_verifier("NAME")
def flaky(completion, ground_truth, **meta):
    if int(hashlib.md5(completion.encode()).hexdigest(), 16) % 10 < RATE:  # a broken plugin, for some rows
        raise RuntimeError("the plugin's lookup table is missing an entry")
    return allowed_words(completion, ground_truth, **meta)
"""


def _flaky_rows(tmp_path, rate: int) -> list[str]:
    """The kinds task as files whose rows name a plugin verifier that raises for `rate`/10 of completions."""
    train, heldout = make_task("kinds", 300, 8, seed=0)
    for name, rows in (("train", train), ("eval", heldout)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps({"prompt": r["prompt"], "ground_truth": r["ground_truth"], "verifier": f"flaky{rate}"}) + "\n")
    plugin = _plugin(tmp_path, FLAKY.replace("RATE", str(rate)).replace("NAME", f"flaky{rate}"), f"flaky{rate}.py")
    return ["--data.task", "", "--data.train", str(tmp_path / "train.jsonl"), "--data.eval", str(tmp_path / "eval.jsonl"),
            "--data.eval_split", "train", "--verifier_files", f"[{plugin}]"]


def _cfg(tmp_path, *overrides, steps=6):
    return load_config(
        str(REPO / "experiments/tiny/kinds.yaml"),
        ["--output_dir", str(tmp_path), "--train.steps", str(steps), "--train.checkpoint_every", "2", *FAST, *overrides],
    )


def _metrics(cfg):
    return [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


def _inject_nan_advantages(monkeypatch, at_steps):
    """NaN advantages at the given steps (the k-th call of compute_advantages is step k)."""
    import rlvr.trainer as T

    real, calls = T.compute_advantages, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        adv, ret = real(*args, **kwargs)
        if calls["n"] in at_steps:
            adv = adv.clone()
            adv[0, 0] = float("nan")
        return adv, ret

    monkeypatch.setattr(T, "compute_advantages", poisoned)


def test_a_run_meets_a_nan_a_killed_worker_and_a_flaky_plugin_and_finishes(tmp_path, monkeypatch):
    """NaN advantages at step 3, a NaN gradient at step 5, the idle verifier worker killed after
    step 2, a plugin that raises for ~30% of rows: the run finishes and counts every fault."""
    import psutil

    from rlvr.trainer import train

    cfg = _cfg(tmp_path, *_flaky_rows(tmp_path, 3), steps=7)
    _inject_nan_advantages(monkeypatch, {3})
    import rlvr.learner as L

    real_update, calls = L.PPOLearner.update, {"n": 0}

    def update(self, *args, **kwargs):  # step 5's update (the 4th, step 3 having none): a NaN gradient
        calls["n"] += 1
        hook = None
        if calls["n"] == 4:
            p = next(self.policy.parameters())
            hook = p.register_hook(lambda g: torch.full_like(g, float("nan")))
        try:
            return real_update(self, *args, **kwargs)
        finally:
            if hook is not None:
                hook.remove()

    monkeypatch.setattr(L.PPOLearner, "update", update)

    def kill_workers_after_step_2():
        path = cfg.run_dir / "metrics.jsonl"
        while not (path.exists() and any(json.loads(line)["step"] >= 2 for line in path.read_text().splitlines())):
            time.sleep(0.02)
        for child in psutil.Process().children(recursive=True):
            if "rlvr.verifiers._worker" in " ".join(child.cmdline()):
                child.kill()

    threading.Thread(target=kill_workers_after_step_2, daemon=True).start()
    train(cfg, progress=False)
    rows = {r["step"]: r for r in _metrics(cfg)}
    assert sorted(rows) == list(range(8))
    assert [rows[s]["alerts/nonfinite"] for s in range(1, 8)] == [0, 0, 1, 0, 1, 0, 0]
    assert rows[3]["learner/update_skipped"] == 1 and rows[5]["learner/nonfinite_steps"] >= 1
    assert rows[7]["learner/nonfinite_updates_total"] == 2
    assert rows[7]["verify/restarts"] >= 1
    errors = [rows[s]["reward/flaky3/error_rate"] for s in range(1, 8)]
    assert 0.15 < sum(errors) / len(errors) < 0.45, errors
    policy = torch.load(next((cfg.run_dir / "checkpoints").glob("step_7")) / "trainer_state.pt", weights_only=False)
    assert policy["history"]["nonfinite_updates"] == 2
    from safetensors.torch import load_file

    weights = load_file(str(cfg.run_dir / "checkpoints" / "step_7" / "policy" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_nonfinite_updates_in_a_row_stop_the_run_and_resume_goes_on(tmp_path, monkeypatch):
    from rlvr.trainer import train

    cfg = _cfg(tmp_path, "--train.max_nonfinite_updates", "2")
    _inject_nan_advantages(monkeypatch, {3, 4})
    with pytest.raises(NonFiniteError, match=r"step 4: 2 updates in a row .* \(step_2\)"):
        train(cfg, progress=False)
    monkeypatch.undo()
    train(cfg, resume=True, progress=False)
    assert [r["step"] for r in _metrics(cfg)] == list(range(7))


def test_a_verifier_failing_most_rows_stops_the_run_with_its_name(tmp_path):
    from rlvr.trainer import train

    cfg = _cfg(tmp_path, *_flaky_rows(tmp_path, 8), "--verify.rate_window_steps", "2")
    with pytest.raises(VerifierFailure, match=r"step 2: verifier 'flaky8' gave `error` .*lookup table is missing"):
        train(cfg, progress=False)


def test_a_bad_model_is_one_line_and_leaves_no_run(tmp_path):
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", "experiments/tiny/kinds.yaml", "--output_dir", str(tmp_path),
           "--no-progress", "--model.name_or_path", "Qwen/Qwen2.5-0.5B"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("rlvr: error: model.name_or_path 'Qwen/Qwen2.5-0.5B' is not a model folder or hub id"), lines[-3:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "kinds" / "seed_0" / "config.yaml").exists()
    again = subprocess.run(cmd[:-2] + ["--train.steps", "1", *FAST], capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 0, again.stderr[-2000:]


def test_one_writer_per_run_folder(tmp_path, capsys):
    lock = RunLock(tmp_path)
    other = json.loads((tmp_path / ".lock").read_text())
    assert other["pid"] == os.getpid()
    (tmp_path / ".lock").write_text(json.dumps({**other, "pid": os.getppid()}))  # a live process owns it
    with pytest.raises(RunLockedError, match=f"in use by another run \\(pid {os.getppid()}"):
        RunLock(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / ".lock").write_text(json.dumps({**other, "pid": gone.pid}))  # a dead one: taken over
    RunLock(tmp_path).release()
    assert f"its owner (pid {gone.pid}) is no longer running" in capsys.readouterr().err
    (tmp_path / ".lock").write_text(json.dumps({**other, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="on host elsewhere"):
        RunLock(tmp_path)
    lock.owned = False


def test_checkpoints_fall_back_keep_a_readable_one_and_need_room(tmp_path, monkeypatch, capsys):
    import shutil as sh

    import rlvr.checkpoint as ckpt
    from rlvr.trainer import train

    cfg = _cfg(tmp_path, "--train.keep_checkpoints", "2", steps=4)
    train(cfg, progress=False)
    root = cfg.run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_2", "step_4"]
    weights = root / "step_4" / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a write cut short
    assert ckpt.latest_checkpoint(cfg.run_dir).name == "step_2"
    assert "checkpoint step_4 is unreadable" in capsys.readouterr().err
    # resuming a longer run goes on from step 2; the unreadable step_4 is rewritten
    longer = _cfg(tmp_path, "--train.keep_checkpoints", "1", steps=6)
    real = ckpt.unreadable
    monkeypatch.setattr(ckpt, "unreadable", lambda p: "pretend" if p.name == "step_6" else real(p))
    train(longer, resume=True, progress=False)
    assert [r["step"] for r in _metrics(longer)] == list(range(7))
    assert {p.name for p in root.iterdir()} >= {"step_4", "step_6"}  # keep=1, but step_6 does not read back
    monkeypatch.undo()
    # no room: a clear error before anything is written
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: sh._ntuple_diskusage(10**12, 10**12 - 1024, 1024))
    more = _cfg(tmp_path, steps=8)
    with pytest.raises(ckpt.CheckpointError, match="no room for a checkpoint"):
        train(more, resume=True, progress=False)
    assert not any(p.name.startswith(".tmp") for p in root.iterdir())


def test_terminating_the_seeds_launcher_ends_its_training_processes(tmp_path):
    import psutil

    args = [sys.executable, "-m", "rlvr.cli", "seeds", "--config", "experiments/tiny/kinds.yaml", "--seeds", "0",
            "--output_dir", str(tmp_path), "--train.steps", "400", *FAST]
    launcher = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})

    def trainers():
        return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and "train" in p.info["cmdline"]
                and str(tmp_path) in p.info["cmdline"]]

    metrics = tmp_path / "kinds" / "seed_0" / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.1)
    assert len(trainers()) == 1
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=90)
    assert launcher.returncode == 130, err[-2000:]
    assert "cancelling 1 running seed" in err
    deadline = time.time() + 30
    while trainers() and time.time() < deadline:
        time.sleep(0.2)
    assert not trainers()


def test_dynamic_sampling_short_of_groups_trains_on_what_it_has(tmp_path):
    """At most 2 groups of 2 (4 rollouts, fewer when a group's rewards are all equal) against 8
    minibatches: every step trains in as many minibatches as it has rollouts, or skips when none."""
    from rlvr.trainer import train

    cfg = _cfg(tmp_path, "--algo.baseline", "grpo", "--algo.dynamic_sampling", "true", "--algo.dynamic_sampling_rounds", "1",
               "--rollout.prompts_per_step", "2", "--rollout.samples_per_prompt", "2", "--ppo.num_minibatches", "8", steps=4)
    train(cfg, progress=False)
    rows = _metrics(cfg)[1:]
    assert len(rows) == 4
    assert any(r["rollout/groups"] > 0 for r in rows)
    assert all(r["rollout/groups"] <= 2 for r in rows)
