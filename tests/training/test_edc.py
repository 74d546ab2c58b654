"""Entropy-discriminator clipping (Clip_B / Clip_V) against hand-computed values (T1, T3-T5; each
derivation is written next to its numbers): discriminator values, the two keep-masks with the cap,
and the keep factor acting on the policy-gradient term only.

Formulas: for a next-token distribution q with entropy H = -sum_v q_v ln q_v and sampled token a,
S = q_a (ln q_a + H), N = sum_v q_v^2 (ln q_v + H) (the expectation of S under q, weighted by q), and
D = N - S. A softmax step on the logits changes the entropy by about eta * A * D per position."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentropy.training.entropy import token_entropy
from agentropy.training.losses import clipped_surrogate
from agentropy.training.methods.clip_bv import (
    ClipBConfig,
    ClipVConfig,
    clip_b_mask,
    clip_v_mask,
    entropy_discriminator,
    expected_discriminator,
)

F64 = torch.float64


def _disc(q, token):
    z = torch.tensor(q, dtype=F64).log().view(1, 1, -1)
    h = token_entropy(z)
    n = expected_discriminator(z)
    logq = torch.tensor([[q[token]]], dtype=F64).log()
    s, d = entropy_discriminator(logq, h, torch.ones(1, 1), n)
    return h.item(), n.item(), s.item(), d.item()


def test_t1_discriminator_values():
    # q = [0.7, 0.2, 0.1]: H = 0.7 * 0.356675 + 0.2 * 1.609438 + 0.1 * 2.302585 = 0.249672 + 0.321888
    #   + 0.230259 = 0.801819; ln q + H = 0.445144, -0.807619, -1.500766;
    #   N = 0.49 * 0.445144 + 0.04 * (-0.807619) + 0.01 * (-1.500766) = 0.218121 - 0.032305 - 0.015008 = 0.170808.
    # token 0: S = 0.7 * 0.445144 = 0.311601, D = 0.170808 - 0.311601 = -0.140793.
    # token 2: S = 0.1 * (-1.500766) = -0.150077, D = 0.170808 + 0.150077 = 0.320885.
    h, n, s, d = _disc([0.7, 0.2, 0.1], 0)
    assert (h, n, s, d) == pytest.approx((0.801819, 0.170808, 0.311601, -0.140793), abs=1e-6)
    _, _, s, d = _disc([0.7, 0.2, 0.1], 2)
    assert (s, d) == pytest.approx((-0.150077, 0.320885), abs=1e-6)
    assert _disc([0.5, 0.5], 0)[1:] == pytest.approx((0.0, 0.0, 0.0), abs=1e-15)
    # q = [0.9, 0.05, 0.05]: H = 0.9 * 0.105361 + 2 * 0.05 * 2.995732 = 0.094825 + 0.299573 = 0.394398;
    #   token 1: S = 0.05 * (-2.995732 + 0.394398) = 0.05 * (-2.601334) = -0.130067;
    #   N = 0.81 * (-0.105361 + 0.394398) + 2 * 0.0025 * (-2.601334) = 0.234120 - 0.013007 = 0.221113;
    #   D = 0.221113 + 0.130067 = 0.351180.
    h, n, s, d = _disc([0.9, 0.05, 0.05], 1)
    assert (h, s, n, d) == pytest.approx((0.394398, -0.130067, 0.221113, 0.351180), abs=1e-6)


def test_discriminator_without_expected_and_masking():
    logq = torch.tensor([[0.7, 0.2]], dtype=F64).log()
    h = torch.tensor([[0.801819, 0.801819]], dtype=F64)
    s, d = entropy_discriminator(logq, h, torch.tensor([[1, 0]]))
    assert d is None
    assert s[0].tolist() == pytest.approx([0.311601, 0.0], abs=1e-6)


def _row(values):
    return torch.tensor([values], dtype=F64), torch.ones(1, len(values))


def test_t3_clip_b():
    s, m = _row([0.0] * 9 + [-1.0])
    keep, metrics = clip_b_mask(s, -torch.ones(1, 10, dtype=F64), m, ClipBConfig(mu=2.5))
    assert keep[0].tolist() == [1.0] * 9 + [0.0]
    assert metrics["edc/S_mean"] == pytest.approx(-0.1) and metrics["edc/S_var"] == pytest.approx(0.09)
    assert metrics["edc/dropped_fraction"] == pytest.approx(0.1) and metrics["edc/frac_clipped_pos"] == 0.0
    for a10 in (1.0, 0.0):
        adv = -torch.ones(1, 10, dtype=F64)
        adv[0, 9] = a10
        assert clip_b_mask(s, adv, m)[0].sum().item() == 10  # A >= 0 always kept
    flat, _ = _row([0.3] * 10)
    assert clip_b_mask(flat, -torch.ones(1, 10), m)[0].sum().item() == 10  # std 0: keep all


def test_t4_clip_v_threshold_cap_and_zero_advantages():
    d, m = _row([0.0] * 8 + [1.0, 0.5])
    neg = -torch.ones(1, 10, dtype=F64)
    # D = [0 x 8, 1, 0.5]: mean 0.15, population variance (8 * 0.15^2 + 0.85^2 + 0.35^2) / 10
    #   = (0.18 + 0.7225 + 0.1225) / 10 = 0.1025, sigma_D = 0.320156. Clip_V drops A < 0 tokens with
    #   D > mu * sigma_D (not mean-centred): mu = 1 drops D = 1 and 0.5 (> 0.320156); mu = 8.5 gives the
    #   threshold 8.5 * 0.320156 = 2.721328 and drops none.
    keep, metrics = clip_v_mask(d, neg, m, ClipVConfig(mu=1.0, max_frac=1.0))
    assert keep[0].tolist() == [1.0] * 8 + [0.0, 0.0]
    assert metrics["edc/D_std"] == pytest.approx(0.320156, abs=1e-6) and metrics["edc/cap_hit"] == 0.0
    keep, metrics = clip_v_mask(d, neg, m, ClipVConfig(mu=1.0, max_frac=0.1))  # cap 1: the largest D
    assert keep[0].tolist() == [1.0] * 8 + [0.0, 1.0]
    assert metrics["edc/cap_hit"] == 1.0 and metrics["edc/dropped_fraction"] == pytest.approx(0.1)
    assert clip_v_mask(d, neg, m, ClipVConfig(mu=8.5))[0].sum().item() == 10  # threshold 2.721328
    zero10 = neg.clone()
    zero10[0, 9] = 0.0
    assert clip_v_mask(d, zero10, m, ClipVConfig(mu=1.0, max_frac=1.0))[0][0].tolist() == [1.0] * 8 + [0.0, 1.0]
    code = ClipVConfig(mu=1.0, max_frac=1.0, clip_zero_adv=True)
    assert clip_v_mask(d, zero10, m, code)[0][0].tolist() == [1.0] * 8 + [0.0, 0.0]


def test_clip_v_drops_at_most_the_cap_largest_d_first():
    gen = torch.Generator().manual_seed(1)
    d = torch.rand(40, 50, generator=gen, dtype=F64) ** 8 * 10  # heavy right tail
    adv = torch.where(torch.rand(40, 50, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    m = (torch.rand(40, 50, generator=gen) < 0.9).float()
    cfg = ClipVConfig(mu=1.0, max_frac=5e-3)
    keep, metrics = clip_v_mask(d, adv, m, cfg)
    n = int(m.sum())
    cap = max(int(cfg.max_frac * n), 1)
    dropped = (keep == 0) & m.bool()
    assert int(dropped.sum()) == cap and metrics["edc/cap_hit"] == 1.0
    candidates = (adv < 0) & m.bool() & (d > 1.0 * d[m.bool()].std(unbiased=False))
    assert int(candidates.sum()) > cap
    assert d[dropped].min() >= d[candidates & ~dropped].max()  # the largest D went first
    assert bool((adv[dropped] < 0).all()) and bool((keep[~m.bool()] == 1).all())
    assert metrics["edc/pred_dH_kept"] > metrics["edc/pred_dH_all"]  # dropping A<0, D>0 tokens raises it


def test_keep_factor_acts_on_the_policy_gradient_term_only():
    logp0 = torch.tensor([[-0.5, -1.0, -2.0, -3.0]], dtype=F64)
    adv = torch.tensor([[1.0, -1.0, -1.0, -1.0]], dtype=F64)
    m = torch.ones(1, 4)
    keep = torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=F64)
    logp = logp0.clone().requires_grad_(True)
    loss, _ = clipped_surrogate(logp, logp0, adv, m * keep)
    (grad,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx((-1 + 1 + 1) / 3)  # denominator sum m' = 3
    assert grad[0].tolist() == pytest.approx([-1 / 3, 1 / 3, 0.0, 1 / 3])


def test_t5_tabular_softmax_entropy_change_of_the_kept_update():
    q = torch.tensor([0.7, 0.2, 0.1], dtype=F64)
    samples, adv = [0, 2], torch.tensor([1.0, -1.0], dtype=F64)
    s, d = (torch.tensor(x, dtype=F64) for x in zip(*[_disc(q.tolist(), k)[2:] for k in samples], strict=True))
    eta = 1e-5
    # First-order entropy change per unit step: sum over kept positions of A_j D_j, with D from T1
    #   (token 0: -0.140793, token 2: 0.320885): both kept 1 * (-0.140793) + (-1) * 0.320885 = -0.461678;
    #   only the first kept: -0.140793.
    for keep, expected in (([1.0, 1.0], -0.461678), ([1.0, 0.0], -0.140793)):
        z = q.log().repeat(2, 1).requires_grad_(True)  # one logit vector per position
        logp = torch.log_softmax(z, -1)[[0, 1], samples]
        loss = -(torch.tensor(keep, dtype=F64) * adv * logp).sum()
        (g,) = torch.autograd.grad(loss, z)
        if keep[1] == 0.0:
            assert g[1].abs().max().item() == 0.0  # dropped position: exactly zero gradient
        h_before = token_entropy(z.detach()).sum()
        h_after = token_entropy(z.detach() - eta * g).sum()
        assert ((h_after - h_before) / eta).item() == pytest.approx(expected, abs=1e-4)
        assert (torch.tensor(keep, dtype=F64) * adv * d).sum().item() == pytest.approx(expected, abs=1e-6)


def test_config_defaults_and_validation():
    assert (ClipBConfig().enabled, ClipBConfig().mu) == (False, 2.5)
    v = ClipVConfig()
    assert (v.enabled, v.mu, v.max_frac, v.clip_zero_adv) == (False, 8.5, 1e-4, False)
    with pytest.raises(ValueError, match="clip_v.max_frac"):
        ClipVConfig(max_frac=0.0)
    with pytest.raises(ValueError, match="clip_b.mu"):
        ClipBConfig(mu=-1.0)


def test_shipped_yaml_enables_clip_b():
    import yaml

    from agentropy.configuration import from_dict

    path = Path(__file__).resolve().parents[2] / "configs" / "strategies" / "clip_b.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["strategy"] and list(data["strategy"]) == ["clip_b"]
    assert from_dict(ClipBConfig, data["strategy"]["clip_b"]).enabled


def test_shipped_yaml_enables_clip_v():
    import yaml

    from agentropy.configuration import from_dict

    path = Path(__file__).resolve().parents[2] / "configs" / "strategies" / "clip_v.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["strategy"] and list(data["strategy"]) == ["clip_v"]
    assert from_dict(ClipVConfig, data["strategy"]["clip_v"]).enabled
