"""Matplotlib figures for run folders and benchmark reports (PNG, Agg backend, no display).

Every function takes plain data (lists of metric records per strategy) and a path, writes
one PNG, and returns the path, so reports and tests can check the file exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Records = Sequence[Mapping[str, Any]]


def _series(records: Records, key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(r["iteration"])
            ys.append(value)
    return np.asarray(xs), np.asarray(ys, dtype=float)


def _mean_band(runs: Sequence[Records], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds, aligned by iteration (iterations missing in a run are skipped)."""
    by_step: dict[int, list[float]] = {}
    for records in runs:
        xs, ys = _series(records, key)
        for x, y in zip(xs, ys, strict=True):
            by_step.setdefault(int(x), []).append(float(y))
    steps = np.asarray(sorted(by_step))
    mean = np.asarray([np.mean(by_step[s]) for s in steps])
    std = np.asarray([np.std(by_step[s]) for s in steps])
    return steps, mean, std


def series_style(index: int) -> dict[str, str]:
    """Colour and line style of the index-th series: the ten default colours, then the same
    colours dashed, dotted, ... so that an ablation ladder's 12 rungs stay distinguishable."""
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[(index // 10) % 4]}


def _legend(ax: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7 if len(handles) > 6 else 8, ncol=2 if len(handles) > 6 else 1)


def plot_metric_by_step(
    runs_by_label: Mapping[str, Sequence[Records]], key: str, path: str | Path, title: str, ylabel: str
) -> Path:
    """One line per label (mean over its runs) with a +-1 std band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (label, runs) in enumerate(runs_by_label.items()):
        steps, mean, std = _mean_band(runs, key)
        if len(steps) == 0:
            continue
        style = series_style(i)
        ax.plot(steps, mean, marker="o", markersize=3, label=label, **style)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=style["color"])
    ax.set_xlabel("training iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_entropy_by_turn(
    runs_by_label: Mapping[str, Sequence[Records]], path: str | Path, key: str = "entropy_by_turn"
) -> Path:
    """Mean token entropy by turn index at the last logged iteration of each run."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for index, (label, runs) in enumerate(runs_by_label.items()):
        curves = []
        for records in runs:
            last = [r for r in records if isinstance(r.get(key), list)]
            if last:
                curves.append(np.asarray([np.nan if v is None else v for v in last[-1][key]], dtype=float))
        if not curves:
            continue
        width = max(len(c) for c in curves)
        padded = np.full((len(curves), width), np.nan)
        for i, c in enumerate(curves):
            padded[i, : len(c)] = c
        with np.errstate(all="ignore"):
            mean = np.nanmean(padded, axis=0)
        ax.plot(np.arange(width), mean, marker="o", markersize=3, label=label, **series_style(index))
    ax.set_xlabel("turn index")
    ax.set_ylabel("mean token entropy (nats)")
    ax.set_title("Entropy by turn (last iteration)")
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_corridor(records: Records, path: str | Path, kappa_l: float, kappa_r: float) -> Path:
    """EPO: batch entropy against the corridor [kappa_l * H_ref, kappa_r * H_ref]."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs, h = _series(records, "entropy_mean")
    rx, ref = _series(records, "epo/reference_mean")
    ax.plot(xs, h, marker="o", markersize=3, label="token entropy")
    if len(rx):
        ax.plot(rx, ref, linestyle="--", label="historical reference")
        ax.fill_between(rx, kappa_l * ref, kappa_r * ref, alpha=0.15, label=f"corridor [{kappa_l}, {kappa_r}] x ref")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("entropy (nats)")
    ax.set_title("EPO entropy corridor")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
