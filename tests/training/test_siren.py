"""SIREN: top-p entropy with the crossing token excluded, the peak-entropy mask, the anchored
penalty and its anchor, against docs/methods/siren.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from agentropy.training.methods.siren import (
    NucleusEntropyError,
    SIRENAnchor,
    SIRENConfig,
    nucleus_entropy,
    nucleus_entropy_and_size,
    peak_entropy_mask,
    siren_loss,
)

F64 = torch.float64
NAN = float("nan")


def _logits(p):
    return torch.tensor(p, dtype=F64).log()


@pytest.mark.parametrize(
    ("probs", "expected", "size"),
    [
        ([0.5, 0.25, 0.125, 0.125], 0.636514, 2),
        ([0.85, 0.10, 0.05], 0.0, 0),  # top-1 >= P: empty nucleus
        ([0.4, 0.3, 0.2, 0.1], 0.682908, 2),
        ([0.25] * 4, math.log(3), 3),  # crossing token excluded; including it would give ln 4
    ],
)
def test_t1_topp_entropy_excludes_the_crossing_token(probs, expected, size):
    h, n = nucleus_entropy_and_size(_logits(probs), top_p=0.8)
    assert h.item() == pytest.approx(expected, abs=1e-6)
    assert n.item() == size
    assert h.item() != pytest.approx(math.log(4), abs=1e-3)


def test_t4_gradient_is_local_to_the_nucleus():
    z = _logits([0.5, 0.25, 0.125, 0.125]).requires_grad_(True)
    nucleus_entropy(z).backward()
    assert z.grad.tolist() == pytest.approx([-0.154033, 0.154033, 0.0, 0.0], abs=1e-6)
    assert z.grad[2].item() == 0.0 and z.grad[3].item() == 0.0  # exactly zero off the nucleus
    assert z.grad.sum().item() == pytest.approx(0.0, abs=1e-15)
    eps = 1e-6
    for v in range(4):
        e = torch.zeros(4, dtype=F64)
        e[v] = eps
        fd = (nucleus_entropy(z.detach() + e) - nucleus_entropy(z.detach() - e)) / (2 * eps)
        assert fd.item() == pytest.approx(z.grad[v].item(), abs=1e-7)


def test_confident_position_contributes_zero_with_zero_gradient():
    z = _logits([0.85, 0.10, 0.05]).requires_grad_(True)
    h = nucleus_entropy(z)
    h.backward()
    assert h.item() == 0.0
    assert z.grad.abs().max().item() == 0.0


def test_batched_shapes_temperature_and_topk():
    z = torch.stack([_logits([0.5, 0.25, 0.125, 0.125]), _logits([0.4, 0.3, 0.2, 0.1])]).unsqueeze(0)  # [1, 2, 4]
    h = nucleus_entropy(z)
    assert h.shape == (1, 2)
    assert h[0].tolist() == pytest.approx([0.636514, 0.682908], abs=1e-6)
    torch.testing.assert_close(nucleus_entropy(2 * z, temperature=2.0), h)
    # K = 1 candidate: c_1 = 0.4 < 0.8, nucleus {top-1}, entropy 0
    assert nucleus_entropy(z, top_k=1)[0].tolist() == [0.0, 0.0]


def test_failure_raises_and_never_falls_back():
    bad = torch.tensor([[0.0, NAN, 1.0]])
    with pytest.raises(NucleusEntropyError, match="non-finite"):
        nucleus_entropy(bad)
    with pytest.raises(NucleusEntropyError):
        nucleus_entropy(torch.full((1, 3), -math.inf))
    with pytest.raises(ValueError, match="top_p"):
        nucleus_entropy(torch.zeros(3), top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        nucleus_entropy(torch.zeros(3), top_k=0)
    # -inf entries (masked vocabulary) are fine
    z = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25), -math.inf], dtype=F64)
    assert nucleus_entropy(z).item() == pytest.approx(0.636514, abs=1e-6)


# --------------------------------------------------------------------------- peak mask and penalty

ROW1 = [0.0, 0.1, 0.5, 0.9, 0.3, NAN]
ROW2 = [0.2, 0.2, 0.2, 0.2, NAN, NAN]


def _rows():
    h = torch.tensor([ROW1, ROW2], dtype=F64)
    m = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    return torch.nan_to_num(h, nan=7.0), m  # padding holds junk that must not matter


def test_t2_peak_mask_per_row():
    h, m = _rows()
    sel = peak_entropy_mask(h, m, None, 0.8)
    assert sel[0].tolist() == [False, False, False, True, False, False]  # tau_1 = 0.58
    assert not sel[1].any()  # tau_2 = 0.2, strict
    assert torch.quantile(torch.tensor([0.0, 0.1, 0.5, 0.9, 0.3], dtype=F64), 0.8).item() == pytest.approx(0.58)


def test_t5_idempotence():
    h, m = _rows()
    sel = peak_entropy_mask(h, m)
    again = peak_entropy_mask(torch.where(sel, h, torch.zeros_like(h)), m)
    assert torch.equal(sel, again)
    assert torch.quantile(torch.tensor([0.0, 0.0, 0.0, 0.9, 0.0], dtype=F64), 0.8).item() == pytest.approx(0.18)


def test_trajectory_rows_pool_their_step_samples():
    # two turns of one trajectory: the quantile runs over all 6 tokens together
    h = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=F64)
    m = torch.ones(2, 3)
    sel = peak_entropy_mask(h, m, ["a", "a"], 0.8)
    assert sel.tolist() == [[False, False, False], [False, False, True]]  # tau = 0.5
    per_turn = peak_entropy_mask(h, m, None, 0.8)
    assert per_turn.tolist() == [[False, False, True], [False, False, True]]


def test_t3_anchored_penalty_value_and_gradient():
    h, m = _rows()
    h = h.clone().requires_grad_(True)
    cfg = SIRENConfig(row="turn")
    loss, stats = siren_loss(h, m, 0.5, cfg)
    assert stats["siren/h_sel"].item() == pytest.approx(0.45)  # (0.9 + 0) / 2: the empty row counts
    assert loss.item() == pytest.approx(1.25e-5, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, h)
    expected = torch.zeros_like(h)
    expected[0, 3] = -2.5e-4
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    loss_low, _ = siren_loss(h, m, 0.4, cfg)
    (grad_low,) = torch.autograd.grad(loss_low, h)
    assert grad_low[0, 3].item() == pytest.approx(2.5e-4, abs=1e-12)
    assert stats["siren/frac_selected"].item() == pytest.approx(1 / 9)
    assert stats["siren/frac_rows_empty"].item() == pytest.approx(0.5)


def test_trajectory_rows_need_traj_ids():
    h, m = _rows()
    with pytest.raises(ValueError, match="traj_ids"):
        siren_loss(h, m, 0.5, SIRENConfig())


def test_precomputed_selection_and_nucleus_size_metric():
    h, m = _rows()
    sel = torch.zeros_like(m, dtype=torch.bool)
    sel[1, 0] = True
    sizes = torch.tensor([[2, 2, 2, 2, 2, 9], [1, 1, 1, 1, 9, 9]])
    _, stats = siren_loss(h, m, 0.0, SIRENConfig(), traj_ids=["a", "b"], selected=sel, nucleus_size=sizes)
    assert stats["siren/h_sel"].item() == pytest.approx(0.1)  # (0 + 0.2) / 2
    assert stats["siren/nucleus_size_mean"].item() == pytest.approx(14 / 9)


def test_anchor_global_and_per_turn_give_zero_penalty_on_their_batch():
    # trajectory "a": turns 0, 1; trajectory "b": turn 0 only
    h = torch.tensor([[0.1, 0.9, 0.2], [0.3, 0.8, 0.7], [0.6, 0.1, 0.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    traj, turns = ["a", "a", "b"], [0, 1, 0]
    cfg = SIRENConfig(quantile=0.5)
    glob = SIRENAnchor.from_config(cfg)
    glob.set_from(h, m, cfg, traj, turns)
    # a: 6 tokens, tau = median = 0.5 -> {0.9, 0.8, 0.7}, s_a = 0.8; b: tau = 0.35 -> {0.6}, s_b = 0.6
    assert glob.value == pytest.approx(0.7)
    per = SIRENAnchor(per_turn=True)
    per.set_from(h, m, cfg, traj, turns)
    # turn 0: a's 0.9 (weight 1/3) and b's 0.6 (weight 1) -> (0.3 + 0.6) / (4/3) = 0.675
    # turn 1: a's 0.8, 0.7 (weight 1/3 each) -> 0.75
    assert per.turn_values == pytest.approx({0: 0.675, 1: 0.75})
    for anchor in (glob, per):
        loss, stats = siren_loss(h, m, anchor, cfg, traj_ids=traj, turns=turns)
        assert loss.item() == pytest.approx(0.0, abs=1e-20)
        assert stats["siren/anchor"].item() == pytest.approx(0.7)
    # an unseen turn falls back to the global anchor
    loss, stats = siren_loss(h[2:], m[2:], per, cfg, traj_ids=["c"], turns=[5])
    assert stats["siren/anchor"].item() == pytest.approx(0.7)


def test_anchor_is_frozen_and_round_trips():
    h, m = _rows()
    cfg = SIRENConfig(row="turn", anchor="per_turn")
    anchor = SIRENAnchor.from_config(cfg)
    assert not anchor.ready
    with pytest.raises(RuntimeError, match="not set"):
        siren_loss(h, m, anchor, cfg, turns=[0, 1])
    anchor.set_from(h, m, cfg, turns=[0, 1])
    assert anchor.value == pytest.approx(0.45)
    with pytest.raises(RuntimeError, match="frozen"):
        anchor.set_from(h, m, cfg, turns=[0, 1])
    clone = SIRENAnchor()
    clone.load_state_dict(anchor.state_dict())
    assert (clone.per_turn, clone.value, clone.turn_values) == (True, anchor.value, anchor.turn_values)


def test_config_defaults_and_validation():
    cfg = SIRENConfig()
    assert (cfg.enabled, cfg.coef, cfg.top_p, cfg.top_k, cfg.quantile, cfg.row, cfg.anchor) == (
        False, 0.005, 0.8, 10000, 0.8, "trajectory", "global"
    )
    with pytest.raises(ValueError, match="siren.top_p"):
        SIRENConfig(top_p=1.5)
    with pytest.raises(ValueError, match="siren.row"):
        SIRENConfig(row="batch")


def test_shipped_yaml_enables_siren():
    import yaml

    from agentropy.configuration import from_dict

    path = Path(__file__).resolve().parents[2] / "configs" / "strategies" / "siren.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["strategy"] and list(data["strategy"]) == ["siren"]
    assert from_dict(SIRENConfig, data["strategy"]["siren"]).enabled


def test_pooled_quantile_matches_a_per_group_quantile():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        h = torch.rand(7, 9, generator=gen, dtype=F64)
        m = torch.rand(7, 9, generator=gen) < 0.6
        ids = torch.randint(0, 3, (7,), generator=gen).tolist()
        sel = peak_entropy_mask(h, m, ids, 0.8)
        for key in set(ids):
            rows = [i for i in range(7) if ids[i] == key]
            values = h[rows][m[rows]]
            tau = torch.quantile(values, 0.8) if values.numel() else math.inf
            assert torch.equal(sel[rows], (h[rows] > tau) & m[rows])
