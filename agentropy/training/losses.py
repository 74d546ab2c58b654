"""Policy losses: the clipped surrogate and the entropy methods that act in the loss.

Pure functions on tensors. Shapes: ``logprobs``, ``old_logprobs``, ``mask`` are ``[B, L]``
(``B`` step-samples, ``L`` padded reply positions); ``advantages`` is ``[B, L]`` or ``[B]``
(broadcast over the reply). ``mask`` is 1 on reply tokens; every per-token quantity is taken
on the full tensor and then masked before any sum or statistic (docs/methods/README.md). Values at
masked positions are replaced by 0 on entry, so padding that holds ``-inf`` or NaN (e.g. the
log-prob of a masked pad token) never reaches the loss or its gradient.

Each loss returns ``(loss, stats)``; ``stats`` holds detached 0-dim tensors (no device sync;
the trainer calls ``.item()`` when it logs). Loss terms that another method adds per token
(Clip-Cov's mask, later token weights) come in as ``token_weights``, which multiply the
per-token loss before aggregation while the denominators keep counting ``mask``.
"""

from __future__ import annotations

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")

Stats = dict[str, Tensor]


def aggregate(
    per_token: Tensor, mask: Tensor, agg: str = "token-mean", normalizer: float | None = None
) -> Tensor:
    """Reduce a per-token loss ``[B, L]`` to a scalar (docs/methods/base.md, verl ``loss_agg_mode``).

    - ``token-mean``: ``sum(m * l) / sum(m)`` over the batch (DAPO; verl default).
    - ``seq-mean-token-mean``: the mean over rows of each row's token mean (original GRPO);
      rows without tokens do not count.
    - ``seq-mean-token-sum-norm``: ``sum(m * l) / L_max`` with ``L_max`` the padded length
      ``L`` (Dr.GRPO / Dr.BoT); pass ``normalizer`` = the configured max reply length to keep
      it constant across batches.

    ``normalizer`` replaces the denominator (the global token count, non-empty row count or
    ``L_max``), so micro-batches of one mini-batch add up to the mini-batch loss exactly.
    An all-zero mask gives 0.
    """
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.bool()
    x = torch.where(m, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if agg == "token-mean":
        denom = m.sum().clamp_min(1) if normalizer is None else normalizer
        return x.sum() / denom
    if agg == "seq-mean-token-mean":
        rows = x.sum(-1) / m.sum(-1).clamp_min(1)
        denom = m.any(-1).sum().clamp_min(1) if normalizer is None else normalizer
        return rows.sum() / denom
    if agg == "seq-mean-token-sum-norm":
        denom = per_token.shape[-1] if normalizer is None else normalizer
        return x.sum() / denom
    raise ValueError(f"agg must be one of {AGG_MODES}, got {agg!r}")


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-token KL to the reference policy, k3 / "low_var_kl" estimator (docs/methods/base.md):

        KL_k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1,  clamped to [-10, 10]

    (the log-ratio is first clamped to [-20, 20] so ``exp`` cannot overflow, as verl). Shapes
    ``[B, L] -> [B, L]``; with ``mask`` the masked positions are 0. Aggregate with
    :func:`aggregate` and scale by ``kl_coef`` (default 0; on-policy tokens only).
    """
    if mask is not None:
        m = mask.bool()
        logprobs = _masked(logprobs, m)
        ref_logprobs = _masked(ref_logprobs, m)
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    kl = (torch.exp(log_ratio) - log_ratio - 1).clamp(-10.0, 10.0)
    return kl if mask is None else _masked(kl, mask.bool())


def ppo_token_loss(
    ratio: Tensor,
    advantages: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    upper: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO loss with dual clip (docs/methods/base.md):

        l = max(-A rho, -A clip(rho, 1 - eps_l, 1 + eps_h)),   and for A < 0:  l = min(l, -c A)

    ``upper`` optionally replaces the constant upper bound ``1 + eps_h`` by a tensor of the same
    value that carries a gradient (AEPO's stop-gradient bound). Returns the loss ``[B, L]`` and
    boolean masks of where each clip is active (``high``: A > 0, rho > 1 + eps_h; ``low``:
    A < 0, rho < 1 - eps_l; ``dual``: the dual clip sets the loss).
    """
    lo = torch.full_like(ratio, 1.0 - clip_low)
    hi = torch.full_like(ratio, 1.0 + clip_high) if upper is None else upper
    clipped_ratio = torch.where(ratio < 1.0 - clip_low, lo, torch.where(ratio > 1.0 + clip_high, hi, ratio))
    pg1 = -advantages * ratio
    pg2 = -advantages * clipped_ratio
    loss = torch.maximum(pg1, pg2)
    flags = {
        "high": (advantages > 0) & (ratio > 1.0 + clip_high),
        "low": (advantages < 0) & (ratio < 1.0 - clip_low),
    }
    if dual_clip is not None:
        if not dual_clip > 1.0:
            raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
        pg3 = -advantages * dual_clip
        flags["dual"] = (advantages < 0) & (loss > pg3)
        loss = torch.where(advantages < 0, torch.minimum(loss, pg3), loss)
    else:
        flags["dual"] = torch.zeros_like(ratio, dtype=torch.bool)
    return loss, flags


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    agg: str = "token-mean",
    token_weights: Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[Tensor, Stats]:
    """PPO/GRPO clipped surrogate with dual clip (docs/methods/base.md):

        rho_j = exp(log pi(y_j) - log pi_old(y_j))
        l_j   = max(-A_j rho_j, -A_j clip(rho_j, 1 - eps_l, 1 + eps_h));  A_j < 0: l_j = min(l_j, -c A_j)
        loss  = aggregate(w_j * l_j over mask, agg)

    ``clip_high`` > ``clip_low`` is DAPO's clip-higher (0.2 / 0.28); ``dual_clip=None`` turns
    the dual clip off. The log-ratio is clamped to [-20, 20] before ``exp`` (as verl).
    Stats: ``clipfrac_high``, ``clipfrac_low``, ``clipfrac_dual``, ``clipfrac`` (high + low,
    verl's ``pg_clipfrac``) as fractions of the valid tokens, and ``approx_kl`` =
    mean(log pi_old - log pi) (verl's ``ppo_kl``).
    """
    logp, old, adv, m = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = _ratio(logp, old)
    per_token, flags = ppo_token_loss(ratio, adv, clip_low, clip_high, dual_clip)
    if token_weights is not None:
        per_token = per_token * token_weights
    loss = aggregate(per_token, m, agg, normalizer)
    return loss, _clip_stats(flags, m, logp, old)


# ---------------------------------------------------------------------------------------
# helpers


def token_flags(flags: Tensor, m: Tensor) -> Tensor:
    """Bool ``[B, L]`` from row flags ``[B]`` or token flags ``[B, L]`` matching ``m``."""
    f = flags.to(device=m.device, dtype=torch.bool)
    if f.dim() == 1:
        if f.numel() != m.shape[0]:
            raise ValueError(f"row flags have {f.numel()} entries for {m.shape[0]} rows")
        return f.unsqueeze(-1).expand(m.shape)
    if f.shape != m.shape:
        raise ValueError(f"flags {tuple(f.shape)} must be [B] or match the mask {tuple(m.shape)}")
    return f


def _ratio(logp: Tensor, old: Tensor) -> Tensor:
    """``exp(log pi - log pi_old)`` with the log-ratio clamped to [-20, 20] (as verl) so that a
    far-off token cannot overflow; inside that range (ratios 2e-9 .. 5e8) nothing changes."""
    return torch.exp((logp - old).clamp(-20.0, 20.0))


def _masked(x: Tensor, m: Tensor) -> Tensor:
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _frac(flags: Tensor, m: Tensor) -> Tensor:
    return (flags & m).sum().to(torch.float32) / m.sum().clamp_min(1).to(torch.float32)


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    return _masked(x, m).sum() / m.sum().clamp_min(1).to(x.dtype)


def _prepare(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check shapes, broadcast ``[B]`` advantages, zero everything outside the mask."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, L], got shape {tuple(logprobs.shape)}")
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(
            f"old_logprobs {tuple(old_logprobs.shape)} must match logprobs {tuple(logprobs.shape)}"
        )
    if mask.shape != logprobs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match logprobs {tuple(logprobs.shape)}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    if advantages.shape[0] != logprobs.shape[0] or advantages.shape[-1] not in (1, logprobs.shape[-1]):
        raise ValueError(
            f"advantages {tuple(advantages.shape)} must be [B] or [B, L] for logprobs {tuple(logprobs.shape)}"
        )
    advantages = advantages.to(dtype=logprobs.dtype).expand_as(logprobs)
    m = mask.bool()
    return _masked(logprobs, m), _masked(old_logprobs, m), _masked(advantages, m), m


def _clip_stats(flags: dict[str, Tensor], m: Tensor, logp: Tensor, old: Tensor) -> Stats:
    high, low = _frac(flags["high"], m), _frac(flags["low"], m)
    return {
        "clipfrac": (high + low).detach(),
        "clipfrac_high": high.detach(),
        "clipfrac_low": low.detach(),
        "clipfrac_dual": _frac(flags["dual"], m).detach(),
        "approx_kl": _masked_mean((old - logp).detach(), m),
    }
