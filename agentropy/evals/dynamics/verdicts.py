"""The claims table: each claim's statistic, verdict rule and verdict per strategy.

A verdict may say "holds" only for a claim whose rule is *calibrated*: run on synthetic runs
with no effect (``agentropy.evals.dynamics.calibration``), the rule says "holds" in at most 5 %
of them, and it detects a planted effect of the size stated in ``calibration.PLANTED``. The test
suite re-measures both (``tests/evals/test_calibration.py``) and ``docs/dynamics/calibration.md``
prints the numbers next to each rule. Other outcomes:

* "does not hold": the 95 % interval over seeds lies entirely on the other side;
* "not distinguishable from noise": the interval straddles the threshold;
* "no collapse to test": an echo-trap claim for a strategy none of whose runs collapsed;
* "n/a": the claim is about runs with no entropy method, or about tool calls and the runs' env
  names none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agentropy.evals.dynamics.common import _get

# ----------------------------------------------------------------------------------------------
# The claims table
# ----------------------------------------------------------------------------------------------

HOLDS, FAILS, NOISE = "holds", "does not hold", "not distinguishable from noise"
NO_COLLAPSE, NOT_APPLICABLE = "no collapse to test", "n/a"

Side = Literal["above", "below", "by_corridor"]


def threshold_verdict(summary: Mapping[str, Any], threshold: float, side: Literal["above", "below", "absent"]) -> str:
    """"holds" if the 95 % CI lies entirely on ``side`` of ``threshold``, "does not hold" if it lies
    entirely on the other side, else "not distinguishable from noise" (also with fewer than 2
    seeds: no CI). ``side="absent"`` is a prediction of *no* effect above the threshold: a CI
    cannot confirm an absence, so it can only fail (CI entirely above) or stay undecided."""
    lo, hi = summary.get("lo"), summary.get("hi")
    if summary.get("n", 0) < 2 or lo is None or hi is None:
        return NOISE
    above, below = lo > threshold, hi < threshold
    if side == "absent":
        return FAILS if above else NOISE
    if (side == "above" and above) or (side == "below" and below):
        return HOLDS
    if (side == "above" and below) or (side == "below" and above):
        return FAILS
    return NOISE


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """All conditions hold -> holds; any condition does not hold -> does not hold; else noise."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return NOISE


@dataclass(frozen=True)
class Condition:
    """One statistic of a claim: the Summary at ``key`` compared with ``threshold``.

    ``side`` "by_corridor" is EPO's two-regime prediction: growth above the threshold without
    EPO's corridor, no growth ("absent") with it.
    """

    key: str  # dotted path in a strategy's results, to a Summary json
    name: str  # short name in the table
    threshold: float
    side: Side

    def expected_side(self, strategy: Mapping[str, Any]) -> Literal["above", "below", "absent"]:
        if self.side == "by_corridor":
            return "absent" if strategy["corridor"] else "above"
        return self.side


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    source: str
    statistic: str
    conditions: tuple[Condition, ...]
    scope: Literal["all", "baseline"] = "all"  # baseline: only runs with no entropy method
    needs_collapse: bool = False  # echo-trap claims: only for strategies with a collapse event
    needs_tools: bool = False  # tool-call claims: only for runs whose env names its tool calls
    needs_branches: bool = False  # branching claims: only for runs whose rollout branched (AEPO)


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
    Claim("drift", "Per-turn entropy drift grows with the turn index without EPO's corridor (O(T²) cumulative), "
          "not with it (O(T))",
          "EPO, arXiv 2509.22576, Prop. 6.2",
          "per turn t, excess_t = (H_t(last) - H_t(first))² minus both iterations' sampling variance of H_t "
          "(split-half noise floor, groups split in two); slope of excess_t on t. Predicted slope > 0 without the "
          "corridor; with it a CI above 0 refutes the prediction (absence cannot be confirmed)",
          (Condition("drift.slope", "slope", 0.0, "by_corridor"),)),
    Claim("post_obs", "The first tokens after an environment response have higher entropy than the rest",
          "ARPO, arXiv 2507.19849",
          "content tokens only (token ids in ≥ 90 % of replies, the format tags, removed): log(mean entropy of a "
          "reply's first n content tokens / its later content tokens) > 0, and head entropy after a new observation "
          "minus after a repeated (no-op) observation > 0",
          (Condition("post_obs.log_ratio", "log_ratio", 0.0, "above"),
           Condition("post_obs.new_minus_repeat", "new_minus_repeat", 0.0, "above"))),
    Claim("tool_response", "The first tokens after a tool's response have higher entropy than those of replies "
          "that follow no tool response",
          "ARPO, arXiv 2507.19849",
          "content tokens only: mean entropy of a reply's first n content tokens when the previous action was a "
          "tool call the env carried out (its info names `tool_call`; not malformed, no tool error), minus the same "
          "for replies that follow no tool response (the first reply, after the task alone, or after a malformed or "
          "failed call); only envs that name their tool calls",
          (Condition("post_obs.tool_minus_other", "tool_minus_other", 0.0, "above"),), needs_tools=True),
    Claim("branch_entropy", "Branching rollouts fork at high-entropy tool-call steps",
          "AEPO, arXiv 2510.14545 (entropy-balanced branching; ARPO, arXiv 2507.19849)",
          "runs whose rollout branched: dH = mean entropy of a reply's first 20 tokens minus the trajectory's first "
          "reply's; mean dH of the replies a branch was forked at minus that of the other replies at the same turn "
          "(turns >= 1), weighted by the forks per turn",
          (Condition("branch.fork_minus_stay", "fork_minus_stay", 0.0, "above"),), needs_branches=True),
    Claim("recurrence", "Most anchor states recur within a group (over 65 % in ALFWorld with groups of 8)",
          "GiGPO, arXiv 2505.10978",
          "fraction of distinct (group, anchor) states reached by ≥ 2 trajectories of the group, first iteration, "
          "without the initial state and no-op observations (anchor unchanged by the action)",
          (Condition("recurrence.informative_first", "informative_first", 0.65, "above"),)),
    Claim("recurrence_late", "Repeated states shrink late in training",
          "GiGPO, arXiv 2505.10978",
          "change of that recurrence fraction, last minus first iteration",
          (Condition("recurrence.informative_change", "informative_change", 0.0, "below"),)),
    Claim("collapse_reward_std", "Reward std falls before gradient-norm spikes (echo trap)",
          "RAGEN, arXiv 2504.20073 (echo trap)",
          "runs with a collapse event (entropy below 0.5 x its first value): change of reward std over the w steps "
          "before the largest grad-norm spike minus the run's mean w-step change",
          (Condition("collapse.d_reward_std_excess", "d_reward_std_excess", 0.0, "below"),), needs_collapse=True),
    Claim("collapse_entropy", "Entropy falls before gradient-norm spikes (echo trap)",
          "RAGEN, arXiv 2504.20073 (echo trap)",
          "runs with a collapse event: change of mean token entropy over the w steps before the largest grad-norm "
          "spike minus the run's mean w-step change",
          (Condition("collapse.d_entropy_excess", "d_entropy_excess", 0.0, "below"),), needs_collapse=True),
    Claim("repeated", "Replies grow repetitive in a collapse (echo trap)",
          "RAGEN, arXiv 2504.20073 (echo trap)",
          "runs with a collapse event: change of the rate of replies identical to another of the same group and "
          "turn, last minus first iteration (without a collapse this is ordinary policy sharpening, not the trap)",
          (Condition("repeated.change_if_collapsed", "change_if_collapsed", 0.0, "above"),),
          scope="baseline", needs_collapse=True),
)

RULE = ("A condition holds when the 95 % t-interval over seeds lies entirely on the claimed side of its threshold "
        "and fails when it lies entirely on the other side; otherwise the data do not distinguish it from noise "
        "(also with fewer than 2 seeds: no interval). A claim holds for a strategy when all its conditions hold and "
        "does not hold when any condition fails. Every rule is calibrated on synthetic runs: its false-positive "
        "rate on runs with no effect and its detection rate for a planted effect are in docs/dynamics/"
        "calibration.md. Echo-trap claims are tested only on runs with a collapse event. Claims about plain RL "
        "apply to strategies with no entropy method enabled (others: n/a). Rows whose numbers are identical for "
        "several strategies (one measurement, e.g. of the shared SFT start) are written once.")


_NO_VALUE = {"mean": None, "lo": None, "hi": None, "n": 0}


def _row(claim: Claim, strategy: str, seeds: int, values: dict[str, Any], sides_and_verdicts: list[tuple[str, str]],
         verdict: str, note: str) -> dict[str, Any]:
    """One row of the claims table: the claim, whose numbers, and each condition's side and verdict."""
    return {"claim_id": claim.id, "claim": claim.claim, "source": claim.source, "statistic": claim.statistic,
            "strategy": strategy, "seeds": seeds, "values": values,
            "conditions": [{"name": c.name, "threshold": c.threshold, "side": side, "verdict": v}
                           for c, (side, v) in zip(claim.conditions, sides_and_verdicts, strict=True)],
            "verdict": verdict, "note": note}


def _lacking_data(claim: Claim, strategies: Iterable[Mapping[str, Any]]) -> str:
    """What none of ``strategies`` has that ``claim`` needs ("" when they have it)."""
    strategies = list(strategies)
    if claim.needs_tools and not any(_get(s, "post_obs.after_tool", 0) for s in strategies):
        return "no tool responses"
    if claim.needs_branches and not any(_get(s, "branch.forks", 0) for s in strategies):
        return "no branching rollouts"
    return ""


def claims_table(strategies: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim and strategy, with the numbers and the verdict computed from them;
    strategies whose numbers for a claim are identical share one row (labels joined by ', ')."""
    rows = []
    for claim in CLAIMS:
        lacking = _lacking_data(claim, strategies.values())
        if lacking:
            rows.append(_row(claim, ", ".join(strategies), 0, {c.name: dict(_NO_VALUE) for c in claim.conditions},
                             [(c.side, NOT_APPLICABLE) for c in claim.conditions], NOT_APPLICABLE,
                             f"{lacking} in these runs"))
            continue
        merged: dict[str, dict[str, Any]] = {}
        for label, s in strategies.items():
            conditions = claim.conditions
            values = {c.name: _get(s, c.key) or dict(_NO_VALUE) for c in conditions}
            per_condition = {c.name: threshold_verdict(values[c.name], c.threshold, c.expected_side(s))
                             for c in conditions}
            in_scope = claim.scope == "all" or s["baseline"]
            collapses = int(_get(s, "collapse.collapsed_runs", 0) or 0)
            seeds = min(v["n"] for v in values.values())
            note = ""
            if not in_scope:
                verdict, note = NOT_APPLICABLE, "claim is about runs with no entropy method"
            elif lacking := _lacking_data(claim, [s]):
                verdict, note = NOT_APPLICABLE, f"{lacking} in these runs"
            elif claim.needs_collapse and collapses == 0:
                verdict, note = NO_COLLAPSE, f"0 of {len(s.get('runs', []))} runs collapsed"
            else:
                verdict = combine_verdicts(list(per_condition.values()))
                if verdict == NOISE and seeds < 2:
                    note = f"{seeds} seed(s) with a value: no CI"
            key = repr((sorted(values.items()), verdict, note, [c.expected_side(s) for c in conditions]))
            if key in merged and merged[key]["seeds"] >= 2:
                merged[key]["strategy"] += f", {label}"
                merged[key]["note"] = "identical numbers: one measurement shared by these strategies"
                continue
            merged[key + label if key in merged else key] = _row(
                claim, label, seeds, values, [(c.expected_side(s), per_condition[c.name]) for c in conditions],
                verdict, note)
        rows += list(merged.values())
    return rows
