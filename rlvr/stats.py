"""Statistics over seeds: one number per seed in, intervals that hold at the N researchers run.

The mean of one method and the difference of means between two use the studentized bootstrap
(bootstrap-t, Efron & Tibshirani 1993, ch. 12): resample each method's seeds, turn each resample
into t* = (estimate* − estimate) / se*, and read the interval off t*'s quantiles. The percentile
bootstrap cannot reach outside the seeds' own range, so it undercovers at small N: on normal
seeds with a true difference of 0.1, its 95% interval of the difference covered 0.78 of 400 draws
at 3 seeds per method and 0.88 at 5; bootstrap-t covered 0.98 and 0.95 (tests/test_stats.py), and
of one method's mean 0.80 at 3 seeds and 0.95 at 5: below 5 seeds no interval is to be trusted.
Bootstrap-t needs spread in the resamples: where more than a fifth of them have none, or almost
none (most seeds scoring the same, as pass rates do at a ceiling: 1, 1, 1, 1, 0.5), t* is undefined
or huge too often and the interval collapses onto the estimate on one side or explodes on the
other; there the percentile interval is used instead and the table marks it (`_bootstrap_t`). Bootstrap-t intervals are not bounded by the
metric's range (a pass rate's can end above 1). The IQM (a trimmed mean with no simple standard
error) and the probability of improvement (a bounded rank statistic) use the percentile bootstrap.
Every interval is flagged below 5 seeds per method.

Power: the seeds per method a two-sided two-sample t-test (α = 0.05) needs to detect a difference δ
with 80% power, exactly from the noncentral t distribution, with σ pooled from the seeds at hand.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats as sps

RELIABLE_N = 5  # fewer seeds per method: intervals are reported with a warning
MAX_DEGENERATE = 0.2  # above this share of resamples with (almost) no spread, bootstrap-t gives way to the percentile interval
REPS = 4000  # bootstrap resamples
BOOTSTRAP_T = "studentized bootstrap (bootstrap-t)"
PERCENTILE = "percentile bootstrap"
NAN = float("nan")


class Interval(NamedTuple):
    lo: float
    hi: float
    bootstrap_t: bool  # False: the percentile interval (or no interval: one seed, lo = hi = nan)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _resample(x: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """[reps, n]: each row n seeds drawn with replacement."""
    return x[rng.integers(0, len(x), (reps, len(x)))]


def _percentile(est_star: np.ndarray, level: float) -> Interval:
    lo, hi = np.quantile(est_star, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(lo), float(hi), False)


def _bootstrap_t(estimate: float, se: float, est_star: np.ndarray, se_star: np.ndarray, level: float) -> Interval:
    """Bootstrap-t interval, t* = (estimate* − estimate) / se*. A resample whose se* is (almost) 0 has no
    usable t*: one value repeated, or, for a difference, the group that carries the spread drawn flat
    while the other barely varies. Where more than MAX_DEGENERATE of the resamples are such, t* is too
    often undefined (or huge) and the percentile interval of estimate* is returned instead."""
    if se == 0:
        return Interval(estimate, estimate, True)
    usable = se_star > 0.1 * se
    if 1 - usable.mean() > MAX_DEGENERATE:
        return _percentile(est_star, level)
    t = (est_star[usable] - estimate) / se_star[usable]
    lo_q, hi_q = np.quantile(t, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate - hi_q * se), float(estimate - lo_q * se), True)


def mean_ci(x, level: float = 0.95, reps: int = REPS, seed: int = 0) -> Interval:
    """95% interval of the mean of one method's seeds (bootstrap-t; see _bootstrap_t)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return Interval(NAN, NAN, False)
    star = _resample(x, reps, _rng(seed))
    se = x.std(ddof=1) / np.sqrt(len(x))
    return _bootstrap_t(float(x.mean()), float(se), star.mean(1), star.std(1, ddof=1) / np.sqrt(len(x)), level)


def diff_ci(a, b, level: float = 0.95, reps: int = REPS, seed: int = 0) -> Interval:
    """95% interval of mean(a) − mean(b), two independent sets of seeds (bootstrap-t with Welch's standard error)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return Interval(NAN, NAN, False)
    rng = _rng(seed)
    sa, sb = _resample(a, reps, rng), _resample(b, reps, rng)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    se_star = np.sqrt(sa.var(1, ddof=1) / len(a) + sb.var(1, ddof=1) / len(b))
    return _bootstrap_t(float(a.mean() - b.mean()), float(se), sa.mean(1) - sb.mean(1), se_star, level)


def prob_improvement(a, b) -> float:
    """P(X > Y) + P(X = Y) / 2 for X a seed of a, Y a seed of b (the Mann-Whitney statistic / (n m))."""
    a, b = np.asarray(a, dtype=float)[..., :, None], np.asarray(b, dtype=float)[..., None, :]
    return ((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1))


def prob_improvement_ci(a, b, level: float = 0.95, reps: int = REPS, seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of P(a > b), each method's seeds resampled independently."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return Interval(NAN, NAN, False)
    rng = _rng(seed)
    return _percentile(prob_improvement(_resample(a, reps, rng), _resample(b, reps, rng)), level)


def iqm_ci(x, level: float = 0.95, reps: int = REPS, seed: int = 0) -> Interval:
    """Percentile-bootstrap interval of the interquartile mean (scipy's trim_mean at 25%, rliable's IQM)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return Interval(NAN, NAN, False)
    return _percentile(sps.trim_mean(_resample(x, reps, _rng(seed)), 0.25, axis=1), level)


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
    """The fewest seeds per method at which the t-test reaches `power` (None: more than `most`). The search
    starts from the normal approximation, which is at most a seed or two below the exact answer."""
    if not delta > 0:
        raise ValueError(f"the difference to detect must be > 0, got {delta}")
    if sigma == 0:
        return 2
    n = max(2, int(np.ceil(seeds_needed_normal(delta, sigma, power, alpha))))
    if n > most:
        return None
    while n > 2 and t_test_power(n - 1, delta, sigma, alpha) >= power:
        n -= 1
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


# ---------------------------------------------------------------------------- paired, few seeds


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """mean ± t_{n−1, (1+level)/2} · s / √n: the interval of a mean from a handful of values (the recipe's
    chains, 3 to 5): exact when the values are normal, where a bootstrap of 3 values is not (a mean's
    bootstrap-t interval covered 0.80 at 3). Applied to per-chain differences it is the paired interval."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return NAN, NAN
    half = sps.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)
