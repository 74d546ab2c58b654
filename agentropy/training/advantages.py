"""Advantage estimators and the entropy modulations that act on them.

Pure functions: per-sample data in, advantages out. A sample is one step-sample (one turn of
one trajectory, docs/methods/README.md); ``N`` or ``B`` below is the number of samples and ``L``
the padded reply length. Bookkeeping runs in float64; results come back in the dtype of the
reward/entropy tensor given (float32 when plain Python lists are given). Ids (groups,
trajectories, anchor states) may be any hashable values: strings, ints, tuples.

The fixed composition order (docs/methods/README.md) is
:func:`compose_advantages`: base (GRPO or GiGPO) -> EMPG (with its zero-mean) -> AEPO token
factor, never renormalised afterwards. Metrics returned here are Python floats (this runs
once per iteration, not per micro-batch).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from agentropy.training.entropy import IdsLike, group_index

FloatsLike = Sequence[float] | Tensor | np.ndarray


def grpo(rewards: FloatsLike, group_ids: IdsLike, norm_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO group-normalised outcome advantage (docs/methods/base.md):

        A_i = (R_i - mean_G R) / (std_G R + eps)      (norm_by_std=False: A_i = R_i - mean_G R)

    with the unbiased std (``torch.std``) over the samples sharing a group id, as verl. A group
    of one is treated as mean 0 and std 1 (so ``A = R / (1 + eps)``), as verl does; a group whose
    rewards are all equal gets exactly 0. Step-samples of a long trajectory each count once, so
    a trajectory of ``T`` turns weighs ``T`` times (verl-agent's ``compute_mean_std_cross_all_data``);
    pass one entry per trajectory to weigh trajectories equally.

    Shapes: ``rewards [N]``, ``group_ids`` length ``N`` (str or int) -> ``[N]``.
    """
    r = _as_vector(rewards, "rewards")
    codes, keys = _codes(group_ids, "group_ids", r.numel())
    mean, std, count, equal = _group_stats(r, codes, len(keys))
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    centred = r - mean[codes]
    adv = centred / (std[codes] + eps) if norm_by_std else centred
    adv = torch.where(equal[codes] & ~single[codes], torch.zeros_like(adv), adv)
    return adv.to(_out_dtype(rewards))


def discounted_returns(
    step_rewards: FloatsLike, traj_ids: IdsLike, turn_indices: Sequence[int] | Tensor, gamma: float = 0.95
) -> Tensor:
    """Step returns ``g_{j,t} = sum_{k>=t} gamma^(k-t) r_{j,k}`` within each trajectory
    (docs/methods/base.md), ordering each trajectory's samples by turn index. Shapes: ``[N] -> [N]``."""
    r = _as_vector(step_rewards, "step_rewards")
    traj, _ = _codes(traj_ids, "traj_ids", r.numel())
    turns = _as_long(turn_indices, "turn_indices", r.numel())
    out = torch.zeros_like(r)
    for _, members in _ordered_members(traj, turns):
        running = 0.0
        for i in reversed(members):
            running = float(r[i]) + gamma * running
            out[i] = running
    return out.to(_out_dtype(step_rewards))


@dataclass
class GiGPOAdvantages:
    """GiGPO result: ``advantages = episode + omega * step``, each ``[N]``, plus metrics."""

    advantages: Tensor
    episode: Tensor
    step: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def gigpo(
    episode_returns: FloatsLike,
    group_ids: IdsLike,
    traj_ids: IdsLike,
    turn_indices: Sequence[int] | Tensor,
    anchor_obs: Sequence[Hashable],
    step_rewards: FloatsLike,
    gamma: float = 0.95,
    omega: float = 1.0,
    mode: str = "mean_norm",
    eps: float = 1e-6,
    episode_stats: str = "all_steps",
    step_keys: Sequence[Hashable] | None = None,
    shared_prefix: str = "none",
) -> GiGPOAdvantages:
    """GiGPO: episode-level plus anchor-state step-level advantages (docs/methods/base.md).

        A^E_i   = (R_i - mean_G R) / F            F = std_G R + eps (mean_std_norm) or 1 (mean_norm)
        g_{j,t} = sum_{k>=t} gamma^(k-t) r_{j,k}  (discounted step return, per-step env rewards)
        A^S_{j,t} = (g_{j,t} - mean_U g) / F_U    U = steps of the same task group whose anchor
                                                  observation equals this step's (exact match)
        A_{j,t} = A^E_j + omega * A^S_{j,t}

    As verl-agent: the episode statistics count every step-sample (``episode_stats="all_steps"``;
    ``"per_trajectory"`` counts each trajectory once), an episode group of one has mean 0 and
    std 1, a step group of one gets ``A^S = 0``, and std is unbiased.

    Branching (docs/methods/README.md): samples that are copies of one generated step (a shared
    prefix duplicated into several branches) carry the same ``step_keys`` entry. With
    ``shared_prefix="once"`` such a step counts once in its step group, with the mean return of
    its copies, and every copy gets that entry's ``A^S``; with ``"episode_only"`` copied steps
    get ``A^S = 0`` and stay out of the step-group statistics; ``"none"`` ignores the keys.

    Shapes: every argument has ``N`` entries, one per step-sample.
    """
    if mode not in ("mean_norm", "mean_std_norm"):
        raise ValueError(f"mode must be 'mean_norm' or 'mean_std_norm', got {mode!r}")
    if episode_stats not in ("all_steps", "per_trajectory"):
        raise ValueError(f"episode_stats must be 'all_steps' or 'per_trajectory', got {episode_stats!r}")
    if shared_prefix not in ("none", "once", "episode_only"):
        raise ValueError(f"shared_prefix must be 'none', 'once' or 'episode_only', got {shared_prefix!r}")
    returns = _as_vector(episode_returns, "episode_returns")
    n = returns.numel()
    groups, _ = _codes(group_ids, "group_ids", n)
    norm_by_std = mode == "mean_std_norm"
    if episode_stats == "per_trajectory":
        episode = _per_trajectory_grpo(returns, group_ids, traj_ids, norm_by_std, eps)
    else:
        episode = grpo(returns, group_ids, norm_by_std=norm_by_std, eps=eps).double()

    g = discounted_returns(_as_vector(step_rewards, "step_rewards"), traj_ids, turn_indices, gamma).double()
    if len(anchor_obs) != n:
        raise ValueError(f"anchor_obs has {len(anchor_obs)} entries for {n} samples")
    step_group, step_group_keys = group_index(
        [(gid, obs) for gid, obs in zip(groups.tolist(), anchor_obs, strict=True)], "anchor_obs"
    )

    # Entries of the step-group statistics: one per sample, or one per shared step key.
    if step_keys is None or shared_prefix == "none":
        entry = torch.arange(n)
    else:
        entry, _ = _codes(step_keys, "step_keys", n)
    n_entries = int(entry.max()) + 1 if n else 0
    copies = torch.zeros(n_entries, dtype=torch.float64).index_add(
        0, entry, torch.ones(n, dtype=torch.float64)
    )
    entry_value = torch.zeros(n_entries, dtype=torch.float64).index_add(0, entry, g) / copies.clamp_min(1)
    entry_group = torch.zeros(n_entries, dtype=torch.long).scatter(0, entry, step_group)
    if not torch.equal(entry_group[entry], step_group):
        raise ValueError("step_keys: copies of one step must share the task group and anchor observation")
    use = copies == 1 if shared_prefix == "episode_only" else torch.ones(n_entries, dtype=torch.bool)

    n_groups = len(step_group_keys)
    mean, std, count, equal = _group_stats(entry_value[use], entry_group[use], n_groups)
    centred = entry_value - mean[entry_group]
    entry_adv = centred / (std[entry_group] + eps) if norm_by_std else centred
    no_signal = (count[entry_group] <= 1) | equal[entry_group] | ~use
    entry_adv = torch.where(no_signal, torch.zeros_like(entry_adv), entry_adv)
    step = entry_adv[entry]

    sizes = count[count > 0]
    metrics = {
        "gigpo/episode_adv_abs_mean": float(episode.abs().mean()) if n else 0.0,
        "gigpo/step_adv_abs_mean": float(step.abs().mean()) if n else 0.0,
        "gigpo/step_group_size_mean": float(sizes.mean()) if sizes.numel() else 0.0,
        "gigpo/step_groups_gt1_frac": float((sizes > 1).double().mean()) if sizes.numel() else 0.0,
    }
    dtype = _out_dtype(episode_returns)
    return GiGPOAdvantages(
        advantages=(episode + omega * step).to(dtype),
        episode=episode.to(dtype),
        step=step.to(dtype),
        metrics=metrics,
    )


# ---------------------------------------------------------------------------------------
# helpers


def _as_vector(values: FloatsLike, field: str, check_finite: bool = True) -> Tensor:
    try:
        t = torch.as_tensor(
            values.detach().cpu() if isinstance(values, Tensor) else values, dtype=torch.float64
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field} must be numbers: {exc}") from None
    t = t.reshape(-1)
    if check_finite and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).nonzero()[0])
        raise ValueError(f"{field}[{bad}] is not finite: {float(t[bad])}")
    return t


def _as_long(values: Sequence[int] | Tensor, field: str, n: int) -> Tensor:
    t = torch.as_tensor(values.detach().cpu() if isinstance(values, Tensor) else values)
    if t.dtype.is_floating_point:
        if not torch.equal(t, t.round()):
            raise ValueError(f"{field} must hold integers")
    t = t.reshape(-1).long()
    if t.numel() != n:
        raise ValueError(f"{field} has {t.numel()} entries for {n} samples")
    return t


def _codes(ids: IdsLike, field: str, n: int) -> tuple[Tensor, list[Hashable]]:
    codes, keys = group_index(ids, field)
    if codes.numel() != n:
        raise ValueError(f"{field} has {codes.numel()} entries for {n} samples")
    return codes, keys


def _out_dtype(values: object) -> torch.dtype:
    if isinstance(values, Tensor) and values.dtype.is_floating_point:
        return values.dtype
    return torch.get_default_dtype()


def _group_stats(values: Tensor, codes: Tensor, n_groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-group mean, unbiased std (0 for groups of one), count and all-equal flag (float64)."""
    count = torch.zeros(n_groups, dtype=torch.float64).index_add(0, codes, torch.ones_like(values))
    mean = torch.zeros(n_groups, dtype=torch.float64).index_add(0, codes, values) / count.clamp_min(1)
    sq = torch.zeros(n_groups, dtype=torch.float64).index_add(0, codes, (values - mean[codes]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp_min(1))
    vmax = torch.full((n_groups,), -math.inf, dtype=torch.float64).scatter_reduce(0, codes, values, "amax")
    vmin = torch.full((n_groups,), math.inf, dtype=torch.float64).scatter_reduce(0, codes, values, "amin")
    return mean, std, count, vmax == vmin


def _ordered_members(traj: Tensor, turns: Tensor) -> list[tuple[int, list[int]]]:
    """Sample indices of each trajectory sorted by turn; a repeated (trajectory, turn) raises."""
    members: dict[int, list[int]] = {}
    for i, t in enumerate(traj.tolist()):
        members.setdefault(t, []).append(i)
    out = []
    turn_list = turns.tolist()
    for t, idx in members.items():
        idx.sort(key=lambda i: turn_list[i])
        seen = [turn_list[i] for i in idx]
        if len(set(seen)) != len(seen):
            raise ValueError(f"turn_indices repeat a turn within one trajectory (turns {seen})")
        out.append((t, idx))
    return out


def _per_trajectory_grpo(
    returns: Tensor, group_ids: IdsLike, traj_ids: IdsLike, norm_by_std: bool, eps: float
) -> Tensor:
    """GRPO over one entry per trajectory, broadcast back to its step-samples."""
    n = returns.numel()
    groups, _ = _codes(group_ids, "group_ids", n)
    traj, traj_keys = _codes(traj_ids, "traj_ids", n)
    first = torch.full((len(traj_keys),), -1, dtype=torch.long)
    for i, t in enumerate(traj.tolist()):
        if first[t] < 0:
            first[t] = i
        elif returns[i] != returns[first[t]] or groups[i] != groups[first[t]]:
            raise ValueError(
                f"episode_returns / group_ids differ within trajectory {traj_keys[t]!r}; "
                "per-trajectory statistics need one return and group per trajectory"
            )
    per_traj = grpo(returns[first], groups[first], norm_by_std=norm_by_std, eps=eps).double()
    return per_traj[traj]
