"""`agentropy eval`: a model on an env split, JSON + markdown with success, pass@k and entropy."""

from __future__ import annotations

import json

import pytest

from agentropy.cli import main
from agentropy.training.evaluation import pass_at_k, summarize
from agentropy.training.trajectory import Step, Trajectory


def test_eval_command_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", "--env", "agentropy/Household-v0", "--episodes", "2", "--samples", "2",
               "--temperature", "1.0", "--out", str(out), f"model.tiny_dir={tmp_path / 'tiny'}",
               "rollout.max_turns=2", "rollout.max_tokens=8", "run.progress=false"])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["episodes"] == 4 and report["env"] == "agentropy/Household-v0"
    assert {"success_rate", "pass@1", "pass@2", "return_mean", "length_mean", "entropy_by_turn"} <= set(report)
    assert len(report["entropy_by_turn"]) == 2
    # 2 tasks x 2 samples: per-task rates, and a t interval over them (samples of one task are not independent)
    assert report["tasks"] == 2 and len(report["success_by_task"]) == 2
    assert sum(report["success_by_task"]) / 2 == pytest.approx(report["success_rate"])
    assert report["success_ci95_method"] == "t over per-task success rates"
    markdown = (out / "eval.md").read_text()
    assert f"| success_rate | {report['success_rate']:.4f} |" in markdown
    assert "Evaluation of tiny" in capsys.readouterr().out


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def _traj(group, won, entropies):
    steps = [Step(turn=t, prompt_ids=[1], response_ids=[2] * len(h), logprobs=[-0.1] * len(h), entropy=h,
                  reward=0.0, terminated=False, truncated=False, anchor_obs="o", action="a",
                  group_id=group, traj_id=f"{group}-{won}-{t}") for t, h in enumerate(entropies)]
    return Trajectory(traj_id=f"{group}-{won}", group_id=group, task_id=group, seed=0, steps=steps,
                      episode_return=float(won), won=won)


def test_summary_counts_tokens_per_turn_and_pass_at_k():
    trajs = [_traj("g0", True, [[1.0, 3.0], [2.0]]), _traj("g0", False, [[5.0], []]),
             _traj("g1", False, [[0.0]]), _traj("g1", False, [[0.0]])]
    report = summarize(trajs, samples=2)
    assert report["success_rate"] == pytest.approx(1 / 4)
    assert report["entropy_by_turn"] == [pytest.approx((1 + 3 + 5 + 0 + 0) / 5), pytest.approx(2.0)]
    assert report["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert report["pass@2"] == pytest.approx((1.0 + 0.0) / 2)


def test_success_statistics_wilson_for_one_episode_per_task():
    from agentropy.commands.evaluate import success_statistics

    trajs = [_traj(f"g{i}", won, [[0.1]]) for i, won in enumerate([True, False, False, False])]
    stats = success_statistics(trajs)
    # Wilson 1/4: centre (0.25 + 3.841459 / 8) / (1 + 3.841459 / 4) = 0.730182 / 1.960365 = 0.372473,
    # half 1.959964 / 1.960365 * sqrt(0.046875 + 0.060023) = 0.999795 * 0.326952 = 0.326885
    # -> [0.045588, 0.699358]
    assert stats["success_by_task"] == [1.0, 0.0, 0.0, 0.0] and stats["tasks"] == 4
    assert (stats["success_ci95_lo"], stats["success_ci95_hi"]) == pytest.approx((0.045588, 0.699358), abs=1e-5)
