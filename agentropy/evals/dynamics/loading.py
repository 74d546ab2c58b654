"""Reading run folders into per-iteration numbers (the trajectories are reduced once, then dropped)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agentropy.evals.dynamics.aggregates import (
    AGGREGATES_FILE,
    aggregates_env,
    has_aggregates,
    read_aggregates,
)
from agentropy.evals.dynamics.branching import fork_contrast
from agentropy.evals.dynamics.common import (
    BENCH_CELL,
    TRAJECTORY_FILE,
    AnalysisError,
    _get,
    _number,
)
from agentropy.evals.dynamics.records import IterationStats, RunData
from agentropy.evals.dynamics.statistics import (
    analysed_steps,
    group_reward_std,
    informative_recurrence,
    post_observation,
    post_observation_contrast,
    repeated_output_rate,
    state_recurrence,
    token_entropy_by_turn,
    turn_halves,
)
from agentropy.training.run_log import read_metrics
from agentropy.training.trajectory import Trajectory, read_jsonl

# ----------------------------------------------------------------------------------------------
# Reading runs
# ----------------------------------------------------------------------------------------------


def iteration_stats(iteration: int, trajectories: Sequence[Trajectory], n_head: int) -> IterationStats:
    trajs = [t for t in trajectories if t.kind != "probe"]
    tokens = [h for t in trajs for s in analysed_steps(t) for h in s.entropy]
    repeated, replies = repeated_output_rate(trajs)
    return IterationStats(
        iteration=iteration,
        entropy_mean=float(np.mean(tokens)) if tokens else math.nan,
        success_rate=float(np.mean([t.won for t in trajs])) if trajs else math.nan,
        return_mean=float(np.mean([t.episode_return for t in trajs])) if trajs else math.nan,
        reward_std=group_reward_std(trajs),
        turn_entropy=token_entropy_by_turn(trajs),
        turn_replies=dict(Counter(s.turn for t in trajs for s in analysed_steps(t) if s.entropy)),
        post_obs=post_observation(trajs, n_head),
        recurrence=state_recurrence(trajs),
        repeated=repeated,
        replies=replies,
        trajectories=len(trajs),
        turn_halves=turn_halves(trajs),
        post_contrast=post_observation_contrast(trajs, n_head),
        recurrence_informative=informative_recurrence(trajs),
        forks=fork_contrast(trajs),
    )


def expand_run_dirs(paths: Sequence[str | Path], env: str | None = None) -> list[Path]:
    """Run folders from the command line: a run folder as is, a bench folder as its cells.

    A bench folder holds ``<strategy>__<env>__s<seed>`` cells and ``init__<env>`` SFT folders
    (skipped). ``env`` keeps only bench cells of that env label, or runs whose ``env.id``
    contains it.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise AnalysisError(f"{path}: not a folder")
        if _is_run(path):
            out.append(path.resolve())
            continue
        cells = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("init__") and _is_run(p))
        if not cells:
            raise AnalysisError(f"{path}: neither a run folder (no metrics.jsonl) nor a bench folder "
                                "(no <strategy>__<env>__s<seed> cells with metrics.jsonl)")
        out.extend(c.resolve() for c in cells)
    out = list(dict.fromkeys(out))  # a run named twice is one run
    if env is not None:
        out = [p for p in out if _matches_env(p, env)]
        if not out:
            raise AnalysisError(f"--env {env}: no run matches (bench env label or env.id)")
    return out


def _is_run(path: Path) -> bool:
    """A run folder (metrics.jsonl) or a run's committed aggregates (aggregates.json)."""

    return (path / "metrics.jsonl").exists() or (path / AGGREGATES_FILE).exists()


def _env_id(path: Path) -> Any:

    return aggregates_env(path) if has_aggregates(path) else _get(_read_config(path), "env.id")


def _matches_env(path: Path, env: str) -> bool:
    m = BENCH_CELL.match(path.name)
    if m and m.group("env") == env:
        return True
    return env.lower() in str(_env_id(path) or "").lower()


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.yaml"
    if not config_path.exists():
        raise AnalysisError(f"{path}: no config.yaml (needed for env.id, run.seed and the strategy)")
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise AnalysisError(f"{config_path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise AnalysisError(f"{config_path}: expected a mapping at the top level")
    return data


def enabled_methods(config: Mapping[str, Any]) -> list[str]:
    """Strategy blocks with ``enabled: true``, plus ``entropy_bonus`` for a plain entropy coefficient."""
    strategy = config.get("strategy") or {}
    methods = [name for name, block in strategy.items() if isinstance(block, Mapping) and block.get("enabled") is True]
    if (_number(_get(strategy, "policy_loss.entropy_coef", 0.0)) or 0.0) > 0.0:
        methods.append("entropy_bonus")
    return methods


def strategy_label(path: Path, config: Mapping[str, Any]) -> str:
    """The bench cell's strategy name, else the enabled methods joined by '+' (else the estimator)."""
    m = BENCH_CELL.match(path.name)
    if m:
        return m.group("strategy")
    methods = enabled_methods(config)
    return "+".join(methods) if methods else str(_get(config, "strategy.advantage.estimator", "grpo"))


def trajectory_files(path: Path) -> dict[int, list[Path]]:
    """``trajectories/iter_{k:06d}_rank{r}.jsonl`` grouped by iteration k (all ranks together)."""
    files: dict[int, list[Path]] = defaultdict(list)
    folder = path / "trajectories"
    if folder.is_dir():
        for f in folder.iterdir():
            m = TRAJECTORY_FILE.match(f.name)
            if m:
                files[int(m.group(1))].append(f)
    return {k: sorted(v) for k, v in sorted(files.items())}


def _no_trajectories(path: Path) -> AnalysisError:
    return AnalysisError(f"{path}: no trajectories (expected {path / 'trajectories'}/iter_000000_rank0.jsonl; "
                         "was the run made with run.save_trajectories=false?)")


def load_run(path: str | Path, n_head: int = 4, on_iteration: Callable[[], None] | None = None) -> RunData:
    """Read a run folder. Raises :class:`AnalysisError` naming the folder when something is missing."""
    path = Path(path)
    config = _read_config(path)
    env_id = _get(config, "env.id")
    if not env_id:
        raise AnalysisError(f"{path / 'config.yaml'}: env.id is missing")
    if not (path / "metrics.jsonl").exists():
        raise AnalysisError(f"{path}: no metrics.jsonl")
    files = trajectory_files(path)
    if not files:
        raise _no_trajectories(path)
    records: dict[int, dict[str, Any]] = {}
    for record in read_metrics(path):
        if record.get("phase") == "train" and isinstance(record.get("iteration"), int):
            records[record["iteration"]] = record  # a later line of the same iteration wins
    iterations = {}
    for k, paths in files.items():
        trajs = [t for f in paths for t in read_jsonl(f)]
        iterations[k] = iteration_stats(k, trajs, n_head)
        if on_iteration is not None:
            on_iteration()
    seed = _get(config, "run.seed", 0)
    m = BENCH_CELL.match(path.name)
    return RunData(path=path, strategy=strategy_label(path, config), env_id=str(env_id),
                   seed=int(m.group("seed")) if m else int(seed), methods=enabled_methods(config),
                   records=records, iterations=iterations)


def load_runs(paths: Sequence[str | Path], n_head: int = 4, env: str | None = None,
              progress: bool = True) -> list[RunData]:
    """Expand bench folders, check that every run has trajectories and all share one environment
    (before reading anything), then read the runs."""

    dirs = expand_run_dirs(paths, env)
    envs = {d: _env_id(d) for d in dirs}
    files = {d: trajectory_files(d) for d in dirs}
    first = dirs[0]
    for d in dirs:
        if not files[d] and not has_aggregates(d):
            raise _no_trajectories(d)
        if envs[d] != envs[first]:
            raise AnalysisError(
                f"{d}: env.id is {envs[d]!r} but {first} has {envs[first]!r}; analyze one environment at a "
                "time (--env LABEL keeps the bench cells of one env)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = sum(len(f) for f in files.values())
    runs = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("reading trajectories", total=total)
        for d in dirs:
            bar.update(task, description=f"reading {d.name}")
            runs.append(read_aggregates(d, n_head) if has_aggregates(d)
                        else load_run(d, n_head, on_iteration=lambda: bar.advance(task)))
    return runs


