"""`rlvr seeds`: one experiment, many seeds, in parallel on Ray.

    rlvr seeds --config experiments/tiny/kinds.yaml --seeds 0-7 --max-parallel 2 [--address auto]

Each seed is a Ray task reserving the resources its config declares (`resources.cpus`,
`resources.gpus`); the task runs `rlvr train` for that seed in a process of its own, so a seed
that crashes (or is killed) fails alone. With no address Ray starts a local cluster in this
process; `--address auto` joins a running one. Running the same command again skips finished
seeds and resumes unfinished ones from their newest checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlvr.config import Config


def parse_seeds(text: str) -> list[int]:
    """`0-7`, `0,2,5` or a mix (`0-3,8`) -> sorted unique seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            seeds.update(range(int(lo), int(hi) + 1) if dash else [int(lo)])
        except ValueError:
            raise ValueError(f"--seeds: cannot read {part!r} (use e.g. 0-7 or 0,2,5)") from None
    if not seeds:
        raise ValueError("--seeds: no seeds given")
    return sorted(seeds)


def seed_state(cfg: Config, seed: int) -> str:
    """finished | partial | new, from the seed's run folder."""
    run = Path(cfg.output_dir) / cfg.name / f"seed_{seed}"
    summary = run / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("steps") == cfg.train.steps:
        return "finished"
    return "partial" if (run / "config.yaml").exists() else "new"


def train_command(config: str, seed: int, overrides: list[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", config, *overrides, "--seed", str(seed), "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def _die_with_parent() -> None:
    """In the training process, before exec: SIGTERM when the Ray worker that started it dies
    (killed, its node lost), so that no seed trains on with nobody to report to (Linux)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _run_seed(cmd: list[str], log_path: str, env: dict) -> tuple[int, str]:
    """Inside the Ray task: the seed's training process (a process group of its own, with its
    engines and verifier workers); its output goes to the seed's log file. The task cancelled (the
    launcher interrupted or terminated) or its worker dying ends the whole group."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True, preexec_fn=_die_with_parent
        )
        try:
            while proc.poll() is None:  # a short poll, so that a cancellation (an async exception) gets in
                time.sleep(0.2)
        except BaseException:  # the task was cancelled (KeyboardInterrupt) or the worker is exiting
            _kill_group(proc)
            raise
    tail = Path(log_path).read_text()[-2000:]
    return proc.returncode, tail


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class SeedResult:
    seed: int
    status: str  # finished (earlier), ok, failed
    wall_s: float = 0.0
    reason: str = ""


def launch(
    config_path: str,
    cfg: Config,
    seeds: list[int],
    overrides: list[str],
    max_parallel: int | None = None,
    address: str | None = None,
) -> list[SeedResult]:
    import ray

    results: dict[int, SeedResult] = {}
    todo = []
    for s in seeds:
        state = seed_state(cfg, s)
        if state == "finished":
            results[s] = SeedResult(s, "finished")
        else:
            todo.append((s, state == "partial"))
    if not todo:
        return [results[s] for s in seeds]

    env = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    if cfg.rollout.num_engines > 0:  # the seeds' engine actors join this cluster (beside the seeds' own reservations)
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    # each seed's process limits its own OpenMP threads to the CPUs it reserved
    threads = str(max(1, int(cfg.resources.cpus)))
    task = ray.remote(num_cpus=cfg.resources.cpus, num_gpus=cfg.resources.gpus, max_retries=0)(_run_seed)
    limit = max_parallel or len(todo)
    running: dict = {}
    queue = list(todo)
    stop = _StopOnSignal()
    try:
        while queue or running:
            while queue and len(running) < limit:
                s, resume = queue.pop(0)
                log = str(Path(cfg.output_dir) / cfg.name / f"seed_{s}" / "train.log")
                ref = task.remote(train_command(config_path, s, overrides, resume), log, {**env, "OMP_NUM_THREADS": threads})
                running[ref] = (s, time.perf_counter())
                print(f"[seeds] seed {s}: {'resumed' if resume else 'started'}", file=sys.stderr, flush=True)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                s, t0 = running.pop(ref)
                try:
                    code, tail = ray.get(ref)
                except Exception as e:  # the task itself died (node lost, killed)
                    code, tail = -1, f"{type(e).__name__}: {e}"
                wall = time.perf_counter() - t0
                if code == 0:
                    results[s] = SeedResult(s, "ok", wall)
                else:
                    last = [line for line in tail.strip().splitlines() if line.strip()][-1:] or [""]
                    results[s] = SeedResult(s, "failed", wall, f"exit status {code}: {last[0][:300]}")
                print(f"[seeds] seed {s}: {results[s].status} in {wall:.0f} s {results[s].reason}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"[seeds] stopping: cancelling {len(running)} running seed(s); they keep their checkpoints", file=sys.stderr, flush=True)
        for ref in running:
            ray.cancel(ref)  # KeyboardInterrupt in the task: _run_seed ends its training process group
        ray.wait(list(running), num_returns=len(running), timeout=30)
        raise
    finally:
        stop.restore()
    return [results[s] for s in seeds]


class _StopOnSignal:
    """SIGTERM (and SIGINT, already) raise KeyboardInterrupt in the launcher, so that it cancels its seeds."""

    def __init__(self):
        self.before = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread: leave signals alone
            self.before = None

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def restore(self) -> None:
        if self.before is not None:
            signal.signal(signal.SIGTERM, self.before)


def print_results(cfg: Config, results: list[SeedResult], wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.name}: {len(results)} seeds in {wall_s:.0f} s")
    for col in ("seed", "status", "wall s", "held-out greedy pass", "reason"):
        table.add_column(col)
    for r in results:
        summary = Path(cfg.output_dir) / cfg.name / f"seed_{r.seed}" / "summary.json"
        final = json.loads(summary.read_text())["final"] if summary.exists() else {}
        value = final.get("eval/heldout/greedy_pass_rate") if final else None
        table.add_row(str(r.seed), r.status, f"{r.wall_s:.0f}" if r.wall_s else "-", f"{value:.3f}" if value is not None else "-", r.reason)
    Console(stderr=True).print(table)


def final_metric(run_dir: Path, tag: str) -> float | None:
    """The last logged value of `tag` in a seed's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    value = None
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if tag in row:
            value = row[tag]
    return value


def extend(experiment_dir: str, top: int, by: str, steps: int, max_parallel: int | None = None, address: str | None = None):
    """Continue the `top` best seeds (by the last value of `by`) for `steps` more steps from their
    newest checkpoints. The LR schedule is recomputed for the new total number of steps."""
    from rlvr.config import load_config

    root = Path(experiment_dir)
    seed_dirs = sorted((int(d.name.split("_")[1]), d) for d in root.glob("seed_*") if (d / "config.yaml").exists())
    if not seed_dirs:
        raise FileNotFoundError(f"{root}: no seed_<k>/ runs with a config.yaml")
    scored = [(final_metric(d, by), s, d) for s, d in seed_dirs]
    ranked = sorted([x for x in scored if x[0] is not None], key=lambda x: (-x[0], x[1]))
    if not ranked:
        raise ValueError(f"no seed in {root} has logged {by!r}")
    chosen = ranked[:top]
    config_path = str(chosen[0][2] / "config.yaml")
    base = load_config(config_path)
    new_total = base.train.steps + steps
    overrides = ["--train.steps", str(new_total)]
    cfg = load_config(config_path, overrides)
    print(
        "[seeds] extending " + ", ".join(f"seed {s} ({by} = {v:.3f})" for v, s, _ in chosen) + f" to {new_total} steps",
        file=sys.stderr,
    )
    return cfg, launch(config_path, cfg, [s for _, s, _ in chosen], overrides, max_parallel=max_parallel, address=address)


def successive_halving(
    config_path: str,
    cfg: Config,
    seeds: list[int],
    overrides: list[str],
    every: int,
    metric: str,
    max_parallel: int | None = None,
    address: str | None = None,
) -> tuple[list[SeedResult], list[dict]]:
    """Early culling: run every seed to step `every`, keep the better half by `metric` (its last
    value, i.e. the held-out evaluation at the stop), run those to `2 * every`, and so on; the last
    survivor(s) run to the end. Stopped seeds keep resumable checkpoints (`rlvr seeds extend`)."""
    survivors, stop, rounds = list(seeds), every, []
    results: dict[int, SeedResult] = {}
    while stop < cfg.train.steps and len(survivors) > 1:
        stop_args = [*overrides, "--train.stop_at", str(stop)]
        for r in launch(config_path, cfg, survivors, stop_args, max_parallel, address):
            results[r.seed] = r
        alive = [s for s in survivors if results[s].status != "failed"]
        scores = {s: final_metric(Path(cfg.output_dir) / cfg.name / f"seed_{s}", metric) for s in alive}
        ranked = sorted(alive, key=lambda s: (-(scores[s] if scores[s] is not None else float("-inf")), s))
        keep = ranked[: max(1, (len(ranked) + 1) // 2)]
        rounds.append({"step": stop, "scores": scores, "kept": keep, "culled": [s for s in ranked if s not in keep]})
        print(f"[seeds] halving at step {stop}: kept {keep}, culled {rounds[-1]['culled']} by {metric}", file=sys.stderr)
        for s in rounds[-1]["culled"]:
            results[s] = SeedResult(s, f"culled at {stop}")
        survivors, stop = keep, stop * 2
    for r in launch(config_path, cfg, survivors, overrides, max_parallel, address):
        results[r.seed] = r
    return [results[s] for s in seeds], rounds
