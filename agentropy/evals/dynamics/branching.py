"""Where AEPO's rollout branched: the entropy rise of the replies it forked at, against the
replies at the same turn it did not fork at.

AEPO (and ARPO before it) branch a trajectory at a reply to a tool's response when that reply's
entropy has risen over the trajectory's first reply: the fork score grows with

    dH_t = H_t - H_init,   H = mean token entropy of a reply's first ``window`` tokens,

so the method's premise is that it spends its extra samples on high-entropy tool-call steps.
This module measures whether it did, from the trajectories a run saved. A branch trajectory
names its source (``parent_id``) and starts with copies of the source's first ``f`` steps
(``info["branch_prefix"]``); it re-samples turn ``f``, so the source's reply at turn ``f`` is a
*fork point*. Every other reply at a turn >= 1 (turn 0 is never forked) is a *stay* point.

The contrast is taken within each turn and weighted by the forks at that turn: the turn index
alone moves both entropy (later turns answer longer tool responses) and the chance to fork (a
task's branch budget runs out), and comparing across turns would mix the two. Under a rule that
ignores entropy the contrast is 0 in expectation; AEPO's rule predicts it above 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from agentropy.training.methods.aepo_rollout import leading_mean_entropy
from agentropy.training.strategy_config import AEPOConfig
from agentropy.training.trajectory import Trajectory

#: The reply window AEPO's rollout measures entropy over (its ``entropy_window_tokens`` default).
WINDOW = AEPOConfig.entropy_window_tokens


@dataclass
class ForkContrast:
    """Per turn: sums and counts of dH at fork points and at stay points."""

    by_turn: dict[int, list[float]] = field(default_factory=dict)  # turn -> [fork_sum, fork_n, stay_sum, stay_n]

    def add(self, other: ForkContrast) -> None:
        for t, row in other.by_turn.items():
            mine = self.by_turn.setdefault(t, [0.0, 0, 0.0, 0])
            for i, v in enumerate(row):
                mine[i] += v

    @property
    def forks(self) -> int:
        return int(sum(row[1] for row in self.by_turn.values()))

    @property
    def stays(self) -> int:
        return int(sum(row[3] for row in self.by_turn.values()))

    @property
    def fork_minus_stay(self) -> float:
        """Mean dH at fork points minus at stay points of the same turn, weighted by the forks
        per turn (NaN without a turn that has both)."""
        num = den = 0.0
        for fork_sum, fork_n, stay_sum, stay_n in self.by_turn.values():
            if fork_n and stay_n:
                num += fork_n * (fork_sum / fork_n - stay_sum / stay_n)
                den += fork_n
        return num / den if den else math.nan


def fork_points(trajectories: Sequence[Trajectory]) -> set[tuple[str, int]]:
    """(source trajectory id, turn) of every reply a branch was forked at."""
    points = set()
    for traj in trajectories:
        if traj.parent_id is not None and traj.kind == "branch":
            prefix = sum(1 for s in traj.steps if s.info.get("branch_prefix", False))
            points.add((traj.parent_id, prefix))
    return points


def fork_contrast(trajectories: Sequence[Trajectory], window: int = WINDOW) -> ForkContrast:
    """dH at fork and stay points of one iteration's trajectories (probes excluded by the caller).
    Empty when no trajectory is a branch."""
    points = fork_points(trajectories)
    out = ForkContrast()
    if not points:
        return out
    for traj in trajectories:
        if not traj.steps or not traj.steps[0].entropy:
            continue
        h_init = leading_mean_entropy(traj.steps[0].entropy, window)
        for step in traj.steps:
            if step.turn < 1 or step.info.get("branch_prefix", False) or not step.entropy:
                continue
            dh = leading_mean_entropy(step.entropy, window) - h_init
            row = out.by_turn.setdefault(step.turn, [0.0, 0, 0.0, 0])
            k = 0 if (traj.traj_id, step.turn) in points else 2
            row[k] += dh
            row[k + 1] += 1
    return out
