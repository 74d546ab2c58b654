"""Loss aggregation, PPO clipped surrogate, KL, AEPO's stop-gradient clip, Clip-Cov, KL-Cov and
EPO's terms, against hand-computed values and gradients (docs/methods/base.md)."""

from __future__ import annotations

import math

import pytest
import torch

from agentropy.training.entropy import token_entropy
from agentropy.training.losses import aggregate, clipped_surrogate, kl_k3
from agentropy.training.methods import policy_loss
from agentropy.training.methods.aepo import sg_clipped_surrogate
from agentropy.training.methods.clip_cov import clip_cov_mask, kl_cov_loss, token_covariance
from agentropy.training.methods.epo import corridor_penalty, epo_beta, epo_loss_terms

F64 = torch.float64

# one row, six tokens covering every regime with eps = 0.2, dual clip c = 3:
#   t0 rho 1.0 A +1: -1        t1 rho 1.5 A +1: -1.2 (upper clip)   t2 rho 0.5 A +1: -0.5
#   t3 rho 0.7 A -1: 0.8 (lower clip)   t4 rho 4.0 A -1: 3.0 (dual clip)   t5 rho 2.0 A -1: 2.0
RATIOS = [1.0, 1.5, 0.5, 0.7, 4.0, 2.0]
ADV = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
LOSSES = [-1.0, -1.2, -0.5, 0.8, 3.0, 2.0]


def _case(extra_masked: bool = False):
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0, -2.5]], dtype=F64)
    logp = (old + torch.log(torch.tensor([RATIOS], dtype=F64))).clone().requires_grad_(True)
    adv = torch.tensor([ADV], dtype=F64)
    mask = torch.ones(1, 6)
    if extra_masked:  # padding holding -inf / NaN must not leak
        old = torch.cat([old, torch.tensor([[float("nan")]], dtype=F64)], 1)
        logp = torch.cat([logp.detach(), torch.tensor([[float("-inf")]], dtype=F64)], 1).requires_grad_(True)
        adv = torch.cat([adv, torch.tensor([[float("nan")]], dtype=F64)], 1)
        mask = torch.cat([mask, torch.zeros(1, 1)], 1)
    return logp, old, adv, mask


# --------------------------------------------------------------------------- aggregation


def test_aggregation_modes():
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 6.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert aggregate(x, m, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx(
        (1.5 + 4.0) / 2
    )  # empty row skipped
    assert aggregate(x, m, "seq-mean-token-sum-norm").item() == pytest.approx(7 / 4)
    assert aggregate(x, m, "seq-mean-token-sum-norm", normalizer=14).item() == pytest.approx(0.5)
    assert aggregate(x, m, "token-mean", normalizer=7).item() == pytest.approx(1.0)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert aggregate(x, torch.zeros_like(m), mode).item() == 0.0
    with pytest.raises(ValueError, match="agg"):
        aggregate(x, m, "sum")


def test_micro_batches_with_normalizer_add_up_to_the_mini_batch():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 7.0]])
    m = torch.tensor([[1, 1], [1, 0], [1, 1]])
    whole = aggregate(x, m, "token-mean")
    parts = aggregate(x[:2], m[:2], "token-mean", normalizer=5) + aggregate(
        x[2:], m[2:], "token-mean", normalizer=5
    )
    assert parts.item() == pytest.approx(whole.item())


# --------------------------------------------------------------------------- PPO surrogate


def test_clipped_surrogate_value_clip_fractions_and_kl():
    logp, old, adv, mask = _case()
    loss, stats = clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(sum(LOSSES) / 6)
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 6)
    assert stats["clipfrac_low"].item() == pytest.approx(1 / 6)
    assert stats["clipfrac_dual"].item() == pytest.approx(1 / 6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 6)
    assert stats["approx_kl"].item() == pytest.approx(-sum(math.log(r) for r in RATIOS) / 6)
    loss.backward()
    # d l / d logp = -A rho on unclipped tokens, 0 where a clip or the dual clip is active
    assert logp.grad.flatten().tolist() == pytest.approx([-1 / 6, 0.0, -0.5 / 6, 0.0, 0.0, 2.0 / 6])


def test_clipped_surrogate_masked_padding_and_broadcast_advantages():
    logp, old, adv, mask = _case(extra_masked=True)
    loss, stats = clipped_surrogate(logp, old, adv, mask)
    assert loss.item() == pytest.approx(sum(LOSSES) / 6)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 6].item() == 0.0
    assert all(torch.isfinite(v) for v in stats.values())
    # [B] advantages broadcast to every token
    lp = torch.zeros(2, 3, dtype=F64)
    loss, _ = clipped_surrogate(
        lp, lp, torch.tensor([2.0, -1.0], dtype=F64), torch.tensor([[1, 1, 0], [1, 0, 0]])
    )
    assert loss.item() == pytest.approx((-2 - 2 + 1) / 3)


def test_clipped_surrogate_options():
    logp, old, adv, mask = _case()
    no_dual, stats = clipped_surrogate(logp, old, adv, mask, dual_clip=None)
    assert (
        no_dual.item() == pytest.approx((sum(LOSSES) - 3.0 + 4.0) / 6)
        and stats["clipfrac_dual"].item() == 0.0
    )
    higher, _ = clipped_surrogate(logp, old, adv, mask, clip_high=0.28)  # t1 -> -1.28
    assert higher.item() == pytest.approx((sum(LOSSES) + 1.2 - 1.28) / 6)
    two_rows = clipped_surrogate(
        torch.cat([logp, logp]),
        torch.cat([old, old]),
        torch.cat([adv, adv]),
        torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]),
        agg="seq-mean-token-mean",
    )[0]
    assert two_rows.item() == pytest.approx((sum(LOSSES) / 6 + LOSSES[0]) / 2)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate(logp, old, adv, mask, dual_clip=1.0)
    with pytest.raises(ValueError, match="mask"):
        clipped_surrogate(logp, old, adv, torch.ones(1, 5))


def test_extreme_log_ratios_stay_finite():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[200.0, -200.0, 200.0, -200.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    for fn in (clipped_surrogate, sg_clipped_surrogate):
        loss, stats = fn(logp, old, adv, torch.ones(1, 4))
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert all(torch.isfinite(v) for v in stats.values())


def test_kl_k3_values_clamp_and_mask():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5]], dtype=F64))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.5]], dtype=F64))
    ref[0, 1] = logp[0, 1] + 20.0  # e^20 - 21 clamps to 10
    ref[0, 2] = float("-inf")
    kl = kl_k3(logp, ref, mask=torch.tensor([[1, 1, 0]]))
    assert kl[0, 0].item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl[0, 1].item() == 10.0 and kl[0, 2].item() == 0.0
    assert kl_k3(logp, logp).abs().max().item() == 0.0


# --------------------------------------------------------------------------- AEPO sg clip


def test_sg_clip_forward_equals_ppo_and_gradient_is_one_plus_eps_on_clipped_positive_tokens():
    logp, old, adv, mask = _case()
    ppo, _ = clipped_surrogate(logp, old, adv, mask)
    (ppo_grad,) = torch.autograd.grad(ppo, logp)
    sg, stats = sg_clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    assert sg.item() == pytest.approx(ppo.item(), abs=1e-12)
    (sg_grad,) = torch.autograd.grad(sg, logp)
    expected = ppo_grad.clone()
    expected[0, 1] = -(1 + 0.2) * ADV[1] / 6  # PPO gives 0 here
    assert torch.allclose(sg_grad, expected, atol=1e-12)
    assert stats["sg_frac"].item() == pytest.approx(1 / 6)
    # |F A|: t0 1, t1 1.2, t2 0.5, t3 0 (lower clip), t4 0 (dual), t5 2
    assert stats["sg_grad_share"].item() == pytest.approx(1.2 / 4.7)


def test_sg_clip_limited_to_above_mean_entropy_tokens():
    logp, old, adv, mask = _case()
    low_h = torch.tensor([[5.0, 0.1, 5.0, 5.0, 5.0, 5.0]], dtype=F64)  # t1 below the mean
    loss, stats = sg_clipped_surrogate(logp, old, adv, mask, entropy=low_h, only_high_entropy=True)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 1].item() == 0.0 and stats["sg_frac"].item() == 0.0
    high_h = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0, 0.0]], dtype=F64)
    loss, _ = sg_clipped_surrogate(logp, old, adv, mask, entropy=high_h, only_high_entropy=True)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 1].item() == pytest.approx(-1.2 / 6)
    with pytest.raises(ValueError, match="entropy"):
        sg_clipped_surrogate(logp, old, adv, mask, only_high_entropy=True)


# --------------------------------------------------------------------------- Clip-Cov / KL-Cov


def test_token_covariance_hand_values():
    # A mean 2 and log-prob mean -2 over the three valid tokens; the masked token is 0
    adv = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    cov = token_covariance(adv, torch.tensor([[-3.0, -2.0, -1.0, 0.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert cov.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def _cov_case():
    # A mean 0, log-prob mean -2: c = A * (logp + 2) = [2, 2, 2, 0, 2, 2, 2, 0]
    adv = torch.tensor([[2.0, 2.0, 2.0, 0.5, -2.0, -2.0, -2.0, -0.5]], dtype=F64)
    logp = torch.tensor([[-1.0, -1.0, -1.0, -2.0, -3.0, -3.0, -3.0, -2.0]], dtype=F64)
    old = logp.clone()
    old[0, 0] -= math.log(1.5)  # token 0: rho 1.5 with A > 0 -> already clipped by PPO
    return logp.requires_grad_(True), old, adv, torch.ones(1, 8)


def test_clip_cov_selects_floor_r_n_candidates_not_already_clipped():
    logp, old, adv, mask = _cov_case()
    candidates = {1, 2, 4, 5, 6}
    chosen_ever = set()
    for seed in range(40):
        keep, stats = clip_cov_mask(
            logp,
            old,
            adv,
            mask,
            ratio=0.25,
            cov_lb=1.0,
            cov_ub=5.0,
            generator=torch.Generator().manual_seed(seed),
        )
        chosen = set(torch.nonzero(keep[0] == 0).flatten().tolist())
        assert len(chosen) == 2 and chosen <= candidates  # max(1, floor(0.25 * 8)) = 2
        chosen_ever |= chosen
        assert stats["clip_cov_frac"].item() == pytest.approx(2 / 8)
        assert stats["clip_cov_candidates"].item() == pytest.approx(5 / 8)
    assert chosen_ever == candidates
    a, _ = clip_cov_mask(logp, old, adv, mask, ratio=0.25, generator=torch.Generator().manual_seed(3))
    b, _ = clip_cov_mask(logp, old, adv, mask, ratio=0.25, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    tiny, _ = clip_cov_mask(logp, old, adv, mask, ratio=1e-6, generator=torch.Generator().manual_seed(0))
    assert (tiny == 0).sum().item() == 1  # at least one token
    none, stats = clip_cov_mask(logp, old, adv, mask, cov_lb=3.0, cov_ub=5.0)
    assert torch.equal(none, torch.ones_like(none)) and stats["clip_cov_frac"].item() == 0.0
    empty, _ = clip_cov_mask(logp, old, adv, torch.zeros(1, 8))
    assert torch.equal(empty, torch.ones_like(empty))


def test_clip_cov_removes_the_gradient_of_exactly_the_selected_tokens():
    logp, old, adv, mask = _cov_case()
    keep, _ = clip_cov_mask(logp, old, adv, mask, ratio=0.25, generator=torch.Generator().manual_seed(1))
    plain, _ = clipped_surrogate(logp, old, adv, mask)
    (plain_grad,) = torch.autograd.grad(plain, logp)
    masked, _ = clipped_surrogate(logp, old, adv, mask, token_weights=keep)
    (masked_grad,) = torch.autograd.grad(masked, logp)
    selected = keep == 0
    assert (masked_grad[selected] == 0).all() and (plain_grad[selected] != 0).all()
    assert torch.equal(masked_grad[~selected], plain_grad[~selected])


def test_kl_cov_penalises_top_covariance_tokens_without_clipping():
    adv = torch.tensor([[1.0, 2.0, 3.0, 5.0]], dtype=F64)
    logp = torch.tensor([[-4.0, -3.0, -2.0, -1.0]], dtype=F64, requires_grad=True)
    old = logp.detach() - torch.tensor([[0.1, 0.0, 0.0, 0.5]], dtype=F64)
    # c = (A - 2.75)(logp + 2.5) = [2.625, 0.375, 0.125, 3.375] -> top-1 is token 3
    loss, stats = kl_cov_loss(logp, old, adv, torch.ones(1, 4), ratio=0.25, kl_coef=1.0)
    per_token = [-1.0 * math.exp(0.1), -2.0, -3.0, -5.0 * math.exp(0.5) + 0.5]
    assert loss.item() == pytest.approx(sum(per_token) / 4)
    assert stats["kl_cov_frac"].item() == pytest.approx(0.25)
    loss.backward()
    # rho = e^0.5 > 1.2 is not clipped: gradient -A rho + beta sign(logp - old)
    assert logp.grad.flatten().tolist() == pytest.approx(
        [-math.exp(0.1) / 4, -2.0 / 4, -3.0 / 4, (-5.0 * math.exp(0.5) + 1.0) / 4]
    )


# --------------------------------------------------------------------------- EPO


def test_corridor_penalty_values_and_gradient_signs():
    h = torch.tensor([[0.5, 1.0, 3.0]], dtype=F64, requires_grad=True)
    p = corridor_penalty(h, torch.tensor([1.0], dtype=F64), kappa_l=0.8, kappa_r=2.0)
    assert torch.allclose(p, torch.tensor([[0.3, 0.0, 1.0]], dtype=F64), atol=1e-12)
    p.sum().backward()
    assert h.grad.tolist() == [[-1.0, 0.0, 1.0]]


def test_epo_beta_schedule():
    assert epo_beta(0, 10) == 2.0
    assert epo_beta(5, 10) == pytest.approx(1 + math.exp(-3))
    assert epo_beta(10, 10) == pytest.approx(1 + math.exp(-6))
    assert epo_beta(1, 1) == pytest.approx(1 + math.exp(-3))  # k_mid floored at 1
    with pytest.raises(ValueError, match="total_steps"):
        epo_beta(0, 0)


def test_epo_loss_terms_hand_values():
    # traj a: turn 0 tokens [1, 3], turn 1 token [5]; reference 2 -> corridor [0, 4]
    h = torch.tensor([[1.0, 3.0], [5.0, float("nan")]], dtype=F64)
    m = torch.tensor([[1, 1], [1, 0]])
    href = torch.tensor([2.0, 2.0], dtype=F64)
    term, stats = epo_loss_terms(h, m, ["a", "a"], href, step=0, total_steps=10)
    # L^H = (2 + 5) / 2 = 3.5; L^smooth = (0 + 1) / 2 = 0.5; beta_0 = 2
    assert term.item() == pytest.approx(-1e-3 * (3.5 - 2.0 * 0.1 * 0.5))
    assert stats["epo/entropy"].item() == pytest.approx(3.5) and stats["epo/smooth"].item() == pytest.approx(
        0.5
    )
    assert stats["epo/beta"].item() == 2.0
    assert stats["epo/viol_high"].item() == pytest.approx(1 / 3) and stats["epo/viol_low"].item() == 0.0
    no_history, stats = epo_loss_terms(h, m, ["a", "a"], None, step=0, total_steps=10)
    assert no_history.item() == pytest.approx(-1e-3 * 3.5) and stats["epo/smooth"].item() == 0.0
    seq, stats = epo_loss_terms(h, m, ["a", "a"], href, step=0, total_steps=10, mode="seq")
    assert seq.item() == pytest.approx(term.item()) and stats["epo/viol_high"].item() == pytest.approx(0.5)
    held, _ = epo_loss_terms(h, m, ["a", "a"], href, step=3, total_steps=10, smooth_start_step=5)
    assert held.item() == pytest.approx(-1e-3 * 3.5)
    hinge_only, _ = epo_loss_terms(h, m, ["a", "a"], href, step=0, total_steps=10, bonus=False)
    assert hinge_only.item() == pytest.approx(1e-3 * 2.0 * 0.1 * 0.5)


def _entropy_after_one_step(
    href_value: float, kappa_l: float, kappa_r: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, dtype=F64, requires_grad=True)
    h = token_entropy(logits)
    term, _ = epo_loss_terms(
        h,
        torch.ones(1, 3),
        ["t"],
        torch.tensor([href_value], dtype=F64),
        step=0,
        total_steps=10,
        kappa_l=kappa_l,
        kappa_r=kappa_r,
        bonus=False,
    )
    (grad,) = torch.autograd.grad(term, logits)
    with torch.no_grad():
        h_after = token_entropy(logits - 50.0 * grad)
    return h.detach(), h_after, grad


def test_epo_hinge_pushes_entropy_up_below_the_corridor():
    h, h_after, _ = _entropy_after_one_step(href_value=10.0, kappa_l=1.0, kappa_r=2.0)  # H < log 5 < 10
    assert (h_after > h).all()


def test_epo_hinge_pushes_entropy_down_above_the_corridor():
    h, h_after, _ = _entropy_after_one_step(href_value=0.01, kappa_l=0.0, kappa_r=2.0)
    assert (h_after < h).all()


def test_epo_hinge_has_no_gradient_inside_the_corridor():
    _, _, grad = _entropy_after_one_step(href_value=1.0, kappa_l=0.0, kappa_r=100.0)
    assert grad.abs().max().item() == 0.0


def test_epo_nan_reference_means_no_hinge_for_that_row():
    h = torch.tensor([[1.0, 3.0], [5.0, 0.0]], dtype=F64)
    m = torch.tensor([[1, 1], [1, 0]])
    none, _ = epo_loss_terms(h, m, ["a", "a"], None, step=0, total_steps=10)
    nan, stats = epo_loss_terms(
        h, m, ["a", "a"], torch.full((2,), float("nan"), dtype=F64), step=0, total_steps=10
    )
    assert nan.item() == none.item() and stats["epo/viol_high"].item() == 0.0
    # only row 1 has a reference (2 -> corridor [0, 4]); its token 5 is above: L^smooth = (0 + 1) / 2
    part, stats = epo_loss_terms(h, m, ["a", "a"], torch.tensor([float("nan"), 2.0], dtype=F64), 0, 10)
    assert part.item() == pytest.approx(-1e-3 * (3.5 - 2.0 * 0.1 * 0.5))
    assert stats["epo/viol_high"].item() == 1.0 and stats["epo/href_mean"].item() == 2.0


# --------------------------------------------------------------------------- config-driven loss


def _strategy(**blocks):
    from agentropy.training.strategy_config import StrategyConfig

    cfg = StrategyConfig()
    for path, value in blocks.items():
        block, name = path.split("__")
        setattr(getattr(cfg, block), name, value)
    return cfg


def test_policy_loss_default_is_the_ppo_surrogate():
    logp, old, adv, mask = _case()
    loss, stats = policy_loss(logp, old, adv, mask, _strategy())
    expected, expected_stats = clipped_surrogate(logp, old, adv, mask)
    assert loss.item() == expected.item() and stats["clipfrac"] == pytest.approx(
        expected_stats["clipfrac"].item()
    )
    assert isinstance(stats["loss/pg"], float)


def test_policy_loss_picks_sg_clip_clip_cov_and_kl_cov_from_the_config():
    logp, old, adv, mask = _cov_case()
    h = torch.linspace(0.0, 1.0, 8, dtype=F64).unsqueeze(0)
    cfg = _strategy(aepo__enabled=True, clip_cov__enabled=True, clip_cov__ratio=0.25)
    loss, stats = policy_loss(
        logp, old, adv, mask, cfg, entropy=h, generator=torch.Generator().manual_seed(2)
    )
    keep, _ = clip_cov_mask(logp, old, adv, mask, ratio=0.25, generator=torch.Generator().manual_seed(2))
    expected, _ = sg_clipped_surrogate(
        logp, old, adv, mask, entropy=h, only_high_entropy=True, token_weights=keep
    )
    assert loss.item() == pytest.approx(expected.item()) and stats["clip_cov_frac"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(logp, old, adv, mask, cfg)
    loss, stats = policy_loss(logp, old, adv, mask, _strategy(kl_cov__enabled=True, kl_cov__ratio=0.25))
    assert loss.item() == pytest.approx(kl_cov_loss(logp, old, adv, mask, ratio=0.25)[0].item())
    assert "kl_cov_frac" in stats


def test_policy_loss_adds_epo_entropy_bonus_and_kl():
    logp, old, adv, mask = _case()
    h = torch.tensor([[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]], dtype=F64)
    href = torch.tensor([1.0], dtype=F64)
    cfg = _strategy(epo__enabled=True, policy_loss__entropy_coef=0.01, policy_loss__kl_coef=0.5)
    ref = old - 0.1
    loss, stats = policy_loss(
        logp,
        old,
        adv,
        mask,
        cfg,
        entropy=h,
        traj_ids=["t"],
        turn_reference=href,
        iteration=2,
        total_iterations=10,
        ref_logprobs=ref,
    )
    pg, _ = clipped_surrogate(logp, old, adv, mask)
    term, _ = epo_loss_terms(h, mask, ["t"], href, 2, 10)
    kl = aggregate(kl_k3(logp, ref, mask), mask)
    assert loss.item() == pytest.approx((pg + term - 0.01 * 2.0 + 0.5 * kl).item())
    assert stats["epo/beta"] == pytest.approx(epo_beta(2, 10)) and stats["loss/kl"] == pytest.approx(
        kl.item()
    )
    with pytest.raises(ValueError, match="traj_ids"):
        policy_loss(logp, old, adv, mask, cfg, entropy=h, ref_logprobs=ref)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, old, adv, mask, cfg, entropy=h, traj_ids=["t"])


def test_policy_loss_seq_mean_token_sum_norm_uses_the_configured_length():
    logp, old, adv, mask = _case()
    cfg = _strategy(policy_loss__agg="seq-mean-token-sum-norm", policy_loss__agg_max_len=12)
    loss, _ = policy_loss(logp, old, adv, mask, cfg)
    assert loss.item() == pytest.approx(sum(LOSSES) / 12)
