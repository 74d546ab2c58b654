"""GRPO, GiGPO, EMPG, the AEPO entropy-aware advantage and their composition, against
hand-computed values (docs/methods/base.md)."""

from __future__ import annotations

import math

import pytest
import torch

from agentropy.training.advantages import discounted_returns, gigpo, grpo
from agentropy.training.methods import compose_advantages
from agentropy.training.methods.aepo import aepo_factor
from agentropy.training.methods.empg import empg_modulate
from agentropy.training.strategy_config import AdvantageConfig, AEPOConfig, EMPGConfig, StrategyConfig

F64 = torch.float64


# --------------------------------------------------------------------------- GRPO


def test_grpo_group_mean_unbiased_std_and_singleton_group():
    adv = grpo(torch.tensor([1.0, 0.0, 1.0, 5.0], dtype=F64), ["a", "a", "a", "b"])
    # group a: mean 2/3, unbiased var ((1/3)^2 * 2 + (2/3)^2) / 2 = 1/3
    std = math.sqrt(1 / 3)
    expected = [(1 / 3) / (std + 1e-6), (-2 / 3) / (std + 1e-6), (1 / 3) / (std + 1e-6), 5.0 / (1 + 1e-6)]
    assert adv.dtype == F64
    assert adv.tolist() == pytest.approx(expected, abs=1e-12)


def test_grpo_without_std_and_with_int_or_tensor_ids():
    adv = grpo([1.0, 0.0, 1.0, 5.0], [3, 3, 3, 9], norm_by_std=False)
    assert adv.dtype == torch.float32
    assert adv.tolist() == pytest.approx([1 / 3, -2 / 3, 1 / 3, 5.0])
    assert torch.equal(grpo([1.0, 0.0, 1.0, 5.0], torch.tensor([3, 3, 3, 9]), norm_by_std=False), adv)


def test_grpo_all_equal_rewards_give_exactly_zero():
    adv = grpo(torch.tensor([0.1, 0.1, 0.1], dtype=F64), ["g", "g", "g"])
    assert torch.equal(adv, torch.zeros(3, dtype=F64))
    assert torch.equal(grpo([0.1, 0.1, 0.1], ["g"] * 3, norm_by_std=False), torch.zeros(3))


def test_grpo_rejects_non_finite_and_mismatched_input():
    with pytest.raises(ValueError, match=r"rewards\[1\]"):
        grpo([1.0, float("nan")], ["a", "a"])
    with pytest.raises(ValueError, match=r"rewards\[0\]"):
        grpo([float("inf")], ["a"])
    with pytest.raises(ValueError, match="group_ids"):
        grpo([1.0, 2.0], ["a"])


# --------------------------------------------------------------------------- GiGPO


def test_discounted_returns_follow_turn_order():
    g = discounted_returns([1.0, 0.0, 0.0, 2.0], ["a", "a", "a", "b"], [2, 0, 1, 0], gamma=0.5)
    assert g.tolist() == [1.0, 0.25, 0.5, 2.0]
    with pytest.raises(ValueError, match="repeat a turn"):
        discounted_returns([1.0, 0.0], ["a", "a"], [0, 0])


def _gigpo_case():
    # task group g: traj A (won, 2 turns), traj B (lost, 3 turns); group h: traj C alone
    return dict(
        episode_returns=[1.0, 1.0, 0.0, 0.0, 0.0, 0.4],
        group_ids=["g", "g", "g", "g", "g", "h"],
        traj_ids=["A", "A", "B", "B", "B", "C"],
        turn_indices=[0, 1, 0, 1, 2, 0],
        anchor_obs=["s0", "s1", "s0", "s2", "s1", "s0"],
        step_rewards=[0.0, 1.0, 0.0, 0.0, 0.0, 0.4],
        gamma=0.5,
    )


def test_gigpo_mean_norm_hand_values():
    res = gigpo(**_gigpo_case())
    # A^E over step-samples of g: returns [1,1,0,0,0], mean 0.4; group h alone: mean 0 -> A^E = R
    assert res.episode.tolist() == pytest.approx([0.6, 0.6, -0.4, -0.4, -0.4, 0.4])
    # step returns: A = [0.5, 1], B = [0, 0, 0]; s0 in g: {0.5, 0} -> +-0.25; s1: {1, 0} -> +-0.5;
    # s2 alone -> 0; C's s0 is in another task group -> alone -> 0
    assert res.step.tolist() == pytest.approx([0.25, 0.5, -0.25, 0.0, -0.5, 0.0])
    assert res.advantages.tolist() == pytest.approx([0.85, 1.1, -0.65, -0.4, -0.9, 0.4])
    assert res.metrics["gigpo/step_groups_gt1_frac"] == pytest.approx(0.5)  # {s0,s1} of 4 groups


def test_gigpo_mean_std_norm_and_omega():
    case = _gigpo_case()
    case["episode_returns"] = torch.tensor(case["episode_returns"], dtype=F64)
    res = gigpo(**case, mode="mean_std_norm", omega=0.5)
    assert res.advantages.dtype == F64
    ep_std = math.sqrt((2 * 0.6**2 + 3 * 0.4**2) / 4)
    s0_std = math.sqrt(2 * 0.25**2)  # unbiased, 2 values
    s1_std = math.sqrt(2 * 0.5**2)
    e = [0.6 / (ep_std + 1e-6), 0.6 / (ep_std + 1e-6), -0.4 / (ep_std + 1e-6)]
    s = [0.25 / (s0_std + 1e-6), 0.5 / (s1_std + 1e-6)]
    assert res.episode[:3].tolist() == pytest.approx(e, abs=1e-9)
    assert res.episode[5].item() == pytest.approx(0.4 / (1 + 1e-6))
    assert res.step.tolist() == pytest.approx([s[0], s[1], -s[0], 0.0, -s[1], 0.0], abs=1e-9)
    assert res.advantages.tolist() == pytest.approx((res.episode + 0.5 * res.step).tolist())


def test_gigpo_per_trajectory_episode_stats():
    res = gigpo(**_gigpo_case(), episode_stats="per_trajectory")
    assert res.episode.tolist() == pytest.approx([0.5, 0.5, -0.5, -0.5, -0.5, 0.4])


def test_gigpo_shared_prefix_options():
    case = dict(
        episode_returns=[1.0, 0.0, 0.0, 1.0, 1.0],
        group_ids=["g"] * 5,
        traj_ids=["A", "B", "B", "B2", "B2"],
        turn_indices=[0, 0, 1, 0, 1],
        anchor_obs=["s0", "s0", "s1", "s0", "s2"],
        step_rewards=[1.0, 0.0, 0.0, 0.0, 1.0],
        step_keys=["A0", "B0", "B1", "B0", "B2-1"],  # B2 is a branch of B that copies B's turn 0
        gamma=0.5,
    )
    # step returns: A0 = 1, B0 = 0 (in B) and 0.5 (in B2), B1 = 0, B2-1 = 1
    assert gigpo(**case).step.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0])
    # once: s0 holds A0 (1) and B0 (mean 0.25) -> mean 0.625
    assert gigpo(**case, shared_prefix="once").step.tolist() == pytest.approx(
        [0.375, -0.375, 0.0, -0.375, 0.0]
    )
    # episode_only: copies of B0 get 0 and leave s0 with A0 alone -> 0
    assert gigpo(**case, shared_prefix="episode_only").step.tolist() == pytest.approx([0.0] * 5)
    bad = dict(case, anchor_obs=["s0", "s0", "s1", "s9", "s2"])
    with pytest.raises(ValueError, match="step_keys"):
        gigpo(**bad, shared_prefix="once")


def test_gigpo_rejects_bad_mode_and_lengths():
    with pytest.raises(ValueError, match="mode"):
        gigpo(**_gigpo_case(), mode="zscore")
    case = _gigpo_case()
    case["anchor_obs"] = case["anchor_obs"][:-1]
    with pytest.raises(ValueError, match="anchor_obs"):
        gigpo(**case)


# --------------------------------------------------------------------------- EMPG


def test_empg_hand_values():
    h = [0.0, 2.0, 1.0, 0.5]  # rows a0, b0, a1, a2
    adv = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64)
    out, metrics = empg_modulate(
        h, adv, ["a", "b", "a", "a"], [0, 0, 1, 2], k=1.0, k_prime=1.0, zeta=0.05, eps=1e-8
    )
    hn = [x / (2.0 + 1e-8) for x in h]
    e = [math.exp(-x) for x in hn]
    g = [x / (sum(e) / 4) for x in e]
    f = [math.exp(-hn[2]), 0.0, math.exp(-hn[3]), 0.0]  # a0 <- a1, a1 <- a2, last steps 0
    mod = [g[i] * adv[i].item() + 0.05 * f[i] for i in range(4)]
    mean = sum(mod) / 4
    assert out.tolist() == pytest.approx([m - mean for m in mod], abs=1e-12)
    assert abs(out.sum().item()) < 1e-12
    assert metrics["empg/g_min"] == pytest.approx(min(g)) and metrics["empg/g_max"] == pytest.approx(max(g))
    assert metrics["empg/bonus_mean"] == pytest.approx(0.05 * sum(f) / 4)


def test_empg_equal_entropies_single_step_and_invalid_steps():
    out, metrics = empg_modulate([0.7, 0.7], [1.0, 1.0], ["t", "t"], [0, 1])
    assert out.tolist() == pytest.approx([0.025, -0.025])  # [1.05, 1.0] - 1.025
    assert metrics["empg/g_min"] == metrics["empg/g_max"] == pytest.approx(1.0)
    out, _ = empg_modulate([0.3], [2.0], ["t"], [0])
    assert out.tolist() == [0.0]  # one step: A_mod minus its own mean
    # the empty reply (NaN entropy, invalid) gets 0, takes no part, gives no bonus to turn 0
    out, _ = empg_modulate(
        [0.0, float("nan"), 1.0], [1.0, 5.0, -1.0], ["t", "t", "u"], [0, 1, 0], valid=[True, False, True]
    )
    mod = [
        1.0 * 2 / (1 + math.exp(-1)),
        -1.0 * 2 * math.exp(-1 / (1 + 1e-8)) / (1 + math.exp(-1 / (1 + 1e-8))),
    ]
    assert out.tolist() == pytest.approx([mod[0] - sum(mod) / 2, 0.0, mod[1] - sum(mod) / 2], abs=1e-7)


def test_empg_rejects_bad_input():
    with pytest.raises(ValueError, match=r"step_entropy\[1\]"):
        empg_modulate([0.0, float("nan")], [1.0, 1.0], ["a", "a"], [0, 1])
    with pytest.raises(ValueError, match="repeat a turn"):
        empg_modulate([0.0, 1.0], [1.0, 1.0], ["a", "a"], [0, 0])
    with pytest.raises(ValueError, match=r"base_adv\[0\]"):
        empg_modulate([0.0], [float("inf")], ["a"], [0])


# --------------------------------------------------------------------------- AEPO


def entropy_aware_advantage(adv, entropy, mask, a, scope):
    """``A~_j = A_j (1 + a z_j)`` on the valid tokens, as the composed advantage applies the factor."""
    a_tok = adv.unsqueeze(-1) if adv.dim() == 1 else adv
    return torch.where(mask.bool(), a_tok * aepo_factor(entropy, mask, a, scope), torch.zeros((), dtype=F64))


def test_entropy_aware_advantage_per_step():
    h = torch.tensor([[1.0, 2.0, 3.0], [5.0, 0.0, 0.0], [4.0, 4.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    adv = torch.tensor([2.0, 3.0, -1.0, 7.0], dtype=F64)
    out = entropy_aware_advantage(adv, h, m, a=0.2, scope="step")
    # row 0: mean 2, unbiased std 1 -> z = [-1, 0, 1]; single-token and all-equal rows: std -> 1, z = 0
    expected = [[1.6, 2.0, 2.4], [3.0, 0.0, 0.0], [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]
    assert torch.allclose(out, torch.tensor(expected, dtype=F64), atol=1e-12)


def test_entropy_aware_advantage_over_batch_and_detached():
    h = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=F64, requires_grad=True)
    m = torch.ones(2, 2)
    out = entropy_aware_advantage(torch.ones(2, 2, dtype=F64), h, m, a=0.2, scope="batch")
    mean, std = 2.75, math.sqrt((1.75**2 + 0.75**2 + 0.25**2 + 2.25**2) / 3)
    assert out.flatten().tolist() == pytest.approx([1 + 0.2 * (x - mean) / std for x in [1.0, 2.0, 3.0, 5.0]])
    assert not out.requires_grad
    with pytest.raises(ValueError, match="scope"):
        aepo_factor(h, m, scope="token")


# --------------------------------------------------------------------------- composition


def _batch():
    entropy = torch.tensor([[0.2, 0.6, 0.0], [1.0, 3.0, 2.0], [0.5, 0.0, 0.0], [2.0, 2.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    return dict(
        episode_returns=[1.0, 1.0, 0.0, 0.0],
        group_ids=["g", "g", "g", "g"],
        traj_ids=["A", "A", "B", "B"],
        turn_indices=[0, 1, 0, 1],
        entropy=entropy,
        mask=mask,
    )


def test_compose_grpo_only_broadcasts_base_on_reply_tokens():
    res = compose_advantages(**_batch(), cfg=StrategyConfig(advantage=AdvantageConfig(norm_by_std=False)))
    assert res.base.tolist() == [0.5, 0.5, -0.5, -0.5]
    assert res.token_advantages.tolist() == [
        [0.5, 0.5, 0.0],
        [0.5, 0.5, 0.5],
        [-0.5, 0.0, 0.0],
        [-0.5, -0.5, 0.0],
    ]


def test_compose_applies_base_then_empg_then_aepo_without_renormalising():
    b = _batch()
    cfg = StrategyConfig(empg=EMPGConfig(enabled=True), aepo=AEPOConfig(enabled=True, adv_weight=0.2))
    res = compose_advantages(**b, cfg=cfg)
    base = grpo(b["episode_returns"], b["group_ids"]).double()
    step_h = [0.4, 2.0, 0.5, 2.0]
    step, _ = empg_modulate(step_h, base, b["traj_ids"], b["turn_indices"])
    expected = step.unsqueeze(-1) * b["mask"] * aepo_factor(b["entropy"], b["mask"], 0.2, "step")
    assert torch.allclose(res.token_advantages, expected, atol=1e-12)
    assert torch.allclose(res.base, base) and torch.allclose(res.step, step)
    assert "empg/g_max" in res.metrics and "aepo/factor_max" in res.metrics
    # EMPG's zero-mean holds per step; the AEPO factor is applied after it and not undone
    assert abs(res.step.sum().item()) < 1e-12


def test_compose_with_an_empty_reply_row():
    b = _batch()
    b["mask"] = b["mask"].clone()
    b["mask"][3] = 0  # turn 1 of B produced no tokens
    res = compose_advantages(
        **b, cfg=StrategyConfig(empg=EMPGConfig(enabled=True), aepo=AEPOConfig(enabled=True))
    )
    assert torch.isfinite(res.token_advantages).all()
    assert res.step[3].item() == 0.0 and (res.token_advantages[3] == 0).all()
    assert abs(res.step[:3].sum().item()) < 1e-12  # EMPG's zero mean over the valid steps only


def test_compose_gigpo_needs_anchor_observations():
    with pytest.raises(ValueError, match="anchor_obs"):
        compose_advantages(**_batch(), cfg=StrategyConfig(advantage=AdvantageConfig(estimator="gigpo")))
    res = compose_advantages(
        **_batch(),
        cfg=StrategyConfig(advantage=AdvantageConfig(estimator="gigpo")),
        anchor_obs=["x", "y", "x", "z"],
        step_rewards=[0.0, 1.0, 0.0, 0.0],
    )
    assert res.token_advantages.shape == (4, 3) and "gigpo/step_adv_abs_mean" in res.metrics
