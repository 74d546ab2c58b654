"""Refusing NaN and inf before they reach the weights, and saying where they came from.

Every path that steps an optimizer (SFT, RL mini-batches, SPEAR replay) checks its loss and its
gradient norm with :func:`require_finite` *before* ``optimizer.step()``; the sampler checks its
logits; a checkpoint checks every tensor before it is written (:func:`nonfinite_tensors`).
A :class:`NonFiniteError` names the path, the iteration and, once the trainer has saved the
offending batch, the dump file, so the user gets one line instead of an index error later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from agentropy.errors import UserError


class NonFiniteError(UserError, RuntimeError):
    """A NaN or inf where training cannot go on; nothing non-finite was stepped into the weights
    by the path that raised it. ``where`` is the path (``"sft"``, ``"rl mini-batch 2/2"``,
    ``"replay"``, ``"sampler"``, ``"checkpoint"``); ``dump`` is set once the batch is saved."""

    def __init__(self, message: str, *, where: str = "", iteration: int | None = None,
                 dump: Path | None = None) -> None:
        super().__init__(message)
        self.message, self.where, self.iteration, self.dump = message, where, iteration, dump

    def __str__(self) -> str:
        parts = [self.message]
        context = [p for p in (self.where, None if self.iteration is None else f"iteration {self.iteration}")
                   if p and p not in self.message]
        if context:
            parts.append(f"({', '.join(context)})")
        text = " ".join(parts)
        return f"{text}; dumped to {self.dump}" if self.dump is not None else text


def require_finite(value: float | torch.Tensor, what: str, *, where: str, iteration: int | None = None,
                   step: int | None = None) -> None:
    """Raise :class:`NonFiniteError` if ``value`` (a loss or a gradient norm) is NaN or inf.

    Call it on the loss before ``backward`` and on the clipped-gradient norm before
    ``optimizer.step()``: ``clip_grad_norm_`` returns a non-finite norm when any gradient is."""
    number = float(value.detach().float().sum()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(number):
        at = f" at step {step}" if step is not None else ""
        raise NonFiniteError(f"non-finite {what} ({number}) in {where}{at}", where=where, iteration=iteration)


def nonfinite_tensors(named: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors among ``named`` that hold a NaN or an inf."""
    bad = []
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of the optimizer's state (``state.<param>.<key>``)."""
    out = []
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out.append((f"state.{index}.{key}", value))
    return out
