"""Seed statistics (rlvr/stats.py): interval coverage on draws with a known answer, power by hand."""

import numpy as np
import pytest
from scipy import stats as sps

from rlvr import stats


def coverage(interval, n: int, draws: int, rng) -> float:
    """How often the 95% interval of mean(a) − mean(b) covers the true 0.1, over seeds drawn
    from normal distributions (σ = 0.1) of means 0.5 and 0.4."""
    hits = 0
    for i in range(draws):
        a, b = rng.normal(0.5, 0.1, n), rng.normal(0.4, 0.1, n)
        lo, hi = interval(a, b, i)[:2]
        hits += lo <= 0.1 <= hi
    return hits / draws


def percentile(a, b, i):
    ci = sps.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), method="percentile", n_resamples=1000,
                       random_state=i, vectorized=True).confidence_interval
    return ci.low, ci.high


def test_difference_interval_covers_the_true_difference():
    # 400 draws: a coverage of 0.95 is measured within ±0.011 (one binomial standard error)
    got = coverage(lambda a, b, i: stats.diff_ci(a, b, reps=1000, seed=i), 5, 400, np.random.default_rng(0))
    assert 0.92 <= got <= 0.985, got
    # at 3 seeds per method too (bootstrap-t is conservative there), where the percentile bootstrap undercovers
    boot_t = coverage(lambda a, b, i: stats.diff_ci(a, b, reps=1000, seed=i), 3, 400, np.random.default_rng(1))
    pct = coverage(percentile, 3, 400, np.random.default_rng(1))
    assert boot_t >= 0.92 and pct <= 0.90 and boot_t - pct >= 0.05, (boot_t, pct)


def test_mean_interval_covers_the_true_mean():
    rng, hits = np.random.default_rng(0), 0
    for i in range(400):
        x = rng.normal(0.5, 0.1, 5)
        lo, hi, _ = stats.mean_ci(x, reps=1000, seed=i)
        hits += lo <= 0.5 <= hi
    assert 0.92 <= hits / 400 <= 0.985, hits / 400


def test_percentile_interval_where_most_resamples_have_no_spread():
    # 1, 1, 1, 1, 0.5: a resample is all 1s with chance 0.8^5 + 0.2^5 = 0.328 > 0.2, so t* would be undefined a third
    # of the time (and the bootstrap-t interval's lower end would sit on the mean, 0.9): the percentile interval of the
    # resampled means is used, which reaches down to 0.7 (two 0.5s among five: 2.5% quantile) and up to 1
    assert stats.mean_ci([1, 1, 1, 1, 0.5]) == pytest.approx((0.7, 1.0, False))
    assert stats.mean_ci([0.1, 0.2, 0.3]).bootstrap_t  # 3 distinct values: all equal in 3 × (1/3)³ = 11% of resamples
    # a method at its ceiling against one with a tiny spread: when the first is drawn flat (a third of the time),
    # se* is the second's 0.0006 against se 0.1, and t* explodes (bootstrap-t gave [-26.9, 0.26] here)
    lo, hi, bootstrap_t = stats.diff_ci([1, 1, 1, 1, 0.5], [0.800, 0.801, 0.802, 0.803, 0.804])
    assert not bootstrap_t and -0.11 < lo < 0.098 < hi <= 0.2
    assert stats.mean_ci([0.4]) == pytest.approx((float("nan"), float("nan"), False), nan_ok=True)  # one seed: none


def test_interval_of_a_mean_is_that_of_a_difference_from_a_constant():
    a = np.array([0.3, 0.1, 0.45, 0.2, 0.35])
    # resampling a constant changes nothing: same t*, same interval (the same random stream draws a's resamples)
    assert stats.mean_ci(a, seed=3) == pytest.approx(stats.diff_ci(a, np.zeros(4), seed=3), abs=1e-12)
    assert stats.mean_ci(np.full(4, 0.7))[:2] == (0.7, 0.7)  # no spread: the interval is the point
    assert stats.diff_ci(np.full(3, 1.0), np.full(3, 0.5))[:2] == (0.5, 0.5)


def test_probability_of_improvement_by_hand():
    # a = (1, 2, 3), b = (2, 2): pairs a > b: 3 > 2 twice; ties: 2 = 2 twice (half each): (2 + 1) / 6 = 0.5
    assert stats.prob_improvement([1, 2, 3], [2, 2]) == pytest.approx(0.5)
    assert stats.prob_improvement([3, 4], [1, 2]) == 1.0
    lo, hi, _ = stats.prob_improvement_ci([3, 4], [1, 2])
    assert lo == hi == 1.0  # every resample still has a above b


def test_seeds_needed_by_hand():
    # Cohen (1988), table 2.4.1: a two-sided t-test at α = 0.05 reaches 80% power with 64 / 26 / 17 per group
    # for effect sizes d = δ/σ of 0.5 / 0.8 / 1.0
    assert [stats.seeds_needed(d * 0.1, 0.1) for d in (0.5, 0.8, 1.0)] == [64, 26, 17]
    assert stats.seeds_needed(1e-4, 0.1) is None  # more than 100000 seeds, answered at once
    with pytest.raises(ValueError, match="must be > 0"):
        stats.seeds_needed(0.0, 0.1)
    # d = 1: 16 seeds are not quite enough, 17 are (power 0.7813 and 0.8070, noncentral t with df 2n − 2)
    assert stats.t_test_power(16, 0.1, 0.1) == pytest.approx(0.7813, abs=1e-3)
    assert stats.t_test_power(17, 0.1, 0.1) == pytest.approx(0.8070, abs=1e-3)
    # the normal approximation: 2 (1.959964 + 0.841621)² σ²/δ² = 2 × 7.848876 = 15.698 at σ = δ
    assert stats.seeds_needed_normal(0.1, 0.1) == pytest.approx(15.6978, abs=1e-3)
    # pooled σ: groups (0, 2) and (1, 3, 5): (1 × 2 + 2 × 4) / 3 = 10/3
    assert stats.pooled_std([np.array([0.0, 2.0]), np.array([1.0, 3.0, 5.0])]) == pytest.approx(np.sqrt(10 / 3))


def test_precision_by_n_from_resampled_seeds():
    # seeds scoring 0 or 1 half the time: the best of N is 1 unless all N are 0, E[max] = 1 − 0.5^N,
    # so the best-of-N bias over the mean 0.5 is 0.25 at N = 2, 0.375 at 3, 0.46875 at 5
    rows = stats.precision_by_n([0.0, 1.0], ns=(2, 3, 5), reps=20_000)
    assert [r["best_of_n_bias"] for r in rows] == pytest.approx([0.25, 0.375, 0.46875], abs=0.01)
    # the central 95% of the mean of N such seeds spans 0..1 up to N = 5: P(all N are 0) = 1/32 > 2.5% at N = 5
    assert [r["ci_width"] for r in rows] == pytest.approx([1.0, 1.0, 1.0])


def test_paired_interval_by_hand():
    # chains' SFT and DPO scores (0.5, 0.6, 0.7) -> (0.6, 0.8, 1.0): differences 0.1, 0.2, 0.3, mean 0.2, s = 0.1,
    # se = 0.1 / √3 = 0.057735; t(0.975, df 2) = 4.302653: 0.2 ± 0.248414 = [-0.048414, 0.448414]
    sft, dpo = np.array([0.5, 0.6, 0.7]), np.array([0.6, 0.8, 1.0])
    assert stats.t_interval(dpo - sft) == pytest.approx((-0.048414, 0.448414), abs=1e-6)
    # a steadier gain, differences 0.1, 0.12, 0.14 (s = 0.02): 0.12 ± 4.302653 × 0.011547 = [0.070317, 0.169683], above 0
    assert stats.t_interval([0.1, 0.12, 0.14]) == pytest.approx((0.070317, 0.169683), abs=1e-6)
    assert all(np.isnan(stats.t_interval([0.3])))
