"""Figures of the entropy-dynamics analysis (PNG, Agg backend), one function per figure.

Each function takes plain data (the per-run and per-strategy dicts of
:mod:`agentropy.evals.dynamics`), writes one PNG and returns its path. Curves over steps reuse
:func:`agentropy.evals.plots.plot_metric_by_step`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

from agentropy.evals import plots
from agentropy.evals.plots import _save, plt  # the Agg backend is selected there

PerRun = Mapping[str, Any]


def safe_name(label: str) -> str:
    """A strategy label as a file-name part ('aepo+epo' -> 'aepo_epo')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "strategy"


def _grid(n: int) -> tuple[Any, np.ndarray]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_exp_law(per_run_by_label: Mapping[str, Sequence[PerRun]], path: str | Path, reward_key: str) -> Path:
    """Per strategy: (H, R) of every step of every run and each run's fit R = -a exp(H) + b."""
    fig, axes = _grid(max(len(per_run_by_label), 1))
    for ax, (label, runs) in zip(axes, per_run_by_label.items(), strict=False):
        for i, r in enumerate(runs):
            h, y = np.asarray(r["entropy"], float), np.asarray(r["reward"], float)
            ok = np.isfinite(h) & np.isfinite(y)
            color = f"C{i % 10}"
            ax.scatter(h[ok], y[ok], s=12, color=color, label=f"seed {r['seed']}")
            a, b = r["exp_law"]["a"], r["exp_law"]["b"]
            if ok.any() and math.isfinite(a) and math.isfinite(b):
                grid = np.linspace(h[ok].min(), h[ok].max(), 50)
                ax.plot(grid, -a * np.exp(grid) + b, color=color, linewidth=1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("mean token entropy H")
        ax.set_ylabel(reward_key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("R = -a exp(H) + b, fit per run", fontsize=10)
    return _save(fig, path)


def plot_step_series(per_run_by_label: Mapping[str, Sequence[PerRun]], key: str, path: str | Path,
                     title: str, ylabel: str) -> Path:
    """Mean over seeds of a per-step series of the per-run dicts (``entropy``, ``reward_std``, ...)."""
    runs = {label: [[{"iteration": k, key: v} for k, v in zip(r["steps"], r[key], strict=True) if math.isfinite(v)]
                    for r in rs] for label, rs in per_run_by_label.items()}
    return plots.plot_metric_by_step(runs, key, path, title, ylabel)


def plot_entropy_map(turns: Sequence[int], steps: Sequence[int], values: Sequence[Sequence[float | None]],
                     path: str | Path, title: str) -> Path:
    """Heatmap of mean token entropy, turn index (rows) x training step (columns); blank = no data."""
    matrix = np.asarray([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(steps) + 2.5), max(3.0, 0.25 * len(turns) + 1.5)))
    if matrix.size:
        image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", origin="lower", cmap="viridis",
                          extent=(min(steps) - 0.5, max(steps) + 0.5, min(turns) - 0.5, max(turns) + 0.5))
        fig.colorbar(image, ax=ax, label="entropy (nats)")
    ax.set_xlabel("training step")
    ax.set_ylabel("turn index")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_drift(per_run_by_label: Mapping[str, Sequence[PerRun]], p_by_label: Mapping[str, Mapping[str, Any]],
               path: str | Path) -> Path:
    """D(T) at the last step vs T on log-log, mean over seeds per strategy, with c T^p per run."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    longest = 2
    for i, (label, runs) in enumerate(per_run_by_label.items()):
        color = f"C{i % 10}"
        curves = [np.asarray(r["drift"]["D"], float) for r in runs if r["drift"]["D"]]
        if not curves:
            continue
        width = max(len(c) for c in curves)
        longest = max(longest, width)
        padded = np.full((len(curves), width), np.nan)
        for j, c in enumerate(curves):
            padded[j, : len(c)] = c
        with np.errstate(all="ignore"):
            mean = np.nanmean(padded, axis=0)
        turns = np.arange(1, width + 1)
        p = p_by_label[label]["mean"]
        ax.plot(turns, mean, marker="o", markersize=3, color=color,
                label=f"{label}: p = {p:.2f}" if p is not None else f"{label}: p = NaN")
        for r in runs:
            c_fit, p_fit = r["drift"]["c"], r["drift"]["p"]
            if math.isfinite(c_fit) and math.isfinite(p_fit):
                ax.plot(turns, c_fit * turns**p_fit, linestyle="--", linewidth=0.8, color=color, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Integer turn labels at 1-2-5 steps; unlabelled minor ticks (labelled ones overlap past T=5).
    ax.xaxis.set_major_locator(FixedLocator([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= longest]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("turns T")
    ax.set_ylabel("D(T) = sum |H_t(last) - H_t(first)|")
    ax.set_title("Cumulative per-turn entropy drift (dashed: c T^p per run)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_post_observation(by_turn_by_label: Mapping[str, Mapping[int, Mapping[str, Any]]], path: str | Path,
                          n_head: int) -> Path:
    """Head/rest entropy ratio by turn index, mean over seeds with its 95 % CI."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (label, by_turn) in enumerate(by_turn_by_label.items()):
        turns = [t for t, s in by_turn.items() if s["mean"] is not None]
        if not turns:
            continue
        mean = np.asarray([by_turn[t]["mean"] for t in turns], float)
        lo = np.asarray([np.nan if by_turn[t]["lo"] is None else by_turn[t]["lo"] for t in turns], float)
        hi = np.asarray([np.nan if by_turn[t]["hi"] is None else by_turn[t]["hi"] for t in turns], float)
        offset = (i - (len(by_turn_by_label) - 1) / 2) * 0.1
        x = np.asarray(turns, float) + offset
        ax.plot(x, mean, marker="o", markersize=3, label=label, color=f"C{i % 10}")
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        ax.errorbar(x[has_ci], mean[has_ci], yerr=[mean[has_ci] - lo[has_ci], hi[has_ci] - mean[has_ci]],
                    fmt="none", color=f"C{i % 10}", capsize=2)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xlabel("turn index")
    ax.set_ylabel(f"entropy of first {n_head} tokens / rest")
    ax.set_title("Post-observation entropy ratio (95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_recurrence(sizes_by_label: Mapping[str, Mapping[str, Mapping[int, int]]], path: str | Path) -> Path:
    """Distribution of step-group sizes (share of step groups) at the first and last iteration."""
    fig, axes = _grid(max(len(sizes_by_label), 1))
    for ax, (label, sizes) in zip(axes, sizes_by_label.items(), strict=False):
        for j, (when, hist) in enumerate(sizes.items()):
            total = sum(hist.values())
            if not total:
                continue
            keys = sorted(int(k) for k in hist)
            share = [hist[k] / total for k in keys]
            ax.bar(np.asarray(keys) + (j - 0.5) * 0.4, share, width=0.4, label=when)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step-group size (steps sharing an anchor state)")
        ax.set_ylabel("share of step groups")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("GiGPO step-group sizes", fontsize=10)
    return _save(fig, path)


def plot_collapse(per_run_by_label: Mapping[str, Sequence[PerRun]], path: str | Path) -> Path:
    """Grad norm, reward std and entropy per run, the largest grad-norm spike marked."""
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 7.5), sharex=True)
    for i, (label, runs) in enumerate(per_run_by_label.items()):
        for j, r in enumerate(runs):
            style = ["-", "--", ":", "-."][j % 4]
            kwargs = {"color": f"C{i % 10}", "linestyle": style, "linewidth": 1}
            for ax, key in zip(axes, ("grad_norm", "reward_std", "entropy"), strict=True):
                ax.plot(r["steps"], r[key], label=f"{label} s{r['seed']}", **kwargs)
            spike = r["collapse"]["spike_step"]
            if spike is not None:
                for ax in axes:
                    ax.axvline(spike, color=f"C{i % 10}", linestyle=style, alpha=0.4)
    for ax, ylabel in zip(axes, ("grad norm", "reward std (within group)", "mean token entropy"), strict=True):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title("Collapse signals (vertical lines: largest grad-norm spike per run)", fontsize=10)
    axes[-1].set_xlabel("training step")
    return _save(fig, path)

