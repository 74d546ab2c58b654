"""STEER: the entropy-change estimate Omega and the token weights, against hand-computed values
(T1-T5; each derivation is written next to its numbers), plus the mini-batch scope and exemptions.

Formulas: Omega_j = (A_j / q_j) p_j (1 - p_j) (ln p_j + H_j) with p = current, q = old probability
of the sampled token; exponential weights k = -ln(w_min) / max(|Omega|_max, 0.02),
w_j = clip(exp(-k |Omega_j|), w_min, 1), w_min = 0.8; linear weights
w_j = clip(w_max - (|Omega_j| - |Omega|_min)(w_max - w_min) / (|Omega|_max - |Omega|_min), w_min, w_max)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from agentropy.training.losses import clipped_surrogate
from agentropy.training.methods.steer import STEERConfig, entropy_change_estimate, omega_range, steer_weights

F64 = torch.float64


def _t1():
    p = torch.tensor([[0.5, 0.9, 0.2, 0.7]], dtype=F64)
    h = torch.tensor([[1.0, 0.5, 2.0, 0.3]], dtype=F64)
    a = torch.tensor([[1.0, 1.0, -1.0, 1.0]], dtype=F64)
    m = torch.tensor([[1, 1, 1, 0]])
    return p.log(), h, a, m


def test_t1_omega_and_exponential_weights():
    logp, h, a, m = _t1()
    omega = entropy_change_estimate(logp, logp, h, a, m)
    # On-policy (q = p): Omega = A p (1 - p) (ln p + H).
    #   p=0.5, H=1.0, A=+1: 0.25 * (-0.693147 + 1.0 = 0.306853)  = 0.153426
    #   p=0.9, H=0.5, A=+1: 0.09 * (-0.105361 + 0.5 = 0.394639)  = 0.039464
    #   p=0.2, H=2.0, A=-1: -0.16 * (-1.609438 + 2.0 = 0.390562) = -0.312450
    #   p=0.7, H=0.3, A=+1: 0.21 * (-0.356675 + 0.3 = -0.056675) = -0.017002 (masked)
    assert omega[0, :3].tolist() == pytest.approx([0.153426, 0.039464, -0.312450], abs=1e-6)
    assert omega[0, 3].item() == 0.0  # masked: its value -0.017002 never enters
    unmasked = entropy_change_estimate(logp, logp, h, a, torch.ones(1, 4))
    assert unmasked[0, 3].item() == pytest.approx(-0.017002, abs=1e-6)
    w, stats = steer_weights(omega, m)
    # k = ln(1.25) / 0.312450 = 0.223144 / 0.312450 = 0.714175; w = exp(-k |Omega|):
    #   exp(-0.714175 * 0.153426) = exp(-0.109573) = 0.896217; exp(-0.714175 * 0.039464) = exp(-0.028184)
    #   = 0.972209; exp(-0.714175 * 0.312450) = exp(-0.223144) = 0.8; the masked token gets 0.
    assert w[0].tolist() == pytest.approx([0.896217, 0.972209, 0.8, 0.0], abs=1e-6)
    k = math.log(1.25) / abs(omega[0, 2].item())
    assert k == pytest.approx(0.714175, abs=1e-6)
    assert w[0, 2].item() == 0.8  # the largest |Omega| gets exactly w_min
    assert stats["steer/w_mean"].item() == pytest.approx((0.896217 + 0.972209 + 0.8) / 3, abs=1e-6)
    assert stats["steer/frac_at_wmin"].item() == pytest.approx(1 / 3)
    assert stats["steer/omega_abs_max"].item() == pytest.approx(0.312450, abs=1e-6)
    assert stats["steer/omega_signed_mean"].item() == pytest.approx((0.153426 + 0.039464 - 0.312450) / 3, abs=1e-6)


def test_t2_linear_weights_and_masking():
    logp, h, a, m = _t1()
    cfg = STEERConfig(mode="linear", w_min=0.8, w_max=1.2)
    w, _ = steer_weights(entropy_change_estimate(logp, logp, h, a, m), m, cfg)
    # |Omega| = 0.153426, 0.039464, 0.312450 (T1): min 0.039464, max 0.312450, span 0.272986;
    #   w = 1.2 - (|Omega| - 0.039464) * 0.4 / 0.272986: 1.2 - 0.113962 * 1.465276 = 1.033013, 1.2, 0.8.
    assert w[0].tolist() == pytest.approx([1.033013, 1.2, 0.8, 0.0], abs=1e-6)
    # the values the masked 4th token would give if it (wrongly) entered the min/max
    full = torch.ones(1, 4)
    w_all, _ = steer_weights(entropy_change_estimate(logp, logp, h, a, full), full, cfg)
    # with |Omega| = 0.017002 in the range: min 0.017002, span 0.295447; w = 1.2 - (|Omega| - 0.017002)
    #   * 0.4 / 0.295447: 1.2 - 0.136424 * 1.353880 = 1.015298, 1.2 - 0.022462 * 1.353880 = 1.169590, 0.8, 1.2
    assert w_all[0].tolist() == pytest.approx([1.015298, 1.169590, 0.8, 1.2], abs=1e-6)


def test_linear_equal_omegas_give_the_midpoint():
    omega = torch.full((1, 3), 0.1, dtype=F64)
    w, _ = steer_weights(omega, torch.ones(1, 3), STEERConfig(mode="linear", w_min=0.8, w_max=1.2))
    assert w[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_t3_floor_and_zero_omega():
    p = torch.tensor([[0.5]], dtype=F64)
    one = torch.ones(1, 1)
    omega = entropy_change_estimate(p.log(), p.log(), torch.tensor([[0.02 + math.log(2)]], dtype=F64), one.double(), one)
    assert omega.item() == pytest.approx(0.01, abs=1e-12)
    w, _ = steer_weights(omega, one)
    assert w.item() == pytest.approx(0.8**0.5, abs=1e-6)  # 0.894427, not 0.8: k uses the 0.02 floor
    omega0 = entropy_change_estimate(p.log(), p.log(), torch.tensor([[math.log(2)]], dtype=F64), one.double(), one)
    assert omega0.item() == pytest.approx(0.0, abs=1e-15)
    assert steer_weights(omega0, one)[0].item() == pytest.approx(1.0)


def test_t4_off_policy():
    p = torch.tensor([[0.6, 0.9, 0.2]], dtype=F64)
    q = torch.tensor([[0.5, 0.9, 0.25]], dtype=F64)
    h = torch.tensor([[1.0, 0.5, 2.0]], dtype=F64)
    a = torch.tensor([[1.0, 1.0, -1.0]], dtype=F64)
    m = torch.ones(1, 3)
    omega = entropy_change_estimate(p.log(), q.log(), h, a, m)
    # Omega = (A / q) p (1 - p) (ln p + H):
    #   2.0 * 0.24 * (-0.510826 + 1.0 = 0.489174) = 0.234804
    #   1.111111 * 0.09 * (-0.105361 + 0.5 = 0.394639) = 0.039464
    #   -4.0 * 0.16 * (-1.609438 + 2.0 = 0.390562) = -0.249960
    assert omega[0].tolist() == pytest.approx([0.234804, 0.039464, -0.249960], abs=1e-6)
    w, _ = steer_weights(omega, m)
    # k = 0.223144 / 0.249960 = 0.892718; exp(-0.892718 * 0.234804) = exp(-0.209614) = 0.810898,
    #   exp(-0.892718 * 0.039464) = exp(-0.035230) = 0.965383, exp(-0.223144) = 0.8
    assert w[0].tolist() == pytest.approx([0.810898, 0.965383, 0.8], abs=1e-6)


def test_t5_loss_and_gradient_are_w_times_ppo():
    logp0, h, a, m = _t1()
    logp = logp0.clone().requires_grad_(True)
    omega = entropy_change_estimate(logp, logp0, h, a, m)
    w, _ = steer_weights(omega, m)
    assert not w.requires_grad and not omega.requires_grad
    loss, _ = clipped_surrogate(logp, logp0, a, m, 0.2, 0.28, 10.0, token_weights=w)
    # At rho = 1 the loss is -(1/3) sum_j w_j rho_j A_j over the 3 valid tokens, and its gradient in
    # log p_j is -w_j A_j / 3: -0.896217 / 3 = -0.298739, -0.972209 / 3 = -0.324070, +0.8 / 3 = 0.266667.
    assert loss.item() == pytest.approx((-0.896217 - 0.972209 + 0.8) / 3, abs=1e-6)  # -0.356142
    (grad_steer,) = torch.autograd.grad(loss, logp)
    assert grad_steer[0].tolist() == pytest.approx([-0.298739, -0.324070, 0.266667, 0.0], abs=1e-6)
    plain = logp0.clone().requires_grad_(True)
    ppo, _ = clipped_surrogate(plain, logp0, a, m, 0.2, 0.28, 10.0)
    (grad_ppo,) = torch.autograd.grad(ppo, plain)
    torch.testing.assert_close(grad_steer, w * grad_ppo, rtol=0, atol=1e-15)


def test_largest_abs_omega_gets_exactly_w_min():
    gen = torch.Generator().manual_seed(3)
    for mode in ("exp", "linear"):
        omega = torch.randn(5, 7, generator=gen, dtype=F64)
        mask = torch.rand(5, 7, generator=gen) < 0.7
        w, _ = steer_weights(omega, mask, STEERConfig(mode=mode))
        top = torch.where(mask, omega.abs(), torch.zeros_like(omega)).argmax()
        assert w.flatten()[top].item() == 0.8
        assert bool((w[mask] >= 0.8).all()) and bool((w[~mask] == 0).all())


def test_minibatch_scope_uses_the_merged_range():
    gen = torch.Generator().manual_seed(0)
    omega = torch.randn(6, 5, generator=gen, dtype=F64) * 0.3
    mask = torch.ones(6, 5)
    full, _ = steer_weights(omega, mask)
    rng = omega_range(omega[:3], mask[:3])
    rng = omega_range(omega[3:], mask[3:], previous=rng)
    assert rng.tolist() == pytest.approx([omega.abs().min().item(), omega.abs().max().item()])
    parts = [steer_weights(omega[s], mask[s], omega_stats=rng)[0] for s in (slice(0, 3), slice(3, 6))]
    torch.testing.assert_close(torch.cat(parts), full)  # independent of the micro-batch split
    micro = torch.cat([steer_weights(omega[s], mask[s])[0] for s in (slice(0, 3), slice(3, 6))])
    assert not torch.allclose(micro, full)  # code parity (micro scope) differs
    assert omega_range(omega, torch.zeros(6, 5)).tolist() == [math.inf, -math.inf]


def test_exempt_rows_get_weight_one_and_stay_out_of_the_statistics():
    omega = torch.tensor([[0.1, 0.2], [5.0, 9.0]], dtype=F64)
    mask = torch.ones(2, 2)
    w, stats = steer_weights(omega, mask, exempt=torch.tensor([False, True]))
    assert w[1].tolist() == [1.0, 1.0]
    assert w[0, 1].item() == 0.8  # max over the non-exempt row only
    assert stats["steer/omega_abs_max"].item() == pytest.approx(0.2)


def test_non_finite_and_masked_inputs_give_zero_omega():
    logp = torch.tensor([[-0.5, float("-inf"), float("nan")]], dtype=F64)
    old = torch.tensor([[-0.5, -1.0, -1.0]], dtype=F64)
    h = torch.tensor([[1.0, 1.0, 1.0]], dtype=F64)
    a = torch.tensor([1.0], dtype=F64)
    omega = entropy_change_estimate(logp, old, h, a, torch.tensor([[1, 1, 0]]))
    assert torch.isfinite(omega).all() and omega[0, 2].item() == 0.0


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="steer.w_min"):
        STEERConfig(w_min=0.0)
    with pytest.raises(ValueError, match="steer.w_max"):
        STEERConfig(mode="linear", w_min=0.9, w_max=0.8)
    with pytest.raises(ValueError, match="steer.stat_scope"):
        STEERConfig(stat_scope="batch")
    cfg = STEERConfig()
    assert (cfg.enabled, cfg.mode, cfg.w_min, cfg.floor, cfg.stat_scope) == (False, "exp", 0.8, 0.02, "minibatch")


def test_shipped_yaml_enables_steer():
    import yaml

    from agentropy.configuration import from_dict

    path = Path(__file__).resolve().parents[2] / "configs" / "strategies" / "steer.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["strategy"] and list(data["strategy"]) == ["steer"]
    assert from_dict(STEERConfig, data["strategy"]["steer"]).enabled
