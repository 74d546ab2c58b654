"""Where a run writes what it measured: ``metrics.jsonl`` plus TensorBoard events.

One JSON object per line per iteration (``{"iteration": k, "phase": "train", ...}``), appended
and flushed at once, so a crash loses nothing already logged and ``--resume`` can continue
the same file after dropping lines from iterations that will be redone. A non-finite number is
written as JSON ``null`` (never the string ``"nan"`` nor the non-JSON ``NaN``), and a torn last
line (the process was killed mid-write) is skipped on reading and dropped on resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """A JSON-safe copy of ``value``: NaN/inf become ``None``, tensors and NumPy scalars plain numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return _clean(value.item())
    return value


class RunLog:
    """Append-only metrics log of one run folder; TensorBoard is optional (``tensorboard=False``)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, fresh: bool = False) -> None:
        """``fresh``: a new run starts here, so an older ``metrics.jsonl`` is removed, not appended to."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if fresh and self.path.exists():
            self.path.unlink()
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
            fh.write(json.dumps(record, allow_nan=False) + "\n")
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
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # torn by a kill mid-write: that iteration is redone on resume
                break
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if phase is None or record.get("phase") == phase:
            records.append(record)
    return records
