"""`rlvr recipe`: the Tulu 3 / OLMo 2 recipe in miniature, as seeds.

Each seed is a chain: pretrain -> SFT -> DPO (on-policy pairs scored by the verifiers) -> RLVR (PPO),
every stage seeded by the chain's seed and started from the chain's previous stage. One pass through
the stages is one draw; the recipe's claims are about the distribution of draws, so the chains run in
parallel on Ray (one task per chain, as `rlvr seeds` runs seeds) and every claim comes with an
interval across them.

Layout: stage `s` of chain `c` is the run `runs/<recipe>/<s>/seed_<c>/` (so `rlvr compare
runs/<recipe>/sft runs/<recipe>/dpo` works too), its config in `runs/<recipe>/configs/`, its output in
its `train.log`. Each stage is a process of its own, exactly the command a user would run by hand.
Running the recipe again skips finished stages and resumes an interrupted one from its checkpoints.

Then every chain's every stage is evaluated on the same held-out prompts (greedy pass@1, pass@k at
temperature 1; one vLLM engine for all), and the table reports per stage the mean over chains with a
95% t-interval, and each stage's change from the one before, paired by chain (the difference within
each chain, then its t-interval): "did DPO help?" is answered with an interval. With 3 to 5 chains
the t-interval is the honest choice (rlvr/stats.py: t_interval). `results.json`, `stages.png`
(every chain, and the intervals) and TensorBoard runs `heldout/seed_<c>` and `heldout/aggregate/*`
(x = stage: 0 pretrain, 1 sft, 2 dpo, 3 rlvr) are written beside the stages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from rlvr.config import RecipeConfig, to_yaml

STAGES = ("pretrain", "sft", "dpo", "rlvr")


class RecipeError(RuntimeError):
    pass


def chain_configs(cfg: RecipeConfig, seed: int) -> dict[str, object]:
    """The resolved config of every stage of chain `seed`: each starts from the chain's previous stage's final model."""
    root = str(cfg.run_dir)
    final = lambda stage: dataclasses.replace(stage.model, name_or_path=str(Path(root) / stage.name / f"seed_{seed}" / "final"))  # noqa: E731
    pre = dataclasses.replace(cfg.pretrain, name="pretrain", seed=seed, output_dir=root, model=cfg.model)
    sft = dataclasses.replace(cfg.sft, name="sft", seed=seed, output_dir=root, model=final(pre))
    dpo = dataclasses.replace(cfg.dpo, name="dpo", seed=seed, output_dir=root, model=final(sft))
    rl = dataclasses.replace(cfg.rlvr, name="rlvr", seed=seed, output_dir=root, model=final(dpo))
    return {"pretrain": pre, "sft": sft, "dpo": dpo, "rlvr": rl}


def chain_commands(cfg: RecipeConfig, seed: int) -> list[tuple[str, list[str], str]]:
    """(stage, command, log path) of every stage of the chain not finished yet, in order."""
    out = []
    for stage, stage_cfg in chain_configs(cfg, seed).items():
        run_dir = stage_cfg.run_dir
        if (run_dir / "summary.json").exists():
            continue
        command = stage_command(stage, stage_cfg, cfg.run_dir / "configs" / f"{stage}_seed_{seed}.yaml")
        out.append((stage, command, str(run_dir / "train.log")))
    return out


def stage_command(stage: str, stage_cfg, path: Path) -> list[str]:
    """Writes the stage's config to `path`; the command that runs it, or resumes it where it has begun."""
    path.write_text(to_yaml(stage_cfg))
    command = [sys.executable, "-m", "rlvr.cli", "train" if stage == "rlvr" else stage, "--config", str(path.resolve())]
    return command + ["--resume"] * (stage_cfg.run_dir / "config.yaml").exists() + ["--no-progress"]  # the log is a file


def final_model(stage: str, run_dir: Path) -> str:
    """The model a finished stage leaves: its `final` folder; RLVR's last checkpoint's policy."""
    return str(_last_checkpoint(run_dir) / "policy") if stage == "rlvr" else str(run_dir / "final")


def heldout_rows(cfg: RecipeConfig) -> list[dict]:
    """The held-out prompts every stage is evaluated on: rlvr.data.task's held-out split (its verifier files loaded)."""
    from rlvr.data import normalize_rows
    from rlvr.tasks import make_task
    from rlvr.verifiers import load_verifier_file

    if not cfg.rlvr.data.task:
        raise RecipeError("the recipe evaluates on rlvr.data.task's held-out split; set rlvr.data.task")
    for path in cfg.rlvr.verifier_files:
        load_verifier_file(path)
    _, heldout = make_task(cfg.rlvr.data.task, 1, cfg.eval.num_prompts, seed=0)
    return normalize_rows(heldout, "held-out")


def evaluate_chain(cfg: RecipeConfig, checkpoints: dict[str, str], rows: list[dict]) -> dict[str, dict]:
    """One chain's models ({label: path}, one tokenizer) on the held-out rows, in one engine."""
    from rlvr.stages.evaluate import evaluate_checkpoints

    rl = cfg.rlvr
    return evaluate_checkpoints(
        checkpoints, rows, k=cfg.eval.k, max_new_tokens=cfg.eval.max_new_tokens, seed=0,
        verify=rl.verify, verifier_files=rl.verifier_files, max_prompt_tokens=rl.data.max_prompt_tokens,
    )


def chain_env(threads: int) -> dict[str, str]:
    """The environment of a chain's stage processes: `threads` threads each, on the CPU."""
    return {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}


def _run_chain(commands: list[tuple[str, list[str], str]], env: dict, cwd: str) -> tuple[str, int, str]:
    """Inside the chain's Ray task: its stages one after another; (the stage that failed or "", exit status, log tail)."""
    from rlvr.seeds import _run_seed

    for stage, cmd, log in commands:
        code, tail = _run_seed(cmd, log, env, cwd)
        if code != 0:
            return stage, code, tail
    return "", 0, ""


def run_chains(cfg: RecipeConfig, max_parallel: int | None = None, address: str | None = None, progress: bool = True) -> dict[int, str]:
    """Every chain to its end, in parallel on Ray; {seed: "" or why it failed}."""
    import ray

    todo = {s: chain_commands(cfg, s) for s in cfg.seeds}
    for s in cfg.seeds:
        if not todo[s]:
            print(f"[recipe] chain {s}: finished earlier, skipped", file=sys.stderr)
    todo = {s: c for s, c in todo.items() if c}
    if not todo:
        return {s: "" for s in cfg.seeds}
    from rlvr.rollouts.actors import ensure_ray

    ensure_ray(address)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    # Every chain at once by default (a third chain waiting for a core would run alone at the end, one core
    # idle), the cores shared out among them. The thread count follows from --seeds and --max-parallel alone,
    # so a chain resumed on its own runs at the count it started with (float sums follow the thread count).
    limit = max(1, min(max_parallel or len(cfg.seeds), len(cfg.seeds)))
    threads = max(1, int(cpus // limit))
    env = chain_env(threads)
    task = ray.remote(num_cpus=min(threads, cpus / limit), max_retries=0)(_run_chain)
    failed, queue, running = {s: "" for s in cfg.seeds}, list(todo), {}
    finished = {s: {st for st, c in chain_configs(cfg, s).items() if (c.run_dir / "summary.json").exists()} for s in todo}
    try:
        while queue or running:
            while queue and len(running) < limit:
                s = queue.pop(0)
                running[task.remote(todo[s], env, os.getcwd())] = (s, time.perf_counter())
                print(f"[recipe] chain {s}: {' -> '.join(stage for stage, _, _ in todo[s])}", file=sys.stderr, flush=True)
            done, _ = ray.wait(list(running), num_returns=1, timeout=5)
            for s, t0 in running.values() if progress else ():  # progress: each stage as it finishes
                for st, c in chain_configs(cfg, s).items():
                    if st not in finished[s] and (c.run_dir / "summary.json").exists():
                        finished[s].add(st)
                        print(f"[recipe] chain {s}: {st} done at {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            for ref in done:
                s, t0 = running.pop(ref)
                try:
                    stage, code, tail = ray.get(ref)
                except Exception as e:  # the task itself died
                    stage, code, tail = "?", -1, f"{type(e).__name__}: {e}"
                if code:
                    last = [line for line in tail.strip().splitlines() if line.strip()][-1:] or [""]
                    failed[s] = f"stage {stage} failed (exit status {code}): {last[0][:300]}"
                print(f"[recipe] chain {s}: {failed[s] or 'done'} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref)
        ray.wait(list(running), num_returns=len(running), timeout=30)
        raise
    return failed


def run_recipe(cfg: RecipeConfig, max_parallel: int | None = None, address: str | None = None, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    (cfg.run_dir / "configs").mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "recipe.yaml").write_text(to_yaml(cfg))
    failed = {s: why for s, why in run_chains(cfg, max_parallel, address, progress).items() if why}
    if failed:
        raise RecipeError("; ".join(f"chain {s}: {why}" for s, why in failed.items()) + "; run the recipe again to resume")
    chains_s = time.perf_counter() - t0

    # held-out evaluation of every chain's every stage, one engine per chain (each chain pretrains its own tokenizer)
    rows = heldout_rows(cfg)
    t = time.perf_counter()
    print(f"[recipe] evaluating {4 * len(cfg.seeds)} models on {len(rows)} held-out prompts", file=sys.stderr, flush=True)
    chains = {
        s: evaluate_chain(cfg, {stage: final_model(stage, c.run_dir) for stage, c in chain_configs(cfg, s).items()}, rows)
        for s in cfg.seeds
    }
    result = {
        "recipe": cfg.name,
        "heldout_prompts": len(rows),
        "k": cfg.eval.k,
        "seeds": list(cfg.seeds),
        **aggregate(chains),
        "chains": chains,
        "timings_s": {"chains": round(chains_s, 1), "eval": round(time.perf_counter() - t, 1)},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (cfg.run_dir / "results.json").write_text(json.dumps(result, indent=2))
    plot_chains(result, cfg.run_dir / "stages.png")
    write_tensorboard(result, cfg.run_dir / "heldout")
    print_table(result)
    return result


def aggregate(chains: dict[int, dict[str, dict]]) -> dict:
    """Per stage and metric: mean over chains, 95% t-interval, the chains' values; per step from one
    stage to the next: the same of the within-chain differences (paired by chain)."""
    from rlvr.stats import t_interval

    first = chains[next(iter(chains))]
    metrics = [k for k, v in first[STAGES[0]].items() if isinstance(v, float)]

    def summary(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "ci95": list(t_interval(values)), "values": values}

    stages = {st: {m: summary([chains[s][st][m] for s in chains]) for m in metrics} for st in STAGES}
    changes = {
        f"{a} -> {b}": {m: summary([chains[s][b][m] - chains[s][a][m] for s in chains]) for m in metrics}
        for a, b in zip(STAGES, STAGES[1:])
    }
    return {"stages": stages, "changes": changes}


def _last_checkpoint(run_dir: Path) -> Path:
    from rlvr.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir)
    if last is None:
        raise RecipeError(f"{run_dir} has no checkpoint")
    return last


def _columns(result: dict) -> list[str]:
    k = result["k"]
    verifiers = sorted({m.split("/")[0] for m in result["stages"]["sft"] if m.endswith("/pass@1")})
    return ["pass@1", f"pass@{k}", *[f"{v}/pass@1" for v in verifiers]]


def _cell(s: dict, signed: bool = False) -> str:
    lo, hi = s["ci95"]
    ci = "" if np.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]" if signed else f" [{lo:.3f}, {hi:.3f}]"
    return (f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}") + ci


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    cols = _columns(result)
    n = len(result["seeds"])
    table = Table(title=f"{result['recipe']}: held-out ({result['heldout_prompts']} prompts), mean over {n} chains [95% t-interval], "
                        f"{result['wall_s']:.0f} s in all")
    for col in ["stage", *cols]:
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, m in result["stages"].items():
        table.add_row(stage, *[_cell(m[c]) for c in cols])
    for step, m in result["changes"].items():
        table.add_row(f"  {step} (paired)", *[_cell(m[c], signed=True) for c in cols], style="bold")
    for s in result["seeds"]:
        table.add_row(f"  chain {s}", *[" ".join(f"{result['chains'][s][st][cols[0]]:.2f}" for st in STAGES)] + [""] * (len(cols) - 1), style="dim")
    console.print(table)
    console.print(f"chain rows: {cols[0]} of {', '.join(STAGES)}. A change's interval that holds 0 does not show that the stage helps (or hurts).",
                  soft_wrap=True, highlight=False)


def plot_chains(result: dict, path: Path) -> None:
    """Every chain's greedy pass@1 across the stages (thin lines), and per stage the mean with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(STAGES))
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in result["seeds"]:
        ax.plot(x, [result["chains"][s][st]["pass@1"] for st in STAGES], color="grey", alpha=0.5, linewidth=1, marker=".")
    for i, metric in enumerate(("pass@1", f"pass@{result['k']}")):
        m = [result["stages"][st][metric] for st in STAGES]
        mean = np.array([v["mean"] for v in m])
        lo, hi = np.array([v["ci95"][0] for v in m]), np.array([v["ci95"][1] for v in m])
        label = ("greedy pass@1" if i == 0 else f"{metric} (T = 1)") + f", mean of {len(result['seeds'])} chains, 95% CI"
        ax.errorbar(x + 0.05 * i, mean, yerr=[mean - lo, hi - mean] if not np.isnan(lo).any() else None, color=f"C{i}",
                    linewidth=2, capsize=4, marker="o", label=label)
    ax.set_xticks(x, STAGES)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out pass rate")
    ax.set_title("held-out verifier score by stage (grey: each chain's greedy pass@1)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_tensorboard(result: dict, root: Path) -> None:
    """One TensorBoard run per chain (`heldout/seed_<c>`: each metric at x = the stage's index) and the
    aggregate runs of their mean and 95% t-interval (`heldout/aggregate/*`), beside the stages' runs."""
    from rlvr.compare import Experiment, write_aggregate_runs
    from rlvr.runlog import write_runs
    from rlvr.stats import t_interval

    from rlvr.runlog import HEADLINE

    tags = {c: f"heldout/{c}" for c in _columns(result)}
    seeds = {s: {tags[c]: [(i, result["chains"][s][st][c]) for i, st in enumerate(STAGES)] for c in tags} for s in result["seeds"]}
    write_runs({root / f"seed_{s}": series for s, series in seeds.items()})
    write_aggregate_runs(Experiment(root.name, root, seeds), list(tags.values()), interval=t_interval)
    # the RLVR stage's chains as seeds of one experiment: reward, KL and held-out curves with their band
    from rlvr.compare import find_experiments

    for exp in find_experiments([str(root.parent / "rlvr")]).values():
        write_aggregate_runs(exp, [t for ts in HEADLINE.values() for t in ts])
