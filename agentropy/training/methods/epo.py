"""EPO: Entropy-regularized Policy Optimization (arXiv 2509.22576 v2, section 3.2, section 4, appendix A).

    L^EPO = L^PPO - lambda * (L^H - beta_k * alpha * L^smooth)
    L^H      = (1/B) sum_j (1/T) sum_t (1/|tau_jt|) sum_i H_jti        (trajectory-level mean)
    P_jti    = [kappa_l * Href_t - H_jti]_+ + [H_jti - kappa_r * Href_t]_+    (corridor hinge)
    L^smooth = the same trajectory-level mean of P
    beta_k   = 1 + exp(-gamma k / k_mid),  k_mid = floor(K / 2)

``Href_t`` is the cumulative mean entropy of turn ``t`` over the previous iterations
(:class:`agentropy.training.entropy.EntropyHistory`, paper: m < k, cumulative rather than a
sliding window). The hinge's gradient is -1 below the corridor, 0 inside and +1 above
(the paper's Lemma A.11).

Departures from the authors' released code (``strategy.epo``):
- the smoothing term is the paper's differentiable hinge; the released code applies a
  piecewise-constant mask without gradient. There is no switch: the constant mask cannot
  move entropy, so it is not offered.
- the entropy bonus ``L^H`` is the paper's per-trajectory mean of turn means; the released
  code takes a token mean. ``epo.mode: seq`` compares each turn's mean entropy with the
  corridor instead of each token; ``epo.entropy_bonus: false`` keeps only the hinge.
- ``epo.smooth_start_step`` can hold the hinge off for the first iterations.

See ``docs/methods/epo.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from agentropy.training.entropy import IdsLike, row_mean_entropy, trajectory_turn_mean
from agentropy.training.losses import Stats, _frac, _masked, _masked_mean
from agentropy.training.update_hooks import Method


def corridor_penalty(entropy: Tensor, href: Tensor, kappa_l: float = 0.0, kappa_r: float = 2.0) -> Tensor:
    """EPO's differentiable corridor hinge (docs/methods/epo.md):

        P = [kappa_l * Href - H]_+ + [H - kappa_r * Href]_+

    Its gradient in ``H`` is -1 below the corridor (minimising pushes entropy up), 0 inside and
    +1 above (pushes it down), the paper's Lemma A.11; the released code's piecewise-constant
    penalty has no gradient and is not used. ``href`` is the per-row reference (no gradient),
    shape ``[B]`` for ``entropy [B, L]`` or ``[B]``; returns the shape of ``entropy``.
    """
    ref = href.detach().to(device=entropy.device, dtype=entropy.dtype)
    if ref.dim() == entropy.dim() - 1:
        ref = ref.unsqueeze(-1)
    return torch.relu(kappa_l * ref - entropy) + torch.relu(entropy - kappa_r * ref)


def epo_beta(k: int, total_steps: int, gamma: float = 3.0) -> float:
    """EPO's scheduled weight ``beta_k = 1 + exp(-gamma k / k_mid)``, ``k_mid = floor(K / 2)``
    (docs/methods/epo.md): 2 at ``k = 0``, ``1 + e^-gamma`` at ``k_mid``, ``1 + e^-2gamma`` at
    ``K``. ``k_mid`` is taken as at least 1 so ``K = 1`` is defined."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    k_mid = max(1, total_steps // 2)
    return 1.0 + math.exp(-gamma * k / k_mid)


def epo_loss_terms(
    entropy: Tensor,
    mask: Tensor,
    traj_ids: IdsLike,
    href: Tensor | None,
    step: int,
    total_steps: int,
    entropy_coef: float = 1e-3,
    kappa_l: float = 0.0,
    kappa_r: float = 2.0,
    alpha: float = 0.1,
    gamma: float = 3.0,
    mode: str = "token",
    bonus: bool = True,
    smooth_start_step: int = 0,
) -> tuple[Tensor, Stats]:
    """EPO's addition to the loss (docs/methods/epo.md), to be added to the policy loss:

        term = -lambda * (L^H - beta_k * alpha * L^smooth)
        L^H      = (1/B) sum_j (1/T) sum_t (1/|tau_jt|) sum_i H_jti       (trajectory-level mean)
        L^smooth = the same average of the corridor penalty P_jti against Href_t of the row's turn

    ``entropy [B, L]`` is the current forward pass's token entropy (with gradient), ``traj_ids``
    one id per row, ``href [B]`` the reference of each row's turn from
    :class:`entropy.EntropyHistory`; ``None`` or NaN entries (no history yet) mean no hinge
    for those rows, so ``L^smooth = 0`` at ``k = 0``. ``mode="seq"`` compares each row's mean entropy to the corridor instead of
    each token. ``bonus=False`` drops ``L^H`` and keeps only the hinge (docs/methods/README.md);
    ``step < smooth_start_step`` holds the hinge off (option). The averages run over the
    rows given, so call it on whole trajectories (or accept the micro-batch approximation).
    Metrics: ``epo/entropy``
    (``L^H``), ``epo/smooth``, ``epo/beta``, ``epo/viol_low`` / ``epo/viol_high`` (fraction of
    valid tokens, or rows in seq mode, below / above the corridor), ``epo/href_mean``.
    """
    if mode not in ("token", "seq"):
        raise ValueError(f"mode must be 'token' or 'seq', got {mode!r}")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.bool()
    h = _masked(entropy, m)
    zero = torch.zeros((), dtype=h.dtype, device=h.device)
    entropy_term = trajectory_turn_mean(h, m, traj_ids)
    beta = epo_beta(step, total_steps, gamma)
    smooth, viol_low, viol_high, href_mean = zero, zero, zero, zero
    if href is not None and step >= smooth_start_step:
        ref = href.detach().to(device=h.device, dtype=h.dtype).reshape(-1)
        if ref.numel() != h.shape[0]:
            raise ValueError(f"href has {ref.numel()} entries for {h.shape[0]} rows")
        has_ref = torch.isfinite(ref)
        ref = _masked(ref, has_ref)
        rows = m.any(-1) & has_ref
        if mode == "token":
            penalty = _masked(corridor_penalty(h, ref, kappa_l, kappa_r), has_ref.unsqueeze(-1))
            smooth = trajectory_turn_mean(penalty, m, traj_ids)
            measured, where_valid, ref_b = h.detach(), m & has_ref.unsqueeze(-1), ref.unsqueeze(-1)
        else:
            row_h = row_mean_entropy(h, m)
            penalty = _masked(corridor_penalty(row_h, ref, kappa_l, kappa_r), has_ref)
            smooth = trajectory_turn_mean(penalty.unsqueeze(-1), m.any(-1).unsqueeze(-1), traj_ids)
            measured, where_valid, ref_b = row_h.detach(), rows, ref
        viol_low = _frac(where_valid & (measured < kappa_l * ref_b), where_valid)
        viol_high = _frac(where_valid & (measured > kappa_r * ref_b), where_valid)
        href_mean = _masked_mean(ref, rows)
    total = (entropy_term if bonus else zero) - beta * alpha * smooth
    term = -entropy_coef * total
    stats = {
        "epo/entropy": entropy_term.detach(),
        "epo/smooth": smooth.detach(),
        "epo/beta": torch.tensor(beta),
        "epo/viol_low": viol_low.detach(),
        "epo/viol_high": viol_high.detach(),
        "epo/href_mean": href_mean.detach(),
    }
    return term, stats


def _finish(ctx: Any) -> None:
    ctx.metrics["epo/reference_mean"] = ctx.metrics["entropy/history_reference"]


# EPO acts in the loss (:func:`agentropy.training.methods.policy_loss`) against the per-turn
# history every run keeps (``UpdateState.entropy_history``).
METHOD = Method("epo", enabled=lambda strategy: strategy.epo.enabled, finish=_finish)
