"""Adding a method is one module and one line in the composition: a toy method defined here
joins the update through :data:`agentropy.training.methods.METHODS` alone (``policy_update.py``
is not edited), contributes a token weight, a metric and a state saved with the others."""

from __future__ import annotations

import pytest
import torch

from agentropy.training import methods
from agentropy.training.config import load_config
from agentropy.training.policy_update import UpdateState
from agentropy.training.run_log import read_metrics
from agentropy.training.strategy_config import StrategyConfig
from agentropy.training.trainer import train
from agentropy.training.update_hooks import Method


class Counter:
    """A toy method's state: how many micro-batches it has weighted, across iterations."""

    def __init__(self) -> None:
        self.seen = 0

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seen = state["seen"]


def _zero_weights(ctx, mini, mb):
    ctx.state.toy.seen += 1
    return torch.zeros_like(mb.mask)  # no policy gradient at all


def _finish(ctx):
    ctx.metrics["toy/seen"] = float(ctx.state.toy.seen)


TOY = Method("toy", enabled=lambda strategy: True, create_state=lambda strategy: {"toy": Counter()},
             state_keys=("toy",), token_weights=_zero_weights, finish=_finish)


@pytest.fixture
def with_toy(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", (*methods.METHODS, TOY))


def test_a_toy_method_keeps_its_state_with_the_others(with_toy):
    state = UpdateState.create(type("C", (), {"strategy": StrategyConfig()}))
    state.toy.seen = 3
    fresh = UpdateState.create(type("C", (), {"strategy": StrategyConfig()}))
    fresh.load_state_dict(state.state_dict())
    assert fresh.toy.seen == 3 and fresh.arbepo is None


def test_a_toy_method_joins_the_update_without_editing_it(tmp_path, with_toy):
    torch.set_num_threads(1)
    cfg = load_config(None, [
        f"run.root={tmp_path}", "run.name=toy", "run.progress=false", "run.tensorboard=false",
        f"model.tiny_dir={tmp_path / 'tiny'}", "sft.enabled=false", "eval.episodes=1",
        "rollout.group_size=2", "rollout.tasks_per_batch=2", "rollout.max_turns=2", "rollout.max_tokens=8",
        "train.iterations=2", "train.micro_batch_size=8", "train.mini_batches=2", "train.checkpoint_every=0",
    ])
    train(cfg)
    records = read_metrics(tmp_path / "toy", phase="train")
    assert [r["toy/seen"] for r in records] == [2.0, 4.0]  # two mini-batches of one micro-batch per iteration
    assert all(r["grad_norm"] == 0.0 for r in records)  # its zero weights removed every policy gradient
