"""Clip-Cov and KL-Cov ("The Entropy Mechanism of RL for Reasoning Language Models",
arXiv 2505.22617; released code ``PRIME-RL/Entropy-Mechanism-of-RL``, ``core_algos.py``).

Token covariance proxy over the N valid tokens:

    c_n = (A_n - mean A) (log pi(y_n) - mean log pi)       (detached)

Clip-Cov: among valid tokens with ``cov_lb < c_n < cov_ub`` that PPO has not already
clipped, ``max(1, floor(r N))`` drawn at random get no gradient (r = 2e-4, [1, 5]).
KL-Cov: the top ``max(1, floor(r N))`` tokens by ``c_n`` get ``-A rho + beta |log pi -
log pi_old|``, the others ``-A rho``; no ratio clipping at all (r = 2e-3, beta = 1).

Departures from the authors' released code (``strategy.clip_cov`` / ``strategy.kl_cov``):
- Clip-Cov is stacked with the dual clip of ``policy_loss.dual_clip`` (default 3); the authors'
  clip_cov loss has none: set ``policy_loss.dual_clip: null``.
- the official runs widen the PPO clip to 1 (``policy_loss.clip_low/clip_high: 1.0``); the
  default keeps 0.2, and the config validation warns about it.

See ``docs/methods/clip_cov.md``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from agentropy.training.losses import Stats, _frac, _masked, _masked_mean, _prepare, _ratio, aggregate
from agentropy.training.update_hooks import Method


def token_covariance(advantages: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """Clip-Cov / KL-Cov token covariance proxy (docs/methods/clip_cov.md), detached:

        c_n = (A_n - mean A) * (log pi(y_n) - mean log pi)

    with masked means over the valid tokens. Shapes ``[B, L]`` (``advantages`` may be ``[B]``)
    -> ``[B, L]``, 0 where masked.
    """
    logp, _, adv, m = _prepare(logprobs.detach(), logprobs.detach(), advantages.detach(), mask)
    n = m.sum().clamp_min(1)
    adv_mean = adv.sum() / n
    logp_mean = logp.sum() / n
    return _masked((adv - adv_mean) * (logp - logp_mean), m)


def clip_cov_mask(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ratio: float = 2e-4,
    cov_lb: float = 1.0,
    cov_ub: float = 5.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Stats]:
    """Clip-Cov token selection (docs/methods/clip_cov.md): a ``{0, 1}`` mask ``kappa [B, L]``.

    Candidates are valid tokens with ``cov_lb < c_n < cov_ub`` (:func:`token_covariance`) that
    PPO has not already clipped (``-A clip(rho) > -A rho`` on forward values with the given
    clip range, which should match the loss's). ``max(1, floor(ratio * N))`` of them (``N`` valid
    tokens; fewer if there are fewer candidates) are drawn uniformly at random with
    ``generator`` and get ``kappa = 0``; pass ``kappa`` as ``token_weights`` to the surrogate
    to remove exactly their gradient. Defaults are the official ones (r = 2e-4, [1, 5]; the
    official runs widen the PPO clip to 1). Stats: ``clip_cov_frac`` (zeroed / valid) and
    ``clip_cov_candidates`` (candidates / valid).
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    with torch.no_grad():
        logp, old, adv, m = _prepare(logprobs.detach(), old_logprobs.detach(), advantages.detach(), mask)
        rho = _ratio(logp, old)
        pg1 = -adv * rho
        pg2 = -adv * rho.clamp(1.0 - clip_low, 1.0 + clip_high)
        already_clipped = pg2 > pg1
        cov = token_covariance(adv, logp, m)
        candidates = m & ~already_clipped & (cov > cov_lb) & (cov < cov_ub)
        n_valid = int(m.sum())
        keep = torch.ones_like(logp)
        chosen_count = 0
        if n_valid > 0:
            wanted = max(1, math.floor(ratio * n_valid))
            idx = candidates.flatten().nonzero().squeeze(1)
            gen_device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(idx.numel(), generator=generator, device=gen_device)
            chosen = idx[perm[:wanted].to(idx.device)]
            keep.view(-1)[chosen] = 0.0
            chosen_count = chosen.numel()
        denom = max(n_valid, 1)
        stats = {
            "clip_cov_frac": torch.tensor(chosen_count / denom),
            "clip_cov_candidates": candidates.sum().to(torch.float64).cpu() / denom,
        }
    return keep, stats


def kl_cov_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ratio: float = 2e-3,
    kl_coef: float = 1.0,
    agg: str = "token-mean",
    normalizer: float | None = None,
) -> tuple[Tensor, Stats]:
    """KL-Cov loss (docs/methods/clip_cov.md): no ratio clipping at all;

        l_n = -A_n rho_n + beta |log pi(y_n) - log pi_old(y_n)|   for the top-k tokens by c_n
        l_n = -A_n rho_n                                          otherwise

    with ``k = max(1, floor(N * ratio))`` over the ``N`` valid tokens. Default ratio 2e-3 (the
    paper's 0.2% for 7B; verl's merged version uses 2e-4) and ``beta = kl_coef = 1``. Stats:
    ``kl_cov_frac`` (penalised / valid) and ``approx_kl``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    logp, old, adv, m = _prepare(logprobs, old_logprobs, advantages, mask)
    rho = _ratio(logp, old)
    per_token = -adv * rho
    n_valid = int(m.sum())
    selected = torch.zeros_like(m)
    if n_valid > 0:
        k = max(1, math.floor(n_valid * ratio))
        cov = token_covariance(adv, logp, m)
        scores = torch.where(m, cov, torch.full_like(cov, -math.inf)).flatten()
        top = torch.topk(scores, k).indices
        selected.view(-1)[top] = True
    per_token = per_token + torch.where(selected, kl_coef * (logp - old).abs(), torch.zeros_like(per_token))
    loss = aggregate(per_token, m, agg, normalizer)
    stats = {"kl_cov_frac": _frac(selected, m), "approx_kl": _masked_mean((old - logp).detach(), m)}
    return loss, stats


# Both act in the surrogate (:func:`agentropy.training.methods.policy_loss`).
CLIP_COV = Method("clip_cov", enabled=lambda strategy: strategy.clip_cov.enabled)
KL_COV = Method("kl_cov", enabled=lambda strategy: strategy.kl_cov.enabled)
