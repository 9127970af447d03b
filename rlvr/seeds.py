"""`rlvr seeds` and `rlvr sweep`: one experiment (or a grid of them), many seeds, in parallel on Ray.

    rlvr seeds --config experiments/tiny/kinds.yaml --seeds 0-7 --max-parallel 2 [--address auto]
    rlvr seeds extend runs/kinds --top 2 --by max:eval/heldout/greedy_pass_rate --steps 50
    rlvr sweep --config experiments/tiny/kinds.yaml --grid ppo.lr=1e-5,3e-5 algo.baseline=grpo,gae --seeds 0-4

Each seed is a Ray task reserving the resources its config declares (`resources.cpus`,
`resources.gpus`); the task runs `rlvr train` for that seed in a process of its own, so a seed
that crashes (or is killed) fails alone. With no address Ray starts a local cluster in this
process; `--address auto` joins a running one (whose nodes must all see the run folder). Running
the same command again skips finished seeds and resumes unfinished ones from their newest
checkpoints; a seed never resumes under a changed config (rlvr/trainer.py checks).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rlvr.config import Config, load_config
from rlvr.runlog import read_metrics


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




class LaunchError(ValueError):
    """Seeds that cannot be launched as asked (resources the cluster lacks, a run folder other nodes cannot see, ...)."""


@dataclass
class Job:
    """One seed of one experiment (of one sweep cell): `rlvr train --config <config> <overrides> --seed <seed>`."""

    config: str
    cfg: Config  # the config with the overrides applied
    seed: int
    overrides: list[str]
    cell: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir) / self.cfg.name / f"seed_{self.seed}"


def seed_jobs(config: str, seeds: list[int], overrides: list[str], cell: str = "") -> list[Job]:
    """The seeds of one experiment. The config file and the run folder are made absolute: a seed's process
    may start on another node, in a Ray worker's working directory."""
    overrides = [*overrides, "--output_dir", str(Path(load_config(config, overrides).output_dir).resolve())]
    cfg = load_config(config, overrides)
    return [Job(str(Path(config).resolve()), cfg, s, overrides, cell) for s in seeds]


def seed_state(job: Job) -> str:
    """finished | partial | new, from the seed's run folder (finished: at or past train.steps)."""
    summary = job.run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("steps", 0) >= job.cfg.train.steps:
        return "finished"
    return "partial" if (job.run_dir / "config.yaml").exists() else "new"


def train_command(job: Job, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--config", job.config, *job.overrides, "--seed", str(job.seed), "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def _die_with_parent() -> None:
    """In the training process, before exec: SIGTERM when the Ray worker that started it dies
    (killed, its node lost), so that no seed trains on with nobody to report to (Linux)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _run_seed(cmd: list[str], log_path: str, env: dict, cwd: str) -> tuple[int, str]:
    """Inside the Ray task: the seed's training process (a process group of its own, with its
    engines and verifier workers); its output goes to the seed's log file. The task cancelled (the
    launcher interrupted or terminated) or its worker dying ends the whole group."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True, preexec_fn=_die_with_parent,
            cwd=cwd if os.path.isdir(cwd) else None,  # the launcher's folder, for the config's relative data paths
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




@dataclass
class SeedResult:
    job: Job
    status: str  # finished (earlier), ok, failed, culled at <step>
    wall_s: float = 0.0
    reason: str = ""

    @property
    def seed(self) -> int:
        return self.job.seed


def _job_env(job: Job, ray_address: str | None) -> dict[str, str]:
    env = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "OMP_NUM_THREADS": str(max(1, int(job.cfg.resources.cpus)))}
    if ray_address:  # the seed's engine actors join this cluster (beside the seeds' own reservations)
        env["RAY_ADDRESS"] = ray_address
    if job.cfg.resources.gpus == 0:  # Ray leaves every GPU visible to a task that reserved none: hide them
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def check_gpus(jobs: list[Job], cluster_gpus: float) -> None:
    """Seeds that reserve GPUs the cluster lacks would wait forever: say so. Seeds that reserve none on a
    cluster with GPUs train on CPUs: say that too."""
    per_seed = lambda c: c.resources.gpus + c.rollout.num_engines * c.rollout.engine_gpus  # noqa: E731
    need = max(per_seed(j.cfg) for j in jobs)
    if need > cluster_gpus:
        own = max(j.cfg.resources.gpus for j in jobs)
        engines = f" (and {need:g} with its engine actors' rollout.engine_gpus)" if need > own else ""
        raise LaunchError(
            f"resources.gpus is {own:g} per seed{engines}, but the Ray cluster has {cluster_gpus:g} GPUs: no seed could start "
            "(set resources.gpus: 0 to train on CPUs, or join a cluster with GPUs with --address)"
        )
    if need == 0 and cluster_gpus > 0:
        print(f"[seeds] resources.gpus is 0: the seeds train on CPUs, though the cluster has {cluster_gpus:g} GPUs "
              "(resources.gpus: 1 gives each seed a GPU; 0.25 packs four seeds on one)", file=sys.stderr, flush=True)


def _sees(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def nodes_missing(folder: Path, token: str | None = None) -> list[str]:
    """The alive Ray nodes on which `folder` is not the launcher's folder (no shared filesystem there):
    a marker written here is read back on every node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder.resolve() / f".shared-{uuid.uuid4().hex[:8]}"
    marker.write_text(uuid.uuid4().hex)
    expect = token if token is not None else marker.read_text()
    try:
        check = ray.remote(num_cpus=0)(_sees)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker), expect)
                for n in nodes]
        try:
            seen = ray.get(refs, timeout=120)
        except Exception as e:  # a node that cannot run the check (no rlvr there, unreachable)
            raise LaunchError(f"could not check that every Ray node sees {folder.resolve()}: {type(e).__name__}: {str(e)[:300]}") from None
        return [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    finally:
        marker.unlink(missing_ok=True)


def launch(jobs: list[Job], max_parallel: int | None = None, address: str | None = None) -> list[SeedResult]:
    """Run every job that is not finished (resuming partial ones), at most `max_parallel` at once; one result per job."""
    import ray

    results: dict[int, SeedResult] = {}
    todo = []
    for i, job in enumerate(jobs):
        state = seed_state(job)
        if state == "finished":
            results[i] = SeedResult(job, "finished")
        else:
            todo.append((i, state == "partial"))
    if not todo:
        return [results[i] for i in range(len(jobs))]

    from rlvr.rollouts.actors import ensure_ray

    ensure_ray(address)
    check_gpus([jobs[i] for i, _ in todo], ray.cluster_resources().get("GPU", 0.0))
    if address:
        roots = sorted({str(jobs[i].run_dir.parent) for i, _ in todo})
        for root in roots:
            if missing := nodes_missing(Path(root)):
                raise LaunchError(
                    f"the run folder {Path(root).resolve()} is not visible on node(s) {', '.join(missing)}: seeds on other nodes "
                    "need a shared filesystem mounted at the same path (set output_dir to one)"
                )
    gcs = ray.get_runtime_context().gcs_address
    task = ray.remote(max_retries=0)(_run_seed)
    limit = max_parallel or len(todo)
    running: dict = {}
    queue = list(todo)
    stop = _StopOnSignal()
    try:
        while queue or running:
            while queue and len(running) < limit:
                i, resume = queue.pop(0)
                job = jobs[i]
                env = _job_env(job, gcs if job.cfg.rollout.num_engines > 0 else None)
                ref = task.options(num_cpus=job.cfg.resources.cpus, num_gpus=job.cfg.resources.gpus).remote(
                    train_command(job, resume), str(job.run_dir / "train.log"), env, os.getcwd()
                )
                running[ref] = (i, time.perf_counter())
                print(f"[seeds] {_who(job)}: {'resumed' if resume else 'started'}", file=sys.stderr, flush=True)
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, t0 = running.pop(ref)
                try:
                    code, tail = ray.get(ref)
                except Exception as e:  # the task itself died (node lost, killed)
                    code, tail = -1, f"{type(e).__name__}: {e}"
                wall = time.perf_counter() - t0
                if code == 0:
                    results[i] = SeedResult(jobs[i], "ok", wall)
                else:
                    last = [line for line in tail.strip().splitlines() if line.strip()][-1:] or [""]
                    results[i] = SeedResult(jobs[i], "failed", wall, f"exit status {code}: {last[0][:300]}")
                r = results[i]
                print(f"[seeds] {_who(jobs[i])}: {r.status} in {wall:.0f} s {r.reason}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"[seeds] stopping: cancelling {len(running)} running seed(s); they keep their checkpoints", file=sys.stderr, flush=True)
        for ref in running:
            ray.cancel(ref)  # KeyboardInterrupt in the task: _run_seed ends its training process group
        ray.wait(list(running), num_returns=len(running), timeout=30)
        raise
    finally:
        stop.restore()
    return [results[i] for i in range(len(jobs))]


def _who(job: Job) -> str:
    return f"{job.cell} seed {job.seed}" if job.cell else f"seed {job.seed}"


def seed_report(run_dir: Path, tag: str) -> dict:
    """From a seed's metrics.jsonl: its last step, the last value of `tag`, and the alerts it raised (name -> first step)."""
    path = run_dir / "metrics.jsonl"
    out: dict = {"last_step": None, "final": None, "alerts": {}}
    if not path.exists():
        return out
    for row in read_metrics(run_dir):
        out["last_step"] = row["step"]
        if tag in row:
            out["final"] = row[tag]
        for k, v in row.items():
            if k.startswith("alerts/") and v:
                out["alerts"].setdefault(k.removeprefix("alerts/"), row["step"])
    return out


def print_results(results: list[SeedResult], title: str, wall_s: float, tag: str = "eval/heldout/greedy_pass_rate") -> None:
    from rich.console import Console
    from rich.table import Table

    cells = any(r.job.cell for r in results)
    table = Table(title=f"{title}: {len(results)} seeds in {wall_s:.0f} s")
    for col in ("cell",) * cells + ("seed", "status", "wall s", "last step", tag, "alerts (first step)", "reason"):
        table.add_column(col)
    for r in results:
        rep = seed_report(r.job.run_dir, tag)
        alerts = ", ".join(f"{k} ({s})" for k, s in rep["alerts"].items())
        table.add_row(*[r.job.cell] * cells, str(r.seed), r.status, f"{r.wall_s:.0f}" if r.wall_s else "-",
                      str(rep["last_step"]) if rep["last_step"] is not None else "-",
                      f"{rep['final']:.3f}" if rep["final"] is not None else "-", alerts or "-", r.reason)
    Console(stderr=True, width=None if sys.stderr.isatty() else 220).print(table)  # a log file: whole rows


def value_at(run_dir: Path, tag: str, step: int) -> float | None:
    """`tag` as the seed logged it at `step` (None: not logged there)."""
    if not (run_dir / "metrics.jsonl").exists():
        return None
    return next((row[tag] for row in read_metrics(run_dir) if row["step"] == step and tag in row), None)


def extend(experiment_dir: str, top: int, by: str, steps: int, max_parallel: int | None = None, address: str | None = None):
    """Continue the `top` best seeds for exactly `steps` more steps each, from its newest checkpoint and
    under its own config. Seeds are ranked by `by` (`[max:|min:]TAG`) at the largest step every seed
    logged it. A seed stopped early (culled) continues its own LR schedule; one that finished gets a
    schedule recomputed for its new total."""
    from rlvr.checkpoint import latest_checkpoint
    from rlvr.compare import parse_metric

    if steps <= 0:
        raise ValueError(f"--steps must be > 0, got {steps}")
    root = Path(experiment_dir).resolve()
    dirs = {int(m.group(1)): d for d in root.iterdir() if (m := re.match(r"^seed_(\d+)$", d.name)) and (d / "config.yaml").exists()}
    if not dirs:
        raise FileNotFoundError(f"{root}: no seed_<k>/ runs with a config.yaml")
    tag, sign = parse_metric(by)
    logged = {s: {row["step"]: row[tag] for row in read_metrics(d) if tag in row} for s, d in dirs.items() if (d / "metrics.jsonl").exists()}
    logged = {s: v for s, v in logged.items() if v}
    if not logged:
        raise ValueError(f"no seed in {root} has logged {tag!r}")
    common = set.intersection(*(set(v) for v in logged.values()))
    if not common:
        raise ValueError(f"the seeds of {root} share no step at which they all logged {tag!r}")
    at = max(common)
    chosen = sorted(logged, key=lambda s: (-sign * logged[s][at], s))[:top]
    jobs, said = [], []
    for s in chosen:
        d = dirs[s]
        ckpt = latest_checkpoint(d)
        if ckpt is None:
            raise ValueError(f"seed {s} of {root} has no readable checkpoint to continue from")
        start = int(ckpt.name.removeprefix("step_"))
        place = ["--output_dir", str(root.parent), "--name", root.name]
        planned = load_config(d / "config.yaml", place).train.steps
        target = start + steps
        if target <= planned:  # a seed stopped early: on along its own schedule
            length = ["--train.stop_at", str(target if target < planned else 0)]
        else:
            length = ["--train.steps", str(target), "--train.stop_at", "0"]
        overrides = [*place, *length]
        jobs.append(Job(str(d / "config.yaml"), load_config(d / "config.yaml", overrides), s, overrides))
        said.append(f"seed {s} ({tag} = {logged[s][at]:.3f}) from step {start} to {target}")
    print(f"[seeds] ranked by {by} at step {at}, the largest step every seed logged it; extending " + ", ".join(said), file=sys.stderr)
    # the same command again would add `steps` more to every chosen seed: what finishes this extension is written down
    plan = {"ranked_by": by, "at_step": at, "steps": steps, "resume": {str(j.seed): train_command(j, resume=True) for j in jobs}}
    (root / "extend.json").write_text(json.dumps(plan, indent=2))
    return jobs, launch(jobs, max_parallel=max_parallel, address=address)


def successive_halving(jobs: list[Job], every: int, metric: str, max_parallel: int | None = None,
                       address: str | None = None) -> tuple[list[SeedResult], list[dict]]:
    """Early culling: run every seed to step `every`, keep the better half by `metric` (`[max:|min:]TAG`,
    each seed's value at that step: the held-out evaluation the stop makes), run those to `2 * every`, and so
    on; the last survivor(s) run to the end. Stopped seeds keep resumable checkpoints (`rlvr seeds extend`)."""
    from rlvr.compare import parse_metric

    tag, sign = parse_metric(metric)
    steps = jobs[0].cfg.train.steps
    survivors, stop, rounds = list(jobs), every, []
    results: dict[int, SeedResult] = {}
    while stop < steps and len(survivors) > 1:
        extra = ["--train.stop_at", str(stop)]
        stopped = [Job(j.config, j.cfg, j.seed, [*j.overrides, *extra], j.cell) for j in survivors]
        for r in launch(stopped, max_parallel, address):
            results[r.seed] = r
        alive = [j for j in survivors if results[j.seed].status != "failed"]
        scores = {j.seed: value_at(j.run_dir, tag, stop) for j in alive}
        unscored = [s for s, v in scores.items() if v is None]
        if alive and len(unscored) == len(alive):
            raise LaunchError(f"--halving-metric {tag!r}: no seed logged it at step {stop}, so none can be ranked (a held-out "
                              "metric is logged where the stop evaluates; a training metric every step)")
        if unscored:
            print(f"[seeds] seeds {unscored} did not log {tag} at step {stop}: ranked last", file=sys.stderr)
        ranked = sorted(alive, key=lambda j: (scores[j.seed] is None, -sign * (scores[j.seed] or 0.0), j.seed))
        keep = ranked[: max(1, (len(ranked) + 1) // 2)]
        culled = [j.seed for j in ranked[len(keep):]]
        rounds.append({"step": stop, "scores": scores, "kept": [j.seed for j in keep], "culled": culled})
        print(f"[seeds] halving at step {stop}: kept {rounds[-1]['kept']}, culled {culled} by {metric} at step {stop}", file=sys.stderr)
        for j in ranked[len(keep):]:
            results[j.seed] = SeedResult(j, f"culled at {stop}")
        survivors, stop = keep, stop * 2
    for r in launch(survivors, max_parallel, address):
        results[r.seed] = r
    return [results[j.seed] for j in jobs], rounds


# ---------------------------------------------------------------------------- sweeps


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`ppo.lr=1e-6,3e-6` ... -> [("ppo.lr", ["1e-6", "3e-6"]), ...]"""
    grid = []
    for item in items:
        key, eq, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key.strip() or not vals:
            raise ValueError(f"--grid: cannot read {item!r} (use e.g. ppo.lr=1e-6,3e-6)")
        grid.append((key.strip().removeprefix("--"), vals))
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--grid: a field is given twice: {keys}")
    for key, vals in grid:
        if key in ("seed", "name", "output_dir"):
            raise ValueError(f"--grid: {key} is set by the sweep itself (--seeds, and one folder per cell)")
        if len(set(vals)) != len(vals):
            raise ValueError(f"--grid: {key} lists a value twice: {vals}")
    return grid


def sweep_jobs(config: str, grid: list[tuple[str, list[str]]], seeds: list[int], overrides: list[str]) -> tuple[Path, list[Job]]:
    """The grid's cells × seeds. Cell `k1=v1,k2=v2` runs in <output_dir>/<name>/<cell>/seed_<k>/, so that
    the sweep's folder is a folder of experiments (`rlvr compare` groups by cell). Every cell's config is
    read now: a bad key or value is an error before anything starts."""
    import itertools

    base = load_config(config, overrides)
    root = (Path(base.output_dir) / base.name).resolve()
    jobs, cells = [], set()
    for values in itertools.product(*(vals for _, vals in grid)):
        cell = re.sub(r"[^\w.=,+-]", "_", ",".join(f"{k}={v}" for (k, _), v in zip(grid, values)))
        if cell in cells:
            raise ValueError(f"--grid: two cells would share the folder {cell!r} (values that differ only in characters a folder name cannot hold)")
        cells.add(cell)
        cell_overrides = [*overrides, *(x for (k, _), v in zip(grid, values) for x in (f"--{k}", v)), "--output_dir", str(root), "--name", cell]
        jobs += seed_jobs(config, seeds, cell_overrides, cell)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.json").write_text(json.dumps({"config": config, "overrides": overrides, "grid": dict(grid), "seeds": seeds}, indent=2))
    return root, jobs


def write_aggregates(jobs: list[Job]) -> None:
    """Each experiment's mean and 95% band of the headline tags as TensorBoard runs (`<experiment>/aggregate/*`),
    as `rlvr compare` writes them, so that `tensorboard --logdir runs` draws them after a launch too."""
    from rlvr.compare import find_experiments, write_aggregate_runs
    from rlvr.runlog import HEADLINE

    tags = [t for tags in HEADLINE.values() for t in tags]
    for root in sorted({j.run_dir.parent for j in jobs}):
        if any(root.glob("seed_*/events.out.tfevents.*")):
            for exp in find_experiments([str(root)]).values():
                write_aggregate_runs(exp, tags)
