"""Taking the model and optimizer back to where an iteration started.

An RL iteration steps the optimizer once per mini-batch; when a later mini-batch turns out
non-finite, the earlier steps have already changed the weights in memory. A snapshot taken at
the iteration start and restored on :class:`~agentropy.nonfinite.NonFiniteError`
leaves the weights (and AdamW's moments and step counts) exactly as they were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainingSnapshot:
    """Copies of a model's and an optimizer's state dicts (on the CPU, so GPU memory is spared)."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]

    @classmethod
    def take(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainingSnapshot:
        model_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        optimizer_state = copy.deepcopy(_to_cpu(optimizer.state_dict()))
        return cls(model_state, optimizer_state)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the copies back (tensors move to the model's / the optimizer's devices)."""
        model.load_state_dict(self.model_state)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        optimizer.zero_grad(set_to_none=True)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
