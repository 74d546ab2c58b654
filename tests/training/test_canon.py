"""CANON (docs/methods/canon.md): the median split, the inter/intra mix, mu = 1/2 equal
to Dr.GRPO, zero-sum groups for every mu, schedules, and the multi-turn mapping (a trajectory,
split by its turn-averaged entropy, is the unit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentropy.training.advantages import grpo
from agentropy.training.methods.canon import CANONConfig, canon_advantages, canon_mu, cos_restart

F64 = torch.float64


def _one_turn(rewards, h, groups=None):
    """One step-sample per trajectory, one token each (so h_i = the token's entropy)."""
    n = len(rewards)
    entropy = torch.tensor(h, dtype=F64).unsqueeze(-1)
    groups = groups if groups is not None else ["g"] * n
    return dict(returns=rewards, entropy=entropy, mask=torch.ones(n, 1), group_ids=groups,
                traj_ids=[f"t{i}" for i in range(n)])


def test_t1_split_and_mix():
    case = _one_turn([1.0, 0.0, 1.0, 0.0], [0.9, 0.2, 0.5, 0.1])
    for mu, expected in ((1.0, [1, -1, 1, -1]), (0.0, [0, 0, 0, 0]), (0.5, [0.5, -0.5, 0.5, -0.5])):
        a, metrics = canon_advantages(**case, mu=mu)
        assert a.tolist() == pytest.approx(expected)
    assert metrics["canon/gap_mean"] == 1.0 and metrics["canon/frac_groups_gap_pos"] == 1.0
    assert metrics["canon/h_median_mean"] == pytest.approx(0.35)


def test_t2_closed_form_alpha_and_anneal():
    case = _one_turn([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    a, metrics = canon_advantages(**case)  # default mu = 1
    assert a.tolist() == pytest.approx([2 / 3, 2 / 3, -1 / 3, -2 / 3, 1 / 3, -2 / 3], abs=1e-6)
    assert a.sum().item() == pytest.approx(0.0, abs=1e-12)
    drgrpo = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.5, -0.5], dtype=F64)
    s = torch.tensor([-1, -1, -1, 1, 1, 1], dtype=F64)
    torch.testing.assert_close(a, drgrpo + s * (-1 / 3) / 2)  # Delta = R+ - R- = 1/3 - 2/3
    assert metrics["canon/gap_mean"] == pytest.approx(-1 / 3)
    a, _ = canon_advantages(**case, cfg=CANONConfig(alpha=1.2))
    assert a.tolist() == pytest.approx([0.866667, 0.866667, -0.333333, -0.8, 0.2, -0.8], abs=1e-6)
    a, metrics = canon_advantages(**case, cfg=CANONConfig(schedule="anneal"))  # batch accuracy 0.5
    assert metrics["canon/mu"] == 0.5
    torch.testing.assert_close(a, drgrpo)


def test_t3_odd_group_follows_the_formula():
    case = _one_turn([1.0, 0.0, 0.0], [0.3, 0.1, 0.2])
    a, _ = canon_advantages(**case)
    assert a.tolist() == pytest.approx([1.0, -0.5, 0.0])  # sum 0.5 = mu * Delta
    a, _ = canon_advantages(**case, cfg=CANONConfig(recenter_odd_groups=True))
    assert a.tolist() == pytest.approx([5 / 6, -2 / 3, -1 / 6]) and a.sum().item() == pytest.approx(0.0, abs=1e-12)


def test_t4_edges():
    a, _ = canon_advantages(**_one_turn([1.0, 0.0, 1.0, 0.0], [0.4] * 4))  # ties: batch order
    assert a.tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5])
    a, _ = canon_advantages(**_one_turn([1.0], [0.3]), cfg=CANONConfig(beta=0.1))
    assert a.tolist() == pytest.approx([1.1])
    case = _one_turn([1.0, 0.0, 1.0, 0.0], [0.9, 0.2, 0.5, 0.1])
    a, _ = canon_advantages(**case, cfg=CANONConfig(length_norm=8192.0))
    assert a.tolist() == pytest.approx([1 / 8192, -1 / 8192, 1 / 8192, -1 / 8192])


def test_t5_zero_sum_for_every_mu_and_drgrpo_at_half():
    gen = torch.Generator().manual_seed(0)
    groups = [f"g{k}" for k in range(6) for _ in range(8)]
    rewards = (torch.rand(48, generator=gen) < 0.5).double().tolist()
    h = torch.rand(48, generator=gen, dtype=F64).tolist()
    case = _one_turn(rewards, h, groups)
    case["entropy"].requires_grad_(True)
    codes = torch.tensor([int(g[1:]) for g in groups])
    for mu in (0.0, 0.3, 0.5, 1.0, 1.7):
        a, _ = canon_advantages(**case, mu=mu)
        assert not a.requires_grad
        sums = torch.zeros(6, dtype=F64).index_add(0, codes, a)
        assert sums.abs().max().item() < 1e-12
    half, _ = canon_advantages(**case, mu=0.5)
    torch.testing.assert_close(half, grpo(rewards, groups, norm_by_std=False).double(), rtol=0, atol=1e-14)


def test_multi_turn_trajectories_share_one_advantage_and_split_by_turn_mean():
    # trajectory a: turns of 1 and 3 tokens; b: one turn of 2 tokens; same group
    entropy = torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.1, 0.1], [0.5, 0.5, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]])
    args = dict(returns=[1.0, 1.0, 0.0], entropy=entropy, mask=mask, group_ids=["g"] * 3,
                traj_ids=["a", "a", "b"])
    # turn mean: h_a = (1.0 + 0.1) / 2 = 0.55 > h_b = 0.5 -> a is C+; token mean: h_a = 1.3 / 4 < 0.5 -> a is C-
    a, m = canon_advantages(**args, mu=1.0)
    assert a.tolist() == pytest.approx([1.0, 1.0, -1.0]) and m["canon/gap_mean"] == 1.0
    a, m = canon_advantages(**args, mu=1.0, cfg=CANONConfig(metric="token_mean"))
    assert a.tolist() == pytest.approx([1.0, 1.0, -1.0]) and m["canon/gap_mean"] == -1.0
    assert m["canon/h_length_corr"] == pytest.approx(-1.0)  # a: 2 turns, lower h; b: 1 turn
    with pytest.raises(ValueError, match="differ within trajectory"):
        canon_advantages(**{**args, "returns": [1.0, 0.0, 0.0]})


def test_std_norm_and_metric_variants():
    case = _one_turn([1.0, 0.0, 1.0, 0.0], [0.9, 0.2, 0.5, 0.1])
    a, m = canon_advantages(**case, cfg=CANONConfig(std_norm=True))
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std().item()
    assert a.tolist() == pytest.approx([1 / (std + 1e-6), -1 / (std + 1e-6)] * 2)
    assert m["canon/drgrpo_adv_abs_mean"] == 0.5 and m["canon/adv_abs_mean"] == pytest.approx(1 / (std + 1e-6))
    a, _ = canon_advantages(**case, cfg=CANONConfig(metric="batch_order"))  # dr_random control: {0,1} | {2,3}
    assert a.tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5])


def test_t6_schedules():
    assert cos_restart(0, 0.6, 0.0) == pytest.approx(0.02)
    assert cos_restart(29, 0.6, 0.0) == pytest.approx(0.6)
    assert cos_restart(30, 0.6, 0.0) == pytest.approx(0.6)
    assert cos_restart(50, 0.6, 0.0) == pytest.approx(0.3)
    assert cos_restart(70, 0.6, 0.0) == pytest.approx(0.6)  # restart
    assert canon_mu(CANONConfig(schedule="cosine_restart"), 50) == pytest.approx(0.7)
    assert canon_mu(CANONConfig(schedule="cosine_restart_r"), 50) == pytest.approx(0.7)
    assert canon_mu(CANONConfig(mu=0.3), 99) == 0.3
    with pytest.raises(ValueError, match="anneal"):
        canon_mu(CANONConfig(schedule="anneal"), 0)


def test_config_defaults_and_validation():
    cfg = CANONConfig()
    assert (cfg.enabled, cfg.mu, cfg.alpha, cfg.beta, cfg.metric, cfg.schedule) == (
        False, 1.0, 1.0, 0.0, "turn_mean", "constant"
    )
    with pytest.raises(ValueError, match="canon.metric"):
        CANONConfig(metric="length")
    with pytest.raises(ValueError, match="canon.length_norm"):
        CANONConfig(length_norm=0.0)


def test_shipped_yaml_enables_canon():
    import yaml

    from agentropy.configuration import from_dict

    path = Path(__file__).resolve().parents[2] / "configs" / "strategies" / "canon.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["strategy"] and list(data["strategy"]) == ["canon"]
    assert from_dict(CANONConfig, data["strategy"]["canon"]).enabled
