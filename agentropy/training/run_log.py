"""Where a run writes what it measured: ``metrics.jsonl`` plus TensorBoard events.

One JSON object per line per iteration (``{"iteration": k, "phase": "train", ...}``), appended
and flushed at once, so a crash loses nothing already logged and ``--resume`` can continue
the same file after dropping lines from iterations that will be redone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return _clean(value.item())
    return value


class RunLog:
    """Append-only metrics log of one run folder; TensorBoard is optional (``tensorboard=False``)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def truncate_after(self, iteration: int) -> None:
        """Drop records of iterations > ``iteration`` (they will be recomputed on resume)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("iteration", -1) <= iteration]
        with self.path.open("w", encoding="utf-8") as fh:
            for record in kept:
                fh.write(json.dumps(record) + "\n")

    def log(self, iteration: int, phase: str, metrics: dict[str, Any]) -> dict[str, Any]:
        record = {"iteration": iteration, "phase": phase, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iteration":
                    self._writer.add_scalar(f"{phase}/{key}", value, iteration)
            self._writer.flush()
        return record

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | Path, phase: str | None = None) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` (optionally one phase) as a list of dicts."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                if phase is None or record.get("phase") == phase:
                    records.append(record)
    return records
