"""Synchronous vs asynchronous generation on the tiny task, and weight-sync time per transport, in one run.

    .venv/bin/python scripts/bench_actors.py [--seeds 0] [--steps 100] [--json]

Part 1 trains `experiments/tiny/baselines/grpo.yaml` once per mode and seed, one run at a time:
the engine in the trainer's process (`sync, in-process`), one engine actor synchronously
(`sync, 1 actor`) and one engine actor with `rollout.max_staleness: 1` (`async, 1 actor`; with
`algo.tis_cap: 2`). It reports seconds per step (mean of `time/step_s` over steps without an
evaluation), steps/s, where a step's time goes (generate, verify, learn, sync, and the wait for
rollouts that the learner did not overlap), the loop's time to held-out greedy pass >= 0.8 and
the final held-out greedy pass rate. Part 2 starts one engine actor on a ~17M-parameter model
and times `--pushes` weight pushes over each transport.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for key, value in {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TORCHDYNAMO_DISABLE": "1",
    "RAY_AUTH_MODE": "disabled",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(key, value)

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "sync, in-process": [],
    "sync, 1 actor": ["--rollout.num_engines", "1"],
    "async, 1 actor": ["--rollout.num_engines", "1", "--rollout.max_staleness", "1", "--algo.tis_cap", "2"],
}
PARTS = ("time/generate_s", "time/verify_s", "time/learn_s", "time/sync_s", "time/wait_rollouts_s")


def train_once(out: str, mode: str, seed: int, steps: int) -> dict:
    from rlvr.config import load_config
    from rlvr.trainer import train

    cfg = load_config(
        str(REPO / "experiments/tiny/baselines/grpo.yaml"),
        ["--output_dir", out, "--name", mode.replace(", ", "_").replace(" ", "_"), "--seed", str(seed), "--train.steps", str(steps), *MODES[mode]],
    )
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    plain = [r for r in rows[1:] if "eval/heldout/greedy_pass_rate" not in r]  # steps without an evaluation
    evals = [r for r in rows[1:] if "eval/heldout/greedy_pass_rate" in r]
    reach = next((r["time/elapsed_s"] for r in evals if r["eval/heldout/greedy_pass_rate"] >= 0.8), None)
    step_s = statistics.mean(r["time/step_s"] for r in plain)
    return {
        "mode": mode,
        "seed": seed,
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        **{p.removeprefix("time/"): statistics.mean(r[p] for r in plain) for p in PARTS},
        "staleness_mean": statistics.mean(r["rollout/staleness_mean"] for r in plain),
        "loop_s_to_greedy_0.8": reach,
        "final_greedy": evals[-1]["eval/heldout/greedy_pass_rate"],
    }


def sync_times(pushes: int) -> list[dict]:
    from rlvr.chat import train_word_tokenizer
    from rlvr.config import TinyModelConfig
    from rlvr.models import build_tiny_model
    from rlvr.rollouts.actors import EngineActors
    from rlvr.tasks import kinds_vocabulary

    out = Path(tempfile.mkdtemp(prefix="bench_actors_"))
    tok = train_word_tokenizer([" ".join(kinds_vocabulary())])
    model = build_tiny_model(TinyModelConfig(hidden_size=512, num_heads=16, num_layers=6, intermediate_size=1376, max_position_embeddings=512), tok, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    results = []
    for transport in ("distributed", "object_store"):
        engines = EngineActors(1, "vllm", str(out), dict(max_model_len=512, kv_cache_mb=64), transport=transport, timeout_s=60)
        try:
            times = []
            for v in range(1, pushes + 1):
                state["model.norm.weight"] += 1e-3  # a different version each time
                times.append(engines.push(iter(state.items()), v)["seconds"])
        finally:
            engines.close()
        med = statistics.median(times)
        results.append({"transport": transport, "mib": nbytes / 2**20, "median_s": med, "mib_per_s": nbytes / 2**20 / med, "params": sum(t.numel() for t in state.values())})
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0", help="comma-separated seeds for part 1")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES), help="part 1 modes, ';'-separated")
    ap.add_argument("--no-train", action="store_true", help="part 2 only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    out = tempfile.mkdtemp(prefix="bench_actors_runs_")
    runs = []
    modes = args.modes.split(";") if ";" in args.modes else [m for m in MODES if m in args.modes]
    for seed in [] if args.no_train else [int(s) for s in args.seeds.split(",")]:
        for mode in modes:
            runs.append(train_once(out, mode, seed, args.steps))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    pushes = sync_times(args.pushes)
    ray.shutdown()

    if runs:
        print(f"\nthe tiny GRPO task, {args.steps} steps, one run at a time (seconds per step over steps without an evaluation)")
        print(f"{'mode':18} {'seed':>4} {'s/step':>7} {'steps/s':>7} {'generate':>8} {'verify':>7} {'learn':>6} {'sync':>6} {'wait':>6} {'to 0.8':>7} {'final':>6}")
    for r in runs:
        reach = f"{r['loop_s_to_greedy_0.8']:.1f}" if r["loop_s_to_greedy_0.8"] is not None else "never"
        print(
            f"{r['mode']:18} {r['seed']:>4} {r['step_s']:7.3f} {r['steps_per_s']:7.2f} {r['generate_s']:8.3f} {r['verify_s']:7.3f} "
            f"{r['learn_s']:6.3f} {r['sync_s']:6.3f} {r['wait_rollouts_s']:6.3f} {reach:>7} {r['final_greedy']:6.2f}"
        )
    by_mode = {m: statistics.mean(r["steps_per_s"] for r in runs if r["mode"] == m) for m in {r["mode"] for r in runs}}
    if "sync, 1 actor" in by_mode and "async, 1 actor" in by_mode:
        print(f"async / sync steps per second (1 actor): {by_mode['async, 1 actor'] / by_mode['sync, 1 actor']:.2f}x")
    print(f"\nweight push to one engine actor ({pushes[0]['params'] / 1e6:.1f}M parameters, {pushes[0]['mib']:.1f} MiB float32), median of {args.pushes}")
    for p in pushes:
        print(f"  {p['transport']:13} {p['median_s']:.3f} s  {p['mib_per_s']:.0f} MiB/s")
    if args.json:
        print(json.dumps({"runs": runs, "push": pushes}))


if __name__ == "__main__":
    main()
