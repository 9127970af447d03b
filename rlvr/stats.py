"""Statistics over seeds: one number per seed in, intervals that hold at the N researchers run.

The mean of one method and the difference of means between two use the studentized bootstrap
(bootstrap-t, Efron & Tibshirani 1993, ch. 12): resample each method's seeds, turn each resample
into t* = (estimate* − estimate) / se*, and read the interval off t*'s quantiles. The percentile
bootstrap cannot reach outside the seeds' own range, so it undercovers at small N: on normal
seeds with a true difference of 0.1, its 95% interval of the difference covered 0.78 of 400 draws
at 3 seeds per method and 0.88 at 5; bootstrap-t covered 0.98 and 0.95 (tests/test_stats.py), and
of one method's mean 0.80 at 3 seeds and 0.95 at 5: below 5 seeds no interval is to be trusted.
Bootstrap-t needs spread in the resamples: where more than a fifth of them would have none (most
seeds scoring the same, as pass rates do at a ceiling: 1, 1, 1, 1, 0.5), t* is undefined too often
and the interval collapses onto the mean on one side; there the percentile interval is used instead
and the table marks it (`studentized()` decides). Bootstrap-t intervals are not bounded by the
metric's range (a pass rate's can end above 1). The IQM (a trimmed mean with no simple standard
error) and the probability of improvement (a bounded rank statistic) use the percentile bootstrap.
Every interval is flagged below 5 seeds per method.

Power: the seeds per method a two-sided two-sample t-test (α = 0.05) needs to detect a difference δ
with 80% power, exactly from the noncentral t distribution, with σ pooled from the seeds at hand.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

RELIABLE_N = 5  # fewer seeds per method: intervals are reported with a warning
MAX_ZERO_SPREAD = 0.2  # above this chance that a resample has no spread, bootstrap-t gives way to the percentile interval
REPS = 4000  # bootstrap resamples
BOOTSTRAP_T = "studentized bootstrap (bootstrap-t)"
PERCENTILE = "percentile bootstrap"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _resample(x: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """[reps, n]: each row n seeds drawn with replacement."""
    return x[rng.integers(0, len(x), (reps, len(x)))]


def zero_spread(x) -> float:
    """The chance that a resample of x (n draws with replacement) has all its values equal: Σ_v (count_v / n)^n."""
    _, counts = np.unique(np.asarray(x, dtype=float), return_counts=True)
    return float(((counts / counts.sum()) ** counts.sum()).sum())


def studentized(*groups) -> bool:
    """Whether the interval of these groups' mean (difference) is bootstrap-t: se* = 0 rarely enough."""
    return bool(np.prod([zero_spread(g) for g in groups]) <= MAX_ZERO_SPREAD)


def _percentile(est_star: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(est_star, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _t_interval(estimate: float, se: float, est_star: np.ndarray, se_star: np.ndarray, level: float) -> tuple[float, float]:
    """Bootstrap-t interval. Resamples whose se* is 0 (every drawn seed equal) have no t* and are
    dropped; with no spread at all (se = 0) the interval is the point."""
    tiny = 1e-9 * max(se, 1e-300)  # a resample of one value repeated has a spread of float noise, not 0
    if se == 0:
        return estimate, estimate
    keep = se_star > tiny
    t = (est_star[keep] - estimate) / se_star[keep]
    lo_q, hi_q = np.quantile(t, [(1 - level) / 2, (1 + level) / 2])
    return float(estimate - hi_q * se), float(estimate - lo_q * se)


def mean_ci(x, level: float = 0.95, reps: int = REPS, seed: int = 0) -> tuple[float, float]:
    """Bootstrap-t interval of the mean of one method's seeds."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float(x[0]), float(x[0])
    star = _resample(x, reps, _rng(seed))
    if not studentized(x):
        return _percentile(star.mean(1), level)
    se = x.std(ddof=1) / np.sqrt(len(x))
    return _t_interval(float(x.mean()), float(se), star.mean(1), star.std(1, ddof=1) / np.sqrt(len(x)), level)


def diff_ci(a, b, level: float = 0.95, reps: int = REPS, seed: int = 0) -> tuple[float, float]:
    """Bootstrap-t interval of mean(a) − mean(b), two independent sets of seeds (Welch's standard error)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return d, d
    rng = _rng(seed)
    sa, sb = _resample(a, reps, rng), _resample(b, reps, rng)
    if not studentized(a, b):
        return _percentile(sa.mean(1) - sb.mean(1), level)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    se_star = np.sqrt(sa.var(1, ddof=1) / len(a) + sb.var(1, ddof=1) / len(b))
    return _t_interval(d, float(se), sa.mean(1) - sb.mean(1), se_star, level)


def prob_improvement(a, b) -> float:
    """P(X > Y) + P(X = Y) / 2 for X a seed of a, Y a seed of b (the Mann-Whitney statistic / (n m))."""
    a, b = np.asarray(a, dtype=float)[..., :, None], np.asarray(b, dtype=float)[..., None, :]
    return ((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1))


def prob_improvement_ci(a, b, level: float = 0.95, reps: int = REPS, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of P(a > b), each method's seeds resampled independently."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = _rng(seed)
    return _percentile(prob_improvement(_resample(a, reps, rng), _resample(b, reps, rng)), level)


def interval_note(ns: list[int]) -> str:
    """What the reader must know about the intervals of a table whose methods have `ns` seeds."""
    note = (f"95% intervals: mean and differences by {BOOTSTRAP_T}, except those marked † ({PERCENTILE}: most seeds "
            f"equal, too few resamples with spread for bootstrap-t); IQM and P(improvement) by {PERCENTILE}.")
    if min(ns) < RELIABLE_N:
        note += (
            f" UNRELIABLE with fewer than {RELIABLE_N} seeds per method (here {min(ns)}): a bootstrap has too few"
            " distinct resamples, and percentile intervals cannot reach outside the seeds' own range."
        )
    return note


# ---------------------------------------------------------------------------- power


def pooled_std(groups: list[np.ndarray]) -> float:
    """√(Σ (n_i − 1) s_i² / Σ (n_i − 1)) over the methods' seeds."""
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        return float("nan")
    return float(np.sqrt(sum((len(g) - 1) * np.var(g, ddof=1) for g in groups if len(g) > 1) / dof))


def t_test_power(n: int, delta: float, sigma: float, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test with n seeds per method to detect a true difference
    delta when each seed's value has standard deviation sigma (noncentral t, df = 2n − 2)."""
    df, ncp = 2 * n - 2, delta / (sigma * np.sqrt(2 / n))
    crit = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(crit, df, ncp) + sps.nct.cdf(-crit, df, ncp))


def seeds_needed(delta: float, sigma: float, power: float = 0.8, alpha: float = 0.05, most: int = 100_000) -> int | None:
    """The fewest seeds per method at which the t-test reaches `power` (None: more than `most`)."""
    if sigma == 0:
        return 2
    n = 2
    while t_test_power(n, delta, sigma, alpha) < power:
        n += 1
        if n > most:
            return None
    return n


def seeds_needed_normal(delta: float, sigma: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """The textbook approximation n = 2 σ² (z_{1−α/2} + z_{power})² / δ² (before rounding up)."""
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(2 * sigma**2 * z**2 / delta**2)


def precision_by_n(values, ns=(2, 3, 5, 10, 20, 32), reps: int = REPS, seed: int = 0) -> list[dict]:
    """How an N-seed experiment would pin down this method, from resampling the seeds at hand: the
    width of the central 95% of N-seed means, and the best-of-N bias E[max of N seeds] − mean."""
    x = np.asarray(values, dtype=float)
    rng = _rng(seed)
    rows = []
    for n in ns:
        star = x[rng.integers(0, len(x), (reps, n))]
        lo, hi = np.quantile(star.mean(1), [0.025, 0.975])
        rows.append({"n": n, "ci_width": float(hi - lo), "best_of_n_bias": float(star.max(1).mean() - x.mean())})
    return rows
