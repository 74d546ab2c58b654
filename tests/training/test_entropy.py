"""Token entropy, turn/trajectory averages, EPO's per-turn history and the entropy tracker,
against hand-computed values."""

from __future__ import annotations

import io
import math

import pytest
import torch

from agentropy.training.entropy import (
    EntropyHistory,
    EntropyTracker,
    entropy_stats,
    group_index,
    row_mean_entropy,
    token_entropy,
    trajectory_turn_mean,
)

NEG_INF = float("-inf")


def test_uniform_and_two_point_distributions():
    h = token_entropy(
        torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), NEG_INF, NEG_INF]], dtype=torch.float64)
    )
    # p = [1/4, 3/4]: H = -(1/4 ln 1/4 + 3/4 ln 3/4)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert h[0].item() == pytest.approx(math.log(4.0), abs=1e-12)
    assert h[1].item() == pytest.approx(expected, abs=1e-12)


def test_temperature_divides_logits():
    h = token_entropy(torch.tensor([0.0, 2.0], dtype=torch.float64), temperature=2.0)
    e = math.e
    assert h.item() == pytest.approx(math.log(1 + e) - e / (1 + e), abs=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.zeros(3), temperature=0.0)


def test_large_logits_are_stable():
    h = token_entropy(torch.tensor([1000.0, 1000.0]))
    assert h.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_masked_vocabulary_gets_zero_probability_and_finite_gradients():
    logits = torch.tensor(
        [[0.0, 0.0, NEG_INF], [3.0, NEG_INF, NEG_INF], [NEG_INF, NEG_INF, NEG_INF]], requires_grad=True
    )
    h = token_entropy(logits)
    assert h.tolist() == pytest.approx([math.log(2.0), 0.0, 0.0], abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[:, 2].abs().max().item() == 0.0
    assert logits.grad[1].abs().max().item() == 0.0  # one-hot: entropy is flat in the logits


def test_shape_is_kept_and_nan_logits_propagate():
    assert token_entropy(torch.zeros(2, 5, 7)).shape == (2, 5)
    h = token_entropy(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]))
    assert math.isnan(h[0].item()) and h[1].item() == pytest.approx(math.log(2.0))


def test_group_index_strings_ints_tensors():
    codes, keys = group_index(["b", "a", "b", "c"])
    assert codes.tolist() == [0, 1, 0, 2] and keys == ["b", "a", "c"]
    codes, keys = group_index(torch.tensor([7, 7, 3]))
    assert codes.tolist() == [0, 0, 1] and keys == [7, 3]
    with pytest.raises(TypeError, match=r"traj_ids\[1\]"):
        group_index(["x", ["not", "hashable"]], "traj_ids")


def test_row_mean_entropy_masks_and_empty_rows():
    h = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [5.0, 5.0, 5.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert row_mean_entropy(h, m).tolist() == [1.5, 4.0, 0.0]


def test_trajectory_turn_mean_value_and_gradient():
    # traj a: turn means 2 and 4 -> 3; traj b: 10; traj c has only an empty row -> not counted
    h = torch.tensor(
        [[1.0, 3.0], [4.0, 99.0], [10.0, 99.0], [99.0, 99.0]], dtype=torch.float64, requires_grad=True
    )
    m = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 0]])
    value = trajectory_turn_mean(h, m, ["a", "a", "b", "c"])
    assert value.item() == pytest.approx(6.5)
    value.backward()
    assert h.grad.tolist() == [[0.125, 0.125], [0.25, 0.0], [0.5, 0.0], [0.0, 0.0]]
    assert trajectory_turn_mean(h, torch.zeros_like(m), ["a", "a", "b", "c"]).item() == 0.0


def test_history_per_true_turn_with_global_fallback():
    hist = EntropyHistory()
    assert hist.empty
    assert torch.isnan(hist.reference([0, 3])).all()  # no reference before the first update
    # step 1: turn 0 token-weighted (1*1 + 3*3) / 4 = 2.5, turn 1 = 2.0; step mean 12/5 = 2.4
    hist.update([0, 1, 0], [1.0, 2.0, 3.0], token_counts=[1, 1, 3])
    # step 2: only turn 0 existed
    hist.update([0], [4.5])
    assert len(hist) == 2
    assert hist.global_mean() == pytest.approx((2.4 + 4.5) / 2)
    ref = hist.reference([0, 1, 5, 0], dtype=torch.float64)
    assert ref.tolist() == pytest.approx([3.5, 2.0, 3.45, 3.5])


def test_history_ignores_empty_entries_and_rejects_bad_values():
    hist = EntropyHistory()
    hist.update([0, 1], [2.0, float("nan")], token_counts=[2, 0])  # the empty turn is skipped
    assert hist.reference([1]).item() == pytest.approx(2.0)  # fallback: global mean
    hist.update([3], [1.0], token_counts=[0])  # nothing recorded
    assert len(hist) == 1
    with pytest.raises(ValueError, match=r"turn_mean_entropies\[0\]"):
        hist.update([0], [float("inf")])
    with pytest.raises(ValueError, match="same length"):
        hist.update([0, 1], [1.0])
    with pytest.raises(ValueError, match=r"turn_indices\[0\]"):
        hist.update([0.5], [1.0])


def test_history_from_tokens_and_checkpoint_roundtrip():
    hist = EntropyHistory()
    hist.update_from_tokens(torch.tensor([[1.0, 3.0], [5.0, 100.0]]), torch.tensor([[1, 1], [1, 0]]), [0, 0])
    assert hist.turn_reference(0) == pytest.approx(3.0)
    buf = io.BytesIO()
    torch.save(hist.state_dict(), buf)
    buf.seek(0)
    restored = EntropyHistory()
    restored.load_state_dict(torch.load(buf))
    assert restored.state_dict() == hist.state_dict()
    restored.update([0], [5.0])
    assert restored.turn_reference(0) == pytest.approx(4.0)


def test_entropy_stats_values_and_empty():
    stats = entropy_stats([1.0, 3.0, 5.0])
    assert stats["mean"] == 3.0 and stats["std"] == pytest.approx(math.sqrt(8 / 3))
    assert stats["p50"] == 3.0 and stats["p10"] == pytest.approx(1.4) and stats["count"] == 3
    empty = entropy_stats([])
    assert empty["count"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["p90"])


def test_tracker_summaries_per_token_step_trajectory_and_turn():
    tracker = EntropyTracker()
    h = torch.tensor([[1.0, 3.0, 9.0], [5.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    tracker.add(h, m, turn_indices=[0, 1, 0], traj_ids=["a", "a", "b"])
    s = tracker.summary()
    assert s["entropy/token/mean"] == 3.0 and s["entropy/token/count"] == 3
    assert s["entropy/step/mean"] == 3.5 and s["entropy/step/count"] == 2
    assert s["entropy/traj/mean"] == 3.5 and s["entropy/traj/count"] == 1
    assert s["entropy/turn_0/mean"] == 2.0 and s["entropy/turn_1/mean"] == 5.0
    assert s["entropy/turn_0/p50"] == 2.0 and s["entropy/turn_1/std"] == 0.0
    tracker.add(torch.tensor([[7.0]]), torch.tensor([[1]]), [0])
    assert tracker.summary()["entropy/turn_0/mean"] == pytest.approx(11 / 3)
    tracker.reset()
    assert tracker.summary()["entropy/token/count"] == 0
