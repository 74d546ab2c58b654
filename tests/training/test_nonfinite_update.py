"""NaN in the RL update: refused before the step, and the iteration leaves the weights, the
optimizer and the update state as they were at its start, whichever of its optimizer steps
failed (a later on-policy mini-batch, or SPEAR's replay steps after them)."""

from __future__ import annotations

import pytest
import torch

from agentropy.nonfinite import NonFiniteError
from agentropy.training import methods, policy_update
from agentropy.training.checkpoint import latest_checkpoint
from agentropy.training.config import load_config
from agentropy.training.methods import spear
from agentropy.training.trainer import train


def _config(tmp_path, tiny_dir, name, extra=()):
    return load_config(None, [
        f"run.name={name}", f"run.root={tmp_path}", "run.progress=false", "run.tensorboard=false",
        f"model.tiny_dir={tiny_dir}", "sft.enabled=false",
        "rollout.group_size=2", "rollout.tasks_per_batch=2", "rollout.max_turns=3", "rollout.max_tokens=12",
        "train.iterations=1", "train.micro_batch_size=64", "train.mini_batches=2", "eval.episodes=2", *extra,
    ])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture
def iteration_start(monkeypatch):
    """Records the policy and a copy of its weights when the iteration's update begins."""
    seen = {}
    real = policy_update.TrainingSnapshot.take

    def recording(policy, optimizer):
        seen["policy"] = policy
        seen["weights"] = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        return real(policy, optimizer)

    monkeypatch.setattr(policy_update.TrainingSnapshot, "take", staticmethod(recording))
    return seen


def _unchanged(seen) -> bool:
    now = seen["policy"].state_dict()
    return all(torch.equal(now[k], v) for k, v in seen["weights"].items())


def test_nan_in_the_second_mini_batch_rolls_back_the_first_step(tmp_path, tiny_dir, monkeypatch, iteration_start):
    torch.set_num_threads(1)
    calls = []
    real = methods.policy_loss

    def nan_on_second_mini_batch(*args, **kwargs):
        calls.append(1)
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan") if len(calls) == 2 else loss), stats

    monkeypatch.setattr(methods, "policy_loss", nan_on_second_mini_batch)
    steps = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1])
    with pytest.raises(NonFiniteError) as err:
        train(_config(tmp_path, tiny_dir, "mb2"))
    dump = tmp_path / "mb2" / "nonfinite_batch_iter_000000.jsonl"
    assert str(err.value) == f"non-finite loss (nan) in rl mini-batch 2/2 (iteration 0); dumped to {dump}"
    assert len(steps) == 1, "the first mini-batch stepped, the second did not"
    assert _unchanged(iteration_start), "the first mini-batch's step was not rolled back"
    assert dump.exists() and latest_checkpoint(tmp_path / "mb2") is None


def test_nan_in_spear_replay_is_refused_and_rolled_back(tmp_path, tiny_dir, monkeypatch, iteration_start):
    torch.set_num_threads(1)

    def one_item(self, baseline, generator=None):  # a replay draw whatever the buffer holds
        item = spear.ReplayItem(sample=([5, 6, 7], [8, 9]), behaviour_logprobs=[-1.0, -1.0], reward=1.0,
                                base_advantage=1.0, step=0)
        return spear.ReplayBatch([item], [1.0])

    def nan_loss(*args, **kwargs):
        loss, stats = real_sil(*args, **kwargs)
        return loss * float("nan"), stats

    real_sil = spear.sil_loss
    monkeypatch.setattr(spear.ReplayBuffer, "triggered", lambda self, baseline: True)
    monkeypatch.setattr(spear.ReplayBuffer, "sample", one_item)
    monkeypatch.setattr(spear, "sil_loss", nan_loss)
    with pytest.raises(NonFiniteError) as err:
        train(_config(tmp_path, tiny_dir, "replay", ["strategy.spear.enabled=true"]))
    assert str(err.value).startswith("non-finite loss (nan) in replay (iteration 0); dumped to ")
    assert _unchanged(iteration_start), "the on-policy steps before the replay were not rolled back"
    assert latest_checkpoint(tmp_path / "replay") is None
