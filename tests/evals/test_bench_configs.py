"""Every shipped bench config loads and each of its cells is a valid, trainable run config, so a
long study cannot fail hours in on a cell whose file has a typo; arms differ only where they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentropy.evals.bench import _cell_config, cells, load_bench

BENCHES = sorted((Path(__file__).resolve().parents[2] / "configs" / "bench").glob("*.yaml"))


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.stem)
def test_every_cell_of_every_bench_config_is_valid(path):
    bench, folder = load_bench(path)
    all_cells = cells(bench)
    assert all_cells and (bench.baseline is None or bench.baseline in bench.strategies)
    for cell in all_cells:
        cfg = _cell_config(bench, folder, cell, None, [])
        assert (cfg.run.name, cfg.run.seed) == (cell.name, cell.seed)


def _configs(name: str) -> dict[str, object]:
    bench, folder = load_bench(Path(BENCHES[0].parent / f"{name}.yaml"))
    return {c.strategy: _cell_config(bench, folder, c, None, []) for c in cells(bench) if c.seed == 0}


def test_the_search_bench_arms_differ_from_grpo_by_their_method_alone():
    configs = _configs("search")
    arms = {name: cfg.strategy for name, cfg in configs.items()}
    assert sorted(arms) == ["aepo", "epo", "grpo"]
    on = {name: (s.epo.enabled, s.empg.enabled, s.aepo.enabled) for name, s in arms.items()}
    # configs/search.yaml turns EPO and EMPG on: every arm of the bench switches EMPG off
    assert on == {"grpo": (False, False, False), "aepo": (False, False, True), "epo": (True, False, False)}
    assert arms["aepo"].aepo.branching and arms["aepo"].aepo.sg_clip and arms["aepo"].aepo.entropy_advantage
    for name in ("aepo", "epo"):  # same estimator, budget and rollout settings as the baseline
        assert arms[name].advantage == arms["grpo"].advantage
        assert configs[name].rollout == configs["grpo"].rollout and configs[name].train == configs["grpo"].train
