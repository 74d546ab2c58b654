"""One iteration's policy update, in the order of ALGORITHMS.md 6.2.

    rewards (outcome + SPEAR tool reward) -> old log-probs and entropies (pi_old)
    -> base advantage (GRPO / GiGPO) -> EMPG -> AEPO token factor
    -> SPEAR buffer write (sign of the *base* advantage)
    -> on-policy mini-batches: PPO or AEPO sg-clip surrogate, Clip-Cov / KL-Cov, EPO term, KL
    -> replay mini-batches (SPEAR SIL) -> EPO history update from on-policy turns

Each method's math lives in ``advantages.py`` / ``losses.py`` / ``replay.py`` as pure
functions; this module only gathers their inputs and adds their outputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentropy.training import advantages as adv
from agentropy.training import losses
from agentropy.training.entropy import EntropyHistory
from agentropy.training.policy import PackedBatch, pack, reply_logprobs_and_entropy
from agentropy.training.replay import BaselineBuffer, ReplayBuffer, sil_loss, sil_weight, tool_call_reward
from agentropy.training.trajectory import Trajectory


@dataclass
class UpdateState:
    """What the update carries from one iteration to the next (saved in checkpoints)."""

    entropy_history: EntropyHistory
    replay: ReplayBuffer | None = None
    baseline: BaselineBuffer | None = None
    counters: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Any) -> UpdateState:
        spear = cfg.strategy.spear
        replay = ReplayBuffer.from_config(spear) if spear.enabled else None
        baseline = BaselineBuffer(max_size=spear.baseline_buffer_size) if spear.enabled else None
        return cls(EntropyHistory(), replay, baseline)

    def state_dict(self) -> dict[str, Any]:
        return {
            "entropy_history": self.entropy_history.state_dict(),
            "replay": self.replay.state_dict() if self.replay is not None else None,
            "baseline": self.baseline.state_dict() if self.baseline is not None else None,
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entropy_history.load_state_dict(state["entropy_history"])
        if self.replay is not None and state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"])
        if self.baseline is not None and state.get("baseline") is not None:
            self.baseline.load_state_dict(state["baseline"])
        self.counters = dict(state.get("counters", {}))


@dataclass
class StepSamples:
    """All on-policy step samples of an iteration, aligned row by row."""

    batch: PackedBatch
    behaviour_logprobs: torch.Tensor  # [N, R] as sampled by the backend
    group_ids: list[str]
    traj_ids: list[str]
    turns: list[int]
    anchors: list[str]
    step_rewards: list[float]
    returns: list[float]  # shaped episode return R of the sample's trajectory
    outcome: list[float]  # R_out, the episode return without SPEAR's tool reward
    step_keys: list[tuple[str, int]]  # (source trajectory, turn): a branch's copied prefix keeps its parent's key
    pairs: list[tuple[list[int], list[int]]]  # (prompt ids, reply ids) per row, for the replay buffer


def gather_samples(trajectories: list[Trajectory], pad_id: int, tool_bonus: dict[str, float]) -> StepSamples:
    rows = [(t, s) for t in trajectories if t.kind != "probe" for s in t.steps]
    batch = pack([s.prompt_ids for _, s in rows], [s.response_ids for _, s in rows], pad_id)
    r = batch.reply_width
    behaviour = torch.zeros((len(rows), r))
    for i, (_, s) in enumerate(rows):
        if s.logprobs:
            behaviour[i, : len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
    return StepSamples(
        batch=batch,
        behaviour_logprobs=behaviour,
        group_ids=[t.group_id for t, _ in rows],
        traj_ids=[t.traj_id for t, _ in rows],
        turns=[s.turn for _, s in rows],
        anchors=[s.anchor_obs for _, s in rows],
        step_rewards=[float(s.reward) for _, s in rows],
        returns=[float(t.episode_return) + tool_bonus.get(t.traj_id, 0.0) for t, _ in rows],
        outcome=[float(t.episode_return) for t, _ in rows],
        step_keys=[(str(s.info.get("prefix_of", t.traj_id)), s.turn) for t, s in rows],
        pairs=[(list(s.prompt_ids), list(s.response_ids)) for _, s in rows],
    )


@torch.no_grad()
def recompute(model: torch.nn.Module, batch: PackedBatch, micro: int, temperature: float,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_old log-probs and entropies of every reply token, micro-batch by micro-batch."""
    n, r = batch.response_ids.shape
    logprobs, entropy = torch.zeros((n, r)), torch.zeros((n, r))
    for start in range(0, n, micro):
        index = list(range(start, min(n, start + micro)))
        sub = batch.select(index).to(device)
        lp, h = reply_logprobs_and_entropy(model, sub, temperature)
        logprobs[index, : lp.shape[1]] = lp.float().cpu()
        entropy[index, : h.shape[1]] = h.float().cpu()
    return logprobs, entropy


def _mini_batches(n: int, count: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    count = max(1, count)
    return [order[i::count] for i in range(count)]


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
) -> dict[str, float]:
    """Update ``model`` on one iteration's trajectories; return metrics."""
    strategy, train = cfg.strategy, cfg.train
    device = accelerator.device
    temperature = max(cfg.rollout.temperature, 1e-6) if cfg.rollout.temperature > 0 else 1.0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    metrics: dict[str, float] = {}

    # 1. Rewards: SPEAR's cosine-decayed tool-call reward on top of the outcome.
    tool_bonus: dict[str, float] = {}
    spear = strategy.spear
    if spear.enabled and spear.tool_reward != "none":
        for t in trajectories:
            tool_bonus[t.traj_id] = tool_call_reward(
                t.length, iteration, spear.tool_reward_steps, spear.tool_reward,
                spear.tool_reward_per_call, spear.tool_reward_cap)
        metrics["spear/tool_reward_mean"] = float(np.mean(list(tool_bonus.values()))) if tool_bonus else 0.0
    samples = gather_samples(trajectories, pad_id, tool_bonus)
    n = samples.batch.response_ids.shape[0]
    if n == 0:
        return {"loss": 0.0, "samples": 0.0}
    mask = samples.batch.response_mask.float()

    # 2. pi_old: recomputed with full-vocabulary entropy at the sampling temperature.
    t0 = time.perf_counter()
    model.eval()
    old_logprobs, old_entropy = recompute(policy, samples.batch, train.micro_batch_size, temperature, device)
    metrics["behaviour_logprob_gap"] = float(((old_logprobs - samples.behaviour_logprobs).abs() * mask).max())

    # 3-5. Advantages in the fixed order base -> EMPG -> AEPO factor (C11).
    result = adv.compose_advantages(
        episode_returns=samples.returns, group_ids=samples.group_ids, traj_ids=samples.traj_ids,
        turn_indices=samples.turns, entropy=old_entropy, mask=mask, cfg=strategy,
        anchor_obs=samples.anchors, step_rewards=samples.step_rewards, step_keys=samples.step_keys,
    )
    token_adv = result.token_advantages.float()
    metrics.update(result.metrics)

    # EPO reference for each sample's turn, from the history of previous iterations (paper: m < k).
    reference = state.entropy_history.reference(samples.turns)

    # 6. SPEAR buffer write uses the sign of the base advantage.
    if state.replay is not None:
        state.replay.add(samples.pairs, [old_logprobs[i, : len(r)].clone() for i, (_, r) in enumerate(samples.pairs)],
                         samples.returns, result.base, iteration)

    # 7. On-policy mini-batches.
    generator = torch.Generator().manual_seed(cfg.run.seed * 7919 + iteration)
    model.train()
    clip_stats: list[dict[str, float]] = []
    grad_norms: list[float] = []
    losses_seen: list[float] = []
    tokens = int(mask.sum().item())
    for _epoch in range(train.ppo_epochs):
        for rows in _mini_batches(n, train.mini_batches, generator):
            if not rows:
                continue
            total_tokens = float(mask[rows].sum().clamp(min=1.0))
            optimizer.zero_grad(set_to_none=True)
            for start in range(0, len(rows), train.micro_batch_size):
                idx = rows[start : start + train.micro_batch_size]
                sub = samples.batch.select(idx).to(device)
                width = sub.reply_width
                logprobs, entropy = reply_logprobs_and_entropy(model, sub, temperature)
                m = sub.response_mask.float()
                loss, stats = losses.policy_loss(
                    logprobs, old_logprobs[idx, :width].to(device), token_adv[idx, :width].to(device), m,
                    strategy, entropy=entropy, traj_ids=[samples.traj_ids[i] for i in idx],
                    turn_reference=reference[idx].to(device), iteration=iteration,
                    total_iterations=train.iterations, generator=generator,
                )
                weight = _micro_weight(strategy.policy_loss.agg, m, len(idx), total_tokens, len(rows))
                scaled = loss * weight
                if not torch.isfinite(scaled):
                    from agentropy.training.trainer import NonFiniteLossError

                    raise NonFiniteLossError(f"non-finite loss {loss.item()} at iteration {iteration}")
                accelerator.backward(scaled)
                losses_seen.append(loss.item() * weight)
                clip_stats.append(stats)
            norm = accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
            norm = float(norm)
            if not math.isfinite(norm):
                from agentropy.training.trainer import NonFiniteLossError

                raise NonFiniteLossError(f"non-finite gradient norm at iteration {iteration}")
            grad_norms.append(norm)
            optimizer.step()

    # 8. Replay mini-batches (SPEAR SIL), with their own optimizer steps.
    if state.replay is not None:
        metrics.update(_replay_update(model, optimizer, accelerator, state, strategy, iteration, temperature,
                                      train, samples, device, generator, pad_id))

    # 9. EPO history from on-policy turn entropies only.
    has_tokens = mask.sum(1) > 0
    state.entropy_history.update_from_tokens(old_entropy, mask, samples.turns)
    elapsed = time.perf_counter() - t0
    model.eval()
    metrics.update(_mean_stats(clip_stats))
    metrics.update({
        "loss": float(sum(losses_seen) / max(1, train.ppo_epochs * max(1, train.mini_batches))),
        "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
        "samples": float(n),
        "train_tokens": float(tokens),
        "learner_tokens_per_s": tokens * train.ppo_epochs / max(elapsed, 1e-9),
        "epo/reference_mean": float(reference[has_tokens].mean()) if bool(has_tokens.any()) else 0.0,
    })
    return metrics


def _replay_update(model, optimizer, accelerator, state, strategy, iteration, temperature, train,
                   samples, device, generator, pad_id) -> dict[str, float]:
    """SPEAR 5(c) steps 4-6: recalibrate against b50, replay with SIL, own optimizer steps."""
    spear, pl = strategy.spear, strategy.policy_loss
    state.baseline.add_groups(samples.group_ids, samples.returns, samples.traj_ids)
    weight = sil_weight(iteration, spear.sil_coef, spear.sil_ramp_steps)
    out = {"spear/buffer_size": float(len(state.replay)), "spear/sil_weight": weight}
    triggered = state.replay.triggered(state.baseline)
    out["spear/triggered"] = float(triggered)
    if not triggered:
        return out
    draw = state.replay.sample(state.baseline, generator)
    out.update(draw.metrics)
    if not draw.items:
        return out
    batch = pack([it.sample[0] for it in draw.items], [it.sample[1] for it in draw.items], pad_id)
    behaviour = torch.zeros(batch.response_ids.shape)
    for i, item in enumerate(draw.items):
        lp = torch.as_tensor(item.behaviour_logprobs, dtype=torch.float32)
        behaviour[i, : lp.numel()] = lp
    advantages = torch.tensor(draw.advantages, dtype=torch.float32)
    out["spear/replay_samples"] = float(len(draw.items))
    for chunk in _mini_batches(len(draw.items), train.mini_batches, generator):
        if not chunk:
            continue
        optimizer.zero_grad(set_to_none=True)
        total_tokens = float(batch.response_mask[chunk].sum().clamp(min=1))
        for start in range(0, len(chunk), train.micro_batch_size):
            idx = chunk[start : start + train.micro_batch_size]
            sub = batch.select(idx).to(device)
            logprobs, _ = reply_logprobs_and_entropy(model, sub, temperature)
            m = sub.response_mask.float()
            width = sub.reply_width
            token_adv = advantages[idx].to(device).unsqueeze(-1) * m
            loss, _ = sil_loss(
                logprobs, behaviour[idx, :width].to(device), token_adv, m, pl.clip_low, pl.clip_high,
                pl.dual_clip, pl.agg, clip_cov=spear.replay_clip_cov, clip_cov_ratio=spear.replay_clip_cov_ratio,
                clip_cov_lb=spear.replay_clip_cov_lb, clip_cov_ub=spear.replay_clip_cov_ub, generator=generator,
            )
            accelerator.backward(weight * loss * _micro_weight(pl.agg, m, len(idx), total_tokens, len(chunk)))
        accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
    return out


def _micro_weight(agg: str, mask: torch.Tensor, rows: int, mini_tokens: float, mini_rows: int) -> float:
    """Share of a micro-batch in its mini-batch, so summed micro losses equal the mini-batch
    loss: by tokens for ``token-mean``, by sequences for the sequence-level modes."""
    if agg == "token-mean":
        return float(mask.sum()) / mini_tokens
    return rows / max(mini_rows, 1)


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for s in stats for k in s}
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in sorted(keys)}
