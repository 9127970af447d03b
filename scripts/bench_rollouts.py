"""Generated tokens/s of the vLLM engine beside the transformers engine, same prompts and sampling,
at two model sizes (~1M and ~25M parameters); then the peak memory of a tiny training run.

    .venv/bin/python scripts/bench_rollouts.py [--prompts 64] [--n 4] [--max-new-tokens 32] [--repeats 3]

Each (size, engine) is measured in its own subprocess so that neither inherits the other's
threads or memory; the figure is the median of `--repeats` timed calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "1M": dict(hidden_size=128, num_heads=4, num_layers=4, intermediate_size=512),
    "25M": dict(hidden_size=512, num_heads=16, num_layers=8, intermediate_size=1376),
}


def build(size: str, out: Path) -> int:
    from rlvr.config import TinyModelConfig
    from rlvr.chat import train_word_tokenizer
    from rlvr.models import build_tiny_model, num_params
    from rlvr.tasks import kinds_vocabulary

    tok = train_word_tokenizer([" ".join(kinds_vocabulary())])
    model = build_tiny_model(TinyModelConfig(**SIZES[size], max_position_embeddings=256), tok, seed=0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return num_params(model)


def measure(engine_kind: str, model_dir: str, args) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    from rlvr.models import load_tokenizer
    from rlvr.rollouts import Sampling, make_engine
    from rlvr.tasks import make_task

    tok = load_tokenizer(model_dir)
    rows, _ = make_task("kinds", args.prompts, 0, seed=0)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    extra = {"batch_size": args.prompts} if engine_kind == "hf" else {"max_model_len": 128}
    engine = make_engine(engine_kind, model_dir, **extra)
    rates = []
    for rep in range(args.repeats + 1):
        t = time.perf_counter()
        out = engine.generate(prompts, Sampling(args.max_new_tokens, temperature=1.0, seed=rep), n=args.n)
        dt = time.perf_counter() - t
        if rep:  # the first call warms up
            rates.append(sum(len(r.completion_ids) for r in out) / dt)
    engine.close()
    return {"tokens_per_s": statistics.median(rates), "all": rates}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:
        print(json.dumps(measure(args._one[0], args._one[1], args)))
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            model_dir = Path(tmp) / size
            params = build(size, model_dir)
            row = {"params": params}
            for kind in ("vllm", "hf"):
                cmd = [sys.executable, __file__, "--_one", kind, str(model_dir), "--prompts", str(args.prompts),
                       "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                row[kind] = json.loads(out.strip().splitlines()[-1])["tokens_per_s"]
            row["ratio"] = row["vllm"] / row["hf"]
            results[size] = row
            print(f"{size}: done", file=sys.stderr)

        # peak memory of a training run (the tiny task, vLLM engine, all models in one process)
        t = time.perf_counter()
        subprocess.run(
            [str(REPO / ".venv/bin/rlvr"), "train", "--config", str(REPO / "experiments/tiny/kinds.yaml"),
             "--output_dir", str(Path(tmp) / "runs"), "--train.steps", str(args.train_steps), "--no-progress"],
            check=True, capture_output=True,
        )
        train_s = time.perf_counter() - t
        summary = json.loads((Path(tmp) / "runs/kinds/seed_0/summary.json").read_text())
        peak_mb = summary["peak_rss_mib"]

    print(f"\nrollout throughput: {args.prompts} prompts x n={args.n}, up to {args.max_new_tokens} new tokens, "
          f"temperature 1, float32, median of {args.repeats} (generated tokens/s)")
    print(f"{'model':>6} {'params':>12} {'vLLM':>10} {'transformers':>13} {'vLLM/HF':>8}")
    for size, r in results.items():
        print(f"{size:>6} {r['params']:>12,} {r['vllm']:>10.0f} {r['hf']:>13.0f} {r['ratio']:>7.2f}x")
    print(f"\ntraining run (experiments/tiny/kinds.yaml, {args.train_steps} steps, vLLM engine): "
          f"{train_s:.0f} s wall, peak RSS {peak_mb:.0f} MiB")
    out = REPO / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "rollouts.json").write_text(json.dumps({"throughput": results, "train_peak_rss_mib": peak_mb, "train_wall_s": train_s}, indent=2))


if __name__ == "__main__":
    main()
