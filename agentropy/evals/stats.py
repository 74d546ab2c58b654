"""Small, pure statistics for comparing runs: the numbers every report, ``analyze``, ``eval`` and
the quickstart print when they compare two arms.

Why one module: a benchmark with three seeds can only support claims as strong as its
uncertainty, so every comparison in this package goes through the same few functions and says
which estimator it used:

* spread over seeds is the **sample** SD (``ddof=1``); the population SD understates it by
  ``sqrt((n-1)/n)`` (about 18 % at n = 3);
* a mean gets a Student-t interval (:func:`mean_ci_t`) or a percentile bootstrap
  (:func:`bootstrap_ci`);
* two arms run on the same seeds / tasks are compared **paired** (:func:`paired_difference`,
  :func:`mcnemar`), because the shared seed or task removes most of the variance;
* a "no difference" is only informative next to the smallest difference the run could have
  detected (:func:`min_detectable_difference`, :func:`min_detectable_difference_proportions`).

Inputs are 1-D sequences of finite numbers; a NaN or an infinity raises ``ValueError`` instead of
silently propagating into a table. Quantities that the data cannot define (an SD from one value,
a CI from one pair) come back as ``math.nan`` and are printed as ``n/a`` by :func:`fmt`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as sps

ArrayLike = Sequence[float] | np.ndarray


def is_finite_number(value: object) -> bool:
    """A finite int or float (not a bool, None, NaN or a string): a metric value that can be averaged."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_finite_array(values: ArrayLike, name: str = "values") -> np.ndarray:
    """``values`` as a 1-D float array; raises ``ValueError`` on NaN/inf, emptiness or wrong shape."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: no values")
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) (NaN or inf) at positions "
                         f"{np.flatnonzero(bad)[:5].tolist()}; drop or impute them explicitly")
    return array


def _as_binary(values: ArrayLike, name: str) -> np.ndarray:
    array = as_finite_array(values, name)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name}: expected 0/1 outcomes")
    return array.astype(bool)


def _paired(a: ArrayLike, b: ArrayLike, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_finite_array(a, names[0]), as_finite_array(b, names[1])
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same length: {names[0]} has {x.size}, {names[1]} has {y.size}")
    return x, y


# --------------------------------------------------------------------------- spread and means


def sample_sd(values: ArrayLike) -> float:
    """Sample standard deviation (``ddof=1``); ``nan`` for a single value."""
    array = as_finite_array(values)
    return float(np.std(array, ddof=1)) if array.size > 1 else math.nan


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval; ``method`` names the interval."""

    value: float
    lo: float
    hi: float
    n: int
    level: float
    method: str
    sd: float = math.nan  # sample SD of the values the estimate came from


def mean_ci_t(values: ArrayLike, level: float = 0.95) -> Estimate:
    """Mean with a Student-t interval ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)``.

    One value has no interval (``nan``); values that are all equal have a zero-width one."""
    array = as_finite_array(values)
    n, mean = array.size, float(array.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n, level, "t", math.nan)
    sd = float(np.std(array, ddof=1))
    half = float(sps.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, level, "t", sd)


def bootstrap_ci(values: ArrayLike, stat: Callable[..., np.ndarray] = np.mean, n_boot: int = 10_000,
                 seed: int = 0, level: float = 0.95) -> Estimate:
    """Percentile bootstrap interval of ``stat`` (for a paired comparison, pass the differences).

    ``stat`` must accept ``axis=`` (``np.mean``, ``np.median``, ...): all resamples are drawn
    at once and reduced along axis 1. With fewer than 2 values there is nothing to resample."""
    array = as_finite_array(values)
    value = float(stat(array[None, :], axis=1)[0])
    sd = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    if array.size < 2:
        return Estimate(value, math.nan, math.nan, array.size, level, "percentile bootstrap", sd)
    rng = np.random.default_rng(seed)
    resamples = array[rng.integers(0, array.size, size=(n_boot, array.size))]
    boots = np.asarray(stat(resamples, axis=1), dtype=float)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(lo), float(hi), array.size, level, "percentile bootstrap", sd)


# --------------------------------------------------------------------------- paired comparisons


@dataclass(frozen=True)
class PairedDifference:
    """``arm - baseline`` over paired units (seeds or tasks): mean, t interval, paired t-test p."""

    arm: str
    baseline: str
    n: int
    mean_diff: float
    lo: float
    hi: float
    p: float
    sd_diff: float
    level: float = 0.95


def paired_difference(arm: ArrayLike, baseline: ArrayLike, arm_label: str = "arm",
                      baseline_label: str = "baseline", level: float = 0.95) -> PairedDifference:
    """Compare ``arm`` with ``baseline`` unit by unit (same seeds, same tasks, same order).

    Mean of the differences, its Student-t interval and the two-sided paired t-test p-value
    (``scipy.stats.ttest_rel``). One pair gives ``nan`` for the interval and p. Differences that
    are all equal have SD 0, which leaves the t interval and test undefined rather than certain
    (three seeds that each differ by one task out of 64 are not proof of anything): the interval
    and p are then ``nan`` (shown as n/a), and the task-level comparison (:func:`mcnemar`) is the
    one to read."""
    x, y = _paired(arm, baseline, (arm_label, baseline_label))
    diffs = x - y
    est = mean_ci_t(diffs, level)
    if diffs.size < 2 or est.sd == 0.0:
        return PairedDifference(arm_label, baseline_label, diffs.size, est.value, math.nan, math.nan, math.nan,
                                est.sd, level)
    p = float(sps.ttest_rel(x, y).pvalue)
    return PairedDifference(arm_label, baseline_label, diffs.size, est.value, est.lo, est.hi, p, est.sd, level)


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for one binomial proportion (no continuity correction)."""
    if n <= 0:
        return math.nan, math.nan
    z = float(sps.norm.ppf((1 + level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired_interval(both: int, only_a: int, only_b: int, neither: int,
                             level: float = 0.95) -> tuple[float, float]:
    """Interval for ``p_a - p_b`` from a paired 2x2 table: Newcombe (1998, Stat Med 17:2635),
    method 10, which combines the Wilson intervals of both marginal proportions with a
    correction for their correlation ``phi``. Unlike the Wald interval it stays inside [-1, 1]
    and keeps a sensible width when there are no discordant pairs."""
    n = both + only_a + only_b + neither
    if n == 0:
        return math.nan, math.nan
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    l_a, u_a = wilson_interval(both + only_a, n, level)
    l_b, u_b = wilson_interval(both + only_b, n, level)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins > 0 else 0.0
    diff = p_a - p_b
    below = (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2
    above = (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2
    return diff - math.sqrt(max(below, 0.0)), diff + math.sqrt(max(above, 0.0))


EXACT_MCNEMAR_BELOW = 25  # discordant pairs under which the exact binomial test is used


@dataclass(frozen=True)
class McNemarResult:
    """Paired binary outcomes of arm ``a`` and arm ``b`` on the same units.

    ``b`` counts units where only arm a succeeded, ``c`` units where only arm b did (the
    discordant pairs the test uses); ``diff`` is ``p_a - p_b`` with Newcombe's paired interval."""

    n: int
    b: int
    c: int
    p: float
    test: str  # "exact binomial" or "chi-square, continuity-corrected"
    p_a: float
    p_b: float
    diff: float
    lo: float
    hi: float
    level: float = 0.95
    ci_method: str = "Newcombe paired (method 10)"


def mcnemar(success_a: ArrayLike, success_b: ArrayLike, level: float = 0.95) -> McNemarResult:
    """McNemar's test on paired 0/1 outcomes (e.g. success of two arms on the same tasks).

    Under no difference each discordant pair is equally likely to go either way, so with fewer
    than ``EXACT_MCNEMAR_BELOW`` discordant pairs p is the exact two-sided binomial test of
    ``b`` out of ``b + c`` at 1/2 (``scipy.stats.binomtest``); above it, the continuity-corrected
    chi-square ``(|b - c| - 1)^2 / (b + c)`` on 1 df. No discordant pairs: p = 1."""
    a, b_arr = _paired(success_a, success_b, ("success_a", "success_b"))
    a, b_arr = _as_binary(a, "success_a"), _as_binary(b_arr, "success_b")
    both, only_a = int(np.sum(a & b_arr)), int(np.sum(a & ~b_arr))
    only_b, neither = int(np.sum(~a & b_arr)), int(np.sum(~a & ~b_arr))
    discordant = only_a + only_b
    if discordant == 0:
        p, test = 1.0, "exact binomial"
    elif discordant < EXACT_MCNEMAR_BELOW:
        p, test = float(sps.binomtest(only_a, discordant, 0.5).pvalue), "exact binomial"
    else:
        chi2 = (abs(only_a - only_b) - 1) ** 2 / discordant
        p, test = float(sps.chi2.sf(chi2, 1)), "chi-square, continuity-corrected"
    n = a.size
    lo, hi = newcombe_paired_interval(both, only_a, only_b, neither, level)
    return McNemarResult(n, only_a, only_b, min(p, 1.0), test, float(a.mean()), float(b_arr.mean()),
                         (only_a - only_b) / n, lo, hi, level)


# --------------------------------------------------------------------------- power


def _t_power(delta: float, sd: float, n: int, alpha: float, paired: bool) -> float:
    """Power of the two-sided t-test at true difference ``delta`` (noncentral t)."""
    df = n - 1 if paired else 2 * n - 2
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2.0 / n)
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = delta / se
    power = float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))
    if math.isnan(power):  # scipy's noncentral t fails far in the tail; there t ~ normal
        power = float(sps.norm.sf(crit - nc) + sps.norm.cdf(-crit - nc))
    return power


def min_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8,
                              paired: bool = True) -> float:
    """Smallest true difference a two-sided t-test at ``alpha`` detects with ``power``.

    ``paired=True``: ``n`` pairs and ``sd`` the SD of the per-pair differences (one-sample t on
    the differences). ``paired=False``: two independent groups of ``n`` each with common ``sd``.
    Solved exactly with the noncentral t distribution, not the normal approximation, which is far
    too optimistic at the 3-5 seeds benches use. ``inf`` when the test has no degrees of
    freedom; 0 when ``sd`` is 0."""
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be a finite number >= 0, got {sd}")
    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0
    upper = sd
    while _t_power(upper, sd, n, alpha, paired) < power:
        upper *= 2
    return float(optimize.brentq(lambda d: _t_power(d, sd, n, alpha, paired) - power, 0.0, upper, xtol=1e-12))


def mcnemar_required_n(diff: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Pairs needed for McNemar's test to detect ``p_a - p_b = diff`` when a fraction
    ``discordance`` of pairs is discordant (Connor 1987):
    ``n = (z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - diff^2))^2 / diff^2``."""
    if not 0 < abs(diff) <= discordance <= 1:
        raise ValueError("need 0 < |diff| <= discordance <= 1")
    za, zb = float(sps.norm.ppf(1 - alpha / 2)), float(sps.norm.ppf(power))
    return (za * math.sqrt(discordance) + zb * math.sqrt(discordance - diff * diff)) ** 2 / diff ** 2


def min_detectable_difference_proportions(discordance: float, n: int, alpha: float = 0.05,
                                          power: float = 0.8) -> float:
    """Smallest ``|p_a - p_b|`` McNemar's test detects over ``n`` pairs with ``power``, given the
    fraction of discordant pairs (inverse of :func:`mcnemar_required_n`). ``inf`` when even
    ``diff = discordance`` (every discordant pair one way) would need more than ``n`` pairs."""
    if not 0 <= discordance <= 1:
        raise ValueError(f"discordance must be in [0, 1], got {discordance}")
    if discordance == 0 or n < 1 or mcnemar_required_n(discordance, discordance, alpha, power) > n:
        return math.inf
    return float(optimize.brentq(lambda d: mcnemar_required_n(d, discordance, alpha, power) - n,
                                 1e-12, discordance, xtol=1e-12))


# --------------------------------------------------------------------------- formatting


def fmt(value: float | None, spec: str = "{:.3f}") -> str:
    """A number for a table; ``None``/NaN print as ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def fmt_p(p: float) -> str:
    """A p-value: 3 significant digits, ``<0.001`` below that."""
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def format_mean_sd(values: Sequence[float | None], spec: str = "{:.3f}") -> str:
    """``mean ± sample SD`` of the non-missing values (SD only from 2 values on)."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return "n/a"
    mean = float(np.mean(as_finite_array(present)))
    if len(present) < 2:
        return spec.format(mean)
    return f"{spec.format(mean)} ± {spec.format(sample_sd(present))}"


def format_success_change(before: ArrayLike, after: ArrayLike, label: str = "SFT") -> str:
    """One line for the quickstart: held-out success before and after RL on the same tasks,
    with the paired difference and its Newcombe 95 % interval, e.g.
    ``held-out success: SFT 0.312 -> RL 0.406 (+0.094, 95% CI [0.031, 0.156], n=256)``."""
    result = mcnemar(after, before)
    return (f"held-out success: {label} {result.p_b:.3f} -> RL {result.p_a:.3f} "
            f"({result.diff:+.3f}, 95% CI [{result.lo:.3f}, {result.hi:.3f}], n={result.n})")
