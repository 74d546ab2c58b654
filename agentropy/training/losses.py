"""Policy losses: the clipped surrogate and the entropy methods that act in the loss.

Pure functions on tensors. Shapes: ``logprobs``, ``old_logprobs``, ``mask`` are ``[B, L]``
(``B`` step-samples, ``L`` padded reply positions); ``advantages`` is ``[B, L]`` or ``[B]``
(broadcast over the reply). ``mask`` is 1 on reply tokens; every per-token quantity is taken
on the full tensor and then masked before any sum or statistic (ALGORITHMS.md 0.2). Values at
masked positions are replaced by 0 on entry, so padding that holds ``-inf`` or NaN (e.g. the
log-prob of a masked pad token) never reaches the loss or its gradient.

Each loss returns ``(loss, stats)``; ``stats`` holds detached 0-dim tensors (no device sync;
the trainer calls ``.item()`` when it logs). Loss terms that another method adds per token
(Clip-Cov's mask, later token weights) come in as ``token_weights``, which multiply the
per-token loss before aggregation while the denominators keep counting ``mask``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from agentropy.training.entropy import IdsLike, trajectory_turn_mean, turn_entropy

if TYPE_CHECKING:
    from agentropy.training.strategy_config import StrategyConfig

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")

Stats = dict[str, Tensor]


def aggregate(
    per_token: Tensor, mask: Tensor, agg: str = "token-mean", normalizer: float | None = None
) -> Tensor:
    """Reduce a per-token loss ``[B, L]`` to a scalar (ALGORITHMS.md 0.4, verl ``loss_agg_mode``).

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
    """Per-token KL to the reference policy, k3 / "low_var_kl" estimator (ALGORITHMS.md 1.2):

        KL_k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1,  clamped to [-10, 10]

    (the log-ratio is first clamped to [-20, 20] so ``exp`` cannot overflow, as verl). Shapes
    ``[B, L] -> [B, L]``; with ``mask`` the masked positions are 0. Aggregate with
    :func:`aggregate` and scale by ``kl_coef`` (default 0, 6.3 C12; on-policy tokens only).
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
    """Per-token PPO loss with dual clip (ALGORITHMS.md 1.1):

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
    """PPO/GRPO clipped surrogate with dual clip (ALGORITHMS.md 1.1, 1.2, 1.3):

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
    (ALGORITHMS.md 4(b)(iii)):

        J = min(delta A, clip(delta, 1 - eps_l, (1 + eps_h) / sg(delta) * delta) A)

    The forward value equals :func:`clipped_surrogate`'s. The gradient multiplier ``F`` on
    ``A * grad log pi`` becomes ``1 + eps_h`` where ``delta > 1 + eps_h`` and ``A > 0`` (PPO
    gives 0 there), stays 0 where ``delta < 1 - eps_l`` and ``A < 0``, and is ``delta``
    elsewhere; the dual clip still applies for ``A < 0``.

    ``only_high_entropy=True`` (6.3 C4 default when Clip-Cov is also on) keeps the sg bound
    only on tokens whose z-scored ``entropy`` (over the valid tokens given) is > 0, i.e. above
    the mean, and uses the plain clip elsewhere; it needs ``entropy [B, L]`` (detached here).
    Stats add ``sg_frac`` (valid tokens that keep the ``1 + eps_h`` gradient) and
    ``sg_grad_share`` (their share of ``sum_j |F_j A_j|``: the clipped-token gradient share).
    ``exempt`` (bool rows ``[B]`` or tokens ``[B, L]``, e.g. ArbEPO regularisation rows) get the
    plain clip and take no part in the entropy mean (ALGORITHMS-MORE.md 13.2 step 8, C19).
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


def token_covariance(advantages: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """Clip-Cov / KL-Cov token covariance proxy (ALGORITHMS.md 1.5), detached:

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
    """Clip-Cov token selection (ALGORITHMS.md 1.5): a ``{0, 1}`` mask ``kappa [B, L]``.

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
    """KL-Cov loss (ALGORITHMS.md 1.5): no ratio clipping at all;

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


def corridor_penalty(entropy: Tensor, href: Tensor, kappa_l: float = 0.0, kappa_r: float = 2.0) -> Tensor:
    """EPO's differentiable corridor hinge (ALGORITHMS.md 2(b)):

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
    (ALGORITHMS.md 2(b)): 2 at ``k = 0``, ``1 + e^-gamma`` at ``k_mid``, ``1 + e^-2gamma`` at
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
    """EPO's addition to the loss (ALGORITHMS.md 2(b)), to be added to the policy loss:

        term = -lambda * (L^H - beta_k * alpha * L^smooth)
        L^H      = (1/B) sum_j (1/T) sum_t (1/|tau_jt|) sum_i H_jti       (trajectory-level mean)
        L^smooth = the same average of the corridor penalty P_jti against Href_t of the row's turn

    ``entropy [B, L]`` is the current forward pass's token entropy (with gradient), ``traj_ids``
    one id per row, ``href [B]`` the reference of each row's turn from
    :class:`entropy.EntropyHistory`; ``None`` or NaN entries (no history yet) mean no hinge
    for those rows, so ``L^smooth = 0`` at ``k = 0``. ``mode="seq"`` compares each row's mean entropy to the corridor instead of
    each token. ``bonus=False`` drops ``L^H`` and keeps only the hinge (ALGORITHMS-MORE C14);
    ``step < smooth_start_step`` holds the hinge off (6.3 C3 option). The averages run over the
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
            row_h = turn_entropy(h, m)
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


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: StrategyConfig,
    *,
    entropy: Tensor | None = None,
    traj_ids: IdsLike | None = None,
    turn_reference: Tensor | None = None,
    iteration: int = 0,
    total_iterations: int = 1,
    ref_logprobs: Tensor | None = None,
    generator: torch.Generator | None = None,
    normalizer: float | None = None,
    token_weights: Tensor | None = None,
    keep_mask: Tensor | None = None,
    pg_normalizer: float | None = None,
    exempt: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The on-policy actor loss of ALGORITHMS.md 6.2 step 7, assembled from ``cfg`` (a
    :class:`strategy_config.StrategyConfig`):

        surrogate  KL-Cov if enabled; else AEPO's sg-clip surrogate if ``aepo.sg_clip`` (else
                   PPO), times the Clip-Cov mask kappa (tokens not at a clip bound) if enabled
        + EPO      -lambda (L^H - beta_k alpha L^smooth) against ``turn_reference`` [B]
        - plain entropy bonus ``policy_loss.entropy_coef * agg(H)``      (default 0)
        + ``policy_loss.kl_coef * agg(KL_k3(pi, pi_ref))``               (default 0, C12)

    ``advantages`` are the final token advantages (:func:`advantages.compose_advantages`).
    ``entropy [B, L]`` is this forward pass's token entropy with gradient (needed by EPO, the
    entropy bonus and the high-entropy sg restriction); ``traj_ids`` one id per row (EPO);
    ``iteration`` / ``total_iterations`` drive ``beta_k`` (``epo.schedule_steps`` overrides
    ``K``). ``normalizer`` defaults to ``policy_loss.agg_max_len`` in
    ``seq-mean-token-sum-norm`` mode. Returns the loss and float stats (surrogate stats,
    ``clip_cov_frac``, the ``epo/*`` metrics, ``loss/pg``, ``loss/epo``, ``loss/kl``).

    Per-token additions of ALGORITHMS-MORE.md 13.2 step 8 (all optional, all ``[B, L]``):
    ``token_weights`` (detached, e.g. STEER's ``w`` and ArbEPO's ``reg_token_weight``) multiply the
    per-token policy-gradient loss, together with Clip-Cov's ``kappa``; ``keep_mask`` (the EDC
    keep factor) multiplies the mask of the **policy-gradient term only** (``m' = m k``, its
    denominator ``sum m'``; EPO, the entropy bonus and KL keep ``m``, C22), and
    ``pg_normalizer`` then replaces the PG term's denominator (the trainer passes the value that
    makes micro-batches add up to the mini-batch's ``sum m'``). ``exempt`` (bool rows ``[B]`` or
    tokens ``[B, L]``: ArbEPO regularisation samples) are left out of every statistic (Clip-Cov
    covariance and draw, AEPO's high-entropy mean, EPO's trajectory terms, C19) and get no
    Clip-Cov mask and no sg bound: plain dual-clip PPO.
    """
    pl, epo = cfg.policy_loss, cfg.epo
    if normalizer is None and pl.agg == "seq-mean-token-sum-norm":
        normalizer = pl.agg_max_len
    stat_mask = mask if exempt is None else _masked(mask, ~token_flags(exempt, mask.bool()))
    pg_mask = mask if keep_mask is None else mask * keep_mask.detach().to(mask.dtype)
    pg_norm = normalizer if pg_normalizer is None else pg_normalizer
    needs_entropy = (
        epo.enabled
        or pl.entropy_coef > 0
        or (
            cfg.aepo.enabled
            and cfg.aepo.sg_clip
            and cfg.aepo.sg_clip_high_entropy_only
            and not cfg.kl_cov.enabled
        )
    )
    if needs_entropy and entropy is None:
        raise ValueError("policy_loss: the enabled strategies need the token entropy of this forward pass")
    stats: Stats = {}
    if cfg.kl_cov.enabled:
        loss, stats = kl_cov_loss(
            logprobs, old_logprobs, advantages, pg_mask, cfg.kl_cov.ratio, cfg.kl_cov.kl_coef, pl.agg, pg_norm
        )
    else:
        weights = None if token_weights is None else token_weights.detach()
        if cfg.clip_cov.enabled:
            cc = cfg.clip_cov
            kappa, stats = clip_cov_mask(
                logprobs,
                old_logprobs,
                advantages,
                pg_mask * stat_mask,
                cc.ratio,
                cc.cov_lb,
                cc.cov_ub,
                pl.clip_low,
                pl.clip_high,
                generator,
            )
            weights = kappa if weights is None else kappa * weights
        common = dict(
            clip_low=pl.clip_low,
            clip_high=pl.clip_high,
            dual_clip=pl.dual_clip,
            agg=pl.agg,
            token_weights=weights,
            normalizer=pg_norm,
        )
        if cfg.aepo.enabled and cfg.aepo.sg_clip:
            loss, pg_stats = sg_clipped_surrogate(
                logprobs,
                old_logprobs,
                advantages,
                pg_mask,
                entropy=entropy,
                only_high_entropy=cfg.aepo.sg_clip_high_entropy_only,
                exempt=exempt,
                **common,
            )
        else:
            loss, pg_stats = clipped_surrogate(logprobs, old_logprobs, advantages, pg_mask, **common)
        stats.update(pg_stats)
    stats["loss/pg"] = loss.detach()
    if epo.enabled:
        if traj_ids is None:
            raise ValueError("policy_loss: EPO needs traj_ids")
        term, epo_stats = epo_loss_terms(
            entropy,
            stat_mask,
            traj_ids,
            turn_reference,
            iteration,
            epo.schedule_steps or total_iterations,
            entropy_coef=epo.entropy_coef,
            kappa_l=epo.kappa_l,
            kappa_r=epo.kappa_r,
            alpha=epo.alpha,
            gamma=epo.gamma,
            mode=epo.mode,
            bonus=epo.entropy_bonus,
            smooth_start_step=epo.smooth_start_step,
        )
        loss = loss + term
        stats.update(epo_stats)
        stats["loss/epo"] = term.detach()
    if pl.entropy_coef > 0:
        loss = loss - pl.entropy_coef * aggregate(entropy, mask, pl.agg, normalizer)
    if pl.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("policy_loss: policy_loss.kl_coef > 0 needs ref_logprobs")
        kl = aggregate(kl_k3(logprobs, ref_logprobs, mask), mask, pl.agg, normalizer)
        loss = loss + pl.kl_coef * kl
        stats["loss/kl"] = kl.detach()
    return loss, {key: float(value) for key, value in stats.items()}


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
