"""Checkpoints that resume exactly.

A checkpoint holds everything the next iteration depends on: model and optimizer state,
scheduler, the RNG states of Python, NumPy and torch, and any extra state (entropy history,
replay buffer, rollout counters) handed in as picklable objects. Model weights are saved
as a full (unsharded) state dict, so a run can resume on a different number of processes.
Writing goes to a temporary folder renamed into place, so a crash mid-write never leaves a
half checkpoint that ``latest_checkpoint`` would pick.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: str | Path,
    iteration: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Save under ``run_dir/checkpoints/iter_{iteration:06d}`` and keep the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".tmp_iter_{iteration:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "iteration": iteration,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": extra,
        },
        tmp / "state.pt",
    )
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(root.glob("iter_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = sorted((Path(run_dir) / "checkpoints").glob("iter_*"))
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint folder's state (weights_only=False: it holds RNG tuples and buffers)."""
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
