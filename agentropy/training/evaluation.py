"""Held-out evaluation: a fixed set of test-split tasks, the same in every run.

Task ``i`` of the evaluation set is seed ``eval.seed_offset + i`` on the test split, so two
runs (or two strategies of a benchmark) are always scored on identical tasks. With
``eval.samples = k > 1`` each task is played ``k`` times and pass@k is reported with the
unbiased estimator of Chen et al. (2021).
"""

from __future__ import annotations

import dataclasses
from math import comb
from typing import Any

import numpy as np

from agentropy.training.entropy_estimate import estimate_fields
from agentropy.training.rollout import TaskSpec, collect
from agentropy.training.tool_metrics import tool_use_metrics
from agentropy.training.trajectory import Trajectory


def eval_tasks(cfg: Any) -> list[TaskSpec]:
    return [
        TaskSpec(seed=cfg.eval.seed_offset + i, options={"split": cfg.env.test_split})
        for i in range(cfg.eval.episodes)
    ]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` draws from ``n`` samples with ``c`` correct is correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def entropy_by_turn(trajectories: list[Trajectory]) -> list[float | None]:
    """Mean token entropy of all replies at each turn index (None where no token exists)."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for traj in trajectories:
        for step in traj.steps:
            sums[step.turn] = sums.get(step.turn, 0.0) + float(sum(step.entropy))
            counts[step.turn] = counts.get(step.turn, 0) + len(step.entropy)
    if not counts:
        return []
    return [sums[t] / counts[t] if counts.get(t) else None for t in range(max(counts) + 1)]


#: truncation reasons that mean the env machinery failed (the rollout's env faults, see
#: :mod:`agentropy.training.rollout`); ``"max_turns"`` and ``"env_truncated"`` (the env's own
#: step limit) are ordinary ends of an episode, not errors
ERROR_TRUNCATIONS = ("env_error", "env_timeout", "worker_died")


def truncated_by_error(trajectories: list[Trajectory]) -> int:
    """Episodes cut short by a crashed, hung or lost env worker.

    Matched on the reason's name before any ``": detail"``, so an env that merely hit its own
    step limit (``"env_truncated"``) is not mistaken for a fault by sharing the ``env_`` prefix.
    """
    return sum(1 for t in trajectories if (t.truncation_reason or "").split(":")[0] in ERROR_TRUNCATIONS)


def summarize(trajectories: list[Trajectory], samples: int = 1) -> dict[str, Any]:
    """Success, return, length, entropy and pass@k of a set of episodes, plus the ``tool/...``
    metrics of :mod:`agentropy.training.tool_metrics` when the env reports tool use."""
    if not trajectories:
        return {"episodes": 0, "success_rate": 0.0, "return_mean": 0.0, "length_mean": 0.0,
                "entropy_mean": 0.0, "entropy_by_turn": [], "task_seeds": [], "success_by_task": []}
    tokens = [h for t in trajectories for s in t.steps for h in s.entropy]
    report: dict[str, Any] = {
        "episodes": len(trajectories),
        "success_rate": float(np.mean([t.won for t in trajectories])),
        "return_mean": float(np.mean([t.episode_return for t in trajectories])),
        "length_mean": float(np.mean([t.length for t in trajectories])),
        "entropy_mean": float(np.mean(tokens)) if tokens else 0.0,
        "truncated_by_error": truncated_by_error(trajectories),
        "entropy_by_turn": entropy_by_turn(trajectories),
        **estimate_fields(s for t in trajectories for s in t.steps),
    }
    by_task: dict[str, list[bool]] = {}
    seed_of: dict[str, int] = {}
    for t in trajectories:
        by_task.setdefault(t.group_id, []).append(bool(t.won))
        seed_of[t.group_id] = int(t.seed)
    # Per-task outcomes, ordered by task seed, so that two evaluations of the same fixed set can
    # be compared task by task (a paired test such as McNemar's needs them, not just the rate).
    ordered = sorted(by_task, key=lambda g: seed_of[g])
    report["task_seeds"] = [seed_of[g] for g in ordered]
    report["success_by_task"] = [float(np.mean(by_task[g])) for g in ordered]
    for k in sorted({1, samples}):
        if k <= samples:
            report[f"pass@{k}"] = float(np.mean([pass_at_k(len(w), sum(w), k) for w in by_task.values()]))
    report.update(tool_use_metrics(trajectories))  # tool/... keys, only for envs that report tool use
    return report


def evaluate_policy(
    backend: Any, tokenizer: Any, cfg: Any, progress: Any = None, rank: int = 0, world: int = 1,
    return_trajectories: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], list[Trajectory]]:
    """Play the fixed evaluation set (this process's share) and summarise it."""
    eval_cfg = dataclasses.replace(
        cfg, rollout=dataclasses.replace(
            cfg.rollout, group_size=cfg.eval.samples, temperature=cfg.eval.temperature,
        ),
    )
    tasks = eval_tasks(cfg)[rank::world]
    trajectories, _ = collect(backend, tokenizer, eval_cfg, tasks, iteration=-1, split=cfg.env.test_split)
    report = summarize(trajectories, cfg.eval.samples)
    return (report, trajectories) if return_trajectories else report
