"""The claims table: each claim's statistic, threshold rule and verdict per strategy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentropy.evals.dynamics.common import (
    _get,
)

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


