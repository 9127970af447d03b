"""`rlvr` command line: `rlvr train --config experiments/tiny/kinds.yaml [--resume] [--ppo.kl_coef 0.02 ...]`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _env_defaults() -> None:
    # vLLM in-process (seconds to start; weights sync by a direct call), no torch.compile.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import warnings

    import transformers

    # our own progress bar and summary say what happens; per-file load/save bars and the
    # "score head newly initialised" report (the critic's head is meant to be new) do not
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")


def _fail(msg: str) -> int:
    print(f"rlvr: error: {msg}", file=sys.stderr)
    return 2


def _config(args, overrides: list[str], cls_name: str = "Config"):
    """The command's config (YAML + dotted overrides), or None after a one-line error."""
    from rlvr import config
    from rlvr.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, overrides, cls=getattr(config, cls_name))
    except ConfigError as e:
        _fail(str(e))
        return None
    _env_defaults()
    return cfg


def cmd_train(args, overrides: list[str]) -> int:
    if (cfg := _config(args, overrides)) is None:
        return 2
    if cfg.learner.world_size > 1 and "WORLD_SIZE" not in os.environ:
        # N learner ranks: the same command in N processes (rank 0 runs the loop, the others follow it)
        flags = ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cfg.learner.world_size)]
        return subprocess.run([*cmd, "-m", "rlvr.cli", "train", "--config", args.config, *flags, *overrides]).returncode
    from rlvr.backends import NonFiniteError
    from rlvr.checkpoint import CheckpointError
    from rlvr.config import ConfigError
    from rlvr.data import DataError
    from rlvr.models import ResourceError
    from rlvr.monitors import VerifierFailure
    from rlvr.rollouts.actors import EngineError
    from rlvr.runlock import RunLockedError
    from rlvr.trainer import RunExistsError, print_summary, train

    try:
        summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    # a run that could not start, or that stopped itself (NaNs, a failing verifier, no disk room): its checkpoints stand
    except (ConfigError, ResourceError, DataError, RunExistsError, RunLockedError, FileNotFoundError, NonFiniteError, VerifierFailure,
            CheckpointError) as e:
        return _fail(str(e))
    except EngineError as e:  # an engine actor died or missed its timeout: the checkpoints stand
        return _fail(f"{e}\nresume from the newest checkpoint with: rlvr train --config {args.config} ... --resume")
    finally:
        import torch.distributed

        if torch.distributed.is_initialized():  # several learner ranks: leave the group together
            torch.distributed.destroy_process_group()
    if not summary:  # a learner rank other than 0
        return 0
    print_summary(summary)
    print(f"run folder: {cfg.run_dir}", file=sys.stderr)
    return 0


def cmd_stage(args, overrides: list[str]) -> int:
    if (cfg := _config(args, overrides, "StageConfig")) is None:
        return 2
    from rlvr.config import ConfigError
    from rlvr.data import DataError
    from rlvr.stages.lm import StageError

    try:
        if args.command == "dpo":
            from rlvr.stages.dpo import train_dpo

            summary = train_dpo(cfg, resume=args.resume, progress=not args.no_progress)
        else:
            from rlvr.stages.lm import train_lm

            summary = train_lm(cfg, args.command, resume=args.resume, progress=not args.no_progress)
    except (StageError, DataError, FileNotFoundError, ConfigError) as e:
        return _fail(str(e))
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


def cmd_recipe(args, overrides: list[str]) -> int:
    if args.seeds:
        from rlvr.seeds import parse_seeds

        try:
            overrides = [*overrides, "--seeds", json.dumps(parse_seeds(args.seeds))]
        except ValueError as e:
            return _fail(str(e))
    if (cfg := _config(args, overrides, "RecipeConfig")) is None:
        return 2
    from rlvr.stages.recipe import RecipeError, run_recipe

    try:
        run_recipe(cfg, max_parallel=args.max_parallel, address=args.address, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("rlvr: recipe stopped; run the same command again to resume its chains", file=sys.stderr)
        return 130
    except RecipeError as e:
        return _fail(str(e))
    print(f"results: {cfg.run_dir / 'results.json'}, plot: {cfg.run_dir / 'stages.png'}", file=sys.stderr)
    return 0


def cmd_bestofn(args, overrides: list[str]) -> int:
    if (cfg := _config(args, overrides, "BestOfNConfig")) is None:
        return 2
    from rlvr.baselines.bestofn import run_best_of_n
    from rlvr.data import DataError

    try:
        run_best_of_n(cfg, progress=not args.no_progress)
    except (DataError, OSError) as e:
        return _fail(str(e))
    print(f"run folder: {cfg.run_dir}", file=sys.stderr)
    return 0


def cmd_rft(args, overrides: list[str]) -> int:
    if (cfg := _config(args, overrides, "RFTConfig")) is None:
        return 2
    from rlvr.baselines.rft import run_rft
    from rlvr.config import ConfigError
    from rlvr.data import DataError
    from rlvr.trainer import RunExistsError

    try:
        summary = run_rft(cfg, resume=args.resume, progress=not args.no_progress)
    except (DataError, RunExistsError, OSError, ConfigError) as e:
        return _fail(str(e))
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


def _launched(results, title: str, wall_s: float, again: str = "run the same command again to resume them") -> int:
    from rlvr.seeds import print_results

    print_results(results, title, wall_s)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        who = ", ".join(f"{r.job.cell} seed {r.seed}" if r.job.cell else str(r.seed) for r in failed)
        print(f"rlvr: {len(failed)} of {len(results)} seeds failed ({who}); {again}", file=sys.stderr)
        return 1
    return 0


def _launch(start, again: str = "run the same command again to resume them") -> tuple[list | None, int]:
    """Run `start()` (which launches seeds): its results, or None and the exit status after a one-line error."""
    from rlvr.config import ConfigError
    from rlvr.seeds import LaunchError

    try:
        return start(), 0
    except KeyboardInterrupt:
        print(f"rlvr: seeds stopped; {again}", file=sys.stderr)
        return None, 130
    except (LaunchError, ConfigError, ValueError, FileNotFoundError) as e:
        return None, _fail(str(e))


def cmd_seeds(args, overrides: list[str]) -> int:
    from rlvr.config import ConfigError, load_config
    from rlvr.seeds import launch, parse_seeds, seed_jobs, successive_halving, write_aggregates

    try:
        seeds = parse_seeds(args.seeds)
        cfg = load_config(args.config, overrides)
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    jobs = seed_jobs(args.config, seeds, overrides)
    t = time.perf_counter()
    if args.halving_every > 0:
        results, code = _launch(lambda: successive_halving(jobs, args.halving_every, args.halving_metric, args.max_parallel, args.address)[0])
    else:
        results, code = _launch(lambda: launch(jobs, max_parallel=args.max_parallel, address=args.address))
    if results is None:
        return code
    write_aggregates(jobs)
    return _launched(results, cfg.name, time.perf_counter() - t)


def cmd_seeds_extend(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlvr seeds extend", description="continue the best seeds of an experiment")
    p.add_argument("experiment", help="the experiment folder, e.g. runs/kinds")
    p.add_argument("--top", type=int, required=True, help="how many of the best seeds")
    p.add_argument("--by", default="max:eval/heldout/greedy_pass_rate",
                   help="max:TAG or min:TAG, the metric that ranks seeds (at the largest step every seed logged it)")
    p.add_argument("--steps", type=int, required=True, help="more steps for each chosen seed, from its newest checkpoint")
    p.add_argument("--max-parallel", type=int)
    p.add_argument("--address")
    args = p.parse_args(argv)
    from rlvr.seeds import extend

    t = time.perf_counter()
    # the same extend command again would add N more steps to every chosen seed: an unfinished one resumes to its own target
    again = f"each resumes to its own target with its command in {args.experiment}/extend.json (not this command again: it would add more steps)"
    out, code = _launch(lambda: extend(args.experiment, args.top, args.by, args.steps, args.max_parallel, args.address), again)
    return code if out is None else _launched(out[1], args.experiment, time.perf_counter() - t, again)


def cmd_sweep(args, overrides: list[str]) -> int:
    from rlvr.config import ConfigError
    from rlvr.seeds import launch, parse_grid, parse_seeds, sweep_jobs, write_aggregates

    try:
        root, jobs = sweep_jobs(args.config, parse_grid(args.grid), parse_seeds(args.seeds), overrides)
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    t = time.perf_counter()
    results, code = _launch(lambda: launch(jobs, max_parallel=args.max_parallel, address=args.address))
    if results is None:
        return code
    write_aggregates(jobs)
    code = _launched(results, str(root), time.perf_counter() - t)
    print(f"compare the cells: rlvr compare {root}", file=sys.stderr)
    return code


def cmd_compare(args) -> int:
    from rlvr.compare import CompareError, compare

    try:
        compare(args.runs, args.metric, args.out, at_step=args.at_step, pool=args.pool_steps, power=args.power)
    except (FileNotFoundError, CompareError) as e:
        return _fail(str(e))
    print(f"written: {args.out}/compare.json, compare.csv, *.png", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from rlvr.verifiers import UnknownVerifierError
    from rlvr.verify_cli import VerifyInputError, run

    try:
        return run(args)
    except (VerifyInputError, UnknownVerifierError, FileNotFoundError) as e:
        return _fail(str(e))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["seeds", "extend"]:
        return cmd_seeds_extend(argv[2:])
    parser = argparse.ArgumentParser(prog="rlvr", description="Reinforcement learning with verifiable rewards.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a policy with PPO against verifiers (one seed)")
    p.add_argument("--config", required=True, help="experiment YAML (e.g. experiments/tiny/kinds.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = "Any config field can be overridden by its dotted name: --ppo.kl_coef 0.02 --seed 1"
    for stage, text in (
        ("pretrain", "pretrain a causal LM on text (packed sequences)"),
        ("sft", "supervised fine-tuning on chat data (loss on assistant tokens only)"),
        ("dpo", "direct preference optimisation (pairs from a file, or sampled on-policy and verified)"),
    ):
        sp = sub.add_parser(stage, help=text)
        sp.add_argument("--config", required=True, help="stage YAML (see experiments/tiny/recipe.yaml)")
        sp.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = sub.add_parser("recipe", help="chains of pretrain -> sft -> dpo -> RLVR, one per seed, in parallel -> evaluation")
    r.add_argument("--config", required=True, help="recipe YAML (e.g. experiments/tiny/recipe.yaml)")
    r.add_argument("--seeds", help="the chains, e.g. 0-4 (default: the config's seeds)")
    r.add_argument("--max-parallel", type=int, help="chains running at once (default: all of them, the cores shared among them)")
    r.add_argument("--address", help="join a Ray cluster (e.g. auto); default: a local cluster")
    r.add_argument("--no-progress", action="store_true", help="no line as each chain's stage finishes")
    b = sub.add_parser("bestofn", help="best-of-n with a verifier: pass@k and maj@k of a checkpoint on a prompt set")
    b.add_argument("--config", help="YAML (e.g. experiments/tiny/bestofn.yaml); fields can also be given as flags")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    f = sub.add_parser("rft", help="rejection-sampling fine-tuning: sample, keep verified completions, fine-tune, repeat")
    f.add_argument("--config", help="YAML (e.g. experiments/tiny/rft.yaml); fields can also be given as flags")
    f.add_argument("--resume", action="store_true", help="skip the rounds already finished")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    sd = sub.add_parser("seeds", help="run one experiment for many seeds in parallel on Ray (also: seeds extend --help)")
    sd.add_argument("--config", required=True, help="experiment YAML")
    sd.add_argument("--seeds", required=True, help="e.g. 0-7 or 0,2,5")
    sd.add_argument("--halving-every", type=int, default=0, help="successive halving: cull half the seeds at this step, twice it, ... (off: 0)")
    sd.add_argument("--halving-metric", default="max:eval/heldout/greedy_pass_rate", help="max:TAG or min:TAG: who stays (its value at the round's step)")
    sw = sub.add_parser("sweep", help="a grid of configs x seeds as one Ray job; each cell an experiment folder")
    sw.add_argument("--config", required=True, help="experiment YAML")
    sw.add_argument("--grid", nargs="+", required=True, help="field=v1,v2 ... (e.g. ppo.lr=1e-6,3e-6 algo.baseline=grpo,gae)")
    sw.add_argument("--seeds", required=True, help="e.g. 0-4")
    for p_ in (sd, sw):
        p_.add_argument("--max-parallel", type=int, help="seeds running at once (default: as many as Ray's resources allow)")
        p_.add_argument("--address", help="join a Ray cluster (e.g. auto; its nodes must share the run folder); default: a local cluster")
    cp = sub.add_parser("compare", help="statistics across seeds and experiments from TensorBoard event files")
    cp.add_argument("runs", nargs="+", help="experiment folders (holding seed_<k>/) or seed folders")
    cp.add_argument("--metric", action="append", help="TensorBoard tag, or min:TAG when lower is better (repeatable); default: held-out pass rates, reward/mean")
    cp.add_argument("--at-step", type=int, help="compare every seed at this step (default: the largest step every seed logged)")
    cp.add_argument("--pool-steps", action="store_true", help="let seeds short of the step count with their last value before it (values from different steps)")
    cp.add_argument("--power", type=float, metavar="DELTA", help="seeds per method needed to tell two methods apart by DELTA (80%% power)")
    cp.add_argument("--out", default="compare_out", help="folder for compare.json, compare.csv and plots")
    v = sub.add_parser("verify", help="score completions in a JSONL file with the verifiers")
    v.add_argument("--input", required=True, help="JSONL rows with completion, ground_truth, verifier")
    v.add_argument("--output", help="JSONL out (default: stdout): each row plus score, status, info")
    v.add_argument("--verifier", help="use this verifier for every row")
    v.add_argument("--workers", type=int, default=2, help="worker processes (0: in this process, no time limit)")
    v.add_argument("--timeout-s", type=float, default=5.0, help="wall-clock limit per row")
    v.add_argument("--verifier-file", action="append", help="a .py file that registers verifiers (repeatable)")
    for sp in sub.choices.values():
        sp.allow_abbrev = False  # `--n 8` is the config field n, not an abbreviation of --no-progress
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return cmd_train(args, rest)
    if args.command in ("pretrain", "sft", "dpo"):
        return cmd_stage(args, rest)
    if args.command == "recipe":
        return cmd_recipe(args, rest)
    if args.command == "seeds":
        return cmd_seeds(args, rest)
    if args.command == "sweep":
        return cmd_sweep(args, rest)
    if args.command == "bestofn":
        return cmd_bestofn(args, rest)
    if args.command == "rft":
        return cmd_rft(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "compare":
        return cmd_compare(args)
    return cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main())
