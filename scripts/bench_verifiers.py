"""`math` verifications per second over the MATH-500 reference solutions, beside math-verify called
directly in one process on the same inputs, and the agreement rate between the two.

    .venv/bin/python scripts/bench_verifiers.py [--workers 2] [--repeats 3]

Each of the 500 reference solutions is checked against its own answer and against the next
problem's answer (1,000 checks: half should pass, half should fail). math-verify direct: `verify(
parse("$answer$"), parse(solution))` with its default extraction and its own timeouts, in this
process. rlvr: `VerifierPool(workers).score(...)`, worker start-up excluded (it happens once per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "math" / "math500_test.jsonl"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args()

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    n = len(rows)
    solutions = [r["solution"] for r in rows] * 2
    golds = [r["answer"] for r in rows] + [rows[(i + 1) % n]["answer"] for i in range(n)]
    expected = [True] * n + [r["answer"] == rows[(i + 1) % n]["answer"] for i, r in enumerate(rows)]

    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    mv_times, mv = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        mv = [bool(verify(parse(f"${g}$"), parse(s))) for g, s in zip(golds, solutions)]
        mv_times.append(time.perf_counter() - t)

    from rlvr.verifiers import VerifierPool

    ours_times, ours = [], []
    with VerifierPool(workers=args.workers, timeout_s=10.0) as pool:
        pool.score(["\\boxed{1}"] * args.workers, [{"ground_truth": "1", "verifier": "math"}] * args.workers)  # warm
        for _ in range(args.repeats):
            t = time.perf_counter()
            batch = pool.score(solutions, [{"ground_truth": g, "verifier": "math"} for g in golds])
            ours_times.append(time.perf_counter() - t)
            ours = [s >= 1.0 for s in batch.scores]

    mv_rate = len(golds) / statistics.median(mv_times)
    our_rate = len(golds) / statistics.median(ours_times)
    agree = sum(a == b for a, b in zip(ours, mv)) / len(golds)
    print(f"MATH-500 reference solutions: {n} against their own answer, {n} against the next problem's")
    print(f"{'':28} {'checks/s':>10} {'own pass':>9} {'cross pass':>11}")
    print(f"{'math-verify, one process':28} {mv_rate:>10.1f} {sum(mv[:n]) / n:>9.3f} {sum(mv[n:]) / n:>11.3f}")
    print(f"{f'rlvr math, {args.workers} workers':28} {our_rate:>10.1f} {sum(ours[:n]) / n:>9.3f} {sum(ours[n:]) / n:>11.3f}")
    print(f"speed-up {our_rate / mv_rate:.1f}x; agreement {agree:.4f} ({sum(a != b for a, b in zip(ours, mv))} of {len(golds)} differ)")
    for i, (a, b) in enumerate(zip(ours, mv)):
        if a != b:
            print(f"  differ: rlvr={a} math-verify={b} expected={expected[i]} gold={golds[i]!r} boxed-in-solution={solutions[i][-80:]!r}")
    out = REPO / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "verifiers.json").write_text(json.dumps({
        "math_verify_checks_per_s": mv_rate, "rlvr_checks_per_s": our_rate, "workers": args.workers,
        "agreement": agree, "math_verify_own_pass": sum(mv[:n]) / n, "rlvr_own_pass": sum(ours[:n]) / n,
        "math_verify_cross_pass": sum(mv[n:]) / n, "rlvr_cross_pass": sum(ours[n:]) / n,
    }, indent=2))


if __name__ == "__main__":
    main()
