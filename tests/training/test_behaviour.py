"""Behaviour lock: fixed-seed 2-iteration runs of every shipped strategy config reproduce the
recorded ``metrics.jsonl`` rows (timing fields aside) and final weights.

The fixture was recorded before the one-file-per-method move (``python -m
tests.training.behaviour``); re-record it only for an intended change of behaviour. Values
are compared exactly first; a tight relative tolerance (1e-6) is allowed only for a CPU whose
float arithmetic differs from the recording machine's.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from behaviour import FIXTURE, record  # noqa: E402

REL = 1e-6


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=REL, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _compare(expected: dict, got: dict, names: list[str]) -> None:
    for name in names:
        exp, new = expected[name], got[name]
        assert len(new["metrics"]) == len(exp["metrics"]), name
        for i, (row_exp, row_new) in enumerate(zip(exp["metrics"], new["metrics"], strict=True)):
            assert row_new.keys() == row_exp.keys(), (name, i, set(row_new) ^ set(row_exp))
            diff = {k: (row_exp[k], row_new[k]) for k in row_exp if not _close(row_exp[k], row_new[k])}
            assert not diff, (name, i, diff)
        if new["weights"]["sha256"] != exp["weights"]["sha256"]:
            assert _close(exp["weights"]["values"], new["weights"]["values"]), (name, "weights differ")


def _expected() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.slow  # the shared SFT start alone takes ~20 s on one core
def test_all_strategies_at_once_reproduce_the_recorded_run():
    _compare(_expected(), record(["all"]), ["all"])


@pytest.mark.slow
def test_every_shipped_strategy_reproduces_the_recorded_run():
    expected = _expected()
    names = sorted(expected)
    _compare(expected, record(names), names)
