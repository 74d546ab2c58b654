"""``summarize`` counts as errors only the episodes the env machinery cut short."""

from __future__ import annotations

from agentropy.training.evaluation import ERROR_TRUNCATIONS, summarize, truncated_by_error
from agentropy.training.trajectory import Step, Trajectory


def episode(name: str, reason: str | None) -> Trajectory:
    step = Step(turn=0, prompt_ids=[1], response_ids=[2], logprobs=[-0.1], entropy=[0.2], reward=0.0,
                terminated=False, truncated=reason is not None, anchor_obs="o", action="a", group_id=name,
                traj_id=name)
    return Trajectory(traj_id=name, group_id=name, task_id=name, seed=len(name), steps=[step],
                      truncation_reason=reason)


REASONS = [None, "max_turns", "env_truncated", "env_error: ValueError: boom", "env_timeout", "worker_died",
           "max_steps", "env_error"]


def test_only_worker_faults_count_as_errors():
    trajectories = [episode(f"t{i}", reason) for i, reason in enumerate(REASONS)]
    assert truncated_by_error(trajectories) == 4
    assert summarize(trajectories)["truncated_by_error"] == 4


def test_the_env_step_limit_is_not_an_error():
    trajectories = [episode(f"t{i}", "env_truncated") for i in range(5)] + [episode("m", "max_turns")]
    assert summarize(trajectories)["truncated_by_error"] == 0


def test_every_rollout_fault_reason_is_an_error():
    assert ERROR_TRUNCATIONS == ("env_error", "env_timeout", "worker_died")
    assert truncated_by_error([episode(r, r) for r in ERROR_TRUNCATIONS]) == 3
