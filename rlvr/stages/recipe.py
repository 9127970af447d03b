"""`rlvr recipe`: the Tulu 3 / OLMo 2 recipe in miniature, one command.

pretrain -> SFT -> DPO (on-policy pairs scored by the verifiers) -> RLVR (PPO, several seeds)
-> held-out evaluation of every stage's final model (greedy pass@1 and pass@k at temperature 1)
-> a table in the terminal, `results.json` and `stages.png` in `runs/<recipe>/`.

Each stage runs as its own `rlvr <stage>` process with a config written to
`runs/<recipe>/configs/`, so a stage is exactly what a user would run by hand. Running the recipe
again skips finished stages and resumes an interrupted one from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from rlvr.config import RecipeConfig, to_yaml


class RecipeError(RuntimeError):
    pass


def stage_configs(cfg: RecipeConfig) -> dict[str, object]:
    """The resolved config of every stage, chained: each starts from the previous stage's final model."""
    root = str(cfg.run_dir)
    pre = dataclasses.replace(cfg.pretrain, name="pretrain", output_dir=root, model=cfg.model)
    chained = lambda stage: dataclasses.replace(stage.model, name_or_path=str(Path(root) / stage.name / "seed_0" / "final"))  # noqa: E731
    sft = dataclasses.replace(cfg.sft, name="sft", output_dir=root, model=chained(pre))
    dpo = dataclasses.replace(cfg.dpo, name="dpo", output_dir=root, model=chained(sft))
    out: dict[str, object] = {"pretrain": pre, "sft": sft, "dpo": dpo}
    for seed in cfg.seeds:
        out[f"rlvr_seed_{seed}"] = dataclasses.replace(cfg.rlvr, name="rlvr", seed=seed, output_dir=root, model=chained(dpo))
    return out


def _run(command: list[str], label: str) -> None:
    t = time.perf_counter()
    print(f"[recipe] {label}: {' '.join(command[3:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(command)
    if proc.returncode != 0:
        raise RecipeError(f"stage {label} failed (exit status {proc.returncode}); rerun the recipe to resume it")
    print(f"[recipe] {label} done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


def run_recipe(cfg: RecipeConfig, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    configs = stage_configs(cfg)
    (cfg.run_dir / "configs").mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "recipe.yaml").write_text(to_yaml(cfg))
    timings: dict[str, float] = {}
    for label, stage_cfg in configs.items():
        run_dir = stage_cfg.run_dir
        if (run_dir / "summary.json").exists():
            print(f"[recipe] {label}: finished earlier, skipped", file=sys.stderr)
            continue
        path = cfg.run_dir / "configs" / f"{label}.yaml"
        path.write_text(to_yaml(stage_cfg))
        command = "train" if label.startswith("rlvr") else label
        args = [sys.executable, "-m", "rlvr.cli", command, "--config", str(path)]
        if (run_dir / "config.yaml").exists():
            args.append("--resume")
        if not progress:
            args.append("--no-progress")
        t = time.perf_counter()
        _run(args, label)
        timings[label] = round(time.perf_counter() - t, 1)

    # held-out evaluation of every stage's final model, one engine for all
    from rlvr.data import normalize_rows
    from rlvr.stages.evaluate import evaluate_checkpoints, plot_stages
    from rlvr.tasks import make_task
    from rlvr.verifiers import load_verifier_file

    rl0: object = next(c for k, c in configs.items() if k.startswith("rlvr"))
    if not rl0.data.task:
        raise RecipeError("the recipe evaluates on rlvr.data.task's held-out split; set rlvr.data.task")
    for path in rl0.verifier_files:
        load_verifier_file(path)
    _, heldout = make_task(rl0.data.task, 1, cfg.eval.num_prompts, seed=0)
    rows = normalize_rows(heldout, "held-out")
    checkpoints = {label: str(c.run_dir / "final") for label, c in configs.items() if not label.startswith("rlvr")}
    for label, c in configs.items():
        if label.startswith("rlvr"):
            checkpoints[label] = str(_last_checkpoint(c.run_dir) / "policy")
    t = time.perf_counter()
    print("[recipe] evaluating every stage on the held-out split", file=sys.stderr, flush=True)
    per_model = evaluate_checkpoints(
        checkpoints, rows, k=cfg.eval.k, max_new_tokens=cfg.eval.max_new_tokens, seed=0,
        verify=rl0.verify, verifier_files=rl0.verifier_files, max_prompt_tokens=rl0.data.max_prompt_tokens,
    )
    timings["eval"] = round(time.perf_counter() - t, 1)
    seeds = {label: m for label, m in per_model.items() if label.startswith("rlvr")}
    stages = {label: m for label, m in per_model.items() if not label.startswith("rlvr")}
    numeric = [k for k, v in next(iter(seeds.values())).items() if isinstance(v, float)]
    stages["rlvr"] = {k: sum(m[k] for m in seeds.values()) / len(seeds) for k in numeric}
    result = {
        "recipe": cfg.name,
        "heldout_prompts": len(rows),
        "k": cfg.eval.k,
        "stages": stages,
        "rlvr_seeds": seeds,
        "timings_s": timings,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (cfg.run_dir / "results.json").write_text(json.dumps(result, indent=2))
    plot_stages(stages, {s: m["pass@1"] for s, m in seeds.items()}, cfg.run_dir / "stages.png", cfg.eval.k)
    print_table(result)
    return result


def _last_checkpoint(run_dir: Path) -> Path:
    from rlvr.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir)
    if last is None:
        raise RecipeError(f"{run_dir} has no checkpoint")
    return last


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    k = result["k"]
    verifiers = sorted({key.split("/")[0] for m in result["stages"].values() for key in m if key.endswith("/pass@1")})
    table = Table(title=f"{result['recipe']}: held-out ({result['heldout_prompts']} prompts), {result['wall_s']:.0f} s in all")
    for col in ["stage", "pass@1", f"pass@{k}", *[f"{v} pass@1" for v in verifiers]]:
        table.add_column(col, justify="left" if col == "stage" else "right")

    def row(label: str, m: dict, style: str | None = None) -> None:
        table.add_row(label, f"{m['pass@1']:.3f}", f"{m[f'pass@{k}']:.3f}", *[f"{m.get(f'{v}/pass@1', float('nan')):.3f}" for v in verifiers], style=style)

    for label, m in result["stages"].items():
        row(label + (" (mean of seeds)" if label == "rlvr" else ""), m, "bold" if label == "rlvr" else None)
    for label, m in result["rlvr_seeds"].items():
        row("  " + label.replace("rlvr_", ""), m, "dim")
    Console(stderr=True).print(table)
