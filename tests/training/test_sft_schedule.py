"""SFT learning-rate schedule: hand-computed multipliers, the rates the optimizer really steps
with, and the per-step hook that benchmarks evaluate in."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents"))
from tiny_lm import tiny_model_and_tokenizer  # noqa: E402

from agentropy.configuration import ConfigError  # noqa: E402
from agentropy.training import sft  # noqa: E402


def test_constant_without_warmup_is_one_everywhere():
    cfg = sft.SFTConfig()
    assert [sft.lr_factor(s, 10, cfg) for s in range(10)] == [1.0] * 10


def test_linear_warmup_then_constant():
    cfg = sft.SFTConfig(warmup_steps=4)
    assert [sft.lr_factor(s, 10, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_runs_from_one_to_zero_over_the_steps_after_warmup():
    cfg = sft.SFTConfig(lr_schedule="cosine")
    # 10 steps: step s is at progress s / 9; cos(pi/3) = 0.5 -> 0.75 at s = 3, 0.25 at s = 6
    factors = [sft.lr_factor(s, 10, cfg) for s in range(10)]
    assert factors[0] == 1.0 and factors[9] == 0.0
    assert factors[3] == pytest.approx(0.75) and factors[6] == pytest.approx(0.25)
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    warm = sft.SFTConfig(lr_schedule="cosine", warmup_steps=2)
    # warm-up 0.5, 1.0; then 8 cosine steps over a span of 7
    assert sft.lr_factor(1, 10, warm) == 1.0 and sft.lr_factor(2, 10, warm) == 1.0
    assert sft.lr_factor(5, 10, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 7)))
    assert sft.lr_factor(9, 10, warm) == 0.0


def test_single_step_and_bad_values():
    assert sft.lr_factor(0, 1, sft.SFTConfig(lr_schedule="cosine")) == 1.0
    with pytest.raises(ConfigError, match="warmup_steps"):
        sft.SFTConfig(warmup_steps=-1)


def test_train_sft_steps_with_the_scheduled_rates_and_calls_the_hook(monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer()
    ids = tokenizer.encode("go north", add_special_tokens=False)
    pairs = [(ids, [*ids, tokenizer.eos_token_id])] * 8
    rates: list[float] = []
    real_step = torch.optim.AdamW.step

    def record(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    hooked: list[tuple[int, float]] = []
    cfg = sft.SFTConfig(epochs=2, batch_size=2, lr=0.01, lr_schedule="cosine", warmup_steps=1)
    stats = sft.train_sft(model, tokenizer, pairs, cfg, on_step=lambda s, loss: hooked.append((s, loss)))
    assert stats["sft/steps"] == 8.0
    expected = [0.01 * sft.lr_factor(s, 8, cfg) for s in range(8)]
    assert rates == pytest.approx(expected) and rates[0] == 0.01 and rates[-1] == 0.0
    assert [s for s, _ in hooked] == list(range(1, 9))
    assert all(math.isfinite(loss) for _, loss in hooked)
