"""The strategy benchmark: strategies x environments x seeds, same tasks, budget and start.

A bench config names a base training config, the strategies (each a strategy YAML), the
environments (each a set of overrides) and the seeds. For every environment the SFT warm
start runs once and its model is the initial checkpoint of every cell, so strategies differ
only in what they do during RL. Cells run one after another and the bench is resumable cell
by cell: a finished cell has ``done.json``; an interrupted one resumes from its checkpoint.

Several bench processes may work on one bench at once (``agentropy bench CONFIG`` started
twice, on one machine or on machines sharing the folder): each cell, and each env's SFT start,
is claimed with an exclusive lock on ``<cell>/.lock`` while it runs, and a worker skips the cells
another one holds. ``only`` (``--cells`` on the command line) restricts a process to the cells
whose names match one of its shell patterns, e.g. ``grpo__*`` for a baseline-only check.

    agentropy bench configs/bench/micro.yaml
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentropy.configuration import ConfigError, deep_merge, from_dict, read_yaml
from agentropy.training.run_folder import run_provenance


@dataclass
class BenchConfig:
    """A benchmark matrix."""

    name: str = "bench"  # bench folder is <root>/<name>
    root: str = "runs/bench"  # parent folder
    base: str = "../household.yaml"  # training config every cell starts from (relative to this file)
    strategies: dict[str, str] = field(default_factory=dict)  # label -> strategy YAML (relative)
    envs: dict[str, list[str]] = field(default_factory=lambda: {"household": []})  # label -> overrides
    seeds: list[int] = field(default_factory=lambda: [0])  # one cell per seed
    overrides: list[str] = field(default_factory=list)  # applied to every cell (the shared budget)
    shared_init: bool = True  # one SFT warm start per env, shared by all cells
    baseline: str | None = None  # arm every other arm is compared with (default: the first strategy)
    # Held-out tasks per evaluation, the same fixed set for every cell. 256 tasks put the standard
    # error of a success rate near 0.03; fewer cannot separate arms that differ by a few points.
    # Applied before the bench overrides, so ``eval.episodes=...`` there (or on the command line)
    # still wins for quick or CI-sized benches.
    eval_episodes: int = 256


@dataclass
class Cell:
    strategy: str
    env: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy}__{self.env}__s{self.seed}"


def load_bench(path: str | Path) -> tuple[BenchConfig, Path]:
    path = Path(path)
    try:
        cfg = from_dict(BenchConfig, read_yaml(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not cfg.strategies:
        raise ConfigError(f"{path}: strategies: at least one strategy is needed")
    if cfg.baseline is not None and cfg.baseline not in cfg.strategies:
        raise ConfigError(f"{path}: baseline: {cfg.baseline!r} is not one of the strategies {list(cfg.strategies)}")
    if cfg.eval_episodes < 1:
        raise ConfigError(f"{path}: eval_episodes: must be >= 1, got {cfg.eval_episodes}")
    for label, strategy_file in cfg.strategies.items():
        if not (path.parent / strategy_file).exists():
            raise ConfigError(f"{path}: strategies.{label}: file {strategy_file!r} not found")
    return cfg, path.parent


def shown_path(path: str | Path) -> str:
    """``path`` as a reader of a report types it: relative to the working directory when under
    it, else relative to the project folder that holds it (the nearest parent with a
    ``pyproject.toml``: a config or report folder of a checkout used from another one)."""
    path = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd().resolve()))
    root = next((p for p in path.parents if (p / "pyproject.toml").exists()), None)
    return str(path.relative_to(root)) if root else str(path)


def cells(cfg: BenchConfig) -> list[Cell]:
    return [Cell(s, e, seed) for e in cfg.envs for s in cfg.strategies for seed in cfg.seeds]


def _cell_config(bench: BenchConfig, folder: Path, cell: Cell, init_model: Path | None, extra: list[str]) -> Any:
    """Base config <- strategy file <- env overrides <- bench overrides <- cell identity."""
    from agentropy.configuration import apply_override
    from agentropy.training.config import Config, check_trainable

    data = deep_merge(read_yaml(folder / bench.base), read_yaml(folder / bench.strategies[cell.strategy]))
    overrides = [f"eval.episodes={bench.eval_episodes}", *bench.envs[cell.env], *bench.overrides, *extra,
                 f"run.name={cell.name}", f"run.root={Path(bench.root) / bench.name}", f"run.seed={cell.seed}"]
    if init_model is not None:
        overrides += [f"model.path={init_model}", "sft.enabled=false"]
    for text in overrides:
        data = apply_override(data, text)
    cfg = from_dict(Config, data)
    cfg.strategy.validate()
    check_trainable(cfg, f"bench cell {cell.name}")
    return cfg


@contextlib.contextmanager
def _claim(cell_dir: Path, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock on ``cell_dir/.lock`` for the block; yields whether it was taken.

    ``wait=False`` yields False at once when another process holds the cell. The lock is the
    operating system's (``flock``), so a crashed worker's cell is free again immediately."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def select_cells(all_cells: list[Cell], only: list[str] | None) -> list[Cell]:
    """The cells whose names match one of the shell patterns in ``only`` (all when empty)."""
    if not only:
        return list(all_cells)
    chosen = [c for c in all_cells if any(fnmatch.fnmatchcase(c.name, pattern) for pattern in only)]
    if not chosen:
        names = ", ".join(c.name for c in all_cells)
        raise ConfigError(f"--cells {' '.join(only)}: matches none of the bench's cells ({names})")
    return chosen


def _init_model(bench: BenchConfig, folder: Path, env: str, extra: list[str]) -> Path:
    """SFT once per env (seed of the first cell), saved as the shared initial checkpoint.

    A second worker that reaches it while the first is training waits for it."""
    out = Path(bench.root) / bench.name / f"init__{env}"
    with _claim(out, wait=True):
        return _train_init_model(bench, folder, env, extra, out)


def _train_init_model(bench: BenchConfig, folder: Path, env: str, extra: list[str], out: Path) -> Path:
    from agentropy.training.trainer import train

    model_dir = out / "final_model"
    if (out / "done.json").exists():
        return model_dir
    cell = Cell("init", env, bench.seeds[0])
    cfg = _cell_config(bench, folder, Cell(next(iter(bench.strategies)), env, bench.seeds[0]), None, extra)
    cfg.run.name, cfg.train.iterations = out.name, 0
    cfg.strategy = type(cfg.strategy)()
    result = train(cfg)
    (out / "done.json").write_text(json.dumps({"cell": cell.name, "sft_success": result.sft_success,
                                               "provenance": run_provenance(out)}))
    return model_dir


def run_bench(path: str | Path, extra_overrides: list[str] | None = None, only: list[str] | None = None) -> Path:
    """Run every unfinished cell of the bench, then write the report; returns the bench folder.

    ``only``: shell patterns of the cell names to run (the report still covers every finished
    cell). Cells held by another bench process are skipped (see the module docstring)."""
    from agentropy.evals.report import write_bench_report

    bench, folder = load_bench(path)
    extra = list(extra_overrides or [])
    todo = select_cells(cells(bench), only)
    bench_dir = Path(bench.root) / bench.name
    bench_dir.mkdir(parents=True, exist_ok=True)
    envs = sorted({c.env for c in todo}, key=list(bench.envs).index)
    init_models = {env: _init_model(bench, folder, env, extra) if bench.shared_init else None for env in envs}
    for cell in todo:
        cell_dir = bench_dir / cell.name
        if (cell_dir / "done.json").exists():
            continue
        with _claim(cell_dir, wait=False) as mine:
            if mine and not (cell_dir / "done.json").exists():
                _run_cell(bench, folder, cell, cell_dir, init_models[cell.env], extra)
    write_bench_report(bench_dir, [c for c in cells(bench)], baseline=bench.baseline or next(iter(bench.strategies)),
                       commands=[f"agentropy bench {shown_path(path)}"])
    return bench_dir


def _run_cell(bench: BenchConfig, folder: Path, cell: Cell, cell_dir: Path, init_model: Path | None,
              extra: list[str]) -> None:
    from agentropy.evals.report import write_run_report
    from agentropy.training.trainer import train

    cfg = _cell_config(bench, folder, cell, init_model, extra)
    resume = (cell_dir / "checkpoints").exists() and any((cell_dir / "checkpoints").glob("iter_*"))
    if not resume:  # a cell that died before its first checkpoint starts over, not appended to
        for leftover in cell_dir.iterdir():
            if leftover.name != ".lock":
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    t0 = time.perf_counter()
    result = train(cfg, resume=resume)
    write_run_report(cell_dir)
    (cell_dir / "done.json").write_text(json.dumps({
        "cell": cell.name, "strategy": cell.strategy, "env": cell.env, "seed": cell.seed,
        "sft_success": result.sft_success, "final_success": result.final_success,
        "wall_s": time.perf_counter() - t0, "provenance": run_provenance(cell_dir),
    }))
