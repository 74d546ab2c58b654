"""The bench report's collapse and corridor columns, from hand-written metrics."""

from __future__ import annotations

import json

import pytest
import yaml

from agentropy.evals.bench import Cell
from agentropy.evals.report import _corridor_bounds, run_summary, write_bench_report


def write_run(folder, entropies, viol=None, kappa=None):
    """A run folder with one train record per entropy (and EPO's corridor stats when given)."""
    folder.mkdir(parents=True)
    records = [{"phase": "eval", "iteration": -1, "success_rate": 0.25}]
    for i, h in enumerate(entropies):
        record = {"phase": "train", "iteration": i, "entropy_mean": h, "success_rate": 0.5,
                  "time_s": 2.0, "train_tokens": 100.0, "epo/reference_mean": entropies[0]}
        if viol is not None:
            record["epo/viol_low"], record["epo/viol_high"] = viol[i]
        records.append(record)
    records.append({"phase": "eval", "iteration": len(entropies) - 1, "success_rate": 0.5})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if kappa is not None:
        epo = {"enabled": True, "kappa_l": kappa[0], "kappa_r": kappa[1]}
        (folder / "config.yaml").write_text(yaml.safe_dump({"strategy": {"epo": epo}}))


def test_entropy_ratio_and_corridor_fractions(tmp_path):
    write_run(tmp_path / "grpo__h__s0", [0.4, 0.3, 0.1])
    write_run(tmp_path / "grpo__h__s1", [0.5, 0.5, 0.4])
    write_run(tmp_path / "epo__h__s0", [0.4, 0.4, 0.36], viol=[(0.0, 0.0), (0.1, 0.3), (0.2, 0.0)], kappa=(0.5, 1.5))
    grpo = run_summary(tmp_path / "grpo__h__s0")
    assert grpo["entropy_ratio"] == pytest.approx(0.25) and grpo["collapsed"]
    assert grpo["corridor_low"] is None and grpo["corridor_high"] is None
    epo = run_summary(tmp_path / "epo__h__s0")
    assert epo["entropy_ratio"] == pytest.approx(0.9) and not epo["collapsed"]
    assert epo["corridor_low"] == pytest.approx(0.1) and epo["corridor_high"] == pytest.approx(0.1)

    cells = [Cell("grpo", "h", 0), Cell("grpo", "h", 1), Cell("epo", "h", 0)]
    report = write_bench_report(tmp_path, cells).read_text()
    descriptive = report.split("### All arms")[1].splitlines()
    header = next(line for line in descriptive if line.startswith("| strategy |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in descriptive if line.startswith(("| grpo |", "| epo |"))}
    ratio, collapsed, corridor = (columns.index(k) for k in ("entropy last/first", "collapsed",
                                                             "outside corridor low / high"))
    # (0.25 + 0.8) / 2 = 0.525; sample SD |0.8 - 0.25| / sqrt(2) = 0.389 (the population SD 0.275 understates it)
    assert rows["grpo"][ratio] == "0.525 ± 0.389"
    assert rows["grpo"][collapsed] == "1/2" and rows["grpo"][corridor] == "n/a"
    assert rows["epo"][ratio] == "0.900"  # one seed: no SD to show
    assert rows["epo"][corridor] == "0.100 / 0.100"
    assert "mean ± sample SD" in report
    methods = columns.index("methods")
    assert rows["grpo"][methods] == "grpo" and rows["epo"][methods] == "grpo + epo"
    # The corridor plots use each run's own kappas; GRPO's shows EPO's default corridor.
    assert (tmp_path / "figures" / "h_epo_epo_corridor.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "h_grpo_epo_corridor.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "h_epo_viol_low.png").exists()
    assert _corridor_bounds(tmp_path / "epo__h__s0") == (0.5, 1.5)
    assert _corridor_bounds(tmp_path / "grpo__h__s0") == (0.0, 2.0)


def test_twelve_series_get_distinct_styles():
    from agentropy.evals.plots import series_style

    styles = {tuple(sorted(series_style(i).items())) for i in range(12)}
    assert len(styles) == 12
    assert series_style(10) == {"color": "C0", "linestyle": "--"}


def test_vs_baseline_table_pairs_seeds(tmp_path):
    grpo = {0: [0.4, 0.3, 0.1], 1: [0.5, 0.5, 0.4], 2: [0.5, 0.3, 0.25]}  # last/first 0.25, 0.8, 0.5
    epo = {0: [0.4, 0.4, 0.36], 1: [0.5, 0.5, 0.45], 2: [0.5, 0.5, 0.5]}  # last/first 0.9, 0.9, 1.0
    for seed in range(3):
        write_run(tmp_path / f"grpo__h__s{seed}", grpo[seed])
        write_run(tmp_path / f"epo__h__s{seed}", epo[seed])
    write_run(tmp_path / "epo__h__s7", [0.5, 0.5, 0.5])  # no grpo partner: left out of the pairs
    cells = [Cell(s, "h", seed) for s in ("grpo", "epo") for seed in (0, 1, 2)] + [Cell("epo", "h", 7)]
    report = write_bench_report(tmp_path, cells, baseline="grpo").read_text()
    assert report.index("### vs baseline (grpo)") < report.index("### All arms")
    row = next(line for line in report.splitlines() if line.startswith("| epo | entropy last/first |"))
    cells_ = [c.strip() for c in row.strip("|").split("|")]
    # differences 0.65, 0.10, 0.50: mean 0.41667, sample SD sqrt(0.161667 / 2) = 0.284312, se 0.164148,
    # t = 2.53835 on 2 df -> p = 0.1264; half-width 4.302653 * 0.164148 = 0.706270
    # MDD at 80 % power, n = 3: 3.2641 x 0.284312 = 0.9280
    assert cells_[2:] == ["0.933", "0.517", "+0.417", "[-0.290, 1.123]", "0.126", "0.928", "3 (0, 1, 2)"]
    assert "Seeds: 0, 1, 2, 7" in report and "held-out tasks per evaluation" in report
    assert "3.26 x SD" in report
    summary = json.loads((tmp_path / "summary.json").read_text())["vs_baseline/h"]
    ratio_row = next(r for r in summary["rows"] if r["metric"] == "entropy_ratio")
    assert ratio_row["ci95"] == pytest.approx([-0.28960, 1.12294], abs=1e-4) and ratio_row["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match="baseline arm"):
        write_bench_report(tmp_path, cells, baseline="nope")


def test_task_level_success_uses_mcnemar(tmp_path):
    for arm, outcomes in (("grpo", [1, 0, 0, 0, 1, 0]), ("epo", [1, 1, 1, 1, 1, 0])):
        folder = tmp_path / f"{arm}__h__s0"
        write_run(folder, [0.4, 0.3])
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        final = json.loads(lines[-1])
        final.update(success_by_task=outcomes, episodes=len(outcomes))
        (folder / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(final)]) + "\n")
    report = write_bench_report(tmp_path, [Cell("grpo", "h", 0), Cell("epo", "h", 0)]).read_text()
    # epo wins 3 tasks grpo lost, loses none: exact p = 2 / 2^3 = 0.25
    row = next(line for line in report.splitlines() if line.startswith("| epo | 0.833 |"))
    assert "| +0.500 |" in row and "| 3 / 0 |" in row and "0.25 (exact binomial)" in row
    assert "held-out tasks per evaluation: 6" in report


def test_comparison_from_the_committed_collapse_summary():
    """docs/bench/collapse/summary.json (3 seeds): EPO - GRPO in entropy last/first is -0.11 with a
    95 % CI of about [-0.70, 0.47], far inside what 3 seeds can detect."""
    from pathlib import Path

    from agentropy.evals.comparison import comparison_from_summary

    summary = Path(__file__).resolve().parents[2] / "docs" / "bench" / "collapse" / "summary.json"
    lines = comparison_from_summary(summary, seeds=[0, 1, 2], baseline="grpo")
    row = next(line for line in lines if line.startswith("| epo | entropy last/first |"))
    assert "| -0.114 | [-0.697, 0.470] | 0.49 | 0.766 | 3 (0, 1, 2) |" in row
    assert "| grpo | 3 | 0.302 ± 0.024 |" in "\n".join(lines)  # sample SD, not the population SD 0.019
    with pytest.raises(ValueError, match="3 runs but 2 seeds"):
        comparison_from_summary(summary, seeds=[0, 1])


def test_tool_use_and_aepo_rows_appear_for_runs_that_report_them(tmp_path):
    """Final held-out tool metrics are compared like success; AEPO arms get their branching table."""
    f1 = {("grpo", 0): 0.4, ("grpo", 1): 0.5, ("aepo", 0): 0.5, ("aepo", 1): 0.7}
    aepo_train = {0: [(0.2, 0.5, 3.0), (0.2, 0.3, 4.0)], 1: [(0.1, 0.2, 2.0), (None, None, 2.0)]}
    for (arm, seed), value in f1.items():
        folder = tmp_path / f"{arm}__search__s{seed}"
        write_run(folder, [0.4, 0.3])
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        records[-1].update({"tool/episodes": 4.0, "tool/answer_f1": value, "tool/answer_em": value,
                            "tool/calls_per_episode": 2.0, "tool/malformed_per_episode": 0.25,
                            "tool/gold_all_hops": 0.9})
        if arm == "aepo":
            train = [r for r in records if r["phase"] == "train"]
            for r, (h_root, h_tool, branches) in zip(train, aepo_train[seed], strict=True):
                r.update({"aepo/h_root_mean": h_root, "aepo/h_tool_mean": h_tool, "aepo/branch_mean": branches,
                          "aepo/global_mean": 8.0 - branches})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = run_summary(tmp_path / "aepo__search__s1")
    assert summary["tool_answer_f1"] == 0.7 and summary["aepo_h_tool_minus_root"] == pytest.approx(0.1)
    assert summary["aepo_branches"] == 2.0 and run_summary(tmp_path / "grpo__search__s1")["aepo_branches"] is None

    cells = [Cell(arm, "search", seed) for arm in ("grpo", "aepo") for seed in (0, 1)]
    report = write_bench_report(tmp_path, cells, baseline="grpo").read_text()
    # F1 differences +0.1, +0.2: mean 0.15, SD 0.0707, se 0.05, t(0.975, 1) = 12.706 -> [-0.485, 0.785]
    row = next(line for line in report.splitlines() if line.startswith("| aepo | answer F1 (final) |"))
    assert "| 0.600 | 0.450 | +0.150 | [-0.485, 0.785] |" in row
    assert "| aepo | malformed calls per episode (final) | 0.25 | 0.25 | +0.00 |" in report
    # H_tool - H_root per seed (the run's means): 0.4 - 0.2 = 0.2 and 0.2 - 0.1 = 0.1; t = 3 on 1 df -> p = 0.205
    aepo = next(line for line in report.splitlines() if line.startswith("| aepo | 2 |"))
    cells_ = [c.strip() for c in aepo.strip("|").split("|")]
    assert cells_[2:] == ["2.75 ± 1.06", "5.25 ± 1.06", "0.150 ± 0.071", "0.300 ± 0.141", "+0.150",
                          "[-0.485, +0.785]", "0.205"]
    assert "![search_aepo_branch_mean](figures/search_aepo_branch_mean.png)" in report
    # a bench without tool metrics keeps its table as it was
    household = tmp_path / "h"
    write_run(household / "grpo__h__s0", [0.4, 0.3])
    write_run(household / "epo__h__s0", [0.4, 0.3])
    plain = write_bench_report(household, [Cell("grpo", "h", 0), Cell("epo", "h", 0)]).read_text()
    assert "answer F1" not in plain and "AEPO's rollout" not in plain
    # branching without pre-monitoring: branch counts, no H columns
    branching = tmp_path / "b"
    write_run(branching / "grpo__h__s0", [0.4, 0.3])
    write_run(branching / "aepo__h__s0", [0.4, 0.3])
    path = branching / "aepo__h__s0" / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        if r["phase"] == "train":
            r.update({"aepo/branch_mean": 4.0, "aepo/global_mean": 4.0, "aepo/h_root_mean": None})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_bench_report(branching, [Cell("grpo", "h", 0), Cell("aepo", "h", 0)]).read_text()
    assert "| aepo | 1 | 4.00 | 4.00 | n/a (no pre-monitoring) | n/a | n/a | n/a | n/a |" in text
