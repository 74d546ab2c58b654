"""Each entropy-dynamics statistic as a plain function on plain data.

1. the entropy-reward law R = -a exp(H) + b (Clip-Cov paper), :func:`fit_exp_law`;
2. monotone entropy decline under GRPO, :func:`entropy_decline`;
3. the per-turn entropy map turn x step, :func:`token_entropy_by_turn` / :func:`entropy_map`;
4. per-turn drift between the first and last iteration: descriptive D(T) ~ c T^p
   (:func:`cumulative_drift`, :func:`fit_power_law`) and, for verdicts, the drift net of a
   split-half noise floor (:func:`turn_halves`, :func:`drift_vs_noise`);
5. post-observation entropy: descriptive head/rest ratio (:func:`post_observation`) and, for
   verdicts, content tokens only with a repeated-observation comparison group
   (:func:`post_observation_contrast`);
6. state recurrence within a group (GiGPO), :func:`state_recurrence`, and without the states that
   recur by construction, :func:`informative_recurrence`;
7. collapse signals before the largest gradient-norm spike and the repeated-output rate (RAGEN),
   :func:`collapse_signals`, :func:`repeated_output_rate`; for verdicts only in runs that
   :func:`collapsed`, against the run's mean change (:func:`change_before_spike_vs_any`).

Each statistic is a plain function on plain data. A *run* gives one number per statistic;
a *strategy* summarises its runs (seeds) as the mean and a 95 % t-interval (:func:`mean_ci`).
:func:`claims_table` (``verdicts.py``) turns the summaries into verdicts by calibrated rules.

Which data each statistic uses:

* per-step scalars (mean token entropy, the reward key, ``grad_norm``, ``reward_std``) come from the
  ``train`` records of ``metrics.jsonl``; a value missing there is computed from that
  iteration's trajectories where possible (entropy, return, success, reward std);
* everything per turn or per reply comes from the trajectories. Probe trajectories (AEPO
  pre-monitoring, ``kind == "probe"``) and branch-prefix copies (``info["branch_prefix"]``,
  steps an AEPO branch copied from its source) are left out: they are not new replies.

Runs of different lengths: every per-run statistic uses that run's own steps (its own first and
last iteration); nothing is truncated. Curves and maps averaged over seeds are aligned by
iteration number; at a step some runs lack, the mean is over the runs that have it and the
number of runs is recorded (``n_runs``).
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from agentropy.evals.dynamics.common import (
    CI_LEVEL,
    _finite_or_none,
)
from agentropy.training.trajectory import Step, Trajectory

# ----------------------------------------------------------------------------------------------
# Summaries over seeds
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Mean and confidence interval of one statistic over the runs (seeds) of a strategy."""

    mean: float
    lo: float
    hi: float
    n: int  # runs with a finite value

    def to_json(self) -> dict[str, Any]:
        return {"mean": _finite_or_none(self.mean), "lo": _finite_or_none(self.lo),
                "hi": _finite_or_none(self.hi), "n": self.n}


@functools.lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    """Student-t quantile, cached: the calibration tests compute thousands of intervals."""
    return float(scipy_stats.t.ppf(q, df))


def mean_ci(values: Iterable[float | None], level: float = CI_LEVEL) -> Summary:
    """Mean and two-sided t-interval over seeds.

    x̄ ± t_{(1+level)/2, n-1} · s / √n with s the sample standard deviation (ddof = 1).
    Non-finite values (a statistic a run could not give) are dropped and not counted in n.
    With n = 1 the interval is NaN (no spread can be estimated); with n = 0 everything is NaN.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Summary(mean, math.nan, math.nan, 1)
    half = float(_t_quantile(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Summary(mean, mean - half, mean + half, n)


# ----------------------------------------------------------------------------------------------
# 1. Entropy vs reward law (Clip-Cov paper)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpLawFit:
    a: float
    b: float
    r2: float
    n: int


def fit_exp_law(entropy: Sequence[float], reward: Sequence[float]) -> ExpLawFit:
    """Least-squares fit of R = -a · exp(H) + b over the training steps of one run.

    With x_k = exp(H_k) this is ordinary linear regression R_k = β0 + β1 x_k, so a = -β1 and
    b = β0; R² = 1 - Σ(R_k - R̂_k)² / Σ(R_k - R̄)². Needs at least 3 steps with finite H and R
    and some spread in both; otherwise every field is NaN (R² NaN when R is constant).
    """
    h = np.asarray(entropy, dtype=float)
    r = np.asarray(reward, dtype=float)
    ok = np.isfinite(h) & np.isfinite(r)
    x, y = np.exp(h[ok]), r[ok]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0.0:
        return ExpLawFit(math.nan, math.nan, math.nan, n)
    beta1, beta0 = np.polyfit(x, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - (beta0 + beta1 * x)) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if np.ptp(y) > 0.0 else math.nan
    return ExpLawFit(float(-beta1), float(beta0), r2, n)


# ----------------------------------------------------------------------------------------------
# 2. Monotone entropy decline under GRPO
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decline:
    rho: float  # Spearman correlation of entropy with step
    fell: float  # fraction of step-to-step changes that were decreases
    n: int


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation ρ = Pearson correlation of the ranks (ties get mean ranks).

    For distinct ranks ρ = 1 - 6 Σ d_i² / (n (n² - 1)). NaN with fewer than 3 points or a
    constant series.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return math.nan
    return float(scipy_stats.spearmanr(x, y).statistic)


def entropy_decline(steps: Sequence[int], entropy: Sequence[float]) -> Decline:
    """ρ_s(step, H̄_k) and the fraction of consecutive logged steps with H̄_{k+1} < H̄_k.

    A perfectly monotone decline has ρ = -1 and fraction 1. Steps are sorted; a gap in the
    iterations counts as one change between the two logged steps. Both are NaN with fewer than
    3 steps: one change is not a trend (every run of two iterations would otherwise give a
    fraction of exactly 0 or 1 and a zero-width interval over seeds).
    """
    pairs = sorted((int(s), float(h)) for s, h in zip(steps, entropy, strict=True) if h is not None and math.isfinite(h))
    xs = [s for s, _ in pairs]
    hs = np.asarray([h for _, h in pairs])
    fell = float(np.mean(np.diff(hs) < 0.0)) if hs.size >= 3 else math.nan
    return Decline(spearman(xs, hs), fell, len(pairs))


# ----------------------------------------------------------------------------------------------
# Steps that count as replies
# ----------------------------------------------------------------------------------------------


def analysed_steps(trajectory: Trajectory) -> list[Step]:
    """The turns of a trajectory that are the policy's own replies in this episode.

    Probe trajectories and the steps an AEPO branch copied from its source
    (``info["branch_prefix"]``) are excluded: counting them would count a reply twice.
    """
    if trajectory.kind == "probe":
        return []
    return [s for s in trajectory.steps if not s.info.get("branch_prefix", False)]


# ----------------------------------------------------------------------------------------------
# 3. Per-turn entropy map
# ----------------------------------------------------------------------------------------------


def token_entropy_by_turn(trajectories: Iterable[Trajectory]) -> dict[int, float]:
    """H_t: mean token entropy of all reply tokens at turn index t (token-weighted).

    H_t = Σ_{replies i at turn t} Σ_j H_{i,j} / Σ_i |reply_i|; turns with no reply token are absent.
    This is the per-turn vector H̄_k[t] that EPO averages over iterations into its reference
    (docs/methods/epo.md).
    """
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for traj in trajectories:
        for step in analysed_steps(traj):
            sums[step.turn] += float(sum(step.entropy))
            counts[step.turn] += len(step.entropy)
    return {t: sums[t] / counts[t] for t in sorted(counts) if counts[t] > 0}


@dataclass
class EntropyMap:
    """Mean over runs of H_t(k): ``values[i, j]`` is turn ``turns[i]`` at step ``steps[j]``."""

    turns: list[int]
    steps: list[int]
    values: np.ndarray  # [len(turns), len(steps)], NaN where no run has a value
    n_runs: np.ndarray  # [len(turns), len(steps)], runs contributing


def entropy_map(per_run: Sequence[Mapping[int, Mapping[int, float]]]) -> EntropyMap:
    """Average per-run maps {step: {turn: H_t(step)}} over runs, aligned by step and turn."""
    steps = sorted({k for run in per_run for k in run})
    turns = sorted({t for run in per_run for by_turn in run.values() for t in by_turn})
    total = np.zeros((len(turns), len(steps)))
    count = np.zeros((len(turns), len(steps)), dtype=int)
    ti = {t: i for i, t in enumerate(turns)}
    for run in per_run:
        for j, k in enumerate(steps):
            for t, h in run.get(k, {}).items():
                if math.isfinite(h):
                    total[ti[t], j] += h
                    count[ti[t], j] += 1
    with np.errstate(invalid="ignore"):
        values = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return EntropyMap(turns, steps, values, count)


# ----------------------------------------------------------------------------------------------
# 4. Cumulative per-turn drift (EPO Prop. 6.2)
# ----------------------------------------------------------------------------------------------


def cumulative_drift(h_k: Mapping[int, float], h_0: Mapping[int, float]) -> np.ndarray:
    """D_k(T) = Σ_{t ≤ T} |H_t(k) - H_t(0)| for T = 0, 1, ..., T_c.

    ``h_k`` / ``h_0`` map turn index to per-turn entropy at training step k and at the first
    step. T_c is the last turn of the longest run of turns 0, 1, ..., T_c that both steps
    have (a turn missing at either step ends the sum; turns past it are not used).
    Shape: [T_c + 1]; empty if turn 0 is missing.
    """
    drift = []
    t = 0
    while t in h_k and t in h_0 and math.isfinite(h_k[t]) and math.isfinite(h_0[t]):
        drift.append(abs(h_k[t] - h_0[t]))
        t += 1
    return np.cumsum(np.asarray(drift, dtype=float))


@dataclass(frozen=True)
class PowerFit:
    p: float
    c: float
    r2: float  # of the log-log line
    n: int  # points used


def fit_power_law(drift: Sequence[float]) -> PowerFit:
    """Fit D(T) ≈ c · T^p by least squares on log-log: log D = log c + p log T.

    ``drift[i]`` is D after i + 1 turns, so T = i + 1 (turn indices start at 0). Points with
    D ≤ 0 (no drift yet) cannot be logged and are left out; fewer than 3 points gives NaN.
    Reading p: sampling noise alone adds a roughly constant |ΔH| per turn, so p ≈ 1 is also
    the no-systematic-drift null; p clearly above 1 needs drift that grows with the turn index.
    Finite horizon: per-turn drift growing linearly in t gives D = c T(T+1)/2, whose log-log
    slope over T ≤ 30 is about 1.85, not 2.
    """
    d = np.asarray(drift, dtype=float)
    turns = np.arange(1, d.size + 1, dtype=float)
    ok = np.isfinite(d) & (d > 0.0)
    x, y = np.log(turns[ok]), np.log(d[ok])
    if x.size < 3:
        return PowerFit(math.nan, math.nan, math.nan, int(x.size))
    p, log_c = np.polyfit(x, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - (log_c + p * x)) ** 2).sum())
    return PowerFit(float(p), float(math.exp(log_c)), 1.0 - ss_res / ss_tot if np.ptp(y) > 0 else math.nan, int(x.size))


# ----------------------------------------------------------------------------------------------
# 5. Post-observation entropy (ARPO)
# ----------------------------------------------------------------------------------------------


def split_reply(entropy: Sequence[float], n: int) -> tuple[list[float], list[float]]:
    """Head = the first min(n, L) token entropies of a reply of L tokens, rest = the others.

    Boundaries: an empty reply gives ([], []); a reply of L ≤ n tokens is all head and has no
    rest ([...], []); n = 0 puts everything in the rest.
    """
    if n < 0:
        raise ValueError(f"n (head tokens) must be >= 0, got {n}")
    values = [float(h) for h in entropy]
    return values[:n], values[n:]


@dataclass
class PostObsCounts:
    """Sums over replies at one turn index; add two counts to pool them."""

    head_sum: float = 0.0  # Σ over paired replies of the mean head entropy
    rest_sum: float = 0.0  # Σ over paired replies of the mean rest entropy
    pairs: int = 0  # replies with both a head and a rest (L > n)
    short: int = 0  # replies with 1 ≤ L ≤ n tokens: no rest, left out of the ratio
    empty: int = 0  # replies with no token: left out of the ratio

    def add(self, other: PostObsCounts) -> None:
        self.head_sum += other.head_sum
        self.rest_sum += other.rest_sum
        self.pairs += other.pairs
        self.short += other.short
        self.empty += other.empty

    @property
    def head_mean(self) -> float:
        return self.head_sum / self.pairs if self.pairs else math.nan

    @property
    def rest_mean(self) -> float:
        return self.rest_sum / self.pairs if self.pairs else math.nan

    @property
    def ratio(self) -> float:
        """mean head entropy / mean rest entropy over the paired replies (NaN if none or rest 0)."""
        if not self.pairs or self.rest_sum <= 0.0:
            return math.nan
        return self.head_sum / self.rest_sum


def post_observation(trajectories: Iterable[Trajectory], n: int = 4) -> dict[int, PostObsCounts]:
    """Per turn index t: head and rest entropy of each reply, the head being its first n tokens.

    Every reply comes right after an environment observation. Over the paired replies P_t at
    turn t (those longer than n tokens):
        head_t = (1/|P_t|) Σ_{i∈P_t} mean(H_i[:n]),  rest_t = (1/|P_t|) Σ_{i∈P_t} mean(H_i[n:]),
        ratio_t = head_t / rest_t   (> 1: the first tokens after an observation are less certain).
    Replies of 1..n tokens have no rest and empty replies have no tokens: both are counted
    (``short``, ``empty``) but left out, so head and rest always come from the same replies.
    """
    out: dict[int, PostObsCounts] = defaultdict(PostObsCounts)
    for traj in trajectories:
        for step in analysed_steps(traj):
            head, rest = split_reply(step.entropy, n)
            c = out[step.turn]
            if not step.entropy:
                c.empty += 1
            elif not rest or not head:
                c.short += 1
            else:
                c.head_sum += sum(head) / len(head)
                c.rest_sum += sum(rest) / len(rest)
                c.pairs += 1
    return dict(sorted(out.items()))


def pool_post_observation(by_turn: Mapping[int, PostObsCounts]) -> PostObsCounts:
    """All turns pooled: the ratio over every paired reply of the run."""
    total = PostObsCounts()
    for c in by_turn.values():
        total.add(c)
    return total


# ----------------------------------------------------------------------------------------------
# 6. State recurrence (GiGPO)
# ----------------------------------------------------------------------------------------------


@dataclass
class Recurrence:
    """Anchor states of one iteration, counted per group (a state is a (group, anchor) pair)."""

    states: int = 0  # distinct (group, anchor_obs) pairs visited
    recurring: int = 0  # of those, anchors reached by more than one trajectory of the group
    step_group_sizes: dict[int, int] = field(default_factory=dict)  # size -> number of step groups
    groups: int = 0

    @property
    def fraction(self) -> float:
        """recurring / states (NaN when nothing was visited)."""
        return self.recurring / self.states if self.states else math.nan

    @property
    def mean_step_group_size(self) -> float:
        groups = sum(self.step_group_sizes.values())
        return sum(s * c for s, c in self.step_group_sizes.items()) / groups if groups else math.nan


def state_recurrence(trajectories: Iterable[Trajectory]) -> Recurrence:
    """Fraction of visited anchor states that occur in more than one trajectory of their group.

    For each group g (same task, ``group_id``) and anchor observation s, let T_g(s) be the set of
    trajectories of g with a step at s and N_g(s) the number of such steps (GiGPO's step group,
    a trajectory revisiting s counts each visit). Then
        fraction = |{(g, s): |T_g(s)| ≥ 2}| / |{(g, s)}|,
    and the step-group size distribution is the histogram of N_g(s) over all (g, s).
    """
    trajs_at: dict[tuple[str, str], set[str]] = defaultdict(set)
    steps_at: Counter[tuple[str, str]] = Counter()
    groups: set[str] = set()
    for traj in trajectories:
        for step in analysed_steps(traj):
            key = (traj.group_id, step.anchor_obs)
            trajs_at[key].add(traj.traj_id)
            steps_at[key] += 1
            groups.add(traj.group_id)
    sizes = Counter(steps_at.values())
    return Recurrence(
        states=len(trajs_at),
        recurring=sum(1 for ids in trajs_at.values() if len(ids) > 1),
        step_group_sizes=dict(sorted(sizes.items())),
        groups=len(groups),
    )


# ----------------------------------------------------------------------------------------------
# 7. Collapse signals (RAGEN echo trap)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollapseSignals:
    spike_step: int | None  # iteration of the largest grad-norm spike
    spike_ratio: float  # g at the spike / median g of the run
    d_reward_std: float  # change of reward std over the w iterations up to the spike
    d_entropy: float  # change of mean token entropy over the w iterations up to the spike


def largest_spike(grad_norm: Sequence[float], min_before: int = 1) -> int | None:
    """Position of the largest gradient norm among positions ≥ ``min_before``, if it is a spike.

    The first position is skipped so that a spike always has a step before it to measure a
    change from (the first update's norm is often large for other reasons). A spike must
    exceed the run's median norm; None when there is no such position (flat or too short run).
    """
    g = np.asarray(grad_norm, dtype=float)
    if g.size <= min_before or not np.isfinite(g[min_before:]).any():
        return None
    tail = np.where(np.isfinite(g[min_before:]), g[min_before:], -np.inf)
    pos = int(np.argmax(tail)) + min_before
    return pos if g[pos] > float(np.nanmedian(g)) else None


def collapse_signals(
    steps: Sequence[int],
    grad_norm: Sequence[float],
    reward_std: Sequence[float],
    entropy: Sequence[float],
    window: int = 5,
) -> CollapseSignals:
    """The largest grad-norm spike of a run and what reward std and entropy did on the way to it.

    Series are aligned by position, sorted by step. With the spike at position s (s ≥ 1):
        Δx = x_s - x_{max(0, s - w)}   for x = reward std, mean token entropy,
    the change over the w iterations leading to the spike. x_s counts as "before": iteration s
    rolls out (giving its reward std and entropy) and then updates on those rollouts (giving
    its gradient norm). Negative Δ: x fell while approaching the spike.
    spike_ratio = g_s / median(g) says how much of a spike it is. NaN/None for runs of one step.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    order = np.argsort(np.asarray(steps), kind="stable")
    st = np.asarray(steps)[order]
    g = np.asarray(grad_norm, dtype=float)[order]
    rs = np.asarray(reward_std, dtype=float)[order]
    h = np.asarray(entropy, dtype=float)[order]
    pos = largest_spike(g)
    if pos is None:
        return CollapseSignals(None, math.nan, math.nan, math.nan)
    start = max(0, pos - window)
    median = float(np.nanmedian(g))
    return CollapseSignals(
        spike_step=int(st[pos]),
        spike_ratio=float(g[pos] / median) if median > 0 else math.nan,
        d_reward_std=float(rs[pos] - rs[start]),
        d_entropy=float(h[pos] - h[start]),
    )


def repeated_output_rate(trajectories: Iterable[Trajectory]) -> tuple[int, int]:
    """(repeated, replies): replies identical to another reply of the same group at the same turn.

    For each cell (group g, turn t) with replies r_1..r_m (token ids), the repeats are
    m - |distinct{r_i}|; rate = Σ repeats / Σ m. A group whose G replies all agree adds G - 1
    repeats; all-different replies add 0. Two empty replies are identical.
    """
    cells: dict[tuple[str, int], list[tuple[int, ...]]] = defaultdict(list)
    for traj in trajectories:
        for step in analysed_steps(traj):
            cells[(traj.group_id, step.turn)].append(tuple(step.response_ids))
    repeated = sum(len(r) - len(set(r)) for r in cells.values())
    return repeated, sum(len(r) for r in cells.values())


def group_reward_std(trajectories: Iterable[Trajectory]) -> float:
    """Mean over groups (≥ 2 trajectories) of the population std of the episode returns."""
    returns: dict[str, list[float]] = defaultdict(list)
    for traj in trajectories:
        if traj.kind != "probe":
            returns[traj.group_id].append(float(traj.episode_return))
    stds = [float(np.std(r)) for r in returns.values() if len(r) >= 2]
    return float(np.mean(stds)) if stds else math.nan




# ----------------------------------------------------------------------------------------------
# Calibrated versions (each checked against synthetic nulls and planted effects in the tests)
# ----------------------------------------------------------------------------------------------


def turn_halves(trajectories: Iterable[Trajectory]) -> dict[int, tuple[float, int, float, int]]:
    """Per turn t: (token entropy sum, tokens) of two halves of the groups, for a noise floor.

    Groups (tasks) are split alternately by sorted ``group_id``; a group is the independent unit
    (its replies share a task), so the difference of the halves' turn entropies measures the
    sampling noise of H_t at this iteration, task-to-task variation included."""
    trajs = [t for t in trajectories if t.kind != "probe"]
    half_of = {g: i % 2 for i, g in enumerate(sorted({t.group_id for t in trajs}))}
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0, 0.0, 0])
    for traj in trajs:
        h = half_of[traj.group_id]
        for step in analysed_steps(traj):
            cell = sums[step.turn]
            cell[2 * h] += float(sum(step.entropy))
            cell[2 * h + 1] += len(step.entropy)
    return {t: (float(c[0]), int(c[1]), float(c[2]), int(c[3])) for t, c in sorted(sums.items())}


def noise_variance(halves: tuple[float, int, float, int]) -> float:
    """Unbiased estimate of the sampling variance of a turn's entropy mean, from its two halves.

    With half means A, B over m_A, m_B tokens, E[(A - B)^2] = s^2 (1/m_A + 1/m_B) when the
    halves are exchangeable, and the full mean has variance s^2 / (m_A + m_B), so
    var_full = (A - B)^2 m_A m_B / (m_A + m_B)^2 (a quarter of (A - B)^2 for equal halves)."""
    sa, ma, sb, mb = halves
    if ma == 0 or mb == 0:
        return math.nan
    return (sa / ma - sb / mb) ** 2 * ma * mb / (ma + mb) ** 2


@dataclass(frozen=True)
class DriftVsNoise:
    """Per-turn drift between two iterations, net of the sampling noise of both.

    ``excess[t] = (H_t(last) - H_t(first))^2 - var_first(t) - var_last(t)`` has expectation
    delta_t^2 (the squared systematic drift) under any noise level, so its mean is 0 without
    drift and its slope on t is 0 unless the drift grows with the turn index."""

    turns: list[int]
    excess: list[float]
    mean_excess: float
    slope: float  # least-squares slope of excess on t
    n: int


def drift_vs_noise(h_first: Mapping[int, float], h_last: Mapping[int, float],
                   halves_first: Mapping[int, tuple[float, int, float, int]],
                   halves_last: Mapping[int, tuple[float, int, float, int]],
                   usable: Iterable[int]) -> DriftVsNoise:
    """:class:`DriftVsNoise` over the ``usable`` turns (those with enough replies at both steps)."""
    turns, excess = [], []
    for t in sorted(usable):
        if t in h_first and t in h_last and t in halves_first and t in halves_last:
            noise = noise_variance(halves_first[t]) + noise_variance(halves_last[t])
            if math.isfinite(noise):
                turns.append(t)
                excess.append((h_last[t] - h_first[t]) ** 2 - noise)
    n = len(turns)
    mean = float(np.mean(excess)) if n else math.nan
    slope = float(np.polyfit(turns, excess, 1)[0]) if n >= 3 else math.nan
    return DriftVsNoise(turns, excess, mean, slope, n)


def format_token_ids(trajectories: Iterable[Trajectory], min_share: float = 0.9) -> frozenset[int]:
    """Token ids present in at least ``min_share`` of all replies: the reply format's fixed
    tokens (tags such as ``<action>`` / ``</action>``), whose entropy is near 0 by construction.

    Content words are never in 90 % of replies unless the policy has collapsed onto them, in
    which case leaving them out of both head and rest only costs sample size."""
    counts: Counter[int] = Counter()
    replies = 0
    for traj in trajectories:
        for step in analysed_steps(traj):
            replies += 1
            counts.update(set(step.response_ids))
    if not replies:
        return frozenset()
    return frozenset(tok for tok, c in counts.items() if c >= min_share * replies)


def follows_new_observation(trajectory: Trajectory) -> list[tuple[Step, bool]]:
    """The analysed steps, each with whether its observation is new: the first turn, or an
    anchor different from the previous turn's (a no-op such as "Nothing happens." in a
    unchanged state repeats the anchor and is not new)."""
    out, previous = [], None
    for step in analysed_steps(trajectory):
        out.append((step, previous is None or step.anchor_obs != previous))
        previous = step.anchor_obs
    return out


def follows_tool_response(trajectory: Trajectory) -> list[tuple[Step, bool]]:
    """The analysed steps, each with whether its observation is a tool's response: the previous
    turn's action was a tool call the env carried out (its ``info`` names one in ``tool_call``,
    and flags neither ``invalid_action`` nor ``tool_error``). The first reply (after the task
    alone) and replies after a malformed or failed call follow no tool response."""
    out, previous = [], None
    for step in analysed_steps(trajectory):
        tool = previous is not None and bool(previous.info.get("tool_call")) and not (
            previous.info.get("invalid_action") or previous.info.get("tool_error"))
        out.append((step, tool))
        previous = step
    return out


def reports_tool_calls(trajectories: Iterable[Trajectory]) -> bool:
    """Whether the env of these trajectories names its tool calls (``info["tool_call"]``)."""
    return any("tool_call" in s.info for t in trajectories for s in t.steps)


@dataclass
class PostObsContrast:
    """Content-token head/rest sums, and head entropy after new vs repeated observations and
    after a tool response vs after none (tool envs only)."""

    content: PostObsCounts = field(default_factory=PostObsCounts)
    head_new_sum: float = 0.0
    head_new_n: int = 0
    head_repeat_sum: float = 0.0
    head_repeat_n: int = 0
    head_tool_sum: float = 0.0
    head_tool_n: int = 0
    head_other_sum: float = 0.0
    head_other_n: int = 0

    def add(self, other: PostObsContrast) -> None:
        self.content.add(other.content)
        self.head_new_sum += other.head_new_sum
        self.head_new_n += other.head_new_n
        self.head_repeat_sum += other.head_repeat_sum
        self.head_repeat_n += other.head_repeat_n
        self.head_tool_sum += other.head_tool_sum
        self.head_tool_n += other.head_tool_n
        self.head_other_sum += other.head_other_sum
        self.head_other_n += other.head_other_n

    @property
    def log_ratio(self) -> float:
        """log(mean head / mean rest) over content tokens (0 when position does not matter)."""
        r = self.content.ratio
        return math.log(r) if r > 0 else math.nan

    @property
    def new_minus_repeat(self) -> float:
        """Mean head entropy after a new observation minus after a repeated one."""
        if not self.head_new_n or not self.head_repeat_n:
            return math.nan
        return self.head_new_sum / self.head_new_n - self.head_repeat_sum / self.head_repeat_n

    @property
    def tool_minus_other(self) -> float:
        """Mean head entropy after a tool response minus after none (NaN without both kinds)."""
        if not self.head_tool_n or not self.head_other_n:
            return math.nan
        return self.head_tool_sum / self.head_tool_n - self.head_other_sum / self.head_other_n


def post_observation_contrast(trajectories: Sequence[Trajectory], n: int = 4,
                              min_share: float = 0.9) -> PostObsContrast:
    """Post-observation entropy with the reply format's fixed tokens removed.

    The old head/rest ratio compared a reply's first tokens with its closing tags, whose entropy
    is ~0, so it exceeded 1 without any observation effect. Here head = the first n *content*
    tokens, rest = the later content tokens, and the comparison group is the head of replies
    whose observation repeated the previous one: the same position in the reply, no new
    information to react to. In envs that name their tool calls, heads are also split by
    whether the reply follows a tool's response (ARPO's claim is about exactly those tokens)."""
    fixed = format_token_ids(trajectories, min_share)
    tools = reports_tool_calls(trajectories)
    out = PostObsContrast()
    for traj in trajectories:
        after_tool = [tool for _, tool in follows_tool_response(traj)] if tools else None
        for k, (step, new) in enumerate(follows_new_observation(traj)):
            content = [h for tok, h in zip(step.response_ids, step.entropy, strict=False) if tok not in fixed]
            head, rest = content[:n], content[n:]
            if not content:
                out.content.empty += 1
                continue
            head_mean = sum(head) / len(head)
            if after_tool is not None and after_tool[k]:
                out.head_tool_sum += head_mean
                out.head_tool_n += 1
            elif after_tool is not None:
                out.head_other_sum += head_mean
                out.head_other_n += 1
            if new:
                out.head_new_sum += head_mean
                out.head_new_n += 1
            else:
                out.head_repeat_sum += head_mean
                out.head_repeat_n += 1
            if not rest:
                out.content.short += 1
            else:
                out.content.head_sum += head_mean
                out.content.rest_sum += sum(rest) / len(rest)
                out.content.pairs += 1
    return out


def informative_recurrence(trajectories: Iterable[Trajectory]) -> Recurrence:
    """:func:`state_recurrence` without the states that recur by construction: the initial
    state (every trajectory of a group starts there) and no-op observations (an anchor equal to
    the trajectory's previous one: the action changed nothing, so looping on it is not a
    shared useful state)."""
    kept = []
    for traj in trajectories:
        steps = [s for s, new in follows_new_observation(traj) if new and s.turn > 0]
        first_anchor = next((s.anchor_obs for s in analysed_steps(traj)), None)
        steps = [s for s in steps if s.anchor_obs != first_anchor]
        kept.append(Trajectory(traj_id=traj.traj_id, group_id=traj.group_id, task_id=traj.task_id, seed=traj.seed,
                               steps=steps, kind=traj.kind))
    return state_recurrence(kept)


def collapsed(entropy: Sequence[float], ratio: float = 0.5) -> bool:
    """A collapse event: mean token entropy fell below ``ratio`` x its first logged value."""
    h = [x for x in entropy if math.isfinite(x)]
    return len(h) >= 2 and h[0] > 0 and min(h[1:]) < ratio * h[0]


def change_before_spike_vs_any(x: Sequence[float], spike: int, window: int) -> float:
    """Change of x over the w' = min(w, spike) steps up to the spike, minus the mean change over
    every other w'-step stretch of the run (the spike's position permuted).

    A series that trends down over the whole run falls before *any* step; only a fall that is
    larger before the spike than over a random stretch of the same length is evidence that the
    fall leads to the spike. A linear trend cancels exactly."""
    v = np.asarray(x, dtype=float)
    if not 1 <= spike < v.size or not np.isfinite(v).all():
        return math.nan
    w = min(window, spike)
    changes = v[w:] - v[:-w]
    return float(v[spike] - v[spike - w] - changes.mean())
