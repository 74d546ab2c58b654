"""ArbEPO: temperature-guided REINFORCE as an entropy controller (docs/methods/arbepo.md).

Each iteration a bang-bang controller picks a temperature from the current entropy estimate:
``T_high`` while the entropy is at or below the target ``H*``, else ``T_low``. A quarter of the
iteration's tasks are played again at that temperature (plain rollout, no branching); the
correct episodes (GRPO advantage > 0.05 within their ``T_k`` group) join the update batch with
advantage **1** on every token. REINFORCE on samples from a hotter policy pulls the policy toward
it (entropy up), from a colder one toward that (entropy down):
``Delta H ~ eta (T - 1) sum_v pi_v^2 (z_v - E_pi z)^2``.

Division of labour: the trainer calls :func:`agentropy.training.rollout.collect` with
:func:`regularization_rollout_config` on :func:`select_regularization_tasks`; the functions here
take and return :class:`~agentropy.training.trajectory.Trajectory` lists and plain tensors.
Regularisation samples (``kind == "regularization"``, ids prefixed ``reg-``) bypass every
advantage and loss modulation and are excluded from every batch statistic:
:func:`regularization_rows` gives the row flags, :func:`statistics_mask` the mask to use for
statistics, :func:`unit_advantages` sets their ``A = 1``. They never enter SPEAR's buffers.

Paper: "Arbitrary Entropy Policy Optimization", arXiv 2510.08141 (abstract and README formula).
Departure from the authors' code: ``arbepo.mix: add`` adds the selected episodes to the batch;
the authors replace the first main episodes with them: ``arbepo.mix: replace``. See
``docs/methods/arbepo.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from agentropy.training.advantages import grpo
from agentropy.training.rollout import resolve_config
from agentropy.training.strategy_config import ArbEPOConfig  # noqa: F401  (re-exported; defined there to keep it torch-free)
from agentropy.training.trajectory import Trajectory
from agentropy.training.update_hooks import Method

REGULARIZATION_KIND = "regularization"
REGULARIZATION_PREFIX = "reg-"

TaskT = TypeVar("TaskT")


class TemperatureController:
    """ArbEPO's bang-bang controller (docs/methods/arbepo.md):

        T_k = T_high  if H_state <= H*  else  T_low          (the code's <=; H_state = 0 at first)

    :meth:`update` records the entropy estimate of the latest iteration (``full_old`` or the
    update surprisal, see :func:`entropy_estimate`) and counts temperature switches (persistent
    switching = a limit cycle). The state is plain numbers (:meth:`state_dict`).
    """

    def __init__(self, target: float = 0.5, t_high: float = 1.2, t_low: float = 0.8) -> None:
        if not t_low <= t_high:
            raise ValueError(f"t_low ({t_low}) must be <= t_high ({t_high})")
        self.target = float(target)
        self.t_high = float(t_high)
        self.t_low = float(t_low)
        self.h_state = 0.0
        self.switches = 0
        self.updates = 0

    @classmethod
    def from_config(cls, cfg: ArbEPOConfig) -> TemperatureController:
        return cls(cfg.target_entropy, cfg.temperature_high, cfg.temperature_low)

    @property
    def above_target(self) -> bool:
        return self.h_state > self.target

    def temperature(self) -> float:
        """``T_k`` for the coming regularisation rollout."""
        return self.t_low if self.above_target else self.t_high

    def update(self, entropy: float) -> None:
        """Record ``H_{k+1}``; a non-finite value raises (it would freeze the controller)."""
        value = float(entropy)
        if not math.isfinite(value):
            raise ValueError(f"ArbEPO entropy estimate is not finite: {value}")
        before = self.temperature()
        self.h_state = value
        self.updates += 1
        if self.temperature() != before:
            self.switches += 1

    def metrics(self) -> dict[str, float]:
        return {"arbepo/temperature": self.temperature(), "arbepo/H_state": self.h_state,
                "arbepo/H_target": self.target, "arbepo/switches": float(self.switches)}

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target, "t_high": self.t_high, "t_low": self.t_low, "h_state": self.h_state,
                "switches": self.switches, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target = float(state["target"])
        self.t_high = float(state["t_high"])
        self.t_low = float(state["t_low"])
        self.h_state = float(state["h_state"])
        self.switches = int(state["switches"])
        self.updates = int(state["updates"])


@torch.no_grad()
def entropy_estimate(values: Tensor, mask: Tensor, kind: str = "full_old") -> float:
    """The controller's entropy estimate, a token mean over ``mask``:

    ``full_old``: ``values`` = full-vocabulary entropies of the **main** samples from the
    recompute pass (mask without regularisation rows); ``surprisal_update``: ``values`` =
    log-probs of the update batch, estimate ``-sum m log pi / sum m`` (the code's Monte-Carlo
    entropy; it includes the ``T_k`` samples). Shapes ``[B, L]`` -> float (0 for an empty mask).
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    if kind not in ("full_old", "surprisal_update"):
        raise ValueError(f"kind must be 'full_old' or 'surprisal_update', got {kind!r}")
    m = mask.bool()
    n = int(m.sum())
    if n == 0:
        return 0.0
    total = float(values.detach().double()[m].sum())
    return (total if kind == "full_old" else -total) / n


def select_regularization_tasks(tasks: Sequence[TaskT], fraction: float = 0.25) -> list[TaskT]:
    """The first ``max(1, floor(fraction * len(tasks)))`` tasks (the code re-samples the first
    quarter of the step's prompts; at least one so small batches still regularise)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not tasks:
        return []
    return list(tasks[: max(1, math.floor(fraction * len(tasks)))])


def regularization_rollout_config(cfg: Any, temperature: float, samples_per_task: int | None = None) -> Any:
    """The :class:`~agentropy.training.rollout.RolloutConfig` for the regularisation episodes:
    the run's rollout settings at ``temperature`` with ``samples_per_task`` per task. A plain
    ``RolloutConfig`` never branches, so :func:`~agentropy.training.rollout.collect` given it plays
    plain episodes. Give ``collect`` a seed other than the main rollout's, e.g.
    ``seed + 1_000_003``, so the two draws are independent."""
    rcfg = resolve_config(cfg)
    n = rcfg.group_size if samples_per_task is None else int(samples_per_task)
    return dataclasses.replace(rcfg, temperature=float(temperature), group_size=n)


def mark_regularization(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """Copies of freshly collected ``T_k`` episodes marked as regularisation samples:
    ``kind = "regularization"`` and group / trajectory ids prefixed ``reg-`` (in every step too),
    so they never join a main GRPO / CANON group or a trajectory statistic."""
    out = []
    for traj in trajectories:
        new = copy.deepcopy(traj)
        new.kind = REGULARIZATION_KIND
        new.group_id = _prefixed(traj.group_id)
        new.traj_id = _prefixed(traj.traj_id)
        if new.parent_id is not None:
            new.parent_id = _prefixed(new.parent_id)
        for step in new.steps:
            step.group_id = _prefixed(step.group_id)
            step.traj_id = _prefixed(step.traj_id)
        out.append(new)
    return out


def regularization_budget(n_main: int, cfg: ArbEPOConfig) -> int:
    """``N_reg``: ``reg_max`` if set, else ``max(1, round(reg_ratio * n_main))`` trajectories."""
    if cfg.reg_max is not None:
        return int(cfg.reg_max)
    return max(1, round(cfg.reg_ratio * n_main))


def select_regularization_episodes(
    trajectories: Sequence[Trajectory],
    n_main: int,
    controller: TemperatureController,
    cfg: ArbEPOConfig | None = None,
    rewards: Sequence[float] | None = None,
) -> tuple[list[Trajectory], dict[str, float]]:
    """Which regularisation episodes join the batch (docs/methods/arbepo.md):

        A^_i = (R_i - mean_G R) / (std_G R + 1e-6)     (GRPO within each T_k task group, unbiased std)
        kept = {i : A^_i > adv_threshold}              (batch order)
        n_reg = min(N_reg, |kept|), halved (floor) while H_state > H*

    ``R`` is the outcome return (``episode_return``; pass ``rewards`` per trajectory to use
    another outcome, never a shaped reward). ``n_main`` counts main trajectories.
    Returns the first ``n_reg`` kept episodes and metrics ``arbepo/n_reg``, ``arbepo/n_kept``,
    ``arbepo/reg_acc`` (mean outcome of the ``T_k`` episodes), ``arbepo/temperature``,
    ``arbepo/H_state``, ``arbepo/H_target``, ``arbepo/switches``.
    """
    cfg = cfg if cfg is not None else ArbEPOConfig()
    trajs = list(trajectories)
    r = [float(t.episode_return) for t in trajs] if rewards is None else [float(x) for x in rewards]
    if len(r) != len(trajs):
        raise ValueError(f"rewards has {len(r)} entries for {len(trajs)} trajectories")
    metrics = dict(controller.metrics())
    if not trajs:
        metrics.update({"arbepo/n_reg": 0.0, "arbepo/n_kept": 0.0, "arbepo/reg_acc": 0.0})
        return [], metrics
    adv = grpo(torch.tensor(r, dtype=torch.float64), [t.group_id for t in trajs], norm_by_std=True, eps=1e-6)
    kept = [i for i in range(len(trajs)) if float(adv[i]) > cfg.adv_threshold]
    n_reg = min(regularization_budget(n_main, cfg), len(kept))
    if cfg.halve_above_target and controller.above_target:
        n_reg //= 2
    metrics.update({"arbepo/n_reg": float(n_reg), "arbepo/n_kept": float(len(kept)),
                    "arbepo/reg_acc": sum(r) / len(r)})
    return [trajs[i] for i in kept[:n_reg]], metrics


def splice_regularization(
    main: Sequence[Trajectory], selected: Sequence[Trajectory], mix: str = "add"
) -> tuple[list[Trajectory], dict[str, float]]:
    """The update batch (docs/methods/arbepo.md):

        add:     main + selected                       (all main trajectories kept; paper form)
        replace: selected + main[n_reg:]               (code: the first n_reg main trajectories
                                                        are not trained this step)

    ``selected`` must be marked (:func:`mark_regularization`). Under token-mean the
    regularisation term's implied weight is its token share; metric ``arbepo/alpha_implied`` is
    ``n_reg / n_main`` by trajectory count, ``arbepo/n_reg`` the number spliced in.
    """
    if mix not in ("add", "replace"):
        raise ValueError(f"mix must be 'add' or 'replace', got {mix!r}")
    for t in selected:
        if t.kind != REGULARIZATION_KIND:
            raise ValueError(f"trajectory {t.traj_id!r} is not marked as regularisation (kind={t.kind!r}); "
                             "use mark_regularization")
    reg = list(selected)
    main = list(main)
    if mix == "replace":
        if len(reg) > len(main):
            raise ValueError(f"replace mode: {len(reg)} regularisation trajectories for {len(main)} main ones")
        batch = reg + main[len(reg):]
        n_main_left = len(main) - len(reg)
    else:
        batch = main + reg
        n_main_left = len(main)
    return batch, {"arbepo/n_reg": float(len(reg)),
                   "arbepo/alpha_implied": len(reg) / max(n_main_left, 1)}


def is_regularization(traj: Trajectory) -> bool:
    return traj.kind == REGULARIZATION_KIND


def regularization_rows(trajectories: Sequence[Trajectory], include_probes: bool = False) -> Tensor:
    """Bool ``[N]``: which step-sample rows are regularisation samples, in the row order of
    ``step_samples.gather_samples`` (every step of
    every trajectory, AEPO probes left out unless ``include_probes``)."""
    flags = [is_regularization(t) for t in trajectories if include_probes or t.kind != "probe" for _ in t.steps]
    return torch.tensor(flags, dtype=torch.bool)


def statistics_mask(mask: Tensor, reg_rows: Tensor) -> Tensor:
    """``mask [B, L]`` with regularisation rows zeroed: the mask for every batch statistic
    (STEER min/max, EDC sigma, EMPG min-max, AEPO z-scores, EPO history, CANON split)."""
    rows = reg_rows.to(device=mask.device, dtype=torch.bool).reshape(-1)
    if rows.numel() != mask.shape[0]:
        raise ValueError(f"reg_rows has {rows.numel()} entries for {mask.shape[0]} rows")
    return torch.where(rows.unsqueeze(-1), torch.zeros_like(mask), mask)


def unit_advantages(token_advantages: Tensor, mask: Tensor, reg_rows: Tensor) -> Tensor:
    """``A := 1`` on every reply token of the regularisation rows (the regulariser itself), other rows
    unchanged. Shapes ``[B, L]`` (``token_advantages`` may be ``[B]``) -> ``[B, L]``, 0 where masked."""
    rows = reg_rows.to(device=mask.device, dtype=torch.bool).reshape(-1)
    if rows.numel() != mask.shape[0]:
        raise ValueError(f"reg_rows has {rows.numel()} entries for {mask.shape[0]} rows")
    adv = token_advantages.to(mask.device)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    adv = adv.expand(mask.shape)
    m = mask.bool()
    one = torch.ones((), dtype=adv.dtype, device=adv.device)
    zero = torch.zeros((), dtype=adv.dtype, device=adv.device)
    return torch.where(m, torch.where(rows.unsqueeze(-1), one, adv), zero)


def _prefixed(value: str) -> str:
    return value if value.startswith(REGULARIZATION_PREFIX) else REGULARIZATION_PREFIX + value


# --------------------------------------------------------------------------------------
# Hooks into the update (:mod:`agentropy.training.update_hooks`).
# --------------------------------------------------------------------------------------


def _select_batch(ctx: Any, trajectories: list[Trajectory], regularization: list[Trajectory] | None) -> list[Trajectory]:
    """Pick the correct ``T_k`` episodes and splice them into the batch (they get ``A := 1`` later)."""
    controller = ctx.state.arbepo
    if controller is None or regularization is None:
        return trajectories
    arb = ctx.strategy.arbepo
    selected, sel_metrics = select_regularization_episodes(regularization, len(trajectories), controller, arb)
    batch, splice_metrics = splice_regularization(trajectories, selected, arb.mix)
    ctx.metrics.update({**sel_metrics, **splice_metrics})
    return batch


def _after_pi_old(ctx: Any) -> None:
    ctx.metrics["arbepo/frac_reg_tokens"] = float((ctx.mask - ctx.stat_mask).sum() / ctx.mask.sum().clamp(min=1.0))


def _after_advantages(ctx: Any) -> None:
    """``A := 1`` on the regularisation rows (after the keep-mask saw the final advantages), and
    the controller's entropy state from the pi_old pass (``entropy_state: full_old``)."""
    if ctx.has_exempt:
        ctx.token_adv = unit_advantages(ctx.token_adv, ctx.mask, ctx.exempt).float()
    if ctx.state.arbepo is not None and ctx.strategy.arbepo.entropy_state == "full_old":
        ctx.state.arbepo.update(entropy_estimate(ctx.old.entropy, ctx.stat_mask, "full_old"))


def _token_weights(ctx: Any, mini: Any, mb: Any) -> Tensor | None:
    weight = ctx.strategy.arbepo.reg_token_weight
    if not ctx.has_exempt or weight == 1.0:
        return None
    return torch.where(mb.exempt, weight, 1.0).unsqueeze(-1).expand_as(mb.mask).to(mb.mask.dtype)


def _micro_batch_end(ctx: Any, mini: Any, mb: Any) -> None:
    """Sum of ``-log pi`` over the update's tokens, for ``entropy_state: surprisal_update``."""
    total = ctx.extra.setdefault("arbepo/surprisal", [0.0, 0.0])
    with torch.no_grad():
        total[0] += float(-(mb.logprobs.detach() * mb.mask).sum())
        total[1] += float(mb.mask.sum())


def _finish(ctx: Any) -> None:
    controller = ctx.state.arbepo
    if controller is None:
        return
    surprisal = ctx.extra.get("arbepo/surprisal", [0.0, 0.0])
    if ctx.strategy.arbepo.entropy_state == "surprisal_update" and surprisal[1] > 0:
        controller.update(surprisal[0] / surprisal[1])
    ctx.metrics["arbepo/H_state_next"] = controller.h_state


METHOD = Method(
    "arbepo",
    enabled=lambda strategy: strategy.arbepo.enabled,
    create_state=lambda strategy: {"arbepo": TemperatureController.from_config(strategy.arbepo)},
    state_keys=("arbepo",),
    select_batch=_select_batch,
    exempt_rows=lambda ctx, trajectories: regularization_rows(trajectories),
    after_pi_old=_after_pi_old,
    after_advantages=_after_advantages,
    token_weights=_token_weights,
    micro_batch_end=_micro_batch_end,
    finish=_finish,
)
