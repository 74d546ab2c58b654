"""AEPO: Agentic Entropy-Balanced Policy Optimization (arXiv 2510.14545; the released code's
``compute_policy_loss_entropy_balanced_clipping``): the two update-side pieces. The branching
rollout is in :mod:`agentropy.training.methods.aepo_rollout`.

Stop-gradient clip (the surrogate), with delta the token ratio:

    J = min(delta A, clip(delta, 1 - eps_l, (1 + eps_h) / sg(delta) * delta) A)

Same forward value as PPO; the gradient multiplier on ``A grad log pi`` is ``1 + eps_h``
where ``delta > 1 + eps_h`` and ``A > 0`` (PPO: 0), 0 where ``delta < 1 - eps_l`` and
``A < 0``, ``delta`` elsewhere; the dual clip still applies for ``A < 0``.

Entropy-aware advantage factor: ``A~_j = A_j * (1 + a z_j)``, ``z_j`` the z-scored old-policy
entropy of token ``j``, ``a = 0.2``.

Departures from the authors' released code (``strategy.aepo``):
- z-scores are taken per row, i.e. within each step (``aepo.z_scope: step``), so the factor
  averages about 1 per step next to EMPG, which already acts across steps; the authors take
  the mean and std over the micro-batch (``aepo.z_scope: batch`` takes them over the whole
  rollout batch, the closest setting).
- with Clip-Cov on, the sg bound can be limited to tokens above the mean entropy
  (``aepo.sg_clip_high_entropy_only``); the authors apply it to every token
  (``sg_clip_high_entropy_only: false``).

See ``docs/methods/aepo.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentropy.training.losses import (
    Stats,
    _clip_stats,
    _frac,
    _masked,
    _prepare,
    _ratio,
    aggregate,
    ppo_token_loss,
    token_flags,
)
from agentropy.training.update_hooks import Method


def sg_clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    agg: str = "token-mean",
    entropy: Tensor | None = None,
    only_high_entropy: bool = False,
    token_weights: Tensor | None = None,
    normalizer: float | None = None,
    exempt: Tensor | None = None,
) -> tuple[Tensor, Stats]:
    """AEPO entropy-clipping-balanced surrogate: stop-gradient in the upper clip bound
    (docs/methods/aepo.md):

        J = min(delta A, clip(delta, 1 - eps_l, (1 + eps_h) / sg(delta) * delta) A)

    The forward value equals :func:`clipped_surrogate`'s. The gradient multiplier ``F`` on
    ``A * grad log pi`` becomes ``1 + eps_h`` where ``delta > 1 + eps_h`` and ``A > 0`` (PPO
    gives 0 there), stays 0 where ``delta < 1 - eps_l`` and ``A < 0``, and is ``delta``
    elsewhere; the dual clip still applies for ``A < 0``.

    ``only_high_entropy=True`` (default when Clip-Cov is also on) keeps the sg bound
    only on tokens whose z-scored ``entropy`` (over the valid tokens given) is > 0, i.e. above
    the mean, and uses the plain clip elsewhere; it needs ``entropy [B, L]`` (detached here).
    Stats add ``sg_frac`` (valid tokens that keep the ``1 + eps_h`` gradient) and
    ``sg_grad_share`` (their share of ``sum_j |F_j A_j|``: the clipped-token gradient share).
    ``exempt`` (bool rows ``[B]`` or tokens ``[B, L]``, e.g. ArbEPO regularisation rows) get the
    plain clip and take no part in the entropy mean (docs/methods/README.md).
    """
    logp, old, adv, m = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = _ratio(logp, old)
    eligible = m if exempt is None else m & ~token_flags(exempt, m)
    if only_high_entropy:
        if entropy is None:
            raise ValueError("only_high_entropy=True needs the entropy tensor")
        if entropy.shape != m.shape:
            raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(m.shape)} differ in shape")
        h = _masked(entropy.detach(), eligible)
        mean = h.sum() / eligible.sum().clamp_min(1)
        eligible = eligible & (h > mean)
    const_hi = torch.full_like(ratio, 1.0 + clip_high)
    # value 1 + eps_h, gradient (1 + eps_h) d log pi; the floor keeps 0 * inf out of the backward
    sg_ratio = ratio.detach().clamp_min(torch.finfo(ratio.dtype).tiny)
    upper = torch.where(eligible, (1.0 + clip_high) / sg_ratio * ratio, const_hi)
    per_token, flags = ppo_token_loss(ratio, adv, clip_low, clip_high, dual_clip, upper=upper)
    if token_weights is not None:
        per_token = per_token * token_weights
    loss = aggregate(per_token, m, agg, normalizer)
    stats = _clip_stats(flags, m, logp, old)
    with torch.no_grad():
        sg = flags["high"] & eligible & m
        weights = torch.ones_like(ratio) if token_weights is None else token_weights.detach().to(ratio.dtype)
        multiplier = torch.where(flags["high"] | flags["low"] | flags["dual"], torch.zeros_like(ratio), ratio)
        multiplier = torch.where(sg, const_hi, multiplier)
        magnitude = _masked(multiplier * adv.abs() * weights, m)
        stats["sg_frac"] = _frac(sg, m)
        stats["sg_grad_share"] = _masked(magnitude, sg).sum() / magnitude.sum().clamp_min(
            torch.finfo(ratio.dtype).tiny
        )
    return loss, stats



def aepo_factor(entropy: Tensor, mask: Tensor, a: float = 0.2, scope: str = "step") -> Tensor:
    """AEPO's entropy-aware advantage factor ``1 + a * z_j``, ``[B, L]`` (1 where masked):

        z_j = (H_j - mean(H)) / std(H),     A~_j = A_j * (1 + a * z_j)

    with the mean and unbiased std over the valid tokens of each row (``scope="step"``, the
    default: within its own step, so the factor averages ~1 per step next to EMPG) or of the
    whole batch given (``scope="batch"``). ``entropy`` is detached; a std of 0 (or fewer than
    two tokens) is replaced by 1, so a single-token turn keeps its advantage."""
    if scope not in ("step", "batch"):
        raise ValueError(f"scope must be 'step' or 'batch', got {scope!r}")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} differ in shape")
    h = entropy.detach()
    m = mask.bool()
    zero = torch.zeros((), dtype=h.dtype, device=h.device)

    def total(x: Tensor) -> Tensor:
        return x.sum(dim=-1, keepdim=True) if scope == "step" else x.sum()

    count = total(m.to(h.dtype))
    mean = total(torch.where(m, h, zero)) / count.clamp_min(1)
    std = torch.sqrt(total(torch.where(m, (h - mean) ** 2, zero)) / (count - 1).clamp_min(1))
    std = torch.where((count < 2) | (std == 0) | ~torch.isfinite(std), torch.ones_like(std), std)
    z = torch.where(m, (h - mean) / std, zero)
    return 1 + a * z


# AEPO acts in the advantages and the surrogate (:mod:`agentropy.training.methods`) and, with
# ``aepo.branching``, in the rollout (the trainer picks :mod:`.aepo_rollout`).
METHOD = Method("aepo", enabled=lambda strategy: strategy.aepo.enabled)
