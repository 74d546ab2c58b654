"""Entropy dynamics of training runs, measured against the claims the papers build on.

``agentropy analyze`` reads run folders (``config.yaml``, ``metrics.jsonl``,
``trajectories/iter_*_rank*.jsonl``) and measures seven things (issue 13):

1. the entropy-reward law R = -a exp(H) + b (Clip-Cov paper), :func:`fit_exp_law`;
2. monotone entropy decline under GRPO, :func:`entropy_decline`;
3. the per-turn entropy map turn x step, :func:`turn_entropy` / :func:`entropy_map`;
4. cumulative per-turn drift D(T) ~ c T^p (EPO Prop. 6.2), :func:`cumulative_drift`, :func:`fit_power_law`;
5. post-observation entropy, first n tokens of a reply vs the rest (ARPO), :func:`post_observation`;
6. state recurrence within a group (GiGPO), :func:`state_recurrence`;
7. collapse signals before the largest gradient-norm spike and the repeated-output rate (RAGEN),
   :func:`collapse_signals`, :func:`repeated_output_rate`.

Each statistic is a plain function on plain data. A *run* gives one number per statistic;
a *strategy* summarises its runs (seeds) as the mean and a 95 % t-interval (:func:`mean_ci`).
:func:`claims_table` turns the summaries into verdicts by stated threshold rules, never by hand.

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

import json
import math
import platform
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from scipy import stats as scipy_stats

from agentropy.training.run_log import read_metrics
from agentropy.training.trajectory import Step, Trajectory, read_jsonl

#: Confidence level of every interval over seeds.
CI_LEVEL = 0.95

TRAJECTORY_FILE = re.compile(r"^iter_(\d+)_rank(\d+)\.jsonl$")
BENCH_CELL = re.compile(r"^(?P<strategy>.+?)__(?P<env>.+)__s(?P<seed>-?\d+)$")


class AnalysisError(ValueError):
    """Input the analysis cannot use: the message names the run folder and what is wrong."""


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
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
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
    iterations counts as one change between the two logged steps.
    """
    pairs = sorted((int(s), float(h)) for s, h in zip(steps, entropy, strict=True) if h is not None and math.isfinite(h))
    xs = [s for s, _ in pairs]
    hs = np.asarray([h for _, h in pairs])
    fell = float(np.mean(np.diff(hs) < 0.0)) if hs.size >= 2 else math.nan
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


def turn_entropy(trajectories: Iterable[Trajectory]) -> dict[int, float]:
    """H_t: mean token entropy of all reply tokens at turn index t (token-weighted).

    H_t = Σ_{replies i at turn t} Σ_j H_{i,j} / Σ_i |reply_i|; turns with no reply token are absent.
    This is the per-turn vector H̄_k[t] of EPO's reference (ALGORITHMS.md 2(c) step 2).
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
# Reading runs
# ----------------------------------------------------------------------------------------------


@dataclass
class IterationStats:
    """What one iteration's trajectories say (computed once, then the trajectories are dropped)."""

    iteration: int
    entropy_mean: float
    success_rate: float
    return_mean: float
    reward_std: float
    turn_entropy: dict[int, float]
    turn_replies: dict[int, int]  # non-empty replies at each turn index
    post_obs: dict[int, PostObsCounts]
    recurrence: Recurrence
    repeated: int
    replies: int
    trajectories: int


def iteration_stats(iteration: int, trajectories: Sequence[Trajectory], n_head: int) -> IterationStats:
    trajs = [t for t in trajectories if t.kind != "probe"]
    tokens = [h for t in trajs for s in analysed_steps(t) for h in s.entropy]
    repeated, replies = repeated_output_rate(trajs)
    return IterationStats(
        iteration=iteration,
        entropy_mean=float(np.mean(tokens)) if tokens else math.nan,
        success_rate=float(np.mean([t.won for t in trajs])) if trajs else math.nan,
        return_mean=float(np.mean([t.episode_return for t in trajs])) if trajs else math.nan,
        reward_std=group_reward_std(trajs),
        turn_entropy=turn_entropy(trajs),
        turn_replies=dict(Counter(s.turn for t in trajs for s in analysed_steps(t) if s.entropy)),
        post_obs=post_observation(trajs, n_head),
        recurrence=state_recurrence(trajs),
        repeated=repeated,
        replies=replies,
        trajectories=len(trajs),
    )


@dataclass
class RunData:
    """One run folder, reduced to per-iteration numbers."""

    path: Path
    strategy: str
    env_id: str
    seed: int
    methods: list[str]  # enabled entropy methods (strategy blocks with enabled: true)
    records: dict[int, dict[str, Any]]  # train records of metrics.jsonl by iteration
    iterations: dict[int, IterationStats]  # from the trajectories, by iteration

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> list[int]:
        return sorted(set(self.records) | set(self.iterations))

    @property
    def baseline(self) -> bool:
        """No entropy method enabled (plain GRPO / GiGPO)."""
        return not self.methods

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a per-step scalar: the metrics record's value, else the trajectories'."""
        steps, values = [], []
        for k in self.steps:
            value = _number(self.records.get(k, {}).get(key))
            if value is None and k in self.iterations:
                value = _number(getattr(self.iterations[k], key, None))
            steps.append(k)
            values.append(math.nan if value is None else value)
        return steps, values


def _number(value: Any) -> float | None:
    """A finite-or-not float from a metrics value (RunLog writes nan/inf as strings)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def expand_run_dirs(paths: Sequence[str | Path], env: str | None = None) -> list[Path]:
    """Run folders from the command line: a run folder as is, a bench folder as its cells.

    A bench folder holds ``<strategy>__<env>__s<seed>`` cells and ``init__<env>`` SFT folders
    (skipped). ``env`` keeps only bench cells of that env label, or runs whose ``env.id``
    contains it.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise AnalysisError(f"{path}: not a folder")
        if (path / "metrics.jsonl").exists():
            out.append(path.resolve())
            continue
        cells = sorted(p for p in path.iterdir()
                       if p.is_dir() and not p.name.startswith("init__") and (p / "metrics.jsonl").exists())
        if not cells:
            raise AnalysisError(f"{path}: neither a run folder (no metrics.jsonl) nor a bench folder "
                                "(no <strategy>__<env>__s<seed> cells with metrics.jsonl)")
        out.extend(c.resolve() for c in cells)
    out = list(dict.fromkeys(out))  # a run named twice is one run
    if env is not None:
        out = [p for p in out if _matches_env(p, env)]
        if not out:
            raise AnalysisError(f"--env {env}: no run matches (bench env label or env.id)")
    return out


def _matches_env(path: Path, env: str) -> bool:
    m = BENCH_CELL.match(path.name)
    if m and m.group("env") == env:
        return True
    config = _read_config(path)
    return env.lower() in str(_get(config, "env.id", "")).lower()


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.yaml"
    if not config_path.exists():
        raise AnalysisError(f"{path}: no config.yaml (needed for env.id, run.seed and the strategy)")
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise AnalysisError(f"{config_path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise AnalysisError(f"{config_path}: expected a mapping at the top level")
    return data


def _get(data: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def enabled_methods(config: Mapping[str, Any]) -> list[str]:
    """Strategy blocks with ``enabled: true``, plus ``entropy_bonus`` for a plain entropy coefficient."""
    strategy = config.get("strategy") or {}
    methods = [name for name, block in strategy.items() if isinstance(block, Mapping) and block.get("enabled") is True]
    if (_number(_get(strategy, "policy_loss.entropy_coef", 0.0)) or 0.0) > 0.0:
        methods.append("entropy_bonus")
    return methods


def strategy_label(path: Path, config: Mapping[str, Any]) -> str:
    """The bench cell's strategy name, else the enabled methods joined by '+' (else the estimator)."""
    m = BENCH_CELL.match(path.name)
    if m:
        return m.group("strategy")
    methods = enabled_methods(config)
    return "+".join(methods) if methods else str(_get(config, "strategy.advantage.estimator", "grpo"))


def trajectory_files(path: Path) -> dict[int, list[Path]]:
    """``trajectories/iter_{k:06d}_rank{r}.jsonl`` grouped by iteration k (all ranks together)."""
    files: dict[int, list[Path]] = defaultdict(list)
    folder = path / "trajectories"
    if folder.is_dir():
        for f in folder.iterdir():
            m = TRAJECTORY_FILE.match(f.name)
            if m:
                files[int(m.group(1))].append(f)
    return {k: sorted(v) for k, v in sorted(files.items())}


def _no_trajectories(path: Path) -> AnalysisError:
    return AnalysisError(f"{path}: no trajectories (expected {path / 'trajectories'}/iter_000000_rank0.jsonl; "
                         "was the run made with run.save_trajectories=false?)")


def load_run(path: str | Path, n_head: int = 4, on_iteration: Callable[[], None] | None = None) -> RunData:
    """Read a run folder. Raises :class:`AnalysisError` naming the folder when something is missing."""
    path = Path(path)
    config = _read_config(path)
    env_id = _get(config, "env.id")
    if not env_id:
        raise AnalysisError(f"{path / 'config.yaml'}: env.id is missing")
    if not (path / "metrics.jsonl").exists():
        raise AnalysisError(f"{path}: no metrics.jsonl")
    files = trajectory_files(path)
    if not files:
        raise _no_trajectories(path)
    records: dict[int, dict[str, Any]] = {}
    for record in read_metrics(path):
        if record.get("phase") == "train" and isinstance(record.get("iteration"), int):
            records[record["iteration"]] = record  # a later line of the same iteration wins
    iterations = {}
    for k, paths in files.items():
        trajs = [t for f in paths for t in read_jsonl(f)]
        iterations[k] = iteration_stats(k, trajs, n_head)
        if on_iteration is not None:
            on_iteration()
    seed = _get(config, "run.seed", 0)
    m = BENCH_CELL.match(path.name)
    return RunData(path=path, strategy=strategy_label(path, config), env_id=str(env_id),
                   seed=int(m.group("seed")) if m else int(seed), methods=enabled_methods(config),
                   records=records, iterations=iterations)


def load_runs(paths: Sequence[str | Path], n_head: int = 4, env: str | None = None,
              progress: bool = True) -> list[RunData]:
    """Expand bench folders, check that every run has trajectories and all share one environment
    (before reading anything), then read the runs."""
    dirs = expand_run_dirs(paths, env)
    envs = {d: _get(_read_config(d), "env.id") for d in dirs}
    files = {d: trajectory_files(d) for d in dirs}
    first = dirs[0]
    for d in dirs:
        if not files[d]:
            raise _no_trajectories(d)
        if envs[d] != envs[first]:
            raise AnalysisError(
                f"{d}: env.id is {envs[d]!r} but {first} has {envs[first]!r}; analyze one environment at a "
                "time (--env LABEL keeps the bench cells of one env)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = sum(len(f) for f in files.values())
    runs = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("reading trajectories", total=total)
        for d in dirs:
            bar.update(task, description=f"reading {d.name}")
            runs.append(load_run(d, n_head, on_iteration=lambda: bar.advance(task)))
    return runs


# ----------------------------------------------------------------------------------------------
# The analysis: per run, then per strategy
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    n_head: int = 4  # head tokens of the post-observation split
    window: int = 5  # steps before the grad-norm spike
    reward_key: Literal["success_rate", "return_mean"] = "success_rate"  # R of the entropy-reward law
    min_turn_replies: int = 4  # drift uses turns with at least this many replies at both steps


def analyze_run(run: RunData, options: Options) -> dict[str, Any]:
    """Every per-run number (plain floats, NaN where not computable)."""
    steps, entropy = run.series("entropy_mean")
    _, reward = run.series(options.reward_key)
    _, grad = run.series("grad_norm")
    _, reward_std = run.series("reward_std")
    law = fit_exp_law(entropy, reward)
    decline = entropy_decline(steps, entropy)

    traj_steps = sorted(run.iterations)
    first, last = run.iterations[traj_steps[0]], run.iterations[traj_steps[-1]]
    drift = cumulative_drift(*(
        {t: h for t, h in it.turn_entropy.items() if it.turn_replies.get(t, 0) >= options.min_turn_replies}
        for it in (last, first)))
    power = fit_power_law(drift)

    post_by_turn: dict[int, PostObsCounts] = defaultdict(PostObsCounts)
    for it in run.iterations.values():
        for t, c in it.post_obs.items():
            post_by_turn[t].add(c)
    post = pool_post_observation(post_by_turn)

    signals = collapse_signals(steps, grad, reward_std, entropy, options.window)
    rep_first = first.repeated / first.replies if first.replies else math.nan
    rep_last = last.repeated / last.replies if last.replies else math.nan
    return {
        "run": run.name, "seed": run.seed, "steps": steps, "first_step": traj_steps[0], "last_step": traj_steps[-1],
        "entropy": entropy, "reward": reward, "grad_norm": grad, "reward_std": reward_std,
        "exp_law": asdict(law),
        "decline": asdict(decline),
        "turn_entropy": {k: run.iterations[k].turn_entropy for k in traj_steps},
        "drift": {"from_step": traj_steps[0], "at_step": traj_steps[-1], "D": drift.tolist(), **asdict(power)},
        "post_obs": {
            "ratio": post.ratio, "head": post.head_mean, "rest": post.rest_mean,
            "pairs": post.pairs, "short": post.short, "empty": post.empty,
            "by_turn": {t: {"ratio": c.ratio, "head": c.head_mean, "rest": c.rest_mean, "pairs": c.pairs,
                            "short": c.short, "empty": c.empty} for t, c in sorted(post_by_turn.items())},
        },
        "recurrence": {
            "first": _recurrence_json(first.recurrence), "last": _recurrence_json(last.recurrence),
            "change": last.recurrence.fraction - first.recurrence.fraction,
            "trajectories_per_group": first.trajectories / first.recurrence.groups if first.recurrence.groups else math.nan,
        },
        "collapse": {**asdict(signals), "window": options.window},
        "repeated": {"first": rep_first, "last": rep_last, "change": rep_last - rep_first},
        "repeated_rate": [run.iterations[k].repeated / run.iterations[k].replies
                          if k in run.iterations and run.iterations[k].replies else math.nan for k in steps],
    }


def _recurrence_json(r: Recurrence) -> dict[str, Any]:
    return {"fraction": r.fraction, "states": r.states, "recurring": r.recurring, "groups": r.groups,
            "mean_step_group_size": r.mean_step_group_size, "step_group_sizes": r.step_group_sizes}


def _summaries(per_run: Sequence[Mapping[str, Any]], paths: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """{name: Summary json} for each name -> dotted path into the per-run dicts."""
    return {name: mean_ci([_get(r, path) for r in per_run]).to_json() for name, path in paths.items()}


def _aligned(per_run: Sequence[Mapping[str, Any]], key: str) -> dict[str, list]:
    """Mean over runs of a per-step series, aligned by step; n_runs per step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in per_run:
        for k, v in zip(r["steps"], r[key], strict=True):
            if math.isfinite(v):
                by_step[k].append(v)
    steps = sorted(by_step)
    return {"steps": steps, "mean": [float(np.mean(by_step[k])) for k in steps],
            "n_runs": [len(by_step[k]) for k in steps]}


def analyze_strategy(runs: Sequence[RunData], options: Options) -> dict[str, Any]:
    """Per-run numbers of one strategy's runs and their summaries over seeds."""
    per_run = [analyze_run(r, options) for r in sorted(runs, key=lambda r: (r.seed, r.name))]
    emap = entropy_map([r["turn_entropy"] for r in per_run])
    post_turns = sorted({t for r in per_run for t in r["post_obs"]["by_turn"]})
    lengths = {r["run"]: len(r["steps"]) for r in per_run}
    sizes_first: Counter[int] = Counter()
    sizes_last: Counter[int] = Counter()
    for r in per_run:
        sizes_first.update(r["recurrence"]["first"]["step_group_sizes"])
        sizes_last.update(r["recurrence"]["last"]["step_group_sizes"])
    return {
        "runs": [r["run"] for r in per_run],
        "seeds": [r["seed"] for r in per_run],
        "methods": sorted({m for r in runs for m in r.methods}),
        "baseline": all(r.baseline for r in runs),
        "corridor": all("epo" in r.methods for r in runs),
        "steps_per_run": lengths,
        "equal_length": len(set(lengths.values())) <= 1,
        "per_run": per_run,
        "exp_law": _summaries(per_run, {"a": "exp_law.a", "b": "exp_law.b", "r2": "exp_law.r2"}),
        "decline": _summaries(per_run, {"rho": "decline.rho", "fell": "decline.fell"}),
        "entropy_by_step": _aligned(per_run, "entropy"),
        "entropy_map": {"turns": emap.turns, "steps": emap.steps, "values": emap.values.tolist(),
                        "n_runs": emap.n_runs.tolist()},
        "drift": _summaries(per_run, {"p": "drift.p", "c": "drift.c", "r2": "drift.r2"}),
        "post_obs": {
            **_summaries(per_run, {"ratio": "post_obs.ratio", "head": "post_obs.head", "rest": "post_obs.rest"}),
            "pairs": sum(r["post_obs"]["pairs"] for r in per_run),
            "short": sum(r["post_obs"]["short"] for r in per_run),
            "empty": sum(r["post_obs"]["empty"] for r in per_run),
            "by_turn": {t: mean_ci([r["post_obs"]["by_turn"][t]["ratio"] for r in per_run
                                    if t in r["post_obs"]["by_turn"]]).to_json() for t in post_turns},
        },
        "recurrence": {
            **_summaries(per_run, {"fraction_first": "recurrence.first.fraction",
                                   "fraction_last": "recurrence.last.fraction",
                                   "change": "recurrence.change",
                                   "size_first": "recurrence.first.mean_step_group_size",
                                   "size_last": "recurrence.last.mean_step_group_size",
                                   "group_size": "recurrence.trajectories_per_group"}),
            "step_group_sizes_first": dict(sorted(sizes_first.items())),
            "step_group_sizes_last": dict(sorted(sizes_last.items())),
        },
        "collapse": _summaries(per_run, {"d_reward_std": "collapse.d_reward_std", "d_entropy": "collapse.d_entropy",
                                         "spike_ratio": "collapse.spike_ratio"}),
        "repeated": _summaries(per_run, {"first": "repeated.first", "last": "repeated.last",
                                         "change": "repeated.change"}),
    }


def analyze(runs: Sequence[RunData], options: Options | None = None) -> dict[str, Any]:
    """The whole analysis: strategies side by side, then the claims table."""
    options = options or Options()
    if not runs:
        raise AnalysisError("no runs to analyze")
    by_strategy: dict[str, list[RunData]] = defaultdict(list)
    for run in runs:
        by_strategy[run.strategy].append(run)
    strategies = {label: analyze_strategy(rs, options) for label, rs in sorted(by_strategy.items())}
    result = {
        "meta": {
            "env_id": runs[0].env_id,
            "runs": [str(r.path) for r in runs],
            "options": asdict(options),
            "ci_level": CI_LEVEL,
            "machine": f"{platform.node()} ({platform.platform()}, {platform.processor() or platform.machine()})",
        },
        "strategies": strategies,
    }
    result["claims"] = claims_table(strategies)
    return result


# ----------------------------------------------------------------------------------------------
# The claims table
# ----------------------------------------------------------------------------------------------

Side = Literal["above", "below", "by_corridor"]


def threshold_verdict(summary: Mapping[str, Any], threshold: float, side: Literal["above", "below"]) -> str:
    """"holds" if the 95 % CI lies entirely on ``side`` of ``threshold``, "does not hold" if it lies
    entirely on the other side, else "inconclusive" (also with fewer than 2 seeds: no CI)."""
    lo, hi = summary.get("lo"), summary.get("hi")
    if summary.get("n", 0) < 2 or lo is None or hi is None:
        return "inconclusive"
    above, below = lo > threshold, hi < threshold
    if (side == "above" and above) or (side == "below" and below):
        return "holds"
    if (side == "above" and below) or (side == "below" and above):
        return "does not hold"
    return "inconclusive"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """All conditions hold -> holds; any condition does not hold -> does not hold; else inconclusive."""
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if any(v == "does not hold" for v in verdicts):
        return "does not hold"
    return "inconclusive"


@dataclass(frozen=True)
class Condition:
    """One statistic of a claim: the Summary at ``key`` compared with ``threshold``.

    ``side`` "by_corridor" is EPO's two-regime prediction: below the threshold for strategies
    with EPO's corridor enabled, above it for the others.
    """

    key: str  # dotted path in a strategy's results, to a Summary json
    name: str  # short name in the table
    threshold: float
    side: Side

    def expected_side(self, strategy: Mapping[str, Any]) -> Literal["above", "below"]:
        if self.side == "by_corridor":
            return "below" if strategy["corridor"] else "above"
        return self.side


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    source: str
    statistic: str
    conditions: tuple[Condition, ...]
    scope: Literal["all", "baseline"] = "all"  # baseline: only runs with no entropy method


CLAIMS: tuple[Claim, ...] = (
    Claim("exp_law", "Performance is traded for entropy: R = -a·exp(H) + b fits the training curve, a > 0",
          "Clip-Cov paper: The Entropy Mechanism of RL for Reasoning LMs, arXiv 2505.22617",
          "least-squares fit per run of R (reward key) on exp(mean token entropy) over steps; a and R² over seeds",
          (Condition("exp_law.a", "a", 0.0, "above"), Condition("exp_law.r2", "r2", 0.5, "above")),
          scope="baseline"),
    Claim("decline", "Token entropy declines monotonically under GRPO",
          "Clip-Cov paper, arXiv 2505.22617 (entropy collapse)",
          "Spearman ρ of mean token entropy with step (rho); fraction of steps where entropy fell (fell)",
          (Condition("decline.rho", "rho", -0.5, "below"), Condition("decline.fell", "fell", 0.5, "above")),
          scope="baseline"),
    Claim("drift", "Per-turn entropy drift grows as O(T²) in the turns without EPO's corridor, O(T) with it",
          "EPO, arXiv 2509.22576, Prop. 6.2",
          "exponent p of D(T) = Σ_{t≤T} |H_t(last) - H_t(first)| ~ c·T^p (log-log fit); "
          "predicted p < 1.5 with the corridor (EPO enabled), p > 1.5 without",
          (Condition("drift.p", "p", 1.5, "by_corridor"),)),
    Claim("post_obs", "The first tokens after an environment response have higher entropy than the rest",
          "ARPO, arXiv 2507.19849",
          "ratio of mean entropy of a reply's first n tokens to the rest (replies longer than n, all steps)",
          (Condition("post_obs.ratio", "ratio", 1.0, "above"),)),
    Claim("recurrence", "Most anchor states recur within a group (over 65 % in ALFWorld with groups of 8)",
          "GiGPO, arXiv 2505.10978",
          "fraction of distinct (group, anchor) states reached by ≥ 2 trajectories of the group, first iteration",
          (Condition("recurrence.fraction_first", "fraction_first", 0.65, "above"),)),
    Claim("recurrence_late", "Repeated states shrink late in training",
          "GiGPO, arXiv 2505.10978",
          "change of the recurrence fraction, last minus first iteration",
          (Condition("recurrence.change", "change", 0.0, "below"),)),
    Claim("collapse_reward_std", "Reward std falls before gradient-norm spikes (echo trap)",
          "RAGEN, arXiv 2504.20073 (echo trap)",
          "change of reward std over the w steps before the largest grad-norm spike",
          (Condition("collapse.d_reward_std", "d_reward_std", 0.0, "below"),)),
    Claim("collapse_entropy", "Entropy falls before gradient-norm spikes (echo trap)",
          "RAGEN, arXiv 2504.20073 (echo trap)",
          "change of mean token entropy over the w steps before the largest grad-norm spike",
          (Condition("collapse.d_entropy", "d_entropy", 0.0, "below"),)),
    Claim("repeated", "Replies grow repetitive under plain RL (echo trap)",
          "RAGEN, arXiv 2504.20073 (echo trap)",
          "rate of replies identical to another of the same group and turn; change, last minus first iteration",
          (Condition("repeated.change", "change", 0.0, "above"),), scope="baseline"),
)

RULE = ("A condition holds when the 95 % t-interval over seeds lies entirely on the claimed side of its threshold "
        "and fails when it lies entirely on the other side. A claim holds for a strategy when all its conditions "
        "hold, does not hold when any condition fails, and is inconclusive otherwise, including with fewer than "
        "2 seeds (no interval). Claims about plain RL apply to strategies with no entropy method enabled; for "
        "the others the numbers are shown for comparison (verdict n/a).")


def claims_table(strategies: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim and strategy, with the numbers and the verdict computed from them."""
    rows = []
    for claim in CLAIMS:
        for label, s in strategies.items():
            conditions = claim.conditions
            values = {c.name: _get(s, c.key) for c in conditions}
            per_condition = {c.name: threshold_verdict(values[c.name], c.threshold, c.expected_side(s))
                             for c in conditions}
            in_scope = claim.scope == "all" or s["baseline"]
            verdict = combine_verdicts(list(per_condition.values())) if in_scope else "n/a"
            seeds = min(v["n"] for v in values.values())
            note = ""
            if not in_scope:
                note = "claim is about runs with no entropy method"
            elif verdict == "inconclusive" and seeds < 2:
                note = f"{seeds} seed(s) with a value: no CI"
            rows.append({
                "claim_id": claim.id, "claim": claim.claim, "source": claim.source, "statistic": claim.statistic,
                "strategy": label, "seeds": seeds, "values": values,
                "conditions": [{"name": c.name, "threshold": c.threshold, "side": c.expected_side(s),
                                "verdict": per_condition[c.name]} for c in conditions],
                "verdict": verdict, "note": note,
            })
    return rows


# ----------------------------------------------------------------------------------------------
# Writing dynamics.md / dynamics.json
# ----------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """Numbers in dynamics.md: 4 significant digits; NaN (not computable) as 'NaN'."""
    return "NaN" if value is None or not math.isfinite(value) else f"{value:.4g}"


def fmt_summary(name: str, s: Mapping[str, Any]) -> str:
    return f"{name} = {fmt(s['mean'])} [{fmt(s['lo'])}, {fmt(s['hi'])}]"


def to_json(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> null, numpy scalars/arrays -> Python, dict keys -> str."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        return to_json(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped."""
    return str(text).replace("|", "\\|")


def claims_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The claims table; claim, source and statistic are written on the first row of each claim."""
    lines = ["| # | claim | source | statistic | strategy | seeds | measured: mean [95% CI] | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    ids: dict[str, int] = {}
    for row in rows:
        first = row["claim_id"] not in ids
        number = ids.setdefault(row["claim_id"], len(ids) + 1)
        texts = [row["claim"], row["source"], row["statistic"]] if first else ["", "", ""]
        measured = "; ".join(fmt_summary(name, s) for name, s in row["values"].items())
        verdict = row["verdict"] + (f" ({row['note']})" if row["note"] else "")
        cells = [str(number), *texts, row["strategy"], str(row["seeds"]), measured, verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _summary_table(strategies: Mapping[str, Mapping[str, Any]], block: str, names: Sequence[str]) -> list[str]:
    lines = ["| strategy | seeds | " + " | ".join(f"{n}: mean [95% CI]" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for label, s in strategies.items():
        cells = [f"{fmt(s[block][n]['mean'])} [{fmt(s[block][n]['lo'])}, {fmt(s[block][n]['hi'])}]" for n in names]
        lines.append("| " + " | ".join(_cell(c) for c in [label, str(len(s["runs"])), *cells]) + " |")
    return lines


def _per_run_table(strategies: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| strategy | run | " + " | ".join(title for title, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for label, s in strategies.items():
        for r in s["per_run"]:
            cells = []
            for _, key in columns:
                value = _get(r, key)
                cells.append(str(value) if isinstance(value, int) or value is None else fmt(value))
            lines.append("| " + " | ".join(_cell(c) for c in [label, r["run"], *cells]) + " |")
    return lines


def write_dynamics(result: Mapping[str, Any], out_dir: str | Path, command: str = "") -> dict[str, Path]:
    """Write ``dynamics.json`` (every number), the PNGs and ``dynamics.md`` (claims table first)."""
    from datetime import datetime, timezone

    from agentropy.evals import dynamics_plots as dp

    out = Path(out_dir)
    figures = out / "figures"
    strategies = result["strategies"]
    options = result["meta"]["options"]
    per_run = {label: s["per_run"] for label, s in strategies.items()}
    meta = {**result["meta"], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command}

    made = {
        "exp_law": dp.plot_exp_law(per_run, figures / "exp_law.png", options["reward_key"]),
        "entropy_vs_step": dp.plot_step_series(per_run, "entropy", figures / "entropy_vs_step.png",
                                               "Mean token entropy vs step (mean ± std over seeds)", "entropy (nats)"),
        "drift": dp.plot_drift(per_run, {k: s["drift"]["p"] for k, s in strategies.items()}, figures / "drift.png"),
        "post_observation": dp.plot_post_observation({k: s["post_obs"]["by_turn"] for k, s in strategies.items()},
                                                     figures / "post_observation.png", options["n_head"]),
        "recurrence": dp.plot_recurrence({k: {"first iteration": s["recurrence"]["step_group_sizes_first"],
                                              "last iteration": s["recurrence"]["step_group_sizes_last"]}
                                          for k, s in strategies.items()}, figures / "recurrence.png"),
        "collapse": dp.plot_collapse(per_run, figures / "collapse.png"),
        "repeated": dp.plot_step_series(per_run, "repeated_rate", figures / "repeated_outputs.png",
                                        "Repeated-output rate (same group and turn)", "rate"),
    }
    for label, s in strategies.items():
        m = s["entropy_map"]
        made[f"entropy_map/{label}"] = dp.plot_entropy_map(
            m["turns"], m["steps"], m["values"], figures / f"entropy_map_{dp.safe_name(label)}.png",
            f"{label}: mean token entropy by turn and step (mean over seeds)")

    def fig(key: str) -> str:
        return f"![{key}](figures/{made[key].name})"

    listing = ", ".join(f"{k} ({len(s['runs'])} seeds)" for k, s in strategies.items())
    lines = [f"# Entropy dynamics: {meta['env_id']}", "",
             f"{sum(len(s['runs']) for s in strategies.values())} runs, strategies {listing}. "
             f"Generated {meta['date']} on {meta['machine']}" + (f" by `{command}`" if command else "") + ".",
             "", "## Claims table", ""]
    lines += claims_markdown(result["claims"])
    lines += ["", f"**Verdict rule.** {RULE}", "", "Conditions:", ""]
    for claim in CLAIMS:
        conds = "; ".join(
            f"{c.name} {'<' if c.side == 'below' else '>'} {c.threshold:g}" if c.side != "by_corridor"
            else f"{c.name} < {c.threshold:g} with EPO's corridor, > {c.threshold:g} without" for c in claim.conditions)
        scope = " (runs with no entropy method)" if claim.scope == "baseline" else ""
        lines.append(f"- {claim.id}: {conds}{scope}")
    lines += ["", "NaN: not computable (for a CI: fewer than 2 seeds with a value). Every number here is in "
              "`dynamics.json` (NaN as null).", ""]

    lines += ["## Runs", "", "| strategy | methods | run | seed | steps | first | last |", "|---|---|---|---|---|---|---|"]
    for label, s in strategies.items():
        for r in s["per_run"]:
            lines.append(f"| {label} | {'+'.join(s['methods']) or 'none'} | {r['run']} | {r['seed']} | "
                         f"{len(r['steps'])} | {r['steps'][0] if r['steps'] else 'NaN'} | "
                         f"{r['steps'][-1] if r['steps'] else 'NaN'} |")
    unequal = [k for k, s in strategies.items() if not s["equal_length"]]
    lines += ["", "Runs of different lengths are not truncated: per-run statistics use each run's own steps "
              "(its first and last iteration); curves and maps averaged over seeds are aligned by step, and a "
              "step some runs lack is averaged over the runs that have it (`n_runs` in dynamics.json)."
              + (f" Strategies whose runs differ in length: {', '.join(unequal)}." if unequal else ""), ""]

    lines += [f"## 1. Entropy vs reward: R = -a exp(H) + b (R = {options['reward_key']})", ""]
    lines += _summary_table(strategies, "exp_law", ["a", "b", "r2"])
    lines += ["", *_per_run_table(strategies, [("a", "exp_law.a"), ("b", "exp_law.b"), ("R²", "exp_law.r2"),
                                               ("steps", "exp_law.n")]), "", fig("exp_law"), ""]
    lines += ["## 2. Entropy decline", ""]
    lines += _summary_table(strategies, "decline", ["rho", "fell"])
    lines += ["", fig("entropy_vs_step"), ""]
    lines += ["## 3. Per-turn entropy map", ""] + [fig(f"entropy_map/{k}") for k in strategies] + [""]
    lines += ["## 4. Cumulative per-turn drift D(T) ~ c T^p (last vs first iteration)", "",
              "D(T) sums |H_t(last) - H_t(first)| over turns 0..T-1 while both iterations have at least "
              f"{options['min_turn_replies']} replies at the turn. Sampling noise alone gives p ≈ 1.", ""]
    lines += _summary_table(strategies, "drift", ["p", "c", "r2"])
    lines += ["", *_per_run_table(strategies, [("p", "drift.p"), ("c", "drift.c"), ("log-log R²", "drift.r2"),
                                               ("turns fitted", "drift.n"), ("from step", "drift.from_step"),
                                               ("at step", "drift.at_step")]), "", fig("drift"), ""]
    lines += [f"## 5. Post-observation entropy (first {options['n_head']} tokens vs the rest)", ""]
    lines += _summary_table(strategies, "post_obs", ["ratio", "head", "rest"])
    lines += ["", "| strategy | paired replies | replies of 1..n tokens (left out) | empty replies (left out) |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {s['post_obs']['pairs']} | {s['post_obs']['short']} | {s['post_obs']['empty']} |"
              for k, s in strategies.items()]
    lines += ["", fig("post_observation"), ""]
    lines += ["## 6. State recurrence within a group", ""]
    lines += ["Fraction of distinct (group, anchor) states reached by two or more trajectories of the group, "
              "at each run's first and last iteration; size: mean step-group size (steps sharing an anchor); "
              "group_size: trajectories per group at the first iteration.", ""]
    lines += _summary_table(strategies, "recurrence",
                            ["fraction_first", "fraction_last", "change", "size_first", "size_last", "group_size"])
    lines += ["", fig("recurrence"), ""]
    lines += [f"## 7. Collapse signals (w = {options['window']}) and repeated outputs", "",
              "Largest grad-norm spike of each run (above the run's median, not the first step) and the change of "
              "reward std and entropy over the w iterations up to it.", ""]
    lines += _summary_table(strategies, "collapse", ["d_reward_std", "d_entropy", "spike_ratio"])
    lines += ["", *_per_run_table(strategies, [("spike step", "collapse.spike_step"),
                                               ("spike / median", "collapse.spike_ratio"),
                                               ("Δ reward std", "collapse.d_reward_std"),
                                               ("Δ entropy", "collapse.d_entropy")]), ""]
    lines += ["Repeated-output rate: replies identical to another reply of the same group at the same turn, "
              "at each run's first and last iteration.", ""]
    lines += _summary_table(strategies, "repeated", ["first", "last", "change"])
    lines += ["", fig("collapse"), fig("repeated"), ""]

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "dynamics.json"
    payload = {**result, "meta": meta, "rule": RULE, "figures": {k: str(p.relative_to(out)) for k, p in made.items()}}
    json_path.write_text(json.dumps(to_json(payload), indent=1, allow_nan=False))
    md_path = out / "dynamics.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"md": md_path, "json": json_path, **made}
