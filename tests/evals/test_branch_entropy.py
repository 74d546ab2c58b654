"""Where AEPO's rollout branched: fork points from branch trajectories, and the within-turn
contrast of the entropy rise dH at fork points against the other replies, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agentropy.cli import main
from agentropy.evals.dynamics import calibration as cal
from agentropy.evals.dynamics.aggregates import read_aggregates, write_aggregates
from agentropy.evals.dynamics.branching import fork_contrast, fork_points
from agentropy.training.trajectory import Step, Trajectory


def step(turn: int, entropy: list[float], tid: str, prefix: bool = False) -> Step:
    info = {"branch_prefix": True} if prefix else {}
    return Step(turn=turn, prompt_ids=[0], response_ids=list(range(len(entropy))), logprobs=[0.0] * len(entropy),
                entropy=entropy, reward=0.0, terminated=False, truncated=False, anchor_obs=f"{tid}{turn}",
                action="a", group_id="g", traj_id=tid, info=info)


def traj(tid: str, steps: list[Step], parent: str | None = None) -> Trajectory:
    return Trajectory(traj_id=tid, group_id="g", task_id="t", seed=0, steps=steps, parent_id=parent,
                      kind="branch" if parent else "global")


def group() -> list[Trajectory]:
    """A and C are global; B branches A at turn 1 (copies A's turn 0), D branches C at turn 2."""
    a = traj("A", [step(0, [1.0, 1.0], "A"), step(1, [1.5, 1.5], "A"), step(2, [1.2], "A")])
    b = traj("B", [step(0, [1.0, 1.0], "B", prefix=True), step(1, [0.8], "B"), step(2, [1.0], "B")], parent="A")
    c = traj("C", [step(0, [2.0], "C"), step(1, [2.1], "C"), step(2, [3.0], "C")])
    d = traj("D", [step(0, [2.0], "D", prefix=True), step(1, [2.1], "D", prefix=True), step(2, [2.5], "D")],
             parent="C")
    return [a, b, c, d]


def test_fork_points_are_the_source_replies_a_branch_resamples():
    assert fork_points(group()) == {("A", 1), ("C", 2)}


def test_contrast_within_turn_by_hand():
    contrast = fork_contrast(group())
    # dH against each trajectory's first reply (a branch inherits its source's):
    # turn 1: fork A +0.5; others B -0.2, C +0.1 (D's turn 1 is a copy) -> 0.5 - (-0.05) = 0.55
    # turn 2: fork C +1.0; others A +0.2, B 0.0, D +0.5 -> 1.0 - 0.7/3
    assert contrast.by_turn[1] == pytest.approx([0.5, 1, -0.1, 2])
    assert contrast.by_turn[2] == pytest.approx([1.0, 1, 0.7, 3])
    assert contrast.forks == 2 and contrast.stays == 5
    assert contrast.fork_minus_stay == pytest.approx((0.55 + (1.0 - 0.7 / 3)) / 2)


def test_the_window_is_the_first_tokens_of_a_reply():
    a = traj("A", [step(0, [1.0, 9.0], "A"), step(1, [2.0, 9.0], "A")])
    b = traj("B", [step(0, [1.0, 9.0], "B", prefix=True), step(1, [1.5, 0.0], "B")], parent="A")
    assert fork_contrast([a, b], window=1).fork_minus_stay == pytest.approx(1.0 - 0.5)


def test_no_branches_no_contrast():
    a, _, c, _ = group()
    contrast = fork_contrast([a, c])
    assert contrast.by_turn == {} and contrast.forks == 0 and math.isnan(contrast.fork_minus_stay)
    # a turn with forks but no other reply there gives nothing to compare
    b = traj("B", [step(0, [1.0], "B", prefix=True), step(1, [0.8], "B")], parent="A")
    only = fork_contrast([traj("A", [step(0, [1.0], "A"), step(1, [1.5], "A")]), b])
    assert only.by_turn[1] == pytest.approx([0.5, 1, -0.2, 1])
    assert only.fork_minus_stay == pytest.approx(0.7)


def test_runs_without_branches_get_no_verdict():
    verdicts = cal.verdicts_of(cal.synthetic_runs(cal.FLAT_NULL, np.random.default_rng(0)))
    assert verdicts["branch_entropy"] == "n/a"


def test_planted_forks_hold_and_survive_the_aggregates(tmp_path):
    world = cal.PLANTED["branch_entropy"]
    runs = cal.synthetic_runs(world, np.random.default_rng(3))
    assert cal.verdicts_of(runs)["branch_entropy"] == "holds"
    write_aggregates(runs, tmp_path, n_head=world.n_head)
    again = [read_aggregates(tmp_path / "aggregates" / r.name, world.n_head) for r in runs]
    assert [r.iterations[0].forks.by_turn for r in again] == [r.iterations[0].forks.by_turn for r in runs]
    assert cal.verdicts_of(again)["branch_entropy"] == "holds"
    out = tmp_path / "report"
    assert main(["analyze", str(tmp_path / "aggregates"), "--out", str(out), "--no-progress"]) == 0
    text = (out / "dynamics.md").read_text()
    assert "Where the rollout branched (AEPO)" in text and "fork_minus_stay" in text
