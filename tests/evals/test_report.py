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
    header = next(line for line in report.splitlines() if line.startswith("| strategy |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in report.splitlines() if line.startswith(("| grpo |", "| epo |"))}
    ratio, collapsed, corridor = (columns.index(k) for k in ("entropy last/first", "collapsed",
                                                             "outside corridor low / high"))
    assert rows["grpo"][ratio] == "0.525 ± 0.275"  # (0.25 + 0.8) / 2, std 0.275
    assert rows["grpo"][collapsed] == "1/2" and rows["grpo"][corridor] == "n/a"
    assert rows["epo"][ratio] == "0.900 ± 0.000"
    assert rows["epo"][corridor] == "0.100 ± 0.000 / 0.100 ± 0.000"
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
