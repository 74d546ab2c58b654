"""What a run records about the code and machine that made it, and the resume warning built on it."""

from __future__ import annotations

import json

import pytest
import torch

from agentropy import provenance as prov
from agentropy.evals.bench import Cell
from agentropy.evals.bench_export import machine_lines
from agentropy.training import run_folder


def test_provenance_names_the_facts_that_change_the_floats(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    record = prov.provenance("cpu")
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == torch.get_num_threads()
    assert record["torch"] == torch.__version__ and record["device"] == "cpu"
    assert record["env"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert record["packages"]["torch"] == torch.__version__
    code = record["code"]  # this test runs in the project's checkout
    assert code is None or len(code.removesuffix("+dirty")) == 40
    json.dumps(record)  # it is written to run.json as is


def test_numerics_mismatch_lists_each_differing_fact():
    start = {"torch": "2.13.0+cpu", "cpu_capability": "AVX2", "threads": 1, "device": "cpu",
             "cpu": "Intel", "env": {"OMP_NUM_THREADS": "1"}}
    same_kind = {**start, "cpu": "another model name", "code": "abc"}  # the CPU's name alone changes nothing
    assert prov.numerics_mismatch(start, same_kind) == []
    other = {**start, "cpu_capability": "AVX512", "threads": 2, "env": {}}
    assert prov.numerics_mismatch(start, other) == [
        "cpu_capability: 'AVX2' -> 'AVX512'", "threads: 1 -> 2", "$OMP_NUM_THREADS: '1' -> None"]
    assert prov.numerics_mismatch(None, other) == []  # runs from before records: nothing to compare


def test_a_run_records_its_start_and_each_resume_and_warns_on_other_kernels(tmp_path):
    run_id = run_folder.start_run(tmp_path, "cpu")
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["run_id"] == run_id == run_folder.run_identity(tmp_path)
    assert run_folder.run_provenance(tmp_path)["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert run_folder.record_resume(tmp_path, "cpu") == []  # same process, same facts: no warning
    record["provenance"]["cpu_capability"] = "SOME_OTHER_ISA"
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.warns(RuntimeWarning, match="cpu_capability: 'SOME_OTHER_ISA'"):
        diffs = run_folder.record_resume(tmp_path, "cpu")
    assert len(diffs) == 1
    resumed = json.loads((tmp_path / "run.json").read_text())["resumed"]
    assert len(resumed) == 1 and resumed[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_cell_table_groups_cells_by_machine(tmp_path):
    machine = {"torch": "2.13.0+cpu", "cpu_capability": "AVX2", "threads": 1, "device": "cpu", "cpu": "X"}
    cells = [Cell("grpo", "household", s) for s in range(3)]
    for cell, record in zip(cells, (machine, machine, None), strict=True):
        (tmp_path / cell.name).mkdir()
        (tmp_path / cell.name / "done.json").write_text(json.dumps({"cell": cell.name, "provenance": record}))
    lines = machine_lines(tmp_path, cells)
    assert "- torch 2.13.0+cpu (AVX2 kernels, 1 threads, cpu; X): 2 cells" in lines
    assert any(line.startswith("- not recorded") and line.endswith(": 1 cell") for line in lines)


def _eval_record(outcomes: list[int]) -> str:
    return json.dumps({"iteration": -1, "phase": "eval", "success_rate": sum(outcomes) / len(outcomes),
                       "success_by_task": outcomes})


def test_cell_table_warns_when_cells_start_from_different_sft_models(tmp_path):
    from agentropy.evals.bench_export import start_lines

    cells = [Cell("grpo", "household", 0), Cell("siren", "household", 0), Cell("siren", "household", 1)]
    for cell, before in zip(cells, ([1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1]), strict=True):
        (tmp_path / cell.name).mkdir()
        (tmp_path / cell.name / "metrics.jsonl").write_text(_eval_record(before) + "\n")
    assert start_lines(tmp_path, cells[:2]) == []  # one start: nothing to say
    warning = start_lines(tmp_path, cells)[0]
    assert warning.startswith("**Warning: the household cells did not all start from the same SFT model**")
    assert "2/4 solved: grpo__household__s0, siren__household__s0; 2/4 solved: siren__household__s1" in warning
