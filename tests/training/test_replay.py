"""SPEAR: baseline buffer, replay buffer (entry, staleness, trigger, recalibration, power-of-two
sampling, flush), schedules and the SIL loss, with hand counts (docs/methods/spear.md)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from agentropy.training.losses import clipped_surrogate
from agentropy.training.methods.clip_cov import clip_cov_mask
from agentropy.training.methods.spear import (
    BaselineBuffer,
    ReplayBuffer,
    group_reward_stats,
    sil_loss,
    sil_weight,
    tool_call_reward,
    tool_reward_weight,
)


def _add(buf: ReplayBuffer, rewards, advs, step):
    n = len(rewards)
    return buf.add([f"s{step}_{i}" for i in range(n)], [[-0.5]] * n, rewards, advs, step)


# --------------------------------------------------------------------------- baseline


def test_group_reward_stats_average_steps_then_trajectories():
    # group g: traj A has two step-samples with R = 1, traj B one with R = 0; group h: traj C alone
    means, stds = group_reward_stats([1.0, 1.0, 0.0, 0.4], ["g", "g", "g", "h"], ["A", "A", "B", "C"])
    assert means == [0.5, 0.4] and stds == [0.5, 0.0]  # population std over trajectories
    with pytest.raises(ValueError, match=r"rewards\[0\]"):
        group_reward_stats([float("nan")], ["g"])


def test_baseline_buffer_p50_fifo_and_state():
    base = BaselineBuffer(max_size=3)
    assert base.p50_mean() is None and base.p50_std() is None
    base.add([0.2, 0.5, 0.9], [0.1, 0.3, 0.2])
    assert base.p50_mean() == 0.5 and base.p50_std() == 0.2
    base.add([1.0], [0.4])  # oldest entry leaves
    assert len(base) == 3 and base.p50_mean() == 0.9 and base.p50_std() == 0.3
    base.add_groups(["x", "y"], [0.0, 1.0])  # two groups of one: means 0 and 1
    assert list(base.state_dict()["means"]) == [1.0, 0.0, 1.0] and base.p50_mean() == 1.0
    restored = BaselineBuffer(max_size=99)
    restored.load_state_dict(base.state_dict())
    assert restored.state_dict() == base.state_dict() and restored.max_size == 3
    with pytest.raises(ValueError, match="not finite"):
        base.add([math.inf], [0.0])


# --------------------------------------------------------------------------- replay buffer


def test_entry_needs_positive_base_advantage():
    buf = ReplayBuffer(buffer_size=4)
    assert _add(buf, [1.0, 1.0, 0.5, 1.0], [0.5, -0.1, 0.0, 2.0], step=1) == 2
    assert [item.sample for item in buf.items] == ["s1_0", "s1_3"]
    assert buf.items[0].behaviour_logprobs == [-0.5] and buf.items[0].step == 1
    with pytest.raises(ValueError, match="same length"):
        buf.add(["a"], [[0.0]], [1.0, 2.0], [1.0], step=2)
    with pytest.raises(ValueError, match=r"base_advantages\[0\]"):
        buf.add(["a"], [[0.0]], [1.0], [float("nan")], step=2)


def test_staleness_eviction_counts():
    buf = ReplayBuffer(buffer_size=8, tolerate_steps=2)
    for step in (1, 2, 3, 4):
        _add(buf, [1.0], [1.0], step)
    # before inserting step 4 the newest item was step 3: step 1 is 2 behind, kept
    assert [item.step for item in buf.items] == [1, 2, 3, 4]
    _add(buf, [1.0], [1.0], 5)  # newest 4: step 1 is 3 behind -> dropped
    assert [item.step for item in buf.items] == [2, 3, 4, 5]
    _add(buf, [1.0], [-1.0], 9)  # nothing enters; newest is 5, so step 2 (3 behind) is dropped
    assert [item.step for item in buf.items] == [3, 4, 5]
    assert ReplayBuffer(tolerate_steps=50).tolerate == 10  # capped at 10


def test_trigger_counts_items_above_p50_baseline():
    base = BaselineBuffer()
    base.add([0.2, 0.5, 0.9], [0.0, 0.0, 0.0])  # b50 = 0.5
    buf = ReplayBuffer(buffer_size=2, trigger_factor=1.5)  # needs more than 3 items above 0.5
    _add(buf, [1.0, 1.0, 0.4, 1.0], [1.0] * 4, step=1)
    assert buf.count_above_baseline(base) == 3 and not buf.triggered(base)
    _add(buf, [0.6], [1.0], step=1)
    assert buf.count_above_baseline(base) == 4 and buf.triggered(base)
    assert not ReplayBuffer(buffer_size=2, trigger_factor=2.0, tolerate_steps=5).triggered(base)
    # empty baseline: compare with the mean buffered reward, (1 + 1 + 0.4 + 1 + 0.6) / 5 = 0.8
    assert buf.count_above_baseline(BaselineBuffer()) == 3


def test_sample_recalibrates_filters_draws_power_of_two_and_flushes():
    base = BaselineBuffer()
    base.add([0.2, 0.5, 0.9], [0.1, 0.3, 0.2])  # b50 0.5, s50 0.2
    buf = ReplayBuffer(buffer_size=8)
    _add(buf, [1.0, 1.0, 0.4, 1.0, 0.7, 0.5], [1.0] * 6, step=3)
    assert buf.recalibrate(base) == pytest.approx([0.5, 0.5, -0.1, 0.5, 0.2, 0.0])
    batch = buf.sample(base, torch.Generator().manual_seed(0))
    # A~ >= 0 keeps 5 of 6 (0.0 stays); largest power of two <= min(5, 8) = 4
    assert len(batch.items) == 4 and len(buf) == 0 and buf.triggers == 1
    assert all(item.sample != "s3_2" for item in batch.items)
    assert batch.advantages == pytest.approx([item.reward - 0.5 for item in batch.items])
    assert batch.metrics["spear/kept_frac"] == pytest.approx(5 / 6)
    assert batch.metrics["spear/replay_size"] == 4 and batch.metrics["spear/b50"] == 0.5


def test_sample_size_capped_by_buffer_size_and_reproducible():
    base = BaselineBuffer()
    base.add([0.0], [0.5])
    picks = []
    for _ in range(2):
        buf = ReplayBuffer(buffer_size=2)
        _add(buf, [1.0] * 5, [1.0] * 5, step=1)
        picks.append([item.sample for item in buf.sample(base, torch.Generator().manual_seed(7)).items])
    assert len(picks[0]) == 2 and picks[0] == picks[1]


def test_std_normalised_and_decay_recalibration():
    base = BaselineBuffer()
    base.add([0.2, 0.5, 0.9], [0.1, 0.3, 0.2])
    buf = ReplayBuffer(std_norm=True, eps=1e-6)
    _add(buf, [1.0], [1.0], step=1)
    assert buf.recalibrate(base) == pytest.approx([0.5 / (0.2 + 1e-6)])
    decay = ReplayBuffer(buffer_size=1, recalibration="decay", decay_weight=0.1)
    _add(decay, [0.0, 0.1], [2.0, 0.5], step=1)
    assert decay.count_above_baseline(base) == 2 and decay.triggered(base)
    assert decay.recalibrate(base) == pytest.approx([0.2, 0.05])
    with pytest.raises(ValueError, match="decay_weight"):
        ReplayBuffer(recalibration="decay", decay_weight=1.5)
    with pytest.raises(RuntimeError, match="baseline"):
        buf.recalibrate(BaselineBuffer())


def test_buffer_from_config():
    from agentropy.training.strategy_config import SPEARConfig

    buf = ReplayBuffer.from_config(
        SPEARConfig(buffer_size=16, tolerate_steps=3, trigger_factor=2.0, std_norm=True)
    )
    assert (buf.buffer_size, buf.tolerate, buf.trigger_factor, buf.std_norm) == (16, 3, 2.0, True)


def test_replay_buffer_checkpoint_roundtrip_with_tensors():
    buf = ReplayBuffer(buffer_size=4)
    buf.add([{"ids": torch.tensor([1, 2])}], [torch.tensor([-0.1, -0.2])], [1.0], [0.5], step=3)
    buf.triggers = 2
    data = io.BytesIO()
    torch.save(buf.state_dict(), data)
    data.seek(0)
    restored = ReplayBuffer(buffer_size=4)
    restored.load_state_dict(torch.load(data, weights_only=False))
    assert restored.triggers == 2 and len(restored) == 1
    item = restored.items[0]
    assert torch.equal(item.sample["ids"], torch.tensor([1, 2])) and item.reward == 1.0 and item.step == 3


# --------------------------------------------------------------------------- schedules


def test_sil_weight_cosine_ramp():
    assert sil_weight(0, c_sil=2.0, k_sil=100) == 0.0
    assert sil_weight(50, c_sil=2.0, k_sil=100) == pytest.approx(1.0)
    assert sil_weight(100, c_sil=2.0, k_sil=100) == 2.0 and sil_weight(500, c_sil=2.0, k_sil=100) == 2.0


def test_tool_call_reward_cosine_decay_and_cap():
    assert tool_reward_weight(0) == 1.0 and tool_reward_weight(100) == pytest.approx(0.5)
    assert tool_reward_weight(200) == pytest.approx(0.0, abs=1e-12) and tool_reward_weight(201) == 0.0
    assert tool_reward_weight(500, mode="constant") == 1.0 and tool_reward_weight(0, mode="none") == 0.0
    assert tool_call_reward(3, k=0) == pytest.approx(0.3)
    assert tool_call_reward(20, k=0) == 1.0  # min(1, 0.1 n)
    assert tool_call_reward(5, k=100, k_tool=200) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="mode"):
        tool_reward_weight(0, mode="linear")


# --------------------------------------------------------------------------- SIL loss


def test_sil_loss_is_the_clipped_surrogate_against_behaviour_logprobs():
    behaviour = torch.tensor([[-1.0, -2.0, -0.5, -1.0]], dtype=torch.float64)
    logp = (behaviour + torch.log(torch.tensor([[1.0, 1.5, 0.9, 1.1]], dtype=torch.float64))).requires_grad_(
        True
    )
    adv = torch.tensor([0.5], dtype=torch.float64)  # A~ per sample
    mask = torch.ones(1, 4)
    loss, stats = sil_loss(logp, behaviour, adv, mask, clip_cov=False)
    # rho^b = [1, 1.5 -> clipped 1.2, 0.9, 1.1]
    assert loss.item() == pytest.approx(-0.5 * (1.0 + 1.2 + 0.9 + 1.1) / 4)
    assert stats["clipfrac_high"].item() == pytest.approx(0.25) and "clip_cov_frac" not in stats


def test_sil_loss_applies_the_replay_clip_cov_mask():
    adv = torch.tensor([[2.0, 2.0, 2.0, 0.5, -2.0, -2.0, -2.0, -0.5]], dtype=torch.float64)
    logp = torch.tensor([[-1.0, -1.0, -1.0, -2.0, -3.0, -3.0, -3.0, -2.0]], dtype=torch.float64)
    mask = torch.ones(1, 8)
    loss, stats = sil_loss(
        logp,
        logp,
        adv,
        mask,
        clip_cov_ratio=0.25,
        clip_cov_lb=1.0,
        clip_cov_ub=5.0,
        generator=torch.Generator().manual_seed(4),
    )
    keep, _ = clip_cov_mask(
        logp, logp, adv, mask, ratio=0.25, cov_lb=1.0, cov_ub=5.0, generator=torch.Generator().manual_seed(4)
    )
    expected, _ = clipped_surrogate(logp, logp, adv, mask, token_weights=keep)
    assert loss.item() == pytest.approx(expected.item()) and stats["clip_cov_frac"].item() == pytest.approx(
        0.25
    )
