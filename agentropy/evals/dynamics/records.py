"""The records a run is reduced to: per-iteration statistics and the run itself.

Shared by :mod:`loading` (which builds them from trajectories) and :mod:`aggregates` (which
writes and reads them as compact JSON), so neither has to import the other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentropy.evals.dynamics.branching import ForkContrast
from agentropy.evals.dynamics.common import _number
from agentropy.evals.dynamics.statistics import PostObsContrast, PostObsCounts, Recurrence


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
    turn_halves: dict[int, tuple[float, int, float, int]] = field(default_factory=dict)  # noise floor of H_t
    post_contrast: PostObsContrast = field(default_factory=PostObsContrast)  # content tokens, new vs repeated obs
    recurrence_informative: Recurrence = field(default_factory=Recurrence)  # without initial state and no-ops
    forks: ForkContrast = field(default_factory=ForkContrast)  # AEPO: entropy rise where it branched



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
