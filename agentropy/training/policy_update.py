"""One iteration's policy update, as numbered steps that name no method.

Each step calls the hooks of the enabled methods (:func:`agentropy.training.methods.enabled_methods`,
in their fixed order; :class:`agentropy.training.update_hooks.Method` lists the hooks):

    1. the batch: the on-policy episodes, which a method may change (``select_batch``)
    2. rewards: the episode return plus any method's bonus (``episode_bonus``)
    3. step samples; rows that bypass every modulation and statistic (``exempt_rows``)
    4. pi_old: recomputed at the sampling temperature (or the sampler's own numbers when they
       are exact), with the full-distribution values methods ask for (``pi_old_extra``)
    5. advantages of the main rows: :func:`agentropy.training.methods.compose_advantages`
    6. the keep-mask of the policy-gradient term (``keep_mask``); then ``after_advantages``
    7. on-policy mini-batches: ``mini_batch_start``; per micro-batch the actor loss
       (:func:`agentropy.training.methods.policy_loss`) with the methods' ``token_weights``,
       plus any ``extra_loss``; ``micro_batch_end``
    8. extra optimizer steps (``after_on_policy``)
    9. state and metrics: the per-turn entropy history every run keeps; ``finish``

Exempt rows (e.g. episodes sampled at another temperature for a controller) are left out of
the advantage pipeline and of every batch statistic; the loss gets them as ``exempt`` rows.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentropy.nonfinite import NonFiniteError, require_finite
from agentropy.training import methods
from agentropy.training.entropy import EntropyHistory
from agentropy.training.minibatch import guarded_step, micro_batches, micro_weight, mini_batches, take
from agentropy.training.policy import (
    PackedBatch,
    distinct_reply_logprobs_and_entropy,
    reply_logprobs_and_entropy,
    row_keys,
)
from agentropy.training.snapshot import TrainingSnapshot
from agentropy.training.step_samples import StepSamples, gather_samples
from agentropy.training.trajectory import Trajectory
from agentropy.training.update_hooks import MicroBatch, MiniBatch, UpdateContext


@dataclass
class UpdateState:
    """What the update carries from one iteration to the next (saved in checkpoints): the
    per-turn entropy history and each method's state by key (``None`` when it is off)."""

    entropy_history: EntropyHistory
    parts: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Any) -> UpdateState:
        return cls(EntropyHistory(), methods.create_states(cfg.strategy))

    def __getattr__(self, name: str) -> Any:
        parts = self.__dict__.get("parts")
        if parts is not None and name in parts:
            return parts[name]
        raise AttributeError(name)

    def state_dict(self) -> dict[str, Any]:
        return {
            "entropy_history": self.entropy_history.state_dict(),
            **{key: None if part is None else part.state_dict() for key, part in self.parts.items()},
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entropy_history.load_state_dict(state["entropy_history"])
        for key, part in self.parts.items():
            if part is not None and state.get(key) is not None:
                part.load_state_dict(state[key])
        self.counters = dict(state.get("counters", {}))


@dataclass
class Recomputed:
    """The pi_old pass: ``[N, R]`` tensors on the CPU; ``extra`` holds what methods asked for."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def recompute_old(model: torch.nn.Module, batch: PackedBatch, micro: int, temperature: float,
                  device: torch.device, extras: tuple[Any, ...] = ()) -> Recomputed:
    """pi_old log-probs and entropies of every reply token, micro-batch by micro-batch. Each of
    ``extras`` maps ``(logits, mask)`` to ``{name: [B, L]}`` values of the full distribution;
    only then are the reply logits kept, one micro-batch at a time."""
    n, r = batch.response_ids.shape
    out = Recomputed(torch.zeros((n, r)), torch.zeros((n, r)))
    want_logits = bool(extras)
    for start in range(0, n, micro):
        index = list(range(start, min(n, start + micro)))
        sub = batch.select(index).to(device)
        res = reply_logprobs_and_entropy(model, sub, temperature, return_logits=want_logits)
        lp, h = res[0], res[1]
        w = lp.shape[1]
        out.logprobs[index, :w] = lp.float().cpu()
        out.entropy[index, :w] = h.float().cpu()
        if want_logits:
            logits, m = res[2], sub.response_mask.float()
            for extra in extras:
                for name, value in extra(logits, m).items():
                    if name not in out.extra:
                        out.extra[name] = torch.zeros((n, r))
                    out.extra[name][index, :w] = value.float().cpu()
    return out


def _sampler_numbers_are_pi_old(samples: StepSamples, train: Any, rollout_temperature: float,
                                needs_distribution: bool) -> bool:
    """Whether the backend's per-token numbers can stand for the pi_old pass: exact entropies
    (not a top-k estimate), every row sampled at the rollout temperature (a method's extra
    episodes may not be), and no method that needs pi_old's full distribution."""
    if train.recompute_old != "auto" or samples.entropy_is_estimate or needs_distribution:
        return False
    return samples.sampling_temperatures <= {float(rollout_temperature)}


def _without_rows(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.where(rows.unsqueeze(-1), torch.zeros_like(mask), mask)


def _rolled_back_on_nonfinite(update: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
    """Non-finite values never reach the weights: every loss and gradient norm is checked before
    its optimizer step, and when an iteration steps more than once (several mini-batches or
    epochs, a method's extra steps) and a later step fails, the weights, the optimizer and the
    update state go back to where the iteration started before the error propagates."""

    @functools.wraps(update)
    def guarded(model, policy, optimizer, accelerator, tokenizer, trajectories, cfg, iteration, state,
                regularization=None):
        steps = cfg.train.ppo_epochs * max(1, cfg.train.mini_batches)
        several = steps > 1 or any(m.after_on_policy is not None for m in methods.enabled_methods(cfg.strategy))
        snapshot = TrainingSnapshot.take(policy, optimizer) if several else None
        state_before = copy.deepcopy(state.state_dict()) if several else None
        try:
            return update(model, policy, optimizer, accelerator, tokenizer, trajectories, cfg, iteration, state,
                          regularization)
        except NonFiniteError:
            if snapshot is not None:
                snapshot.restore(policy, optimizer)
                state.load_state_dict(state_before)
            raise

    return guarded


@_rolled_back_on_nonfinite
def iteration_update(
    model: torch.nn.Module,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Any,
    tokenizer: Any,
    trajectories: list[Trajectory],
    cfg: Any,
    iteration: int,
    state: UpdateState,
    regularization: list[Trajectory] | None = None,
) -> dict[str, float]:
    """Update ``model`` on one iteration's trajectories; return metrics.

    ``regularization``: extra episodes the trainer collected for a method (sampled at another
    temperature), handed to the methods' ``select_batch`` hooks. A NaN/inf loss or gradient norm
    raises :class:`~agentropy.nonfinite.NonFiniteError`, with everything as at the iteration start.
    """
    train = cfg.train
    active = methods.enabled_methods(cfg.strategy)

    def hooks(name: str) -> list[Any]:
        return [getattr(m, name) for m in active if getattr(m, name) is not None]

    temperature = max(cfg.rollout.temperature, 1e-6) if cfg.rollout.temperature > 0 else 1.0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx = UpdateContext(model, policy, optimizer, accelerator, cfg, iteration, state, accelerator.device,
                        temperature, pad_id)
    metrics, device = ctx.metrics, ctx.device

    # 1. The batch of episodes.
    ctx.trajectories = [t for t in trajectories if t.kind != "probe"]
    for select in hooks("select_batch"):
        ctx.trajectories = select(ctx, ctx.trajectories, regularization)

    # 2. Rewards: the outcome plus any method's per-episode bonus.
    bonus: dict[str, float] = {}
    for add in hooks("episode_bonus"):
        bonus.update(add(ctx, ctx.trajectories))

    # 3. Step samples, and the rows exempt from every modulation and statistic.
    samples = ctx.samples = gather_samples(ctx.trajectories, pad_id, bonus)
    n = samples.batch.response_ids.shape[0]
    if n == 0:
        return {"loss": 0.0, "samples": 0.0}
    mask = ctx.mask = samples.batch.response_mask.float()
    exempt = torch.zeros(n, dtype=torch.bool)
    for rows_of in hooks("exempt_rows"):
        exempt = exempt | rows_of(ctx, ctx.trajectories)
    ctx.exempt, ctx.has_exempt = exempt, bool(exempt.any())
    ctx.stat_mask = stat_mask = _without_rows(mask, exempt) if ctx.has_exempt else mask
    ctx.main = (~exempt).nonzero().flatten().tolist() if ctx.has_exempt else list(range(n))

    # 4. pi_old, with the full-distribution values the methods ask for.
    t0 = time.perf_counter()
    model.eval()
    extras = tuple(make(cfg.strategy) for make in hooks("pi_old_extra"))
    if _sampler_numbers_are_pi_old(samples, train, cfg.rollout.temperature, bool(extras)):
        # The hf backend reports exact full-vocabulary log-probs and entropies of the weights
        # it sampled with, which are pi_old (tests prove parity with a teacher-forced pass to
        # 1e-4), so the recompute pass would only repeat them.
        ctx.old = Recomputed(samples.behaviour_logprobs.clone(), samples.behaviour_entropy.clone())
        metrics["old_logprobs_recomputed"] = 0.0
    else:
        ctx.old = recompute_old(policy, samples.batch, train.micro_batch_size, temperature, device, extras)
        metrics["old_logprobs_recomputed"] = 1.0
        metrics["behaviour_logprob_gap"] = float(
            ((ctx.old.logprobs - samples.behaviour_logprobs).abs() * stat_mask).max())
    for after in hooks("after_pi_old"):
        after(ctx)

    # 5. Advantages of the main rows, in the fixed order of the composition.
    main = ctx.main
    ctx.advantages = methods.compose_advantages(
        episode_returns=take(samples.returns, main), group_ids=take(samples.group_ids, main),
        traj_ids=take(samples.traj_ids, main), turn_indices=take(samples.turns, main),
        entropy=ctx.old.entropy[main], mask=mask[main], cfg=cfg.strategy,
        anchor_obs=take(samples.anchors, main), step_rewards=take(samples.step_rewards, main),
        step_keys=take(samples.step_keys, main), iteration=iteration,
    )
    ctx.token_adv = torch.zeros_like(mask)
    ctx.token_adv[main] = ctx.advantages.token_advantages.float()
    metrics.update(ctx.advantages.metrics)

    # 6. The keep-mask of the policy-gradient term (from the final advantages), then the rest.
    for keep_of in hooks("keep_mask"):
        keep = keep_of(ctx)
        ctx.keep = keep if ctx.keep is None else ctx.keep * keep
    for after in hooks("after_advantages"):
        after(ctx)
    reference = state.entropy_history.reference(samples.turns)  # per-turn history (iterations m < k)

    # 7. On-policy mini-batches.
    ctx.generator = torch.Generator().manual_seed(cfg.run.seed * 7919 + iteration)
    model.train()
    micro_stats: list[dict[str, float]] = []
    grad_norms: list[float] = []
    losses_seen: list[float] = []
    tokens = int(mask.sum().item())
    agg = cfg.strategy.policy_loss.agg
    needs_logits = any(m.needs_logits for m in active)
    steps, step = train.ppo_epochs * max(1, train.mini_batches), 0
    sorted_rows = train.micro_batch_order in ("by_length", "grouped")
    row_lengths = samples.batch.attention_mask.sum(1) if sorted_rows else None
    row_contents = row_keys(samples.batch) if train.micro_batch_order == "grouped" else None
    forward = distinct_reply_logprobs_and_entropy if train.micro_batch_order == "grouped" else reply_logprobs_and_entropy
    for _epoch in range(train.ppo_epochs):
        for rows in mini_batches(n, train.mini_batches, ctx.generator):
            step += 1
            where = f"rl mini-batch {step}/{steps}"
            if not rows:
                continue
            total_tokens = float(mask[rows].sum().clamp(min=1.0))
            mini = MiniBatch(
                rows, micro_batches(rows, train.micro_batch_size, row_lengths, row_contents),
                total_tokens, float(stat_mask[rows].sum().clamp(min=1.0)),
                float((mask[rows] * ctx.keep[rows]).sum().clamp(min=1.0)) if ctx.keep is not None else total_tokens)
            for start in hooks("mini_batch_start"):
                start(ctx, mini)
            optimizer.zero_grad(set_to_none=True)
            for idx in mini.micro_batches:
                sub = samples.batch.select(idx).to(device)
                width = sub.reply_width
                out = forward(model, sub, temperature, return_logits=needs_logits)
                m_stat = stat_mask[idx, :width].to(device)
                mb = MicroBatch(idx, width, out[0], out[1], out[2] if needs_logits else None,
                                sub.response_mask.float(), ctx.old.logprobs[idx, :width].to(device),
                                ctx.token_adv[idx, :width].to(device), exempt[idx].to(device), m_stat,
                                bool(m_stat.any()))
                weights = None
                for weights_of in hooks("token_weights"):
                    w = weights_of(ctx, mini, mb)
                    if w is not None:
                        weights = w if weights is None else weights * w
                keep_mb, pg_norm = None, None
                if ctx.keep is not None:
                    keep_mb = ctx.keep[idx, :width].to(device)
                    if agg == "token-mean":
                        pg_norm = kept_pg_normalizer(mini.kept_tokens, float(mb.mask.sum().clamp(min=1.0)),
                                                     total_tokens)
                loss, pl_stats = methods.policy_loss(
                    mb.logprobs, mb.old_logprobs, mb.advantages, mb.mask,
                    cfg.strategy, entropy=mb.entropy, traj_ids=[samples.traj_ids[i] for i in idx],
                    turn_reference=reference[idx].to(device), iteration=iteration,
                    total_iterations=train.iterations, generator=ctx.generator,
                    token_weights=weights, keep_mask=keep_mb, pg_normalizer=pg_norm,
                    exempt=mb.exempt if ctx.has_exempt else None,
                )
                mb.stats.update(pl_stats)
                scaled = loss * micro_weight(agg, mb.mask, len(idx), total_tokens, len(rows))
                for extra_of in hooks("extra_loss"):
                    term = extra_of(ctx, mini, mb)
                    if term is not None:
                        scaled = scaled + term
                for end in hooks("micro_batch_end"):
                    end(ctx, mini, mb)
                require_finite(scaled, "loss", where=where, iteration=iteration)
                accelerator.backward(scaled)
                losses_seen.append(scaled.item())
                micro_stats.append(mb.stats)
            grad_norms.append(guarded_step(accelerator, model, optimizer, train.max_grad_norm, where, iteration))

    # 8. Extra optimizer steps of the methods (main rows only).
    for after in hooks("after_on_policy"):
        after(ctx)

    # 9. State and metrics: the per-turn entropy history from on-policy main turns only.
    has_tokens = stat_mask.sum(1) > 0
    state.entropy_history.update_from_tokens(ctx.old.entropy, stat_mask, samples.turns)
    metrics["entropy/history_reference"] = float(reference[has_tokens].mean()) if bool(has_tokens.any()) else 0.0
    for finish in hooks("finish"):
        finish(ctx)
    elapsed = time.perf_counter() - t0
    model.eval()
    metrics.update(_mean_stats(micro_stats))
    metrics.update({
        "loss": float(sum(losses_seen) / max(1, train.ppo_epochs * max(1, train.mini_batches))),
        "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
        "samples": float(n),
        "train_tokens": float(tokens),
        "learner_tokens_per_s": tokens * train.ppo_epochs / max(elapsed, 1e-9),
    })
    return metrics


def kept_pg_normalizer(kept_mini_tokens: float, micro_tokens: float, mini_tokens: float) -> float:
    """Denominator of a micro-batch's policy-gradient term under a keep-mask (token-mean).

    The trainer scales each micro-batch loss by ``micro_tokens / mini_tokens`` (:func:`minibatch.micro_weight`,
    counting ``m``); dividing the micro-batch's ``sum l m'`` by
    ``kept_mini_tokens * micro_tokens / mini_tokens`` makes the scaled terms add up to exactly
    ``sum_mini l m' / sum_mini m'``, the policy-gradient denominator under a keep-mask, whatever
    the micro-batch size."""
    return kept_mini_tokens * micro_tokens / mini_tokens


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for s in stats for k in s}
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in sorted(keys)}
