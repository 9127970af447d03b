"""`rlvr verify --input FILE.jsonl [--output OUT.jsonl] [--verifier NAME] [--workers N]`.

Each input row has `completion`, `ground_truth` and `verifier` (or `--verifier` for all rows);
each output row is the input row plus `score`, `status` and `info`. A summary of counts by
status and the mean score per verifier goes to stderr.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from rlvr.data import DataError, iter_jsonl
from rlvr.verifiers import VerifierPool, VerifierResult, available_verifiers, get_verifier, load_verifier_file
from rlvr.verifiers.base import STATUSES

CHUNK = 512  # rows per progress-bar update


class VerifyInputError(ValueError):
    pass


def read_rows(path: str, verifier: str | None) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise VerifyInputError(f"input file not found: {path}")
    rows = []
    known = set(available_verifiers())
    try:
        numbered = list(iter_jsonl(p))
    except DataError as e:
        raise VerifyInputError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise VerifyInputError(f"cannot read {path}: {e}") from None
    for lineno, row in numbered:
        if not isinstance(row.get("completion"), str):
            raise VerifyInputError(f"{path} line {lineno}: needs a 'completion' string")
        name = verifier or row.get("verifier")
        if not isinstance(name, str) or not name:
            raise VerifyInputError(f"{path} line {lineno}: needs a 'verifier' (or pass --verifier)")
        if name not in known:
            raise VerifyInputError(f"{path} line {lineno}: unknown verifier {name!r}; available: {', '.join(sorted(known))}")
        rows.append(row)
    return rows


def run(args) -> int:
    for f in args.verifier_file or []:
        load_verifier_file(f)
    if args.verifier:
        get_verifier(args.verifier)  # UnknownVerifierError -> exit 2 in the caller
    # the workers start now: they import their verifiers while the input is read and the fast
    # checks run here; a row reaches them only when only they can decide it
    with VerifierPool(args.workers, args.timeout_s, args.verifier_file or ()) as pool:
        return _verify(args, pool)


def _verify(args, pool: VerifierPool) -> int:
    rows = read_rows(args.input, args.verifier)
    names = [args.verifier or r["verifier"] for r in rows]

    # invalid ground truths are answered here, with the reason; valid rows go to the pool
    results: list[VerifierResult | None] = [None] * len(rows)
    todo = []
    for i, (row, name) in enumerate(zip(rows, names)):
        if "ground_truth" not in row or row["ground_truth"] is None:
            results[i] = VerifierResult.fail("error", "invalid ground truth: missing 'ground_truth'")
            continue
        validate = getattr(get_verifier(name), "validate", None)
        try:
            if validate is not None:
                validate(row["ground_truth"])
        except Exception as e:
            results[i] = VerifierResult.fail("error", f"invalid ground truth: {e}")
            continue
        todo.append(i)

    from tqdm.auto import tqdm

    with tqdm(total=len(todo), unit="row", desc="verify", disable=len(todo) < CHUNK, file=sys.stderr) as bar:
        for start in range(0, len(todo), CHUNK):
            idx = todo[start : start + CHUNK]
            batch = pool.score(
                [rows[i]["completion"] for i in idx],
                [{"ground_truth": rows[i]["ground_truth"], "verifier": names[i]} for i in idx],
            )
            for i, r in zip(idx, batch.results):
                results[i] = r
            bar.update(len(idx))

    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for row, r in zip(rows, results):
            out.write(json.dumps({**row, "score": r.score, "status": r.status, "info": r.info}, default=str) + "\n")
    finally:
        if args.output:
            out.close()
    print_summary(names, results)
    return 0


def print_summary(names: list[str], results: list[VerifierResult]) -> None:
    by: dict[str, list[VerifierResult]] = defaultdict(list)
    for n, r in zip(names, results):
        by[n].append(r)
    header = f"{'verifier':<16} {'rows':>6} {'mean score':>10} " + " ".join(f"{s:>10}" for s in STATUSES)
    print(header, file=sys.stderr)
    for name, rs in sorted(by.items()):
        counts = Counter(r.status for r in rs)
        mean = sum(r.score for r in rs) / len(rs)
        print(f"{name:<16} {len(rs):>6} {mean:>10.4f} " + " ".join(f"{counts[s]:>10}" for s in STATUSES), file=sys.stderr)
