"""Publish a bench: copy each finished cell's compact records next to its report.

A bench folder holds checkpoints, models and trajectories (hundreds of MB per cell); a report
that people should be able to check needs only the per-iteration aggregates. ``export_bench``
copies, for every finished cell, ``metrics.jsonl`` (per-iteration training aggregates and the
held-out evaluations with their per-task outcomes), ``config.yaml`` and ``done.json`` into
``OUT/<cell>/``, then writes the bench report (``report.md``, ``summary.json``, figures) and a
per-cell table (``cells.md``) from those copies alone. Running it again on a clone, where no bench
folder exists, rewrites the report from the committed records: every table and plot is
regenerated without retraining.

    agentropy bench configs/bench/positive_control.yaml --export docs/bench/positive_control
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentropy.errors import UsageError
from agentropy.evals.bench import Cell, cells, load_bench, shown_path

#: The files of a run folder that the bench report and the per-cell table read.
RECORD_FILES = ("metrics.jsonl", "config.yaml", "done.json")


def export_bench(config_path: str | Path, out_dir: str | Path) -> Path:
    """Copy finished cells' records into ``out_dir`` and write the reports there; returns it."""
    from agentropy.evals.report import write_bench_report

    bench, _ = load_bench(config_path)
    bench_dir = Path(bench.root) / bench.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for cell in cells(bench):
        source = bench_dir / cell.name
        if (source / "done.json").exists():
            (out / cell.name).mkdir(exist_ok=True)
            for name in RECORD_FILES:
                shutil.copyfile(source / name, out / cell.name / name)
    present = [c for c in cells(bench) if (out / c.name / "done.json").exists()]
    if not present:
        raise UsageError(f"no finished cell of {config_path} in {bench_dir} or {out}")
    config = shown_path(config_path)
    write_bench_report(out, present, baseline=bench.baseline or next(iter(bench.strategies)),
                       commands=[f"agentropy bench {config}", f"agentropy bench {config} --export {shown_path(out)}"])
    write_cell_table(out, present, total=len(cells(bench)))
    return out


def _records(run_dir: Path) -> list[dict[str, Any]]:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _outcomes(rows: Sequence[dict[str, Any]]) -> list[int] | None:
    """The last row's per-task 0/1 outcomes (None when missing, or when tasks were sampled more
    than once so that an outcome is a rate and McNemar does not apply)."""
    if not rows or any(x not in (0, 1) for x in rows[-1]["success_by_task"]):
        return None
    return [int(x) for x in rows[-1]["success_by_task"]]


def _held_out(records: Sequence[dict[str, Any]]) -> tuple[list[int] | None, list[int] | None]:
    """Per-task outcomes of the evaluation before RL (iteration -1) and the last one after it."""
    evals = [r for r in records if r["phase"] == "eval" and isinstance(r.get("success_by_task"), list)]
    return (_outcomes([r for r in evals if r["iteration"] < 0]),
            _outcomes([r for r in evals if r["iteration"] >= 0]))


def cell_row(run_dir: Path) -> dict[str, Any]:
    """One cell's entropy trend (first / last training iteration) and its held-out change."""
    from agentropy.evals.report import COLLAPSE_RATIO
    from agentropy.evals.stats import mcnemar

    records = _records(run_dir)
    entropies = [r["entropy_mean"] for r in records
                 if r["phase"] == "train" and isinstance(r.get("entropy_mean"), (int, float))]
    row: dict[str, Any] = {"cell": run_dir.name, "entropy_first": None, "entropy_last": None,
                           "ratio": None, "collapsed": None}
    if entropies:
        ratio = entropies[-1] / entropies[0] if entropies[0] > 0 else None
        row.update(entropy_first=entropies[0], entropy_last=entropies[-1], ratio=ratio,
                   collapsed=ratio is not None and ratio < COLLAPSE_RATIO)
    before, after = _held_out(records)
    if before and after and len(before) == len(after):
        test = mcnemar(after, before)
        row.update(before=test.p_b, after=test.p_a, diff=test.diff, lo=test.lo, hi=test.hi, p=test.p, n=test.n)
    return row


def start_lines(out: Path, present: Sequence[Cell]) -> list[str]:
    """A warning when cells of one env did not start from the same SFT model.

    Every paired comparison of the bench assumes a shared start. Cells made in two bench folders
    (another session, another kind of machine) may start from different SFT models; their
    held-out outcomes before RL then differ task by task, which is how this finds them."""
    starts: dict[str, dict[tuple[int, ...] | None, list[str]]] = {}
    for cell in present:
        before, _ = _held_out(_records(out / cell.name))
        starts.setdefault(cell.env, {}).setdefault(tuple(before) if before else None, []).append(cell.name)
    lines = []
    for env, groups in starts.items():
        if len(groups) > 1:
            shown = "; ".join(
                f"{'no record' if key is None else f'{sum(key)}/{len(key)} solved'}: {', '.join(names)}"
                for key, names in groups.items())
            lines += [f"**Warning: the {env} cells did not all start from the same SFT model** (their held-out "
                      f"outcomes before RL differ): {shown}. Comparisons across these groups are not paired.", ""]
    return lines


def machine_lines(out: Path, present: Sequence[Cell]) -> list[str]:
    """Which kind of machine made which cells (from each ``done.json``'s provenance): runs of one
    config and seed differ in their floats across torch's CPU kernels and thread counts, so a
    reader should see whether a comparison mixes them."""
    from agentropy.provenance import machine

    made_by: dict[str, list[str]] = {}
    for cell in present:
        done = json.loads((out / cell.name / "done.json").read_text(encoding="utf-8"))
        record = done.get("provenance")
        key = machine(record) if record else "not recorded (cells finished before runs recorded their machine)"
        made_by.setdefault(key, []).append(cell.name)
    lines = ["Machines (torch's kernels and threads change the floats, so cells made on different kinds of "
             "machine agree only statistically):", ""]
    lines += [f"- {key}: {len(names)} cell{'s' if len(names) > 1 else ''}" for key, names in made_by.items()]
    return lines


def write_cell_table(out: Path, present: Sequence[Cell], total: int) -> Path:
    """``cells.md``: every finished cell's entropy ratio, collapse flag and paired held-out change."""
    from agentropy.evals.report import COLLAPSE_RATIO
    from agentropy.evals.stats import fmt, fmt_p

    lines = [f"# {out.name}: cells", "",
             f"Finished cells: {len(present)} of {total}. Computed from `<cell>/metrics.jsonl` alone.", "",
             f"Collapse criterion: mean token entropy of the last training iteration below {COLLAPSE_RATIO} x the "
             "first. Held-out change: the same tasks before RL and after it, paired (Newcombe 95 % interval, "
             "McNemar p).", "",
             "| cell | entropy first | entropy last | last / first | collapsed | held-out before RL | after RL | "
             "paired difference (95 % CI) | McNemar p | n tasks |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in present:
        r = cell_row(out / cell.name)
        collapsed = "n/a" if r["collapsed"] is None else ("yes" if r["collapsed"] else "no")
        change = (f"{r['diff']:+.3f} [{r['lo']:.3f}, {r['hi']:.3f}]" if "diff" in r else "n/a")
        lines.append(f"| {r['cell']} | {fmt(r['entropy_first'], '{:.4f}')} | {fmt(r['entropy_last'], '{:.4f}')} | "
                     f"{fmt(r['ratio'])} | {collapsed} | {fmt(r.get('before'))} | {fmt(r.get('after'))} | {change} | "
                     f"{fmt_p(r['p']) if 'p' in r else 'n/a'} | {r.get('n', 'n/a')} |")
    lines += ["", *start_lines(out, present), *machine_lines(out, present)]
    path = out / "cells.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
