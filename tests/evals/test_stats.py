"""agentropy.evals.stats against hand-computed values (arithmetic in the comments) and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from agentropy.evals import stats

# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("fn", [stats.sample_sd, stats.mean_ci_t, stats.bootstrap_ci])
def test_nan_and_empty_are_rejected_with_a_clear_error(fn):
    with pytest.raises(ValueError, match="non-finite"):
        fn([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="no values"):
        fn([])


def test_paired_inputs_must_align_and_be_binary_for_mcnemar():
    with pytest.raises(ValueError, match="same length"):
        stats.paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        stats.paired_difference([1, 2, math.inf], [1, 2, 3])
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar([0, 1, 2], [0, 1, 1])


# ----------------------------------------------------------------------------- spread and means


def test_sample_sd_uses_n_minus_one():
    # [1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, 5 / 3 -> sqrt = 1.290994
    assert stats.sample_sd([1, 2, 3, 4]) == pytest.approx(1.290994, abs=1e-6)
    # population SD would be sqrt(5 / 4) = 1.118034: 13 % smaller
    assert stats.sample_sd([1, 2, 3, 4]) > np.std([1, 2, 3, 4])
    assert math.isnan(stats.sample_sd([3.0]))
    assert stats.sample_sd([2.0, 2.0, 2.0]) == 0.0


def test_mean_ci_t_by_hand():
    # se = 1.290994 / sqrt(4) = 0.645497; t_{0.975, 3} = 3.182446; half-width 2.054254
    est = stats.mean_ci_t([1, 2, 3, 4])
    assert est.value == pytest.approx(2.5)
    assert (est.lo, est.hi) == pytest.approx((0.445746, 4.554254), abs=1e-5)
    assert est.n == 4 and est.method == "t"
    # scipy's own t interval
    lo, hi = sps.t.interval(0.95, 3, loc=2.5, scale=sps.sem([1, 2, 3, 4]))
    assert (est.lo, est.hi) == pytest.approx((lo, hi))


def test_mean_ci_t_edge_cases():
    one = stats.mean_ci_t([0.7])
    assert one.value == 0.7 and math.isnan(one.lo) and math.isnan(one.hi) and one.n == 1
    flat = stats.mean_ci_t([0.3, 0.3, 0.3])
    assert (flat.lo, flat.value, flat.hi, flat.sd) == pytest.approx((0.3, 0.3, 0.3, 0.0))


def test_bootstrap_ci_known_distribution_and_agreement_with_t():
    # Two values 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5 % and 97.5 % quantiles are 0 and 1.
    est = stats.bootstrap_ci([0.0, 1.0], n_boot=4000, seed=1)
    assert (est.lo, est.value, est.hi) == (0.0, 0.5, 1.0)
    flat = stats.bootstrap_ci([0.2] * 5)
    assert (flat.lo, flat.hi) == pytest.approx((0.2, 0.2))
    assert math.isnan(stats.bootstrap_ci([1.0]).lo)
    # 200 standard normal draws: percentile bootstrap ~ t interval (half-width ~0.14)
    x = np.random.default_rng(0).normal(size=200)
    boot, t = stats.bootstrap_ci(x, seed=3), stats.mean_ci_t(x)
    assert boot.lo == pytest.approx(t.lo, abs=0.02) and boot.hi == pytest.approx(t.hi, abs=0.02)
    # and scipy's percentile bootstrap
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=10_000, random_state=5).confidence_interval
    assert boot.lo == pytest.approx(ref.low, abs=0.01) and boot.hi == pytest.approx(ref.high, abs=0.01)
    med = stats.bootstrap_ci(x, stat=np.median, seed=3)
    assert med.value == pytest.approx(np.median(x)) and med.lo < med.value < med.hi


# ----------------------------------------------------------------------------- paired differences


def test_paired_difference_by_hand_and_against_scipy():
    # differences [2, 3, 2, 3]: mean 2.5, sd sqrt(4 * 0.25 / 3) = 0.577350, se 0.288675,
    # t = 2.5 / 0.288675 = 8.660254 on 3 df; half-width 3.182446 * 0.288675 = 0.918689
    res = stats.paired_difference([3, 5, 4, 6], [1, 2, 2, 3], "epo", "grpo")
    assert (res.arm, res.baseline, res.n) == ("epo", "grpo", 4)
    assert res.mean_diff == pytest.approx(2.5)
    assert res.sd_diff == pytest.approx(0.577350, abs=1e-6)
    assert (res.lo, res.hi) == pytest.approx((1.581311, 3.418689), abs=1e-5)
    assert res.p == pytest.approx(2 * sps.t.sf(8.660254, 3), rel=1e-5)
    assert res.p == pytest.approx(sps.ttest_rel([3, 5, 4, 6], [1, 2, 2, 3]).pvalue)


def test_paired_difference_edge_cases():
    one = stats.paired_difference([0.5], [0.2])
    assert one.mean_diff == pytest.approx(0.3) and math.isnan(one.p) and math.isnan(one.lo)
    # all differences equal (SD 0): the t interval and test are undefined, not certain
    for arm, mean in (([1, 2, 3], 0.0), ([2, 3, 4], 1.0)):
        res = stats.paired_difference(arm, [1, 2, 3])
        assert res.mean_diff == mean and res.sd_diff == 0.0
        assert math.isnan(res.lo) and math.isnan(res.hi) and math.isnan(res.p)


# ----------------------------------------------------------------------------- McNemar


def _table(both, only_a, only_b, neither):
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return a, b


def test_mcnemar_exact_and_newcombe_by_hand():
    # n = 10: both 3, only a 4, only b 1, neither 2.
    # exact: 4 of 5 discordant pairs one way, P(X <= 1) + P(X >= 4) for X ~ Bin(5, 1/2)
    #        = (1 + 5 + 5 + 1) / 32 = 0.375
    res = stats.mcnemar(*_table(3, 4, 1, 2))
    assert (res.n, res.b, res.c) == (10, 4, 1)
    assert res.p == pytest.approx(0.375) and res.test == "exact binomial"
    assert (res.p_a, res.p_b, res.diff) == pytest.approx((0.7, 0.4, 0.3))
    # Newcombe method 10, z = 1.959964, z^2 = 3.841459:
    #   Wilson 7/10 = [0.396774, 0.892206], Wilson 4/10 = [0.168180, 0.687326]
    #   phi = (3 * 2 - 4 * 1) / sqrt(7 * 3 * 4 * 6) = 2 / 22.449944 = 0.089087
    #   below = 0.303226^2 - 2 * 0.089087 * 0.303226 * 0.287326 + 0.287326^2 = 0.158978 -> L = 0.3 - 0.398720
    #   above = 0.192206^2 - 2 * 0.089087 * 0.192206 * 0.231820 + 0.231820^2 = 0.082744 -> U = 0.3 + 0.287653
    assert stats.wilson_interval(7, 10) == pytest.approx((0.396774, 0.892206), abs=1e-5)
    assert stats.wilson_interval(4, 10) == pytest.approx((0.168180, 0.687326), abs=1e-5)
    assert (res.lo, res.hi) == pytest.approx((-0.098720, 0.587653), abs=1e-4)


def test_mcnemar_large_discordance_uses_corrected_chi_square():
    # b = 30, c = 10: (|30 - 10| - 1)^2 / 40 = 361 / 40 = 9.025 on 1 df -> p = 0.002663
    res = stats.mcnemar(*_table(50, 30, 10, 10))
    assert res.test.startswith("chi-square")
    assert res.p == pytest.approx(sps.chi2.sf(9.025, 1)) and res.p == pytest.approx(0.002663, abs=1e-5)
    assert res.diff == pytest.approx(20 / 100) and res.lo < 0.2 < res.hi


def test_mcnemar_without_discordant_pairs():
    res = stats.mcnemar(*_table(6, 0, 0, 4))
    assert (res.b, res.c, res.p, res.diff) == (0, 0, 1.0, 0.0)
    # identical outcomes still leave uncertainty about the difference: the interval is not [0, 0]
    assert res.lo < 0 < res.hi and -1 <= res.lo and res.hi <= 1


def test_newcombe_interval_covers_at_nominal_rate():
    # 2000 simulated paired tables, n = 60, p_a = 0.55, p_b = 0.40, correlated outcomes
    rng = np.random.default_rng(7)
    probs = np.array([0.30, 0.25, 0.10, 0.35])  # both, only a, only b, neither -> true diff 0.15
    covered = 0
    for counts in rng.multinomial(60, probs, size=2000):
        lo, hi = stats.newcombe_paired_interval(*map(int, counts))
        covered += lo <= 0.15 <= hi
    assert 0.93 <= covered / 2000 <= 0.975


# ----------------------------------------------------------------------------- power


def test_min_detectable_difference_matches_standard_sample_sizes():
    # One-sample / paired t, two-sided alpha 0.05, power 0.8: effect size d = 0.5 needs 34 pairs
    # (33 are not enough), d = 1 needs 10. Two independent groups: d = 0.5 needs 64 per group.
    assert stats.min_detectable_difference(1.0, 34) < 0.5 < stats.min_detectable_difference(1.0, 33)
    assert stats.min_detectable_difference(1.0, 10) < 1.0 < stats.min_detectable_difference(1.0, 9)
    assert (stats.min_detectable_difference(1.0, 64, paired=False) < 0.5
            < stats.min_detectable_difference(1.0, 63, paired=False))
    # large n: (z_0.975 + z_0.8) * sd / sqrt(n) = (1.959964 + 0.841621) / 100 = 0.028016
    assert stats.min_detectable_difference(1.0, 10_000) == pytest.approx(0.028016, abs=2e-5)
    # scales with sd; the power at the returned difference is 0.8 (noncentral t)
    mdd = stats.min_detectable_difference(0.27, 3)
    assert stats.min_detectable_difference(0.54, 3) == pytest.approx(2 * mdd)
    nc = mdd / (0.27 / math.sqrt(3))
    crit = sps.t.ppf(0.975, 2)
    assert sps.nct.sf(crit, 2, nc) + sps.nct.cdf(-crit, 2, nc) == pytest.approx(0.8, abs=1e-6)
    # 3 pairs with a difference SD of 0.27: 0.881, twice the normal approximation
    # 2.801585 * 0.27 / sqrt(3) = 0.4367 that ignores the t distribution's 2 degrees of freedom
    assert mdd == pytest.approx(0.8813, abs=1e-3)


def test_min_detectable_difference_edge_cases():
    assert stats.min_detectable_difference(0.3, 1) == math.inf
    assert stats.min_detectable_difference(0.0, 5) == 0.0
    with pytest.raises(ValueError):
        stats.min_detectable_difference(float("nan"), 5)


def test_min_detectable_difference_for_paired_proportions():
    # Connor (1987), psi = 0.2, diff = 0.1: sqrt(0.2) = 0.447214, sqrt(0.19) = 0.435890,
    # (1.959964 * 0.447214 + 0.841621 * 0.435890)^2 / 0.01 = (0.876523 + 0.366854)^2 / 0.01 = 154.60
    assert stats.mcnemar_required_n(0.1, 0.2) == pytest.approx(154.60, abs=0.01)
    assert stats.min_detectable_difference_proportions(0.2, 154.60) == pytest.approx(0.1, abs=1e-5)
    assert stats.min_detectable_difference_proportions(0.2, 400) < 0.1
    assert stats.min_detectable_difference_proportions(0.0, 256) == math.inf
    assert stats.min_detectable_difference_proportions(0.05, 3) == math.inf


# ----------------------------------------------------------------------------- formatting


def test_format_success_change_line():
    after, before = _table(3, 4, 1, 2)  # RL 0.7, SFT 0.4, CI from the Newcombe test above
    assert stats.format_success_change(before, after) == (
        "held-out success: SFT 0.400 -> RL 0.700 (+0.300, 95% CI [-0.099, 0.588], n=10)")
    worse = stats.format_success_change(after, before, label="before RL")
    assert worse.startswith("held-out success: before RL 0.700 -> RL 0.400 (-0.300, 95% CI [-0.588, 0.099]")


def test_format_helpers():
    assert stats.format_mean_sd([1, 2, 3, 4]) == "2.500 ± 1.291"
    assert stats.format_mean_sd([None, 0.5]) == "0.500"
    assert stats.format_mean_sd([None]) == "n/a"
    assert stats.fmt(float("nan")) == "n/a" and stats.fmt(0.12345) == "0.123"
    assert stats.fmt_p(0.0001) == "<0.001" and stats.fmt_p(0.04321) == "0.0432"
