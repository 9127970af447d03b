"""Score a batch of completions, failing closed.

A verifier that raises scores 0 with status `error` and the reason; the run goes on and
the failure is counted per verifier. `rlvr.verifiers.pool.VerifierPool` runs the same
`score_one` in worker processes under a per-call time limit.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from rlvr.verifiers.base import VerifierResult
from rlvr.verifiers.registry import get_verifier

MAX_COMPLETION_CHARS = 1 << 20  # model output past this is not checked
FAST_MAX_CHARS = 20_000  # longer completions always go to a worker (its time limit bounds them)


@dataclass
class ScoredBatch:
    results: list[VerifierResult]
    verifier_names: list[str]
    status_counts: dict[str, Counter] = field(default_factory=dict)

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.results]

    def metrics(self, pass_threshold: float = 1.0, prefix: str = "reward") -> dict[str, float]:
        """Per-verifier pass rate, mean score and status rates, as TensorBoard scalars."""
        by_name: dict[str, list[VerifierResult]] = defaultdict(list)
        for name, r in zip(self.verifier_names, self.results):
            by_name[name].append(r)
        out: dict[str, float] = {}
        for name, rs in sorted(by_name.items()):
            n = len(rs)
            out[f"{prefix}/{name}/pass_rate"] = sum(r.score >= pass_threshold for r in rs) / n
            out[f"{prefix}/{name}/score_mean"] = sum(r.score for r in rs) / n
            for status in ("timeout", "error", "unparsable"):
                out[f"{prefix}/{name}/{status}_rate"] = sum(r.status == status for r in rs) / n
        return out


def score_one(completion: str, ground_truth: Any, verifier: str, **meta) -> VerifierResult:
    if len(completion) > MAX_COMPLETION_CHARS:
        return VerifierResult.fail("unparsable", f"completion longer than {MAX_COMPLETION_CHARS} characters")
    try:
        fn = get_verifier(verifier)
        result = fn(completion, ground_truth, **meta)
        if not isinstance(result, VerifierResult):
            return VerifierResult.fail("error", f"verifier returned {type(result).__name__}, not VerifierResult")
        return result
    except Exception as e:  # fail closed: a crashing check is a counted zero, never a crash
        return VerifierResult.fail("error", f"{type(e).__name__}: {e}"[:500])


def quick_result(completion: str, ground_truth: Any, verifier: str, **meta) -> VerifierResult | None:
    """The verdict of a verifier's `fast` path (pure Python, no sympy, linear in the input) for a
    completion of at most FAST_MAX_CHARS, or None: then only a worker, under its time limit, decides.
    A fast path that raises says nothing; the worker will say what is wrong."""
    if len(completion) > FAST_MAX_CHARS:
        return None
    try:
        fast = getattr(get_verifier(verifier), "fast", None)
        return fast(completion, ground_truth, **meta) if fast is not None else None
    except Exception:
        return None


def collect(results: list[VerifierResult], names: list[str]) -> ScoredBatch:
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, r in zip(names, results):
        counts[name][r.status] += 1
    return ScoredBatch(results, names, dict(counts))


def score_batch(completions: Sequence[str], rows: Sequence[dict]) -> ScoredBatch:
    """Score `completions[i]` against `rows[i]["ground_truth"]` with `rows[i]["verifier"]`, in this
    process and without a time limit; `VerifierPool` adds worker processes and the limit."""
    results = [score_one(c, row["ground_truth"], row["verifier"]) for c, row in zip(completions, rows, strict=True)]
    return collect(results, [row["verifier"] for row in rows])
