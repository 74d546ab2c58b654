"""One iteration's policy update, in the order of ALGORITHMS.md 6.2 extended by
ALGORITHMS-MORE.md 13.2.

    ArbEPO selection + splice of the regularisation episodes (the trainer collected them)
    -> rewards (outcome + SPEAR tool reward) -> old log-probs and entropies (pi_old;
       Clip_V's E_q[S]; SIREN's anchor at the first update)
    -> base advantage (GRPO / GiGPO, or CANON) -> EMPG -> AEPO token factor      (main rows)
    -> EDC keep-mask (Clip_B / Clip_V) -> A := 1 on regularisation rows; ArbEPO state
    -> SPEAR buffer write (sign of the *plain* base advantage, main rows)
    -> on-policy mini-batches: PPO or AEPO sg-clip surrogate x Clip-Cov kappa x EDC mask x
       STEER weight, KL-Cov, EPO term, SIREN term, KL
    -> replay mini-batches (SPEAR SIL) -> EPO history update from on-policy main turns

ArbEPO's regularisation rows (sampled at T_k) bypass every advantage and loss modulation and
are left out of every batch statistic (13.3 C19): the advantage pipeline runs on the main rows
only, statistics use :func:`arbepo.statistics_mask`, and the loss gets them as ``exempt`` rows.

Each method's math lives in ``advantages.py`` / ``losses.py`` / ``replay.py`` and the method
modules as pure functions; this module only gathers their inputs and adds their outputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentropy.training import methods
from agentropy.training.entropy import EntropyHistory
from agentropy.training.methods.aepo import aepo_factor
from agentropy.training.methods.arbepo import (
    TemperatureController,
    entropy_estimate,
    regularization_rows,
    select_regularization_episodes,
    splice_regularization,
    statistics_mask,
    unit_advantages,
)
from agentropy.training.methods.clip_bv import (
    clip_b_mask,
    clip_v_mask,
    entropy_discriminator,
    expected_discriminator,
)
from agentropy.training.methods.siren import (
    SIRENAnchor,
    nucleus_entropy_and_size,
    peak_entropy_mask,
    siren_loss,
)
from agentropy.training.methods.spear import (
    BaselineBuffer,
    ReplayBuffer,
    sil_loss,
    sil_weight,
    tool_call_reward,
)
from agentropy.training.methods.steer import entropy_change_estimate, omega_range, steer_weights
from agentropy.training.policy import PackedBatch, pack, reply_logprobs_and_entropy
from agentropy.training.trajectory import Trajectory


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient is NaN/inf; the trainer saves the batch in the run folder."""


@dataclass
class UpdateState:
    """What the update carries from one iteration to the next (saved in checkpoints)."""

    entropy_history: EntropyHistory
    replay: ReplayBuffer | None = None
    baseline: BaselineBuffer | None = None
    counters: dict[str, float] = field(default_factory=dict)
    arbepo: TemperatureController | None = None  # ArbEPO's T_k controller (13.2 steps 0 and 10)
    siren_anchor: SIRENAnchor | None = None  # SIREN's H_anchor, set at the first update then frozen

    @classmethod
    def create(cls, cfg: Any) -> UpdateState:
        strategy = cfg.strategy
        spear = strategy.spear
        replay = ReplayBuffer.from_config(spear) if spear.enabled else None
        baseline = BaselineBuffer(max_size=spear.baseline_buffer_size) if spear.enabled else None
        arbepo = TemperatureController.from_config(strategy.arbepo) if strategy.arbepo.enabled else None
        anchor = SIRENAnchor.from_config(strategy.siren) if strategy.siren.enabled else None
        return cls(EntropyHistory(), replay, baseline, arbepo=arbepo, siren_anchor=anchor)

    def state_dict(self) -> dict[str, Any]:
        return {
            "entropy_history": self.entropy_history.state_dict(),
            "replay": self.replay.state_dict() if self.replay is not None else None,
            "baseline": self.baseline.state_dict() if self.baseline is not None else None,
            "counters": dict(self.counters),
            "arbepo": self.arbepo.state_dict() if self.arbepo is not None else None,
            "siren_anchor": self.siren_anchor.state_dict() if self.siren_anchor is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entropy_history.load_state_dict(state["entropy_history"])
        if self.replay is not None and state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"])
        if self.baseline is not None and state.get("baseline") is not None:
            self.baseline.load_state_dict(state["baseline"])
        if self.arbepo is not None and state.get("arbepo") is not None:
            self.arbepo.load_state_dict(state["arbepo"])
        if self.siren_anchor is not None and state.get("siren_anchor") is not None:
            self.siren_anchor.load_state_dict(state["siren_anchor"])
        self.counters = dict(state.get("counters", {}))


@dataclass
class StepSamples:
    """All on-policy step samples of an iteration, aligned row by row."""

    batch: PackedBatch
    behaviour_logprobs: torch.Tensor  # [N, R] as sampled by the backend
    behaviour_entropy: torch.Tensor  # [N, R] as reported by the backend
    sampling_temperatures: set[float]  # temperatures the rows were sampled at
    entropy_is_estimate: bool  # any row's entropy is a top-k estimate (vllm / openai backends)
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
    behaviour_entropy = torch.zeros((len(rows), r))
    for i, (_, s) in enumerate(rows):
        if s.logprobs:
            behaviour[i, : len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
            behaviour_entropy[i, : len(s.entropy)] = torch.tensor(s.entropy, dtype=torch.float32)
    return StepSamples(
        batch=batch,
        behaviour_logprobs=behaviour,
        behaviour_entropy=behaviour_entropy,
        sampling_temperatures={float(s.temperature) for _, s in rows},
        entropy_is_estimate=any(s.entropy_is_estimate for _, s in rows),
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


@dataclass
class Recomputed:
    """The pi_old pass: ``[N, R]`` tensors on the CPU; the optional ones only when asked for."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    expected: torch.Tensor | None = None  # Clip_V's N = E_q[S] (ALGORITHMS-MORE.md 10(b))
    nucleus: torch.Tensor | None = None  # SIREN's top-p entropy H^P (9(b)), for the anchor
    nucleus_size: torch.Tensor | None = None  # nucleus sizes n_j


@torch.no_grad()
def recompute_old(
    model: torch.nn.Module,
    batch: PackedBatch,
    micro: int,
    temperature: float,
    device: torch.device,
    expected: bool = False,
    nucleus: tuple[float, int] | None = None,
) -> Recomputed:
    """pi_old log-probs and entropies of every reply token, micro-batch by micro-batch; with
    ``expected`` also Clip_V's ``E_q[S]``, with ``nucleus=(top_p, top_k)`` SIREN's top-p entropy.
    Those need the full distribution, so only then are the reply logits kept, one micro-batch
    at a time."""
    n, r = batch.response_ids.shape
    out = Recomputed(torch.zeros((n, r)), torch.zeros((n, r)))
    if expected:
        out.expected = torch.zeros((n, r))
    if nucleus is not None:
        out.nucleus, out.nucleus_size = torch.zeros((n, r)), torch.zeros((n, r))
    want_logits = expected or nucleus is not None
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
            if out.expected is not None:
                out.expected[index, :w] = (expected_discriminator(logits) * m).float().cpu()
            if nucleus is not None:
                hp, size = nucleus_entropy_and_size(logits, nucleus[0], nucleus[1])
                out.nucleus[index, :w] = (hp * m).float().cpu()
                out.nucleus_size[index, :w] = (size * m).float().cpu()
    return out


@torch.no_grad()
def recompute(model: torch.nn.Module, batch: PackedBatch, micro: int, temperature: float,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_old log-probs and entropies of every reply token, micro-batch by micro-batch."""
    out = recompute_old(model, batch, micro, temperature, device)
    return out.logprobs, out.entropy


def _sampler_numbers_are_pi_old(samples: StepSamples, train: Any, strategy: Any, rollout_temperature: float) -> bool:
    """Whether the backend's per-token numbers can stand for the pi_old pass: exact entropies
    (not a top-k estimate), every row sampled at the rollout temperature (ArbEPO's extra
    episodes are not), and no method that needs pi_old's full distribution (Clip_V, SIREN)."""
    if train.recompute_old != "auto" or samples.entropy_is_estimate:
        return False
    if strategy.clip_v.enabled or strategy.siren.enabled:
        return False
    return samples.sampling_temperatures <= {float(rollout_temperature)}


def _mini_batches(n: int, count: int, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist()
    count = max(1, count)
    return [order[i::count] for i in range(count)]


def _take(values: list[Any], index: list[int]) -> list[Any]:
    return [values[i] for i in index]


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

    ``regularization``: ArbEPO's freshly collected ``T_k`` episodes (marked with
    :func:`arbepo.mark_regularization`), used when ``strategy.arbepo`` is enabled.
    """
    strategy, train = cfg.strategy, cfg.train
    device = accelerator.device
    temperature = max(cfg.rollout.temperature, 1e-6) if cfg.rollout.temperature > 0 else 1.0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    metrics: dict[str, float] = {}
    arb, steer, siren = strategy.arbepo, strategy.steer, strategy.siren
    edc = strategy.clip_v if strategy.clip_v.enabled else strategy.clip_b if strategy.clip_b.enabled else None

    # 13.2 steps 2 and 6c: ArbEPO picks the correct T_k episodes and splices them in (A := 1 later).
    main_trajs = [t for t in trajectories if t.kind != "probe"]
    batch_trajs = main_trajs
    if arb.enabled and state.arbepo is not None and regularization is not None:
        selected, sel_metrics = select_regularization_episodes(regularization, len(main_trajs), state.arbepo, arb)
        batch_trajs, splice_metrics = splice_regularization(main_trajs, selected, arb.mix)
        metrics.update({**sel_metrics, **splice_metrics})

    # 1. Rewards: SPEAR's cosine-decayed tool-call reward on top of the outcome.
    tool_bonus: dict[str, float] = {}
    spear = strategy.spear
    if spear.enabled and spear.tool_reward != "none":
        for t in batch_trajs:
            tool_bonus[t.traj_id] = tool_call_reward(
                t.length, iteration, spear.tool_reward_steps, spear.tool_reward,
                spear.tool_reward_per_call, spear.tool_reward_cap)
        metrics["spear/tool_reward_mean"] = float(np.mean(list(tool_bonus.values()))) if tool_bonus else 0.0
    samples = gather_samples(batch_trajs, pad_id, tool_bonus)
    n = samples.batch.response_ids.shape[0]
    if n == 0:
        return {"loss": 0.0, "samples": 0.0}
    mask = samples.batch.response_mask.float()
    reg_rows = regularization_rows(batch_trajs)
    has_reg = bool(reg_rows.any())
    stat_mask = statistics_mask(mask, reg_rows) if has_reg else mask
    main_idx = (~reg_rows).nonzero().flatten().tolist()
    if arb.enabled:
        metrics["arbepo/frac_reg_tokens"] = float((mask - stat_mask).sum() / mask.sum().clamp(min=1.0))

    # 2-3. pi_old: recomputed with full-vocabulary entropy at the sampling temperature; Clip_V's
    # E_q[S]; SIREN's top-p entropies: the anchor at the first update (13.2 step 3) and the
    # peak positions of each whole trajectory (14), chosen once per iteration under pi_old.
    t0 = time.perf_counter()
    model.eval()
    anchor = state.siren_anchor
    if _sampler_numbers_are_pi_old(samples, train, strategy, cfg.rollout.temperature):
        # The hf backend reports exact full-vocabulary log-probs and entropies of the weights
        # it sampled with, which are pi_old (tests prove parity with a teacher-forced pass to
        # 1e-4), so the recompute pass would only repeat them.
        old = Recomputed(samples.behaviour_logprobs.clone(), samples.behaviour_entropy.clone())
        metrics["old_logprobs_recomputed"] = 0.0
    else:
        old = recompute_old(policy, samples.batch, train.micro_batch_size, temperature, device,
                            expected=strategy.clip_v.enabled,
                            nucleus=(siren.top_p, siren.top_k) if siren.enabled else None)
        metrics["old_logprobs_recomputed"] = 1.0
        metrics["behaviour_logprob_gap"] = float(
            ((old.logprobs - samples.behaviour_logprobs).abs() * stat_mask).max())
    old_logprobs, old_entropy = old.logprobs, old.entropy
    siren_selected = None
    if siren.enabled and anchor is not None:
        if not anchor.ready:
            metrics.update(anchor.set_from(old.nucleus, stat_mask, siren, samples.traj_ids, samples.turns))
        rows_of = samples.traj_ids if siren.row == "trajectory" else None
        siren_selected = peak_entropy_mask(old.nucleus, stat_mask, rows_of, siren.quantile)

    # 4-6. Advantages of the main rows in the fixed order base (GRPO / GiGPO / CANON) -> EMPG ->
    # AEPO factor (C11); regularisation rows are not part of any of their statistics (C19).
    main = main_idx if has_reg else list(range(n))
    result = methods.compose_advantages(
        episode_returns=_take(samples.returns, main), group_ids=_take(samples.group_ids, main),
        traj_ids=_take(samples.traj_ids, main), turn_indices=_take(samples.turns, main),
        entropy=old_entropy[main], mask=mask[main], cfg=strategy,
        anchor_obs=_take(samples.anchors, main), step_rewards=_take(samples.step_rewards, main),
        step_keys=_take(samples.step_keys, main), iteration=iteration,
    )
    token_adv = torch.zeros_like(mask)
    token_adv[main] = result.token_advantages.float()
    metrics.update(result.metrics)

    # 6b. EDC keep-mask from the sign of the final advantage (main rows only, C17).
    keep = None
    if edc is not None:
        s_disc, d_disc = entropy_discriminator(old_logprobs, old_entropy, stat_mask, old.expected)
        if strategy.clip_v.enabled:
            keep, edc_metrics = clip_v_mask(d_disc, token_adv, stat_mask, strategy.clip_v)
        else:
            keep, edc_metrics = clip_b_mask(s_disc, token_adv, stat_mask, strategy.clip_b)
        keep = keep.float()
        metrics.update(edc_metrics)

    # 6c. ArbEPO: A := 1 on the regularisation rows; the controller's entropy state (full_old).
    if has_reg:
        token_adv = unit_advantages(token_adv, mask, reg_rows).float()
    if arb.enabled and state.arbepo is not None and arb.entropy_state == "full_old":
        state.arbepo.update(entropy_estimate(old_entropy, stat_mask, "full_old"))

    # STEER next to AEPO's token factor: which tokens the factor amplifies (z > 0), to log STEER's
    # weights on both sides (13.3 C16).
    z_pos = None
    if steer.enabled and strategy.aepo.enabled and strategy.aepo.entropy_advantage:
        z_pos = torch.zeros_like(mask, dtype=torch.bool)
        z_pos[main] = aepo_factor(old_entropy[main], mask[main], 1.0, strategy.aepo.z_scope) > 1.0

    # EPO reference for each sample's turn, from the history of previous iterations (paper: m < k).
    reference = state.entropy_history.reference(samples.turns)

    # 7. SPEAR buffer write uses the sign of the plain base advantage (never regularisation rows).
    if state.replay is not None:
        state.replay.add(_take(samples.pairs, main),
                         [old_logprobs[i, : len(samples.pairs[i][1])].clone() for i in main],
                         _take(samples.returns, main), result.buffer_sign_source, iteration)

    # 8. On-policy mini-batches.
    generator = torch.Generator().manual_seed(cfg.run.seed * 7919 + iteration)
    model.train()
    clip_stats: list[dict[str, float]] = []
    grad_norms: list[float] = []
    losses_seen: list[float] = []
    surprisal = [0.0, 0.0]  # sum of -log pi over update tokens, token count (ArbEPO surprisal_update)
    tokens = int(mask.sum().item())
    agg = strategy.policy_loss.agg
    for _epoch in range(train.ppo_epochs):
        for rows in _mini_batches(n, train.mini_batches, generator):
            if not rows:
                continue
            total_tokens = float(mask[rows].sum().clamp(min=1.0))
            stat_tokens = float(stat_mask[rows].sum().clamp(min=1.0))
            kept_tokens = float((mask[rows] * keep[rows]).sum().clamp(min=1.0)) if keep is not None else total_tokens
            micro_batches = [rows[i : i + train.micro_batch_size] for i in range(0, len(rows), train.micro_batch_size)]
            omega_rng = None
            if steer.enabled and steer.stat_scope == "minibatch" and len(micro_batches) > 1:
                omega_rng = _steer_range(model, samples.batch, micro_batches, old_logprobs, old_entropy, token_adv,
                                         stat_mask, temperature, device, steer.prob_eps)
            optimizer.zero_grad(set_to_none=True)
            for idx in micro_batches:
                sub = samples.batch.select(idx).to(device)
                width = sub.reply_width
                out = reply_logprobs_and_entropy(model, sub, temperature, return_logits=siren.enabled)
                logprobs, entropy = out[0], out[1]
                m = sub.response_mask.float()
                old_lp = old_logprobs[idx, :width].to(device)
                a_mb = token_adv[idx, :width].to(device)
                reg_mb = reg_rows[idx].to(device)
                m_stat = stat_mask[idx, :width].to(device)
                has_main = bool(m_stat.any())  # a micro-batch of regularisation rows only has no statistics
                stats: dict[str, float] = {}
                weights = None
                if steer.enabled:
                    omega = entropy_change_estimate(logprobs, old_lp, old_entropy[idx, :width].to(device), a_mb, m,
                                                    steer.prob_eps)
                    weights, steer_stats = steer_weights(omega, m, steer, omega_stats=omega_rng,
                                                         exempt=reg_mb if has_reg else None)
                    if has_main:
                        stats.update({k: float(v) for k, v in steer_stats.items()})
                    if z_pos is not None:
                        stats.update(_split_weight_means(weights, m.bool() & ~reg_mb.unsqueeze(-1),
                                                         z_pos[idx, :width].to(device)))
                if has_reg and arb.reg_token_weight != 1.0:
                    reg_w = torch.where(reg_mb, arb.reg_token_weight, 1.0).unsqueeze(-1).expand_as(m).to(m.dtype)
                    weights = reg_w if weights is None else weights * reg_w
                keep_mb, pg_norm = None, None
                if keep is not None:
                    keep_mb = keep[idx, :width].to(device)
                    if agg == "token-mean":
                        pg_norm = kept_pg_normalizer(kept_tokens, float(m.sum().clamp(min=1.0)), total_tokens)
                loss, pl_stats = methods.policy_loss(
                    logprobs, old_lp, a_mb, m,
                    strategy, entropy=entropy, traj_ids=[samples.traj_ids[i] for i in idx],
                    turn_reference=reference[idx].to(device), iteration=iteration,
                    total_iterations=train.iterations, generator=generator,
                    token_weights=weights, keep_mask=keep_mb, pg_normalizer=pg_norm,
                    exempt=reg_mb if has_reg else None,
                )
                stats.update(pl_stats)
                weight = _micro_weight(agg, m, len(idx), total_tokens, len(rows))
                scaled = loss * weight
                if siren.enabled and has_main:
                    # SIREN's penalty on this micro-batch's trajectory parts, weighted by its share of
                    # the mini-batch's main tokens (the term has its own aggregation, C23).
                    h_topp, size = nucleus_entropy_and_size(out[2], siren.top_p, siren.top_k)
                    term, siren_stats = siren_loss(h_topp, m_stat, anchor, siren,
                                                   traj_ids=[samples.traj_ids[i] for i in idx],
                                                   turns=[samples.turns[i] for i in idx],
                                                   selected=siren_selected[idx, :width].to(device),
                                                   nucleus_size=size)
                    siren_weight = float(m_stat.sum()) / stat_tokens
                    scaled = scaled + term * siren_weight
                    stats.update({k: float(v) for k, v in siren_stats.items()})
                with torch.no_grad():
                    surprisal[0] += float(-(logprobs.detach() * m).sum())
                    surprisal[1] += float(m.sum())
                if not torch.isfinite(scaled):
                    raise NonFiniteLossError(f"non-finite loss {scaled.item()} at iteration {iteration}")
                accelerator.backward(scaled)
                losses_seen.append(scaled.item())
                clip_stats.append(stats)
            norm = accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
            norm = float(norm)
            if not math.isfinite(norm):
                raise NonFiniteLossError(f"non-finite gradient norm at iteration {iteration}")
            grad_norms.append(norm)
            optimizer.step()

    # 9. Replay mini-batches (SPEAR SIL), with their own optimizer steps (main rows only).
    if state.replay is not None:
        metrics.update(_replay_update(model, optimizer, accelerator, state, strategy, iteration, temperature,
                                      train, samples, device, generator, pad_id, main))

    # 10. State: EPO history from on-policy main turns only; ArbEPO's surprisal estimate.
    has_tokens = stat_mask.sum(1) > 0
    state.entropy_history.update_from_tokens(old_entropy, stat_mask, samples.turns)
    if arb.enabled and state.arbepo is not None:
        if arb.entropy_state == "surprisal_update" and surprisal[1] > 0:
            state.arbepo.update(surprisal[0] / surprisal[1])
        metrics["arbepo/H_state_next"] = state.arbepo.h_state
    elapsed = time.perf_counter() - t0
    model.eval()
    metrics.update(_mean_stats(clip_stats))
    metrics.update({
        "loss": float(sum(losses_seen) / max(1, train.ppo_epochs * max(1, train.mini_batches))),
        "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
        "samples": float(n),
        "train_tokens": float(tokens),
        "learner_tokens_per_s": tokens * train.ppo_epochs / max(elapsed, 1e-9),
    })
    reference_mean = float(reference[has_tokens].mean()) if bool(has_tokens.any()) else 0.0
    metrics["entropy/history_reference"] = reference_mean  # the per-turn history every run keeps
    if strategy.epo.enabled:
        metrics["epo/reference_mean"] = reference_mean
    return metrics


@torch.no_grad()
def _steer_range(model, batch, micro_batches, old_logprobs, old_entropy, token_adv, stat_mask, temperature,
                 device, prob_eps) -> torch.Tensor:
    """STEER's ``[min |Omega|, max |Omega|]`` over the mini-batch's valid main tokens: a no-grad
    forward pass over its micro-batches first (the model does not change inside a mini-batch, so
    the values are those of the gradient pass; ALGORITHMS-MORE.md 8(b) [default])."""
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


def _replay_update(model, optimizer, accelerator, state, strategy, iteration, temperature, train,
                   samples, device, generator, pad_id, main) -> dict[str, float]:
    """SPEAR 5(c) steps 4-6: recalibrate against b50, replay with SIL, own optimizer steps.
    ``main``: the rows of on-policy main samples (ArbEPO's regularisation rows never enter)."""
    spear, pl = strategy.spear, strategy.policy_loss
    state.baseline.add_groups(_take(samples.group_ids, main), _take(samples.returns, main),
                              _take(samples.traj_ids, main))
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


def _split_weight_means(weights: torch.Tensor, active: torch.Tensor, z_pos: torch.Tensor) -> dict[str, float]:
    """``steer/w_mean_zpos`` / ``steer/w_mean_zneg``: STEER's mean weight on the tokens AEPO's factor
    amplifies (entropy z-score > 0) and on the others (13.3 C16)."""
    out = {}
    for name, sel in (("zpos", active & z_pos), ("zneg", active & ~z_pos)):
        count = int(sel.sum())
        if count:  # a micro-batch without such tokens does not enter the iteration's mean
            out[f"steer/w_mean_{name}"] = float(weights[sel].sum()) / count
    return out


def kept_pg_normalizer(kept_mini_tokens: float, micro_tokens: float, mini_tokens: float) -> float:
    """Denominator of a micro-batch's policy-gradient term under an EDC keep-mask (token-mean).

    The trainer scales each micro-batch loss by ``micro_tokens / mini_tokens`` (:func:`_micro_weight`,
    counting ``m``); dividing the micro-batch's ``sum l m'`` by
    ``kept_mini_tokens * micro_tokens / mini_tokens`` makes the scaled terms add up to exactly
    ``sum_mini l m' / sum_mini m'``, the PG denominator of ALGORITHMS-MORE.md 10(b) / C22, whatever
    the micro-batch size."""
    return kept_mini_tokens * micro_tokens / mini_tokens


def _micro_weight(agg: str, mask: torch.Tensor, rows: int, mini_tokens: float, mini_rows: int) -> float:
    """Share of a micro-batch in its mini-batch, so summed micro losses equal the mini-batch
    loss: by tokens for ``token-mean``, by sequences for the sequence-level modes."""
    if agg == "token-mean":
        return float(mask.sum()) / mini_tokens
    return rows / max(mini_rows, 1)


def _mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for s in stats for k in s}
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in sorted(keys)}
