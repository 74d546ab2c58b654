"""Checkpoints that resume exactly.

A checkpoint holds everything the next iteration depends on: model and optimizer state,
scheduler, the RNG states of Python, NumPy and torch, and any extra state (entropy history,
replay buffer, rollout counters) handed in as picklable objects. Model weights are saved
as a full (unsharded) state dict, so a run can resume on a different number of processes.
Writing goes to a temporary folder renamed into place, so a crash mid-write never leaves a
half checkpoint that ``latest_checkpoint`` would pick.

Each checkpoint also has a small ``meta.json``: its iteration, the run's identity (a random
id made when the run starts) and the resolved config. Pruning and :func:`latest_checkpoint`
order checkpoints by iteration *number* among those of one identity, so leftovers of another
run in the same folder are never kept in place of this run's, nor loaded; ``--resume``
compares the config. Nothing non-finite is ever written: the tensors are checked first.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentropy.nonfinite import NonFiniteError, nonfinite_tensors, optimizer_tensors

META_FILE = "meta.json"
_ITER_DIR = re.compile(r"^iter_(\d+)$")


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
    run_id: str | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Save under ``run_dir/checkpoints/iter_{iteration:06d}`` and keep this run's newest ``keep``.

    Raises :class:`NonFiniteError` (writing nothing) if a weight or optimizer tensor is NaN/inf."""
    model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = nonfinite_tensors(model_state.items()) + nonfinite_tensors(optimizer_tensors(optimizer))
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(f"refusing to write a checkpoint with non-finite tensors: {shown}",
                             where="checkpoint", iteration=iteration)
    root = Path(run_dir) / "checkpoints"
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".tmp_iter_{iteration:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "iteration": iteration,
            "model": model_state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": extra,
        },
        tmp / "state.pt",
    )
    meta = {"iteration": iteration, "run_id": run_id, "config": config}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in run_checkpoints(run_dir, run_id)[:-keep]:
        shutil.rmtree(old)
    return final


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json`` (``{}`` for checkpoints written before it existed)."""
    meta = Path(path) / META_FILE
    try:
        return json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_checkpoints(run_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints of ``run_dir``, oldest first by iteration number.

    With ``run_id``, only that run's (checkpoints without an identity count as that run's
    when no checkpoint of the folder has one: folders written before identities existed)."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("iter_*"):
        match = _ITER_DIR.match(path.name)
        if match and path.is_dir() and (path / "state.pt").exists():
            found.append((int(match.group(1)), path))
    if run_id is not None:
        ids = {p: checkpoint_meta(p).get("run_id") for _, p in found}
        if any(ids.values()):
            found = [(k, p) for k, p in found if ids[p] == run_id]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path, run_id: str | None = None) -> Path | None:
    """The checkpoint with the highest iteration number (of run ``run_id`` if given)."""
    checkpoints = run_checkpoints(run_dir, run_id)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint folder's state (weights_only=False: it holds RNG tuples and buffers)."""
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
