"""The `math` verifier against math-verify: speed as users run it, and verdicts on model output.

    .venv/bin/python scripts/bench_verifiers.py [--workers 2] [--repeats 3]

1. Whole commands, start-up included, side by side in one run (alternating, median of --repeats):
   `rlvr verify --input rows.jsonl` on the 500 MATH-500 reference solutions against their own
   answers, and a one-process script that imports math-verify and calls `verify(parse("$answer$"),
   parse(solution))` on the same rows.
2. Throughput inside a running pool (start-up excluded): MATH-500 solutions against their own
   answer and against the next problem's (1,000 checks), with `VerifierPool(workers)`, beside
   math-verify in one process, and where the two disagree.
3. Verdicts on tests/data/math_model_outputs.jsonl (hand-written completions shaped like real model
   output, each with the expected verdict): accuracy and false positives of both, and every row
   where they disagree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "math" / "math500_test.jsonl"
MODEL_OUTPUTS = REPO / "tests" / "data" / "math_model_outputs.jsonl"

MATH_VERIFY_SCRIPT = """
import json, logging, sys
from math_verify import parse, verify
logging.getLogger("math_verify").setLevel(logging.ERROR)
rows = [json.loads(line) for line in open(sys.argv[1])]
ok = sum(bool(verify(parse("$" + r["ground_truth"] + "$"), parse(r["completion"]))) for r in rows)
print(ok, len(rows))
"""


def _math_verify_judge():
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return lambda gold, completion: bool(verify(parse(f"${gold}$"), parse(completion)))


def whole_commands(rows: list[dict], workers: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "rows.jsonl"
        inp.write_text("".join(json.dumps({"completion": r["solution"], "ground_truth": r["answer"], "verifier": "math"}) + "\n" for r in rows))
        ours = [sys.executable, "-m", "rlvr.cli", "verify", "--input", str(inp), "--output", str(Path(tmp) / "out.jsonl"), "--workers", str(workers)]
        theirs = [sys.executable, "-c", MATH_VERIFY_SCRIPT, str(inp)]
        times: dict[str, list[float]] = {"rlvr verify": [], "math-verify, one process": []}
        for _ in range(repeats):
            for name, cmd in (("rlvr verify", ours), ("math-verify, one process", theirs)):
                t = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
                times[name].append(time.perf_counter() - t)
        passed = sum(json.loads(line)["score"] >= 1.0 for line in (Path(tmp) / "out.jsonl").read_text().splitlines())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"1. whole commands on {len(rows)} MATH-500 reference solutions (start-up included, median of {repeats})")
    for name, t in med.items():
        print(f"   {name:28} {t:6.2f} s   ({', '.join(f'{x:.2f}' for x in times[name])})")
    ratio = med["rlvr verify"] / med["math-verify, one process"]
    print(f"   rlvr verify / math-verify = {ratio:.2f}x; rlvr passed {passed}/{len(rows)}")
    return {"rlvr_verify_s": med["rlvr verify"], "math_verify_s": med["math-verify, one process"], "ratio": ratio, "times": times}


def pool_throughput(rows: list[dict], workers: int, repeats: int) -> dict:
    n = len(rows)
    solutions = [r["solution"] for r in rows] * 2
    golds = [r["answer"] for r in rows] + [rows[(i + 1) % n]["answer"] for i in range(n)]
    judge = _math_verify_judge()
    mv_times, mv = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        mv = [judge(g, s) for g, s in zip(golds, solutions)]
        mv_times.append(time.perf_counter() - t)

    from rlvr.verifiers import VerifierPool

    ours_times, ours = [], []
    with VerifierPool(workers=workers, timeout_s=10.0) as pool:
        pool.score(["\\boxed{1+1}"] * workers, [{"ground_truth": "2", "verifier": "math"}] * workers)  # warm
        for _ in range(repeats):
            t = time.perf_counter()
            batch = pool.score(solutions, [{"ground_truth": g, "verifier": "math"} for g in golds])
            ours_times.append(time.perf_counter() - t)
            ours = [s >= 1.0 for s in batch.scores]
    mv_rate, our_rate = len(golds) / statistics.median(mv_times), len(golds) / statistics.median(ours_times)
    print(f"2. inside a running pool: {n} solutions against their own answer, {n} against the next problem's")
    print(f"   {'':28} {'checks/s':>10} {'own pass':>9} {'cross pass':>11}")
    print(f"   {'math-verify, one process':28} {mv_rate:>10.1f} {sum(mv[:n]) / n:>9.3f} {sum(mv[n:]) / n:>11.3f}")
    print(f"   {f'rlvr math, {workers} workers':28} {our_rate:>10.1f} {sum(ours[:n]) / n:>9.3f} {sum(ours[n:]) / n:>11.3f}")
    for i, (a, b) in enumerate(zip(ours, mv)):
        if a != b:
            print(f"   differ: rlvr={a} math-verify={b} gold={golds[i]!r} end of solution={solutions[i][-70:]!r}")
    return {"math_verify_checks_per_s": mv_rate, "rlvr_checks_per_s": our_rate, "rlvr_own_pass": sum(ours[:n]) / n,
            "rlvr_cross_pass": sum(ours[n:]) / n, "math_verify_own_pass": sum(mv[:n]) / n, "math_verify_cross_pass": sum(mv[n:]) / n}


def model_output_verdicts() -> dict:
    from rlvr.verifiers import get_verifier

    rows = [json.loads(line) for line in MODEL_OUTPUTS.read_text().splitlines()]
    ours_fn, judge = get_verifier("math"), _math_verify_judge()
    stats = {}
    verdicts = {"rlvr math": [ours_fn(r["completion"], r["ground_truth"]).score >= 1.0 for r in rows]}
    mv = []
    for r in rows:
        try:
            mv.append(judge(r["ground_truth"], r["completion"]))
        except Exception:
            mv.append(False)
    verdicts["math-verify"] = mv
    print(f"3. {len(rows)} completions shaped like model output ({MODEL_OUTPUTS.name})")
    print(f"   {'':14} {'accuracy':>9} {'false pos':>10} {'false neg':>10}")
    for name, got in verdicts.items():
        fp = sum(g and not r["expected"] for g, r in zip(got, rows))
        fn = sum(not g and r["expected"] for g, r in zip(got, rows))
        acc = 1 - (fp + fn) / len(rows)
        stats[name] = {"accuracy": acc, "false_positives": fp, "false_negatives": fn}
        print(f"   {name:14} {acc:>9.4f} {fp:>10} {fn:>10}")
    for r, a, b in zip(rows, verdicts["rlvr math"], verdicts["math-verify"]):
        if a != b:
            right = "rlvr" if a == r["expected"] else "math-verify"
            print(f"   differ ({right} right, {r['family']}): gold={r['ground_truth']!r} — {r['reason']}")
    return stats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    result = {"whole_commands": whole_commands(rows, args.workers, args.repeats)}
    result["pool"] = pool_throughput(rows, args.workers, args.repeats)
    result["model_outputs"] = model_output_verdicts()
    out = REPO / "bench_out"
    out.mkdir(exist_ok=True)
    (out / "verifiers.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
