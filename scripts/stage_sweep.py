"""Variants of one stage of a finished recipe run, each from the same upstream models, evaluated as the recipe
evaluates: "would DPO at another learning rate have helped?" answered with a paired interval over the chains.

    .venv/bin/python scripts/stage_sweep.py runs/recipe_chatml dpo \\
        --variant lr5e-5 --optim.lr 5.0e-5 --optim.steps 40 \\
        --variant lr1e-5 --optim.lr 1.0e-5 --optim.steps 40 --train.checkpoint_every 10 --train.keep_checkpoints 4 \\
        [--checkpoints] [--seeds 0-2]

Stage `dpo` starts every chain's variant from that chain's SFT model, `rlvr` from its DPO model (`sft`
from its pretrained one). Each variant of chain `c` is the run `<recipe>/sweeps/<stage>/<variant>/seed_<c>/`,
trained by the stage's own command (`rlvr dpo` / `rlvr train` / `rlvr sft`) with the chain's resolved
config and the variant's overrides; a finished one is skipped, so the same command again only evaluates.
Then the upstream model, every variant's final model (and with --checkpoints every kept checkpoint before it) are
evaluated on the recipe's held-out prompts, one engine per chain. Printed: per model, the mean over chains
of greedy pass@1 and of each verifier's, and the change from the upstream model paired by chain with its
95% t-interval. Everything is written to `<recipe>/sweeps/<stage>/results.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from rlvr.checkpoint import list_checkpoints
from rlvr.config import RecipeConfig, load_config
from rlvr.seeds import parse_seeds
from rlvr.stages.recipe import STAGES, chain_configs, chain_env, evaluate_chain, final_model, heldout_rows, stage_command


def parse_variants(rest: list[str]) -> dict[str, list[str]]:
    variants: dict[str, list[str]] = {}
    name = None
    it = iter(rest)
    for arg in it:
        if arg == "--variant":
            name = next(it, None)
            if not name or name.startswith("-") or name in variants:
                raise SystemExit(f"--variant needs a new name, got {name!r}")
            variants[name] = []
        elif name is None:
            raise SystemExit(f"{arg!r} comes before any --variant NAME")
        else:
            variants[name].append(arg)
    if not variants:
        raise SystemExit("give at least one --variant NAME [--field value ...]")
    return variants


def train(cfg: RecipeConfig, stage: str, variants: dict[str, list[str]], seeds: list[int], out: Path) -> None:
    env = {**os.environ, **chain_env(max(1, (os.cpu_count() or 1) // len(seeds)))}  # as the recipe ran its chains, all at once
    for name, overrides in variants.items():
        procs = []
        for s in seeds:
            stage_cfg = dataclasses.replace(chain_configs(cfg, s)[stage], name=name, output_dir=str(out))
            if (stage_cfg.run_dir / "summary.json").exists():
                continue
            (out / "configs").mkdir(parents=True, exist_ok=True)
            cmd = stage_command(stage, stage_cfg, out / "configs" / f"{name}_seed_{s}.yaml") + overrides
            stage_cfg.run_dir.mkdir(parents=True, exist_ok=True)
            with open(stage_cfg.run_dir / "train.log", "a") as log:
                procs.append((s, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        for s, p in procs:
            if p.wait():
                raise SystemExit(f"{name} seed {s} failed (exit {p.returncode}); see {out / name / f'seed_{s}' / 'train.log'}")
        print(f"[sweep] {name}: trained", file=sys.stderr, flush=True)


def models(cfg: RecipeConfig, stage: str, variants: dict[str, list[str]], seed: int, out: Path, checkpoints: bool) -> dict[str, str]:
    upstream = STAGES[STAGES.index(stage) - 1]
    found = {upstream: chain_configs(cfg, seed)[stage].model.name_or_path}
    for name in variants:
        run = out / name / f"seed_{seed}"
        if checkpoints:  # the last one is the final model
            found.update({f"{name}@{int(p.name.removeprefix('step_'))}": str(p / "policy") for p in list_checkpoints(run)[:-1]})
        found[name] = final_model(stage, run)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="then one or more: --variant NAME [--section.field value ...] (the stage command's own overrides)")
    p.add_argument("recipe", help="the recipe's run folder, e.g. runs/recipe_chatml")
    p.add_argument("stage", choices=STAGES[1:])
    p.add_argument("--seeds", help="chains, e.g. 0-2 (default: the recipe's)")
    p.add_argument("--checkpoints", action="store_true", help="also evaluate every kept checkpoint of every variant")
    args, rest = p.parse_known_args()
    variants = parse_variants(rest)
    root = Path(args.recipe)
    if not (root / "recipe.yaml").exists():
        raise SystemExit(f"{root} has no recipe.yaml: give the run folder of a recipe (rlvr recipe writes one)")
    cfg = load_config(root / "recipe.yaml", cls=RecipeConfig)
    cfg = dataclasses.replace(cfg, output_dir=str(root.parent), name=root.name)  # the folder may have moved since
    seeds = parse_seeds(args.seeds) if args.seeds else list(cfg.seeds)
    out = root / "sweeps" / args.stage
    train(cfg, args.stage, variants, seeds, out)

    from rlvr.stats import t_interval

    rows = heldout_rows(cfg)
    results = {s: evaluate_chain(cfg, models(cfg, args.stage, variants, s, out, args.checkpoints), rows) for s in seeds}
    (out / "results.json").write_text(json.dumps({"variants": variants, "seeds": seeds, "chains": results}, indent=2))
    labels = list(results[seeds[0]])
    metrics = ["pass@1", *sorted(m for m in results[seeds[0]][labels[0]] if m.endswith("/pass@1"))]
    print(f"{len(rows)} held-out prompts, {len(seeds)} chains; change from {labels[0]} paired by chain, 95% t-interval")
    for label in labels:
        cells = []
        for m in metrics:
            vals = [results[s][label][m] for s in seeds]
            diffs = [results[s][label][m] - results[s][labels[0]][m] for s in seeds]
            lo, hi = t_interval(diffs)
            cells.append(f"{m} {np.mean(vals):.3f}" + ("" if label == labels[0] else f" ({np.mean(diffs):+.3f} [{lo:+.3f}, {hi:+.3f}])"))
        print(f"{label:16s} " + "  ".join(cells))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
