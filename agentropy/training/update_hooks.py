"""What one method can contribute to an iteration's update, and the records its hooks see.

:func:`agentropy.training.policy_update.iteration_update` runs the numbered steps of an update
and, at each step, calls the hook of every enabled method that has one, in the order
:mod:`agentropy.training.methods` composes them. A method is a :class:`Method`: its name, when
it is on, its state (saved in checkpoints) and any of the hooks below; everything else about
it is pure functions in its own module. Hooks read and write the :class:`UpdateContext` of
the iteration (or the :class:`MiniBatch` / :class:`MicroBatch` being processed) and add their
metrics to ``ctx.metrics`` or ``mb.stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Hook = Callable[..., Any]


@dataclass(frozen=True)
class Method:
    """One entropy method's part in the update; every hook is optional.

    - ``create_state(strategy) -> {key: object with state_dict/load_state_dict}``: what the
      method carries across iterations; ``state_keys`` names those keys (``None`` when off).
    - ``select_batch(ctx, trajectories, extra) -> trajectories``: change the batch of episodes
      (``extra``: episodes the trainer collected for the method, e.g. at another temperature).
    - ``episode_bonus(ctx, trajectories) -> {traj_id: bonus}``: reward added to episode returns.
    - ``exempt_rows(ctx, trajectories) -> bool [N]``: rows that bypass every advantage and
      loss modulation and every batch statistic.
    - ``pi_old_extra(strategy) -> f(logits, mask) -> {name: [B, L]}``: values of pi_old's full
      distribution, computed in the pi_old pass (``ctx.old.extra[name]``).
    - ``after_pi_old(ctx)``, ``keep_mask(ctx) -> [N, R]``, ``after_advantages(ctx)``: steps of
      the iteration after pi_old, at the advantages and after them.
    - ``mini_batch_start(ctx, mini)``, ``token_weights(ctx, mb) -> [B, L] | None``,
      ``extra_loss(ctx, mb) -> scalar | None`` (added to the micro-batch's scaled loss),
      ``micro_batch_end(ctx, mb)``: the gradient passes; ``needs_logits`` asks for the logits.
    - ``after_on_policy(ctx)``: extra optimizer steps after the on-policy ones.
    - ``finish(ctx)``: state updates and metrics at the end of the iteration.
    """

    name: str
    enabled: Callable[[Any], bool]
    create_state: Hook | None = None
    state_keys: tuple[str, ...] = ()
    select_batch: Hook | None = None
    episode_bonus: Hook | None = None
    exempt_rows: Hook | None = None
    pi_old_extra: Hook | None = None
    after_pi_old: Hook | None = None
    keep_mask: Hook | None = None
    after_advantages: Hook | None = None
    mini_batch_start: Hook | None = None
    token_weights: Hook | None = None
    extra_loss: Hook | None = None
    micro_batch_end: Hook | None = None
    needs_logits: bool = False
    after_on_policy: Hook | None = None
    finish: Hook | None = None


@dataclass
class MiniBatch:
    """One mini-batch of the on-policy pass: its rows, micro-batches and token counts."""

    rows: list[int]
    micro_batches: list[list[int]]
    total_tokens: float  # reply tokens
    stat_tokens: float  # reply tokens of rows that are not exempt
    kept_tokens: float  # reply tokens the keep-mask keeps (``total_tokens`` without one)
    extra: dict[str, Any] = field(default_factory=dict)  # what a method's mini_batch_start left


@dataclass
class MicroBatch:
    """One micro-batch's forward pass and its slices of the iteration's tensors (on the device)."""

    idx: list[int]
    width: int
    logprobs: Tensor
    entropy: Tensor
    logits: Tensor | None
    mask: Tensor  # [B, L] float reply mask
    old_logprobs: Tensor
    advantages: Tensor
    exempt: Tensor  # [B] bool
    stat_mask: Tensor  # mask without exempt rows
    has_main: bool  # any token that is not exempt
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class UpdateContext:
    """The iteration being updated: its inputs, and what each step of the update has computed."""

    model: torch.nn.Module
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    accelerator: Any
    cfg: Any
    iteration: int
    state: Any  # policy_update.UpdateState
    device: torch.device
    temperature: float
    pad_id: int
    metrics: dict[str, float] = field(default_factory=dict)
    trajectories: list[Any] = field(default_factory=list)  # the batch's episodes
    samples: Any = None  # step_samples.StepSamples
    mask: Tensor | None = None  # [N, R] reply mask
    exempt: Tensor | None = None  # [N] bool
    has_exempt: bool = False
    stat_mask: Tensor | None = None  # mask without exempt rows
    main: list[int] = field(default_factory=list)  # rows that are not exempt
    old: Any = None  # policy_update.Recomputed: pi_old log-probs, entropies, extras
    advantages: Any = None  # methods.AdvantageResult
    token_adv: Tensor | None = None  # [N, R] final token advantages
    keep: Tensor | None = None  # [N, R] keep-mask of the policy-gradient term, or None
    generator: torch.Generator | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # per-iteration scratch of the methods

    @property
    def strategy(self) -> Any:
        return self.cfg.strategy
