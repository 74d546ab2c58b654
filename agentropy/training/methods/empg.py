"""EMPG: Entropy-Modulated Policy Gradients (arXiv 2509.09265; formulas as reproduced in the
ARLArena appendix, Eqs. S21-S23, the full text was not available).

    Ht_{i,t}  = (H_{i,t} - min_B H) / (max_B H - min_B H + eps)      (step entropy, min-max over the batch)
    g(H_{i,t}) = exp(-k Ht_{i,t}) / mean_B exp(-k Ht)                  (mean 1 over the batch)
    f(H_{i,t+1}) = exp(-k' Ht_{i,t+1})                                 (next step of the same trajectory)
    A_mod = g A + zeta f,     A_final = A_mod - mean_B A_mod

Departure: the paper does not define ``f`` for a trajectory's last step; here it is 0 (as
third-party implementations do). Defaults k = k' = 1, zeta = 0.05. See ``docs/methods/empg.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from agentropy.training.advantages import (
    FloatsLike,
    _as_long,
    _as_vector,
    _codes,
    _ordered_members,
    _out_dtype,
)
from agentropy.training.entropy import IdsLike
from agentropy.training.update_hooks import Method


def empg_modulate(
    step_entropy: FloatsLike,
    base_adv: FloatsLike,
    traj_ids: IdsLike,
    turn_idx: Sequence[int] | Tensor,
    k: float = 1.0,
    k_prime: float = 1.0,
    zeta: float = 0.05,
    eps: float = 1e-8,
    valid: Sequence[bool] | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """EMPG step modulation (docs/methods/empg.md), over all steps of the batch:

        Ht_{i,t}  = (H_{i,t} - min_B H) / (max_B H - min_B H + eps)
        g(H_{i,t}) = exp(-k Ht_{i,t}) / mean_B exp(-k Ht)          (mean 1 over the batch)
        f(H_{i,t+1}) = exp(-k' Ht_{i,t+1})                        (next step of the SAME trajectory;
                                                                   0 for its last step)
        A_mod = g * A + zeta * f,     A_final = A_mod - mean_B A_mod

    ``step_entropy`` is the old policy's mean token entropy of each step (no gradient);
    ``base_adv`` the base advantage of each step-sample. The next step is the one with the next
    larger turn index of the same trajectory in the batch. Steps with ``valid = False`` (empty
    replies) take no part in any statistic, give no bonus to the step before them, and get
    advantage 0. Shapes: all ``[S]``. Returns ``(A_final [S], metrics)``.
    """
    h = _as_vector(step_entropy, "step_entropy", check_finite=False)
    adv = _as_vector(base_adv, "base_adv")
    s = h.numel()
    if adv.numel() != s:
        raise ValueError(f"base_adv has {adv.numel()} entries for {s} steps")
    ok = (
        torch.ones(s, dtype=torch.bool)
        if valid is None
        else torch.as_tensor(valid, dtype=torch.bool).reshape(-1).cpu()
    )
    if ok.numel() != s:
        raise ValueError(f"valid has {ok.numel()} entries for {s} steps")
    bad = ok & ~torch.isfinite(h)
    if bad.any():
        raise ValueError(f"step_entropy[{int(bad.nonzero()[0])}] is not finite")
    traj, _ = _codes(traj_ids, "traj_ids", s)
    turns = _as_long(turn_idx, "turn_idx", s)
    out_dtype = _out_dtype(base_adv)
    if not ok.any():
        return torch.zeros(s, dtype=out_dtype), {"empg/g_min": 0.0, "empg/g_max": 0.0, "empg/bonus_mean": 0.0}

    h = torch.where(ok, h, torch.zeros_like(h))
    h_min, h_max = h[ok].min(), h[ok].max()
    h_norm = (h - h_min) / (h_max - h_min + eps)
    scale = torch.exp(-k * h_norm)
    g = scale / scale[ok].mean()
    clarity = torch.exp(-k_prime * h_norm)
    bonus = torch.zeros(s, dtype=torch.float64)
    for _, members in _ordered_members(traj, turns):
        for cur, nxt in zip(members[:-1], members[1:], strict=False):
            if ok[nxt]:
                bonus[cur] = clarity[nxt]
    modulated = g * adv + zeta * bonus
    final = torch.where(ok, modulated - modulated[ok].mean(), torch.zeros_like(modulated))
    metrics = {
        "empg/g_min": float(g[ok].min()),
        "empg/g_max": float(g[ok].max()),
        "empg/bonus_mean": float(zeta * bonus[ok].mean()),
        "empg/mod_mean": float(modulated[ok].mean()),
    }
    return final.to(out_dtype), metrics


# EMPG acts in the advantage pipeline (:func:`agentropy.training.methods.compose_advantages`).
METHOD = Method("empg", enabled=lambda strategy: strategy.empg.enabled)
