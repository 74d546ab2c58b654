"""An iteration's episodes as step-samples: one training row per turn, aligned across fields.

Each turn of each trajectory is one row: its rendered prompt and the model's reply, the
sampler's per-token log-probs and entropies, and the ids and rewards the advantage estimators
group by. Probe episodes (rollout-only) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentropy.training.policy import PackedBatch, pack
from agentropy.training.trajectory import Trajectory


@dataclass
class StepSamples:
    """All on-policy step samples of an iteration, aligned row by row."""

    batch: PackedBatch
    behaviour_logprobs: torch.Tensor  # [N, R] as sampled by the backend
    behaviour_entropy: torch.Tensor  # [N, R] as reported by the backend
    sampling_temperatures: set[float]  # temperatures the rows were sampled at
    entropy_is_estimate: bool  # any row's entropy is a top-k estimate (vllm / openai backends)
    group_ids: list[str]
    traj_ids: list[str]
    turns: list[int]
    anchors: list[str]
    step_rewards: list[float]
    returns: list[float]  # shaped episode return R of the sample's trajectory
    outcome: list[float]  # R_out, the episode return without any method's bonus
    step_keys: list[tuple[str, int]]  # (source trajectory, turn): a branch's copied prefix keeps its parent's key
    pairs: list[tuple[list[int], list[int]]]  # (prompt ids, reply ids) per row, for the replay buffer


def gather_samples(trajectories: list[Trajectory], pad_id: int, bonus: dict[str, float]) -> StepSamples:
    """One row per step of every trajectory (rollout-only probe episodes left out), with the shaped return."""
    rows = [(t, s) for t in trajectories if t.kind != "probe" for s in t.steps]
    batch = pack([s.prompt_ids for _, s in rows], [s.response_ids for _, s in rows], pad_id)
    r = batch.reply_width
    behaviour = torch.zeros((len(rows), r))
    behaviour_entropy = torch.zeros((len(rows), r))
    for i, (_, s) in enumerate(rows):
        if s.logprobs:
            behaviour[i, : len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
            behaviour_entropy[i, : len(s.entropy)] = torch.tensor(s.entropy, dtype=torch.float32)
    return StepSamples(
        batch=batch,
        behaviour_logprobs=behaviour,
        behaviour_entropy=behaviour_entropy,
        sampling_temperatures={float(s.temperature) for _, s in rows},
        entropy_is_estimate=any(s.entropy_is_estimate for _, s in rows),
        group_ids=[t.group_id for t, _ in rows],
        traj_ids=[t.traj_id for t, _ in rows],
        turns=[s.turn for _, s in rows],
        anchors=[s.anchor_obs for _, s in rows],
        step_rewards=[float(s.reward) for _, s in rows],
        returns=[float(t.episode_return) + bonus.get(t.traj_id, 0.0) for t, _ in rows],
        outcome=[float(t.episode_return) for t, _ in rows],
        step_keys=[(str(s.info.get("prefix_of", t.traj_id)), s.turn) for t, s in rows],
        pairs=[(list(s.prompt_ids), list(s.response_ids)) for _, s in rows],
    )
