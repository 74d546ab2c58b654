"""Compact per-iteration aggregates of a run: what ``agentropy analyze`` needs, without the
trajectories.

A report commits them next to itself (``<out>/aggregates/<run>/aggregates.json``, a few kB
per run) so that a reader regenerates every table and figure from a clone:
``agentropy analyze <out>/aggregates --out <somewhere>``. The per-iteration numbers depend on
``--head-tokens`` (the post-observation split), which is stored with them and checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from agentropy.evals.dynamics.branching import ForkContrast
from agentropy.evals.dynamics.common import AnalysisError
from agentropy.evals.dynamics.records import IterationStats, RunData
from agentropy.evals.dynamics.statistics import PostObsContrast, PostObsCounts, Recurrence

AGGREGATES_FILE = "aggregates.json"
FORMAT_VERSION = 1


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, dict keys -> str, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def run_to_json(run: RunData, n_head: int) -> dict[str, Any]:
    return _clean({"format": FORMAT_VERSION, "n_head": n_head, "name": run.name, "strategy": run.strategy,
                   "env_id": run.env_id, "seed": run.seed, "methods": run.methods, "records": run.records,
                   "iterations": {k: dataclasses.asdict(it) for k, it in run.iterations.items()}})


def _recurrence(d: dict[str, Any]) -> Recurrence:
    return Recurrence(states=d["states"], recurring=d["recurring"], groups=d["groups"],
                      step_group_sizes={int(k): v for k, v in d["step_group_sizes"].items()})


def _iteration(d: dict[str, Any]) -> IterationStats:
    contrast = d["post_contrast"]
    return IterationStats(
        iteration=d["iteration"], entropy_mean=_float(d["entropy_mean"]), success_rate=_float(d["success_rate"]),
        return_mean=_float(d["return_mean"]), reward_std=_float(d["reward_std"]),
        turn_entropy={int(t): _float(h) for t, h in d["turn_entropy"].items()},
        turn_replies={int(t): n for t, n in d["turn_replies"].items()},
        post_obs={int(t): PostObsCounts(**c) for t, c in d["post_obs"].items()},
        recurrence=_recurrence(d["recurrence"]), repeated=d["repeated"], replies=d["replies"],
        trajectories=d["trajectories"],
        turn_halves={int(t): tuple(v) for t, v in d["turn_halves"].items()},
        post_contrast=PostObsContrast(content=PostObsCounts(**contrast["content"]),
                                      **{k: v for k, v in contrast.items() if k != "content"}),
        recurrence_informative=_recurrence(d["recurrence_informative"]),
        # aggregates written before the branching statistic existed have no forks (runs without AEPO)
        forks=ForkContrast(by_turn={int(t): list(row) for t, row in (d.get("forks") or {}).get("by_turn", {}).items()}),
    )


def aggregate_folder_names(runs: list[RunData]) -> list[str]:
    """One distinct folder name per run: the run folder's name, with ``__s<seed>`` added when
    several runs share it (seeds of one config, each in its own ``run.root``), and then a
    counter if even that repeats. Without this, runs of the same name overwrite each other."""
    counts = Counter(run.name for run in runs)
    names = [run.name if counts[run.name] == 1 else f"{run.name}__s{run.seed}" for run in runs]
    seen: Counter[str] = Counter()
    repeated = Counter(names)
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if repeated[name] == 1 else f"{name}__{seen[name]}")
    return unique


def write_aggregates(runs: list[RunData], out_dir: str | Path, n_head: int) -> list[Path]:
    """``<out_dir>/aggregates/<name>/aggregates.json`` for every run (names from
    :func:`aggregate_folder_names`); returns the files."""
    paths = []
    for run, name in zip(runs, aggregate_folder_names(runs), strict=True):
        path = Path(out_dir) / "aggregates" / name / AGGREGATES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run_to_json(run, n_head), separators=(",", ":")))
        paths.append(path)
    return paths


def read_aggregates(folder: str | Path, n_head: int) -> RunData:
    """A run from its aggregates; raises :class:`AnalysisError` when ``n_head`` differs from theirs."""
    folder = Path(folder)
    data = json.loads((folder / AGGREGATES_FILE).read_text())
    if data.get("format") != FORMAT_VERSION:
        raise AnalysisError(f"{folder / AGGREGATES_FILE}: format {data.get('format')!r}, expected {FORMAT_VERSION}")
    if data["n_head"] != n_head:
        raise AnalysisError(f"{folder}: aggregates were computed with --head-tokens {data['n_head']}, not {n_head}")
    records = {int(k): {kk: (math.nan if vv is None else vv) for kk, vv in r.items()} for k, r in data["records"].items()}
    return RunData(path=folder, strategy=data["strategy"], env_id=data["env_id"], seed=int(data["seed"]),
                   methods=list(data["methods"]), records=records,
                   iterations={int(k): _iteration(it) for k, it in data["iterations"].items()})


def has_aggregates(folder: Path) -> bool:
    return (folder / AGGREGATES_FILE).exists() and not (folder / "metrics.jsonl").exists()


def aggregates_env(folder: Path) -> str:
    return str(json.loads((folder / AGGREGATES_FILE).read_text())["env_id"])
