"""Export a bench's compact records and regenerate its report from them alone.

The cells are the first positive-control regime's committed GRPO records (real runs), laid out
as a bench folder; the numbers checked below were computed from them by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agentropy.errors import UsageError
from agentropy.evals.bench import shown_path
from agentropy.evals.bench_export import cell_row, export_bench

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "bench" / "positive_control" / "tried" / "t07_lr1e-3_24it" / "cells"


def make_bench(tmp_path: Path) -> Path:
    """A bench config over seeds 0-2 of GRPO whose folder holds the finished cells of seeds 0-1."""
    config = tmp_path / "pc.yaml"
    config.write_text(f"name: pc\nroot: {tmp_path / 'runs'}\nbase: {ROOT / 'configs' / 'household.yaml'}\n"
                      f"strategies: {{grpo: {ROOT / 'configs' / 'strategies' / 'grpo.yaml'}}}\nseeds: [0, 1, 2]\n")
    for seed in (0, 1):
        cell = tmp_path / "runs" / "pc" / f"grpo__household__s{seed}"
        cell.mkdir(parents=True)
        shutil.copyfile(RECORDS / f"{cell.name}.jsonl", cell / "metrics.jsonl")
        shutil.copyfile(RECORDS / f"{cell.name}.config.yaml", cell / "config.yaml")
        (cell / "done.json").write_text(json.dumps({"cell": cell.name}))
        (cell / "checkpoints").mkdir()  # what a real cell also holds, and the export leaves behind
    return config


def test_export_copies_only_the_records_and_the_cell_table_holds_their_numbers(tmp_path):
    config = make_bench(tmp_path)
    out = export_bench(config, tmp_path / "docs")
    assert sorted(p.name for p in (out / "grpo__household__s1").iterdir()) == ["config.yaml", "done.json",
                                                                                "metrics.jsonl"]
    assert not (out / "grpo__household__s2").exists()  # unfinished cells are not exported
    table = (out / "cells.md").read_text()
    assert "Finished cells: 2 of 3" in table
    row = next(line for line in table.splitlines() if line.startswith("| grpo__household__s1 |"))
    # seed 1: entropy 0.1051 -> 0.0504 over 24 iterations (0.479 < 0.5); held-out 75/256 -> 93/256
    assert row.split(" | ")[1:5] == ["0.1051", "0.0504", "0.479", "yes"]
    assert "| 0.293 | 0.363 | +0.070 [0.028, 0.113] | 0.00265 | 256 |" in row
    r0 = cell_row(out / "grpo__household__s0")
    assert r0["collapsed"] is False and r0["ratio"] == pytest.approx(0.0545 / 0.1020, abs=2e-3)
    assert (out / "report.md").read_text().count("grpo") >= 1 and (out / "summary.json").exists()


def test_the_report_names_the_commands_that_made_it(tmp_path, monkeypatch):
    config = make_bench(tmp_path)
    monkeypatch.chdir(tmp_path)
    export_bench(config, tmp_path / "docs")
    assert "Made by `agentropy bench pc.yaml`, then `agentropy bench pc.yaml --export docs`." in (
        tmp_path / "docs" / "report.md").read_text()
    # used from another checkout: paths relative to the project that holds them
    project = tmp_path / "project"
    (project / "configs" / "bench").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert shown_path(project / "configs" / "bench" / "x.yaml") == "configs/bench/x.yaml"
    assert shown_path(tmp_path / "elsewhere" / "a.yaml") == "a.yaml"
    assert shown_path(tmp_path / "pc.yaml") == str(tmp_path / "pc.yaml")


def test_the_report_is_regenerated_from_the_exported_records_alone(tmp_path):
    config = make_bench(tmp_path)
    out = export_bench(config, tmp_path / "docs")
    first = (out / "cells.md").read_text(), (out / "report.md").read_text()
    shutil.rmtree(tmp_path / "runs")  # a clone: the bench folder is gone, the records are committed
    (out / "cells.md").unlink()
    (out / "report.md").unlink()
    export_bench(config, out)
    assert ((out / "cells.md").read_text(), (out / "report.md").read_text()) == first


def test_export_with_nothing_finished_says_where_it_looked(tmp_path):
    config = make_bench(tmp_path)
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(UsageError, match="no finished cell"):
        export_bench(config, tmp_path / "docs")


def test_task_level_table_pools_seeds_and_says_it_holds_the_runs_fixed():
    from agentropy.evals.report import _task_level_success

    def runs(outcomes_by_seed):
        return {seed: [{"phase": "eval", "iteration": 5, "success_by_task": o}] for seed, o in outcomes_by_seed.items()}

    grpo = runs({0: [1, 1, 0, 0], 1: [1, 0, 0, 0]})
    arm = runs({0: [1, 0, 1, 1], 1: [1, 1, 1, 0]})  # seed 0: only arm 2, only grpo 1; seed 1: only arm 2
    lines = _task_level_success({"grpo": grpo, "arm": arm}, "grpo")
    # 8 units: arm 6/8, grpo 3/8; 4 discordant for the arm, 1 for grpo: exact binomial p = 0.375
    row = next(line for line in lines if line.startswith("| arm | 0"))  # not the header
    assert row.startswith("| arm | 0.750 | 0.375 | +0.375 |") and "| 4 / 1 | 0.375 (exact binomial) | 8 |" in row
    assert any("holds the runs fixed" in line for line in lines)
