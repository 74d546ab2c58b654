"""STEER: per-token reweighting of the policy-gradient loss by the predicted entropy change
(docs/methods/steer.md).

Each token's update moves the entropy of its position by an amount estimated, to first order,
by ``Omega_j``. STEER multiplies the token's PPO loss by a detached weight that decreases in
``|Omega_j|``, so no token makes a large entropy move in either direction. The weights go to
the surrogate as ``token_weights`` (denominators keep counting the mask: the weights are not
renormalised).

Shapes: ``B`` rows (step-samples), ``L`` reply positions; ``mask`` is 1 on reply tokens and
every statistic runs over ``mask == 1`` only. Stats are detached 0-dim tensors (no device
sync), as in :mod:`agentropy.training.losses`.

Scope of the min/max: over the valid tokens of the **mini-batch**, so the
weights do not depend on the micro-batch size. The current probabilities ``p`` are only known
after each micro-batch's forward pass, so the trainer gets the mini-batch range in a no-grad
pass over the mini-batch's micro-batches first (:func:`omega_range` merged across them; the
model does not change inside a mini-batch, so the values are those of the gradient pass), and
passes it to :func:`steer_weights`. ``stat_scope: micro`` takes the range over each
micro-batch alone (code parity, no extra pass).

Paper: "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective", arXiv
2510.10150 (v2; its equations were not retrieved, the formulas follow the released code).
Departure from the authors' code: the ``|Omega|`` range is taken over the mini-batch, the
authors take it per micro-batch: ``steer.stat_scope: micro``. See ``docs/methods/steer.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from agentropy.training.methods.aepo import aepo_factor
from agentropy.training.policy import reply_logprobs_and_entropy
from agentropy.training.strategy_config import STEERConfig  # noqa: F401  (re-exported; defined there to keep it torch-free)
from agentropy.training.update_hooks import Method

Stats = dict[str, Tensor]


@torch.no_grad()
def entropy_change_estimate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    old_entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    prob_eps: float = 1e-8,
) -> Tensor:
    """STEER's first-order entropy-change estimate (docs/methods/steer.md):

        p~ = clip(p, eps, 1 - eps),   q~ = clip(q, eps, 1)
        Omega_j = (A_j / q~_j) * p~_j (1 - p~_j) * (log p~_j + H^old_j)

    ``p`` is the current policy's probability of the sampled token (``exp(logprobs)``,
    detached), ``q`` the old one, ``H^old`` the old full-vocabulary entropy from the recompute
    pass and ``A`` the final advantage that enters the loss. Sign: ``Omega > 0`` predicts an
    entropy decrease (e.g. ``A > 0`` on a token with ``log p > -H``), ``Omega < 0`` an increase.

    Why this form: the surrogate ``rho A`` moves the sampled token's own logit by
    ``eta (A / q) p (1 - p)``, and ``dH/dz_k = -p_k (log p_k + H)``, so that logit alone changes
    the entropy by ``-eta p Omega`` (one factor ``p`` more than the code's Omega, which is kept
    because it produced the results; checked numerically in tests/training/test_entropy_change.py).
    The move of the other logits is not in Omega; the full softmax step is EDC's ``eta A D``
    (:func:`agentropy.training.methods.clip_bv.entropy_discriminator`).

    Shapes: all ``[B, L]`` (``advantages`` may be ``[B]``) -> ``[B, L]``; 0 where masked and where
    the value is not finite.
    """
    _check_shapes(logprobs, old_logprobs=old_logprobs, old_entropy=old_entropy, mask=mask)
    adv = advantages.detach().to(logprobs.device)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    adv = adv.to(logprobs.dtype).expand_as(logprobs)
    m = mask.bool()
    p = logprobs.detach().exp().clamp(prob_eps, 1.0 - prob_eps)
    q = old_logprobs.detach().exp().clamp(prob_eps, 1.0)
    omega = adv / q * p * (1.0 - p) * (p.log() + old_entropy.detach().to(p.dtype))
    ok = m & torch.isfinite(omega)
    return torch.where(ok, omega, torch.zeros((), dtype=omega.dtype, device=omega.device))


@torch.no_grad()
def omega_range(omega: Tensor, mask: Tensor, previous: Tensor | None = None) -> Tensor:
    """``[min |Omega|, max |Omega|]`` over the valid tokens, merged with ``previous``.

    Call it on each micro-batch of a mini-batch (no-grad pass) to get the mini-batch range for
    :func:`steer_weights` (``stat_scope: minibatch``). An empty set gives ``[+inf, -inf]``,
    which merges as the identity. Returns a float64 tensor ``[2]`` on ``omega``'s device.
    """
    if omega.shape != mask.shape:
        raise ValueError(f"omega {tuple(omega.shape)} and mask {tuple(mask.shape)} differ in shape")
    a = omega.detach().abs().double()
    m = mask.bool()
    lo = torch.where(m, a, torch.full_like(a, math.inf)).amin() if a.numel() else a.new_tensor(math.inf)
    hi = torch.where(m, a, torch.full_like(a, -math.inf)).amax() if a.numel() else a.new_tensor(-math.inf)
    out = torch.stack([lo, hi])
    if previous is not None:
        prev = previous.to(device=out.device, dtype=out.dtype)
        out = torch.stack([torch.minimum(out[0], prev[0]), torch.maximum(out[1], prev[1])])
    return out


@torch.no_grad()
def steer_weights(
    omega: Tensor,
    mask: Tensor,
    cfg: STEERConfig | None = None,
    omega_stats: Tensor | None = None,
    exempt: Tensor | None = None,
) -> tuple[Tensor, Stats]:
    """Detached STEER token weights (docs/methods/steer.md).

    Exponential mode (the paper's ``lambda = exp(-k |Omega|)``):

        k = -ln(w_min) / max(Omega_max, floor),    w_j = clip(exp(-k |Omega_j|), w_min, 1)

    so the token with the largest ``|Omega|`` gets exactly ``w_min`` whenever
    ``Omega_max >= floor``, and ``Omega = 0`` gets 1. Linear mode:

        w_j = clip(w_max - (|Omega_j| - Omega_min) (w_max - w_min) / (Omega_max - Omega_min), w_min, w_max)

    (all ``(w_min + w_max) / 2`` when ``Omega_max = Omega_min``). ``Omega_min/max`` are taken over
    ``mask == 1`` tokens given here, or come from ``omega_stats = [min, max]`` (the mini-batch
    range from :func:`omega_range`). Tokens where ``exempt`` (bool ``[B]`` rows or ``[B, L]``) is
    true, e.g. ArbEPO regularisation rows, take no part in the statistics and get
    weight 1. Masked tokens get weight 0 (``w_j <- w_j m_j``).

    Shapes: ``omega``, ``mask`` ``[B, L]`` -> weights ``[B, L]`` (no gradient) and stats
    ``steer/w_mean``, ``steer/w_min``, ``steer/w_max``, ``steer/frac_at_wmin``,
    ``steer/omega_abs_mean``, ``steer/omega_abs_max``, ``steer/omega_signed_mean`` over the
    weighted (valid, non-exempt) tokens.
    """
    cfg = cfg if cfg is not None else STEERConfig()
    if omega.shape != mask.shape:
        raise ValueError(f"omega {tuple(omega.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.bool()
    free = torch.zeros_like(m) if exempt is None else _as_token_flags(exempt, m)
    active = m & ~free
    a = omega.detach().abs()
    if omega_stats is None:
        omega_stats = omega_range(omega, active)
    lo = omega_stats[0].to(device=a.device, dtype=torch.float64)
    hi = omega_stats[1].to(device=a.device, dtype=torch.float64)
    a64 = a.double()
    if cfg.mode == "exp":
        top = torch.where(torch.isfinite(hi), hi, hi.new_tensor(0.0)).clamp_min(cfg.floor)
        k = -math.log(cfg.w_min) / top
        w = torch.exp(-k * a64).clamp(cfg.w_min, 1.0)
    else:
        span = hi - lo
        ramp = cfg.w_max - (a64 - lo) * (cfg.w_max - cfg.w_min) / torch.where(span > 0, span, span.new_tensor(1.0))
        w = torch.where(span > 0, ramp, torch.full_like(a64, 0.5 * (cfg.w_min + cfg.w_max)))
        w = w.clamp(cfg.w_min, cfg.w_max)
    w = w.to(omega.dtype)
    one = torch.ones((), dtype=w.dtype, device=w.device)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    weights = torch.where(active, w, torch.where(m, one, zero))
    return weights, _stats(weights, omega.detach(), active, cfg.w_min)


def _stats(weights: Tensor, omega: Tensor, active: Tensor, w_min: float) -> Stats:
    n = active.sum().clamp_min(1).to(torch.float64)
    w = weights.double()
    o = omega.double()
    zero = torch.zeros((), dtype=torch.float64, device=w.device)
    has = active.any()
    return {
        "steer/w_mean": torch.where(active, w, zero).sum() / n,
        "steer/w_min": torch.where(has, torch.where(active, w, torch.full_like(w, math.inf)).amin(), zero),
        "steer/w_max": torch.where(has, torch.where(active, w, torch.full_like(w, -math.inf)).amax(), zero),
        "steer/frac_at_wmin": (active & (w <= w_min * (1 + 1e-6))).sum().to(torch.float64) / n,
        "steer/omega_abs_mean": torch.where(active, o.abs(), zero).sum() / n,
        "steer/omega_abs_max": torch.where(has, torch.where(active, o.abs(), zero).amax(), zero),
        "steer/omega_signed_mean": torch.where(active, o, zero).sum() / n,
    }


def _as_token_flags(flags: Tensor, m: Tensor) -> Tensor:
    f = flags.to(device=m.device, dtype=torch.bool)
    if f.dim() == 1:
        if f.numel() != m.shape[0]:
            raise ValueError(f"exempt has {f.numel()} rows for {m.shape[0]} rows of omega")
        return f.unsqueeze(-1).expand_as(m)
    if f.shape != m.shape:
        raise ValueError(f"exempt {tuple(f.shape)} must be [B] or match omega {tuple(m.shape)}")
    return f


def _check_shapes(ref: Tensor, **others: Tensor) -> None:
    if ref.dim() != 2:
        raise ValueError(f"logprobs must be [B, L], got shape {tuple(ref.shape)}")
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(f"{name} {tuple(t.shape)} must match logprobs {tuple(ref.shape)}")


# --------------------------------------------------------------------------------------
# Hooks into the update (:mod:`agentropy.training.update_hooks`).
# --------------------------------------------------------------------------------------


def split_weight_means(weights: Tensor, active: Tensor, z_pos: Tensor) -> dict[str, float]:
    """``steer/w_mean_zpos`` / ``steer/w_mean_zneg``: STEER's mean weight on the tokens AEPO's
    factor amplifies (entropy z-score > 0) and on the others, to see whether the two methods
    pull the same tokens in opposite directions."""
    out = {}
    for name, sel in (("zpos", active & z_pos), ("zneg", active & ~z_pos)):
        count = int(sel.sum())
        if count:  # a micro-batch without such tokens does not enter the iteration's mean
            out[f"steer/w_mean_{name}"] = float(weights[sel].sum()) / count
    return out


@torch.no_grad()
def mini_batch_omega_range(model, batch, micro_batches, old_logprobs, old_entropy, token_adv, stat_mask,
                           temperature, device, prob_eps) -> Tensor:
    """``[min |Omega|, max |Omega|]`` over the mini-batch's valid main tokens: a no-grad forward
    pass over its micro-batches first (the model does not change inside a mini-batch, so the
    values are those of the gradient pass), so the weights do not depend on the micro-batch size."""
    rng = None
    for idx in micro_batches:
        sub = batch.select(idx).to(device)
        width = sub.reply_width
        logprobs, _ = reply_logprobs_and_entropy(model, sub, temperature)
        m = sub.response_mask.float()
        omega = entropy_change_estimate(logprobs, old_logprobs[idx, :width].to(device),
                                        old_entropy[idx, :width].to(device), token_adv[idx, :width].to(device),
                                        m, prob_eps)
        rng = omega_range(omega, stat_mask[idx, :width].to(device), previous=rng)
    return rng


def _after_advantages(ctx: Any) -> None:
    """With AEPO's token factor on, mark the tokens it amplifies (z > 0) to log STEER's weights
    on both sides."""
    aepo = ctx.strategy.aepo
    if not (aepo.enabled and aepo.entropy_advantage):
        return
    main = ctx.main
    z_pos = torch.zeros_like(ctx.mask, dtype=torch.bool)
    z_pos[main] = aepo_factor(ctx.old.entropy[main], ctx.mask[main], 1.0, aepo.z_scope) > 1.0
    ctx.extra["steer/z_pos"] = z_pos


def _mini_batch_start(ctx: Any, mini: Any) -> None:
    steer = ctx.strategy.steer
    if steer.stat_scope == "minibatch" and len(mini.micro_batches) > 1:
        mini.extra["steer/omega_range"] = mini_batch_omega_range(
            ctx.model, ctx.samples.batch, mini.micro_batches, ctx.old.logprobs, ctx.old.entropy, ctx.token_adv,
            ctx.stat_mask, ctx.temperature, ctx.device, steer.prob_eps)


def _token_weights(ctx: Any, mini: Any, mb: Any) -> Tensor:
    steer = ctx.strategy.steer
    omega = entropy_change_estimate(mb.logprobs, mb.old_logprobs, ctx.old.entropy[mb.idx, : mb.width].to(ctx.device),
                                    mb.advantages, mb.mask, steer.prob_eps)
    weights, stats = steer_weights(omega, mb.mask, steer, omega_stats=mini.extra.get("steer/omega_range"),
                                   exempt=mb.exempt if ctx.has_exempt else None)
    if mb.has_main:
        mb.stats.update({k: float(v) for k, v in stats.items()})
    z_pos = ctx.extra.get("steer/z_pos")
    if z_pos is not None:
        mb.stats.update(split_weight_means(weights, mb.mask.bool() & ~mb.exempt.unsqueeze(-1),
                                           z_pos[mb.idx, : mb.width].to(ctx.device)))
    return weights


METHOD = Method(
    "steer",
    enabled=lambda strategy: strategy.steer.enabled,
    after_advantages=_after_advantages,
    mini_batch_start=_mini_batch_start,
    token_weights=_token_weights,
)
