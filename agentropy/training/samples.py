"""Steps -> training samples: one row per turn (ALGORITHMS.md 0.2(1), "step-wise samples").

A row is the turn's prompt followed by the agent's reply, right-padded::

    input_ids      [p_0 ... p_{P_i-1} | r_0 ... r_{R_i-1} | pad ...]     shape [N, T]
    attention_mask [1 ...           1 | 1 ...           1 | 0 ...  ]
    response_mask  [0 ...           0 | 1 ...           1 | 0 ...  ]

with ``T = max_i (P_i + R_i)``. The response mask is 1 **only** on the agent's reply tokens:
never on the system prompt, remembered turns, observations, chat-template tokens or padding
(USERS.md: RAGEN #54/#71/#141). Right padding keeps position ids equal to column indices.

``old_logprobs`` / ``old_entropy`` hold the behaviour policy's numbers at the column of the
token they belong to (0 elsewhere), so a teacher-forced pass that scores token ``j`` from the
logits at ``j - 1`` lines up with them column for column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from agentropy.training.trajectory import Step, Trajectory


def steps_of(trajectories: Sequence[Trajectory], include_probes: bool = False) -> list[Step]:
    """The steps to train on, trajectory by trajectory (AEPO probe trajectories left out)."""
    return [s for t in trajectories if include_probes or t.kind != "probe" for s in t.steps]


def _codes(ids: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    table: dict[str, int] = {}
    codes = [table.setdefault(i, len(table)) for i in ids]
    return torch.tensor(codes, dtype=torch.long), list(table)


def steps_to_batch(steps: Sequence[Step], pad_id: int) -> dict[str, torch.Tensor | list[str]]:
    """Pack ``N`` steps into right-padded tensors (see the module docstring for the layout).

    Returns (``T`` as above):

    * ``input_ids`` long ``[N, T]``, ``attention_mask`` long ``[N, T]``;
    * ``response_mask`` float ``[N, T]``: 1 exactly on reply tokens;
    * ``position_ids`` long ``[N, T]`` (column index);
    * ``old_logprobs``, ``old_entropy`` float ``[N, T]``: behaviour numbers at reply columns;
    * ``prompt_lengths``, ``response_lengths``, ``turn`` long ``[N]``;
    * ``rewards`` float ``[N]`` (step reward), ``branch_prefix`` bool ``[N]``;
    * ``group_index``, ``traj_index`` long ``[N]``: dense codes in order of first appearance,
      with the ids themselves in ``group_ids`` / ``traj_ids`` (lists of str).
    """
    n = len(steps)
    for i, s in enumerate(steps):
        if not (len(s.response_ids) == len(s.logprobs) == len(s.entropy)):
            raise ValueError(
                f"steps[{i}] ({s.traj_id} turn {s.turn}): {len(s.response_ids)} response ids, "
                f"{len(s.logprobs)} logprobs, {len(s.entropy)} entropies"
            )
    width = max((len(s.prompt_ids) + len(s.response_ids) for s in steps), default=0)
    input_ids = torch.full((n, width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.float32)
    old_logprobs = torch.zeros((n, width), dtype=torch.float32)
    old_entropy = torch.zeros((n, width), dtype=torch.float32)
    for i, s in enumerate(steps):
        p, r = len(s.prompt_ids), len(s.response_ids)
        if p:
            input_ids[i, :p] = torch.tensor(s.prompt_ids, dtype=torch.long)
        if r:
            input_ids[i, p : p + r] = torch.tensor(s.response_ids, dtype=torch.long)
            response[i, p : p + r] = 1.0
            old_logprobs[i, p : p + r] = torch.tensor(s.logprobs, dtype=torch.float32)
            old_entropy[i, p : p + r] = torch.tensor(s.entropy, dtype=torch.float32)
        attention[i, : p + r] = 1
    group_index, group_ids = _codes([s.group_id for s in steps])
    traj_index, traj_ids = _codes([s.traj_id for s in steps])
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "response_mask": response,
        "position_ids": torch.arange(width, dtype=torch.long).expand(n, width).clone(),
        "old_logprobs": old_logprobs,
        "old_entropy": old_entropy,
        "prompt_lengths": torch.tensor([len(s.prompt_ids) for s in steps], dtype=torch.long),
        "response_lengths": torch.tensor([len(s.response_ids) for s in steps], dtype=torch.long),
        "turn": torch.tensor([s.turn for s in steps], dtype=torch.long),
        "rewards": torch.tensor([float(s.reward) for s in steps], dtype=torch.float32),
        "branch_prefix": torch.tensor([bool(s.info.get("branch_prefix", False)) for s in steps], dtype=torch.bool),
        "group_index": group_index,
        "traj_index": traj_index,
        "group_ids": group_ids,
        "traj_ids": traj_ids,
    }
