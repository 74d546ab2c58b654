"""The entropy methods, one module each, and where they are composed.

Each method module (``epo``, ``empg``, ``aepo`` + ``aepo_rollout``, ``spear``, ``clip_cov``,
``steer``, ``siren``, ``clip_bv``, ``arbepo``, ``canon``) opens with its formula, its paper
and the ways the default departs from the authors' code. The base they act on stays in
:mod:`agentropy.training.advantages` (GRPO, GiGPO) and :mod:`agentropy.training.losses`
(the PPO surrogate).

This module composes the methods. :data:`METHODS` lists them in the order they act (ArbEPO's
controller and regularisation batch, AEPO, SPEAR's reward, CANON's base advantage, EMPG, the
keep-mask of Clip_B / Clip_V, the loss-side methods); :func:`enabled_methods` is what the
update runs, step by step, through each one's hooks (:class:`~agentropy.training.update_hooks.Method`).
Adding a method is one new module with its ``METHOD`` and one line in :data:`METHODS`.

Where several methods act on the same quantity, their composition is written out here:

- :func:`compose_advantages`: base (GRPO / GiGPO, or CANON in place of the group baseline)
  -> EMPG (with its zero mean) -> AEPO's token factor, never renormalised afterwards (EMPG
  acts across the steps of the batch, AEPO within a step, so applying them in this order keeps
  each one's statistics as its paper defines them);
- :func:`policy_loss`: the surrogate (KL-Cov, or AEPO's sg-clip or PPO, times Clip-Cov's
  mask and the per-token weights) + EPO's term - the plain entropy bonus + KL.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from agentropy.training.advantages import FloatsLike, _as_vector, _per_trajectory_grpo, gigpo, grpo
from agentropy.training.entropy import IdsLike, row_mean_entropy
from agentropy.training.losses import Stats, _masked, aggregate, clipped_surrogate, kl_k3, token_flags
from agentropy.training.methods import aepo, arbepo, canon, clip_bv, clip_cov, empg, epo, siren, spear, steer
from agentropy.training.methods.aepo import aepo_factor, sg_clipped_surrogate
from agentropy.training.methods.canon import canon_advantages
from agentropy.training.methods.clip_cov import clip_cov_mask, kl_cov_loss
from agentropy.training.methods.empg import empg_modulate
from agentropy.training.methods.epo import epo_loss_terms
from agentropy.training.update_hooks import Method

if TYPE_CHECKING:
    from agentropy.training.strategy_config import StrategyConfig


#: Every method, in the order its hooks run within each step of the update.
METHODS: tuple[Method, ...] = (
    arbepo.METHOD,
    aepo.METHOD,
    spear.METHOD,
    canon.METHOD,
    empg.METHOD,
    clip_bv.CLIP_B,
    clip_bv.CLIP_V,
    clip_cov.CLIP_COV,
    clip_cov.KL_COV,
    steer.METHOD,
    epo.METHOD,
    siren.METHOD,
)


def enabled_methods(strategy: StrategyConfig) -> list[Method]:
    """The methods ``strategy`` turns on, in :data:`METHODS` order."""
    return [method for method in METHODS if method.enabled(strategy)]


def create_states(strategy: StrategyConfig) -> dict[str, object]:
    """Each method's state by key (``None`` for a method that is off), for ``UpdateState``."""
    states: dict[str, object] = {}
    for method in METHODS:
        if method.create_state is None:
            continue
        if method.enabled(strategy):
            states.update(method.create_state(strategy))
        else:
            states.update(dict.fromkeys(method.state_keys))
    return states



@dataclass
class AdvantageResult:
    """What :func:`compose_advantages` hands the trainer.

    ``token_advantages [B, L]`` enter the loss; ``base [B]`` is the plain base advantage (its
    sign decides SPEAR's buffer entry); ``step [B]`` is the step advantage after
    EMPG (equal to ``base`` when EMPG is off).
    """

    token_advantages: Tensor
    base: Tensor
    step: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    plain_base: Tensor | None = None  # GRPO/GiGPO before CANON replaced it: the sign SPEAR's buffer tests

    @property
    def buffer_sign_source(self) -> Tensor:
        """The advantage whose sign decides SPEAR's buffer entry: the plain group baseline
        ``R_i - mean_G R`` (with CANON on, not CANON's advantage, docs/methods/canon.md)."""
        return self.base if self.plain_base is None else self.plain_base


def compose_advantages(
    *,
    episode_returns: FloatsLike,
    group_ids: IdsLike,
    traj_ids: IdsLike,
    turn_indices: Sequence[int] | Tensor,
    entropy: Tensor,
    mask: Tensor,
    cfg: StrategyConfig,
    anchor_obs: Sequence[Hashable] | None = None,
    step_rewards: FloatsLike | None = None,
    step_keys: Sequence[Hashable] | None = None,
    iteration: int = 0,
) -> AdvantageResult:
    """Base -> EMPG (incl. zero mean) -> AEPO token factor, in the fixed order of
    docs/methods/README.md; nothing is renormalised after the AEPO factor.

    Inputs are per step-sample (``B`` rows): episode returns (the shaped ``R`` of the
    trajectory), ids, turn indices, and for GiGPO the anchor observations and per-step env
    rewards. ``entropy [B, L]`` is the old policy's full-vocabulary token entropy from the
    recompute pass, ``mask [B, L]`` the reply-token mask. ``cfg`` is the
    :class:`strategy_config.StrategyConfig`: ``cfg.advantage`` picks the base, and the EMPG and
    AEPO (``entropy_advantage``) blocks act when enabled. EMPG uses the turn means of
    ``entropy``; AEPO's factor uses its token z-scores (``aepo.z_scope``; "batch" here means the
    whole rollout batch). For GiGPO with AEPO branches, ``step_keys`` names the generated step
    each sample is (a branch's copied prefix step carries its origin's key, e.g.
    ``(step.info.get("prefix_of", traj_id), turn)``) and ``advantage.shared_prefix`` says how
    copies count.

    CANON (``cfg.canon``, docs/methods/canon.md), when enabled, is the base: it
    replaces the GRPO group baseline, or GiGPO's episode term ``A^E`` only (``A = A^CANON +
    omega A^S``); ``iteration`` drives its ``mu`` schedule. EMPG and the AEPO factor then
    act on it unchanged. ``plain_base`` keeps the base it replaced (SPEAR's buffer sign). Pass
    main samples only: ArbEPO regularisation rows bypass all of this.
    """
    advantage, empg, aepo = cfg.advantage, cfg.empg, cfg.aepo
    canon = getattr(cfg, "canon", None)
    plain_base: Tensor | None = None
    n = entropy.shape[0]
    if advantage.estimator == "grpo":
        returns = _as_vector(episode_returns, "episode_returns")
        if advantage.episode_stats == "per_trajectory":
            base = _per_trajectory_grpo(returns, group_ids, traj_ids, advantage.norm_by_std, advantage.eps)
        else:
            base = grpo(returns, group_ids, norm_by_std=advantage.norm_by_std, eps=advantage.eps).double()
        metrics: dict[str, float] = {}
    elif advantage.estimator == "gigpo":
        if anchor_obs is None or step_rewards is None:
            raise ValueError("estimator 'gigpo' needs anchor_obs and step_rewards")
        result = gigpo(
            _as_vector(episode_returns, "episode_returns"),
            group_ids,
            traj_ids,
            turn_indices,
            anchor_obs,
            step_rewards,
            gamma=advantage.gamma,
            omega=advantage.omega,
            mode=advantage.mode,
            eps=advantage.eps,
            episode_stats=advantage.episode_stats,
            step_keys=step_keys,
            shared_prefix=advantage.shared_prefix,
        )
        base = result.advantages.double()
        metrics = dict(result.metrics)
    else:
        raise ValueError(f"advantage.estimator must be 'grpo' or 'gigpo', got {advantage.estimator!r}")
    if base.numel() != n:
        raise ValueError(f"episode_returns has {base.numel()} entries for {n} rows of entropy")
    if canon is not None and canon.enabled:
        canon_adv, canon_metrics = canon_advantages(
            _as_vector(episode_returns, "episode_returns"), entropy.detach(), mask, group_ids, traj_ids,
            canon, step=iteration,
        )
        plain_base = base
        base = canon_adv.double()
        if advantage.estimator == "gigpo":
            base = base + advantage.omega * result.step.double()
        metrics.update(canon_metrics)
    valid = mask.bool().any(-1).cpu()
    metrics["adv/base_mean"] = float(base[valid].mean()) if valid.any() else 0.0
    metrics["adv/base_abs_mean"] = float(base[valid].abs().mean()) if valid.any() else 0.0

    step = base
    if empg.enabled:
        step_h = row_mean_entropy(entropy.detach(), mask).double().cpu()
        step, empg_metrics = empg_modulate(
            step_h,
            base,
            traj_ids,
            turn_indices,
            k=empg.k,
            k_prime=empg.k_prime,
            zeta=empg.zeta,
            eps=empg.eps,
            valid=valid,
        )
        step = step.double()
        metrics.update(empg_metrics)

    step_dev = step.to(device=entropy.device, dtype=entropy.dtype)
    tokens = torch.where(
        mask.bool(), step_dev.unsqueeze(-1), torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    )
    if aepo.enabled and aepo.entropy_advantage:
        factor = aepo_factor(entropy, mask, aepo.adv_weight, aepo.z_scope)
        tokens = tokens * factor
        fm = factor[mask.bool()]
        if fm.numel():
            metrics.update(
                {
                    "aepo/factor_min": float(fm.min()),
                    "aepo/factor_max": float(fm.max()),
                    "aepo/factor_neg_frac": float((fm < 0).double().mean()),
                }
            )
    dtype = entropy.dtype
    return AdvantageResult(token_advantages=tokens, base=base.to(dtype), step=step.to(dtype), metrics=metrics,
                           plain_base=None if plain_base is None else plain_base.to(dtype))


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
    """The on-policy actor loss (step 7 of ``docs/methods/README.md``), assembled from ``cfg`` (a
    :class:`strategy_config.StrategyConfig`):

        surrogate  KL-Cov if enabled; else AEPO's sg-clip surrogate if ``aepo.sg_clip`` (else
                   PPO), times the Clip-Cov mask kappa (tokens not at a clip bound) if enabled
        + EPO      -lambda (L^H - beta_k alpha L^smooth) against ``turn_reference`` [B]
        - plain entropy bonus ``policy_loss.entropy_coef * agg(H)``      (default 0)
        + ``policy_loss.kl_coef * agg(KL_k3(pi, pi_ref))``               (default 0)

    ``advantages`` are the final token advantages (:func:`advantages.compose_advantages`).
    ``entropy [B, L]`` is this forward pass's token entropy with gradient (needed by EPO, the
    entropy bonus and the high-entropy sg restriction); ``traj_ids`` one id per row (EPO);
    ``iteration`` / ``total_iterations`` drive ``beta_k`` (``epo.schedule_steps`` overrides
    ``K``). ``normalizer`` defaults to ``policy_loss.agg_max_len`` in
    ``seq-mean-token-sum-norm`` mode. Returns the loss and float stats (surrogate stats,
    ``clip_cov_frac``, the ``epo/*`` metrics, ``loss/pg``, ``loss/epo``, ``loss/kl``).

    Per-token additions of docs/methods/README.md (all optional, all ``[B, L]``):
    ``token_weights`` (detached, e.g. STEER's ``w`` and ArbEPO's ``reg_token_weight``) multiply the
    per-token policy-gradient loss, together with Clip-Cov's ``kappa``; ``keep_mask`` (the EDC
    keep factor) multiplies the mask of the **policy-gradient term only** (``m' = m k``, its
    denominator ``sum m'``; EPO, the entropy bonus and KL keep ``m``), and
    ``pg_normalizer`` then replaces the PG term's denominator (the trainer passes the value that
    makes micro-batches add up to the mini-batch's ``sum m'``). ``exempt`` (bool rows ``[B]`` or
    tokens ``[B, L]``: ArbEPO regularisation samples) are left out of every statistic (Clip-Cov
    covariance and draw, AEPO's high-entropy mean, EPO's trajectory terms) and get no
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
