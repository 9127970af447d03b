"""The learner's old path beside the new one on the CPU: seconds, peak RSS, tokens computed vs real.

    .venv/bin/python scripts/bench_learner.py [--shape cpu] [--budget 4096] [--json]

One PPOLearner.update of a random Qwen2 (vocab 32k, hidden 256, 4 layers; 32 rollouts of 64 +
1..512 tokens) per path, each path in its own process (peak RSS is a process's lifetime peak).
See rlvr/benchmark.py for what the paths are. With --json the last line is
{"old": {...}, "new": {...}}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="cpu")
    ap.add_argument("--budget", type=int, default=2048, help="new path: padded tokens per micro-batch")
    ap.add_argument("--micro-batch-size", type=int, default=8, help="old path: rollouts per micro-batch")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one path in this process
    args = ap.parse_args()
    if args.one:
        from rlvr.benchmark import measure

        print(json.dumps(measure(args.shape, args.one, micro_batch_size=args.micro_batch_size, budget_tokens=args.budget)))
        return
    results = {}
    for path in ("old", "new"):
        cmd = [sys.executable, __file__, "--one", path, "--shape", args.shape, "--budget", str(args.budget), "--micro-batch-size", str(args.micro_batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{path} path failed:\n{proc.stderr[-3000:]}")
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
    old, new = results["old"], results["new"]
    print(f"learner update, shape {args.shape} ({old['params'] / 1e6:.1f}M parameters, {old['tokens_real']} real tokens)")
    print(f"{'path':<6}{'seconds':>9}{'peak RSS MiB':>14}{'computed/real':>15}")
    for path, r in results.items():
        print(f"{path:<6}{r['seconds']:>9.2f}{r['peak_rss_mib']:>14.0f}{r['computed_per_real']:>15.3f}")
    print(f"new / old: time {new['seconds'] / old['seconds']:.2f}x, peak RSS {new['peak_rss_mib'] / old['peak_rss_mib']:.2f}x")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
