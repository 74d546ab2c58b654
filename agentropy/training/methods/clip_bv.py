"""Entropy-discriminator clipping, Clip_B and Clip_V (docs/methods/clip_bv.md).

For a softmax, raising the logit of token ``k`` by ``eps`` changes the entropy by
``-eps S_k`` with the **entropy discriminator** ``S_k = p_k (H + log p_k)``; a policy-gradient step
``delta z = eta A (e_k - p)`` changes it by ``eta A D`` with ``D = E_{v~p}[S_v] - S_k``. Both
methods drop from the policy-gradient term the **negative-advantage tokens whose update would
shrink entropy most**: Clip_B judges by ``S`` z-scored over the batch, Clip_V by ``D`` against
its std, with a cap on the fraction dropped.

Everything is computed once per iteration from the recompute pass under pi_old (no gradient),
after the final advantage is known (the sign that is applied, after EMPG and the
AEPO factor). The result is a keep factor ``k [B, L]`` in ``{0, 1}``: the trainer multiplies
it into the mask of the **policy-gradient term only** (``m' = m k``, denominator ``sum m'``);
entropy, KL, EPO and SIREN terms keep ``m``. Statistics run over the valid tokens of all
step-samples given; pass a mask without ArbEPO regularisation rows and they stay
untouched (keep factor 1). Metrics are Python floats (once per iteration).

Paper: "On the Entropy Dynamics in Reinforcement Fine-Tuning of Large Language Models", arXiv
2602.03392 (Thm 3.2). Departures from the authors' code: Clip_V keeps ``A = 0`` tokens (the
authors' ``clip_zero_adv`` drops them: ``clip_v.clip_zero_adv: true``); Clip_B judges by the
recomputed pi_old (the authors: the sampler's log-probs; with the hf backend and
``train.recompute_old: auto`` those are used). See ``docs/methods/clip_bv.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from agentropy.training.entropy import token_entropy
from agentropy.training.strategy_config import ClipBConfig, ClipVConfig  # noqa: F401  (re-exported; defined there to keep it torch-free)
from agentropy.training.update_hooks import Method


@torch.no_grad()
def expected_discriminator(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``N = E_{v~q}[S_v] = H sum_v q_v^2 + sum_v q_v^2 log q_v`` of ``q = softmax(logits / T)``
    (docs/methods/clip_bv.md, the code's "nec"). Needs the full distribution, so the trainer
    computes it in the recompute pass next to the entropy, in float32 or wider.
    Shapes: ``[..., V] -> [...]``; ``-inf`` logits contribute 0."""
    z = logits.detach()
    z = z / temperature if temperature != 1.0 else z
    z = z.clamp(min=torch.finfo(z.dtype).min)
    log_q = torch.log_softmax(z, dim=-1)
    q2 = log_q.exp() ** 2
    entropy = token_entropy(z)
    return entropy * q2.sum(-1) + (q2 * log_q).sum(-1)


@torch.no_grad()
def entropy_discriminator(
    old_logprobs: Tensor, old_entropy: Tensor, mask: Tensor, expected: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """The sampled token's discriminator and its centred version (docs/methods/clip_bv.md):

        S_j = q_j (H_j + log q_j),        D_j = N_j - S_j,   N_j = E_{v~q}[S_v]

    under pi_old (``q_j = exp(old_logprobs)``, ``H_j`` the full entropy from the recompute pass).
    First order: a single-logit step ``z_k += eps`` changes the entropy by ``-eps S``; a
    policy-gradient step ``delta z = eta A (e_y - q)`` at the position by ``eta A D``
    (checked numerically in tests/training/test_entropy_change.py). ``expected`` is ``N``
    from :func:`expected_discriminator`; ``D`` is None without it.
    Shapes: all ``[B, L]`` -> ``(S [B, L], D [B, L] | None)``, 0 where masked.
    """
    if old_logprobs.shape != old_entropy.shape or old_logprobs.shape != mask.shape:
        raise ValueError(
            f"old_logprobs {tuple(old_logprobs.shape)}, old_entropy {tuple(old_entropy.shape)} and "
            f"mask {tuple(mask.shape)} must have the same shape"
        )
    m = mask.bool()
    zero = torch.zeros((), dtype=old_logprobs.dtype, device=old_logprobs.device)
    logq = torch.where(m, old_logprobs.detach(), zero)
    s = torch.where(m, logq.exp() * (old_entropy.detach().to(logq.dtype) + logq), zero)
    if expected is None:
        return s, None
    if expected.shape != m.shape:
        raise ValueError(f"expected {tuple(expected.shape)} must match old_logprobs {tuple(m.shape)}")
    d = torch.where(m, expected.detach().to(s.dtype) - s, zero)
    return s, d


@torch.no_grad()
def clip_b_mask(
    s: Tensor, advantages: Tensor, mask: Tensor, cfg: ClipBConfig | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Clip_B keep factor (docs/methods/clip_bv.md):

        S_bar, sigma_S = mean and population std of S over the n valid tokens
        drop_j  iff  A_j < 0  and  S_j - S_bar < -mu sigma_S        (keep all if sigma_S < min_std)

    Tokens with ``A >= 0`` are always kept. Shapes: ``s``, ``mask`` ``[B, L]``, ``advantages``
    ``[B, L]`` or ``[B]`` -> keep ``[B, L]`` (float, 1 = keep, also 1 outside ``mask``) and metrics
    ``edc/dropped_fraction`` (= ``edc/frac_clipped``), ``edc/frac_clipped_neg``,
    ``edc/frac_clipped_pos`` (0 by construction), ``edc/S_mean``, ``edc/S_var``.
    """
    cfg = cfg if cfg is not None else ClipBConfig()
    x, adv, m, n = _inputs(s, advantages, mask)
    mean, std = _population_stats(x, m, n)
    neg = adv < 0
    if std < cfg.min_std:
        drop = torch.zeros_like(m)
    else:
        drop = neg & m & (x - mean < -cfg.mu * std)
    metrics = _drop_metrics(drop, neg, adv, m, n)
    metrics.update({"edc/S_mean": mean, "edc/S_var": std * std})
    return (~drop).to(s.dtype), metrics


@torch.no_grad()
def clip_v_mask(
    d: Tensor, advantages: Tensor, mask: Tensor, cfg: ClipVConfig | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Clip_V keep factor (docs/methods/clip_bv.md):

        sigma_D = population std of D over the n valid tokens    (keep all if sigma_D < min_std)
        C = {j : A_j < 0, m_j = 1, D_j > mu sigma_D}             (not mean-centred, as the code)
        K = max(floor(max_frac n), 1);  |C| > K: drop the K candidates with the largest D, else all of C

    ``clip_zero_adv=True`` makes ``A = 0`` tokens droppable as well (the code's
    ``where(A > 0, keep, keep_neg)``); they are dropped above the threshold without counting
    against the cap, as in the code. Shapes as :func:`clip_b_mask`. Metrics:
    ``edc/dropped_fraction``, ``edc/frac_clipped``, ``edc/frac_clipped_neg``, ``edc/frac_clipped_pos``,
    ``edc/D_std``, ``edc/cap_hit`` (1 if the cap bound), and the eta-free predicted entropy change
    ``edc/pred_dH_all = (1/n) sum m A D`` vs ``edc/pred_dH_kept = (1/n) sum m' A D``.
    """
    cfg = cfg if cfg is not None else ClipVConfig()
    x, adv, m, n = _inputs(d, advantages, mask)
    mean, std = _population_stats(x, m, n)
    neg = adv < 0
    cap_hit = False
    if std < cfg.min_std:
        drop = torch.zeros_like(m)
    else:
        above = m & (x > cfg.mu * std)
        drop = above & neg
        cap = max(math.floor(cfg.max_frac * n), 1)
        count = int(drop.sum())
        if count > cap:
            cap_hit = True
            scores = torch.where(drop, x.double(), torch.full_like(x, -math.inf, dtype=torch.float64)).flatten()
            top = torch.topk(scores, cap).indices
            drop = torch.zeros_like(drop).flatten().index_fill_(0, top, True).view_as(drop)
        if cfg.clip_zero_adv:
            drop = drop | (above & (adv == 0))
    metrics = _drop_metrics(drop, neg, adv, m, n)
    a_d = (adv.double() * x.double())
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    metrics.update({
        "edc/D_std": std,
        "edc/cap_hit": float(cap_hit),
        "edc/pred_dH_all": float(torch.where(m, a_d, zero).sum()) / max(n, 1),
        "edc/pred_dH_kept": float(torch.where(m & ~drop, a_d, zero).sum()) / max(n, 1),
    })
    return (~drop).to(d.dtype), metrics


def _inputs(x: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    if x.dim() != 2 or x.shape != mask.shape:
        raise ValueError(f"discriminator {tuple(x.shape)} and mask {tuple(mask.shape)} must be the same [B, L]")
    adv = advantages.detach().to(x.device)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    if adv.shape[0] != x.shape[0] or adv.shape[-1] not in (1, x.shape[-1]):
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [B] or [B, L] for {tuple(x.shape)}")
    m = mask.bool()
    adv = torch.where(m, adv.expand_as(x).to(torch.float64), torch.zeros((), dtype=torch.float64, device=x.device))
    return x.detach(), adv, m, int(m.sum())


def _population_stats(x: Tensor, m: Tensor, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    v = x[m].double()
    mean = v.mean()
    return float(mean), float(((v - mean) ** 2).mean().sqrt())


def _drop_metrics(drop: Tensor, neg: Tensor, adv: Tensor, m: Tensor, n: int) -> dict[str, float]:
    denom = max(n, 1)
    frac = float((drop & m).sum()) / denom
    return {
        "edc/dropped_fraction": frac,
        "edc/frac_clipped": frac,
        "edc/frac_clipped_neg": float((drop & m & neg).sum()) / denom,
        "edc/frac_clipped_pos": float((drop & m & (adv > 0)).sum()) / denom,
    }


# --------------------------------------------------------------------------------------
# Hooks into the update (:mod:`agentropy.training.update_hooks`): the keep-mask of the
# policy-gradient term, from the sign of the final advantage (main rows only).
# --------------------------------------------------------------------------------------


def _pi_old_expected(strategy: Any) -> Any:
    def extra(logits: Tensor, m: Tensor) -> dict[str, Tensor]:
        return {"expected": expected_discriminator(logits) * m}

    return extra


def _keep_mask(ctx: Any, which: str) -> Tensor:
    s_disc, d_disc = entropy_discriminator(ctx.old.logprobs, ctx.old.entropy, ctx.stat_mask,
                                           ctx.old.extra.get("expected"))
    if which == "clip_v":
        keep, metrics = clip_v_mask(d_disc, ctx.token_adv, ctx.stat_mask, ctx.strategy.clip_v)
    else:
        keep, metrics = clip_b_mask(s_disc, ctx.token_adv, ctx.stat_mask, ctx.strategy.clip_b)
    ctx.metrics.update(metrics)
    return keep.float()


CLIP_B = Method("clip_b", enabled=lambda strategy: strategy.clip_b.enabled,
                keep_mask=lambda ctx: _keep_mask(ctx, "clip_b"))
CLIP_V = Method("clip_v", enabled=lambda strategy: strategy.clip_v.enabled, pi_old_extra=_pi_old_expected,
                keep_mask=lambda ctx: _keep_mask(ctx, "clip_v"))
