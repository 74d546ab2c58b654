"""A 2 strategies x 1 env x 2 seeds micro-bench: report and plots hold the runs' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentropy.configuration import ConfigError
from agentropy.evals.bench import load_bench, run_bench
from agentropy.evals.report import run_summary

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write_bench(tmp_path, strategies=("grpo", "epo")) -> Path:
    micro = (CONFIGS / "bench" / "micro.yaml").read_text()
    micro = micro.replace("root: runs/bench", f"root: {tmp_path / 'bench'}")
    micro = micro.replace("base: ../household.yaml", f"base: {CONFIGS / 'household.yaml'}")
    for name in ("grpo", "epo"):
        micro = micro.replace(f"../strategies/{name}.yaml", str(CONFIGS / "strategies" / f"{name}.yaml"))
    micro += f"  - model.tiny_dir={tmp_path / 'tiny'}\n  - run.progress=false\n"
    path = tmp_path / "micro.yaml"
    path.write_text(micro)
    return path


@pytest.mark.slow
def test_micro_bench_report_holds_metrics(tmp_path):
    bench_dir = run_bench(write_bench(tmp_path))
    cells = sorted(p.name for p in bench_dir.iterdir() if (p / "done.json").exists())
    assert cells == ["epo__household__s0", "epo__household__s1", "grpo__household__s0",
                     "grpo__household__s1", "init__household"]
    report = (bench_dir / "report.md").read_text()
    summary = json.loads((bench_dir / "summary.json").read_text())
    for strategy in ("grpo", "epo"):
        sums = [run_summary(bench_dir / f"{strategy}__household__s{seed}") for seed in (0, 1)]
        assert summary[f"{strategy}/household"] == sums
        lines = report.splitlines()
        table = next(i for i, line in enumerate(lines) if line.startswith("| strategy | methods |"))
        row = next(line for line in lines[table:] if line.startswith(f"| {strategy} |"))
        entropies = [s["entropy_mean"] for s in sums]
        mean = sum(entropies) / 2
        assert f"{mean:.3f}" in row, (row, entropies)
    for png in ("household_entropy_vs_step.png", "household_train_success_vs_step.png",
                "household_heldout_success_vs_step.png", "household_entropy_vs_turn.png"):
        assert (bench_dir / "figures" / png).stat().st_size > 1000
    # All cells start from the same SFT checkpoint and are scored on the same test tasks.
    sft = {json.loads((bench_dir / c / "done.json").read_text())["sft_success"] for c in cells if c != "init__household"}
    assert len(sft) == 1
    # Each cell names the machine facts that made it (torch's kernels and threads change the floats).
    made = json.loads((bench_dir / "grpo__household__s0" / "done.json").read_text())["provenance"]
    assert made["threads"] >= 1 and made["cpu_capability"]
    assert "Made by: torch" in (bench_dir / "grpo__household__s0" / "report.md").read_text()
    # Re-running skips finished cells (resumable cell by cell).
    before = (bench_dir / "grpo__household__s0" / "metrics.jsonl").read_text()
    run_bench(write_bench(tmp_path))
    assert (bench_dir / "grpo__household__s0" / "metrics.jsonl").read_text() == before


def test_bench_config_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("strategies: {grpo: nowhere.yaml}\n")
    with pytest.raises(ConfigError, match="strategies.grpo"):
        load_bench(path)
    path.write_text("strategies: {}\nseedz: [1]\n")
    with pytest.raises(ConfigError, match="seedz"):
        load_bench(path)


def test_bench_eval_set_defaults_to_256_tasks_and_overrides_win(tmp_path):
    from agentropy.evals.bench import Cell, _cell_config

    path = write_bench(tmp_path)
    bench, folder = load_bench(path)
    assert bench.eval_episodes == 256 and bench.baseline is None
    cell = Cell("epo", "household", 0)
    assert _cell_config(bench, folder, cell, None, []).eval.episodes == 2  # micro.yaml's override wins
    bench.overrides = [o for o in bench.overrides if not o.startswith("eval.episodes")]
    assert _cell_config(bench, folder, cell, None, []).eval.episodes == 256
    assert _cell_config(bench, folder, cell, None, ["eval.episodes=8"]).eval.episodes == 8
    path.write_text(path.read_text() + "baseline: sac\n")
    with pytest.raises(ConfigError, match="baseline"):
        load_bench(path)


def test_cells_filter_matches_shell_patterns_and_refuses_a_pattern_matching_nothing():
    from agentropy.evals.bench import Cell, select_cells

    all_cells = [Cell(s, "household", seed) for s in ("grpo", "epo") for seed in (0, 1)]
    assert select_cells(all_cells, None) == all_cells
    assert [c.name for c in select_cells(all_cells, ["grpo__*"])] == ["grpo__household__s0", "grpo__household__s1"]
    assert [c.name for c in select_cells(all_cells, ["*__s1", "epo__household__s0"])] == [
        "grpo__household__s1", "epo__household__s0", "epo__household__s1"]
    with pytest.raises(ConfigError, match="matches none.*grpo__household__s0"):
        select_cells(all_cells, ["sac__*"])


def test_a_cell_held_by_another_worker_is_skipped_and_a_free_one_runs(tmp_path, monkeypatch):
    """Two bench processes share the work: the lock on <cell>/.lock decides who runs a cell."""
    import agentropy.evals.bench as bench_mod
    import agentropy.evals.report as report_mod

    path = write_bench(tmp_path)
    bench, _ = load_bench(path)
    bench_dir = Path(bench.root) / bench.name
    ran: list[str] = []
    monkeypatch.setattr(bench_mod, "_init_model", lambda *a: tmp_path / "init")
    monkeypatch.setattr(bench_mod, "_run_cell", lambda b, f, cell, cell_dir, *a: ran.append(cell.name))
    monkeypatch.setattr(report_mod, "write_bench_report", lambda *a, **k: None)
    (bench_dir / "grpo__household__s1").mkdir(parents=True)
    (bench_dir / "grpo__household__s1" / "done.json").write_text("{}")  # finished: skipped
    with bench_mod._claim(bench_dir / "epo__household__s0", wait=False) as mine:  # another worker's cell
        assert mine
        with bench_mod._claim(bench_dir / "epo__household__s0", wait=False) as again:
            assert not again  # a second claim on a held cell fails at once
        run_bench(path)
    assert ran == ["grpo__household__s0", "epo__household__s1"]
    ran.clear()
    run_bench(path, only=["epo__*"])  # the lock was released: the cell is free again
    assert ran == ["epo__household__s0", "epo__household__s1"]
