"""How the five methods of docs/methods/README.md plug into the loss, the advantage and the update
state: token weights, the EDC keep-mask and its denominator, exempt (ArbEPO) rows, CANON
as the base estimator, the recompute extras and the saved controller / anchor state."""

from __future__ import annotations

import pytest
import torch

from agentropy.training.advantages import grpo
from agentropy.training.methods import clip_bv, compose_advantages, policy_loss, siren
from agentropy.training.methods.canon import CANONConfig, canon_advantages
from agentropy.training.methods.clip_bv import expected_discriminator
from agentropy.training.methods.siren import nucleus_entropy_and_size
from agentropy.training.policy import pack, reply_logprobs_and_entropy
from agentropy.training.policy_update import UpdateState, kept_pg_normalizer, recompute_old
from agentropy.training.strategy_config import AdvantageConfig, StrategyConfig


def _on_policy(adv):
    """One row at ratio 1 (logprobs = old), so the PPO token loss is -A and its gradient -A."""
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.4]])).requires_grad_(True)
    return lp, lp.detach().clone(), torch.tensor([adv]), torch.ones(1, 3)


def test_keep_mask_drops_tokens_from_the_pg_term_and_its_denominator():
    lp, old, a, m = _on_policy([1.0, -1.0, 2.0])
    loss, _ = policy_loss(lp, old, a, m, StrategyConfig())
    assert loss.item() == pytest.approx(-(1 - 1 + 2) / 3)
    lp.grad = None
    loss, _ = policy_loss(lp, old, a, m, StrategyConfig(), keep_mask=torch.tensor([[1.0, 0.0, 1.0]]))
    assert loss.item() == pytest.approx(-(1 + 2) / 2)  # sum m' = 2
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-0.5, 0.0, -1.0])
    loss, _ = policy_loss(lp, old, a, m, StrategyConfig(), keep_mask=torch.tensor([[1.0, 0.0, 1.0]]), pg_normalizer=4.0)
    assert loss.item() == pytest.approx(-3 / 4)


def test_token_weights_multiply_the_per_token_pg_loss():
    lp, old, a, m = _on_policy([1.0, -1.0, 2.0])
    loss, _ = policy_loss(lp, old, a, m, StrategyConfig(), token_weights=torch.tensor([[0.5, 1.0, 0.8]]))
    assert loss.item() == pytest.approx((-0.5 + 1.0 - 1.6) / 3)  # denominators keep counting m
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-0.5 / 3, 1 / 3, -1.6 / 3])


def test_micro_batches_add_up_to_the_mini_batch_loss_under_a_keep_mask():
    torch.manual_seed(0)
    lp = torch.randn(4, 5) * 0.1 - 1.0
    old = lp + torch.randn(4, 5) * 0.05
    a = torch.randn(4, 5)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    keep = torch.ones(4, 5)
    keep[1, 2] = keep[3, 0] = keep[0, 1] = 0.0
    cfg = StrategyConfig()
    whole, _ = policy_loss(lp, old, a, m, cfg, keep_mask=keep)
    total, kept = float(m.sum()), float((m * keep).sum())
    parts = 0.0
    for rows in ([0, 1], [2, 3]):
        micro = float(m[rows].sum())
        loss, _ = policy_loss(lp[rows], old[rows], a[rows], m[rows], cfg, keep_mask=keep[rows],
                              pg_normalizer=kept_pg_normalizer(kept, micro, total))
        parts += loss.item() * micro / total  # the trainer's micro weight (token-mean)
    assert parts == pytest.approx(whole.item(), rel=1e-6)


def test_exempt_rows_get_plain_ppo_and_stay_out_of_clip_cov_and_epo():
    # Clip-Cov with ratio 1 and open bounds zeroes every candidate: all main tokens, no exempt one.
    cfg = StrategyConfig()
    cfg.clip_cov.enabled, cfg.clip_cov.ratio, cfg.clip_cov.cov_lb, cfg.clip_cov.cov_ub = True, 1.0, -1e9, 1e9
    lp = torch.log(torch.tensor([[0.5, 0.25], [0.4, 0.1]])).requires_grad_(True)
    old, m = lp.detach().clone(), torch.ones(2, 2)
    a = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    exempt = torch.tensor([False, True])
    for seed in range(5):
        lp.grad = None
        loss, stats = policy_loss(lp, old, a, m, cfg, exempt=exempt, generator=torch.Generator().manual_seed(seed))
        loss.backward()
        assert lp.grad[1].tolist() == pytest.approx([-0.25, -0.25])  # plain -A / 4 on the exempt row
        assert lp.grad[0].tolist() == [0.0, 0.0] and stats["clip_cov_frac"] == 1.0
    # EPO's trajectory entropy term: an exempt row's entropy does not change it.
    cfg = StrategyConfig()
    cfg.epo.enabled = True
    h = torch.tensor([[0.3, 0.5], [1.0, 2.0]], requires_grad=True)
    kwargs = dict(traj_ids=["A", "R"], turn_reference=torch.tensor([float("nan")] * 2), total_iterations=4)
    base, _ = policy_loss(lp, old, a, m, cfg, entropy=h, exempt=exempt, **kwargs)
    other, _ = policy_loss(lp, old, a, m, cfg, entropy=h * torch.tensor([[1.0], [3.0]]), exempt=exempt, **kwargs)
    assert base.item() == pytest.approx(other.item())
    plain, _ = policy_loss(lp, old, a, m, cfg, entropy=h, **kwargs)
    assert plain.item() != pytest.approx(base.item())


def test_exempt_rows_get_no_stop_gradient_bound():
    # ratio 2 > 1 + eps_h with A > 0: PPO's gradient is 0, AEPO's sg bound gives 1 + eps_h.
    cfg = StrategyConfig()
    cfg.aepo.enabled, cfg.aepo.sg_clip_high_entropy_only = True, False
    lp = torch.log(torch.tensor([[0.5], [0.5]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.25], [0.25]]))
    a, m = torch.ones(2, 1), torch.ones(2, 1)
    loss, _ = policy_loss(lp, old, a, m, cfg, entropy=torch.ones(2, 1), exempt=torch.tensor([False, True]))
    loss.backward()
    assert lp.grad[:, 0].tolist() == pytest.approx([-1.2 / 2, 0.0])


def test_canon_is_the_base_estimator_and_spear_keeps_the_plain_sign():
    entropy = torch.tensor([[0.9, 0.0], [0.2, 0.0], [0.5, 0.0], [0.1, 0.0]])
    mask = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0]])
    batch = dict(episode_returns=[1.0, 0.0, 1.0, 0.0], group_ids=["g"] * 4, traj_ids=["a", "b", "c", "d"],
                 turn_indices=[0] * 4, entropy=entropy, mask=mask)
    cfg = StrategyConfig(advantage=AdvantageConfig(norm_by_std=False))
    cfg.canon.enabled = True
    res = compose_advantages(**batch, cfg=cfg)
    assert res.base.tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0])  # mu = 1: the inter-group term alone
    assert res.token_advantages[:, 0].tolist() == pytest.approx([1.0, -1.0, 1.0, -1.0])
    assert res.buffer_sign_source.tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5])  # R - mean R
    assert res.metrics["canon/gap_mean"] == 1.0
    cfg.canon.mu = 0.5  # = Dr.GRPO
    assert compose_advantages(**batch, cfg=cfg).base.tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5])
    cfg.canon = CANONConfig(enabled=True, schedule="cosine_restart")
    a_k, _ = canon_advantages([1.0, 0.0, 1.0, 0.0], entropy, mask, ["g"] * 4, ["a", "b", "c", "d"], cfg.canon, step=50)
    assert compose_advantages(**batch, cfg=cfg, iteration=50).base.tolist() == pytest.approx(a_k.tolist())
    # GiGPO: CANON replaces A^E only.
    gig = StrategyConfig(advantage=AdvantageConfig(estimator="gigpo", omega=0.5))
    gig.canon.enabled = True
    extra = dict(anchor_obs=["s", "s", "s", "s"], step_rewards=[1.0, 0.0, 0.0, 0.0])
    with_canon = compose_advantages(**batch, cfg=gig, **extra)
    gig.canon.enabled = False
    plain = compose_advantages(**batch, cfg=gig, **extra)
    episode = grpo(torch.tensor([1.0, 0.0, 1.0, 0.0]), ["g"] * 4, norm_by_std=False).double()
    step = (plain.base.double() - episode) / 0.5
    assert with_canon.base.tolist() == pytest.approx((torch.tensor([1.0, -1.0, 1.0, -1.0]) + 0.5 * step).tolist())
    assert with_canon.buffer_sign_source.tolist() == pytest.approx(plain.base.tolist())


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_recompute_extras_match_the_formulas_on_the_logits():
    torch.set_num_threads(1)
    model = _tiny_lm()
    batch = pack([[1, 2, 3], [4, 5], [6]], [[7, 8], [9, 10, 11], [12]], pad_id=0)
    plain = recompute_old(model, batch, 2, 1.0, torch.device("cpu"))
    strategy = StrategyConfig()
    strategy.siren.top_p, strategy.siren.top_k = 0.8, 10000
    extras = (clip_bv.CLIP_V.pi_old_extra(strategy), siren.METHOD.pi_old_extra(strategy))
    out = recompute_old(model, batch, 2, 1.0, torch.device("cpu"), extras)
    torch.testing.assert_close(out.logprobs, plain.logprobs)
    torch.testing.assert_close(out.entropy, plain.entropy)
    with torch.no_grad():
        lp, h, logits = reply_logprobs_and_entropy(model, batch, 1.0, return_logits=True)
    m = batch.response_mask.float()
    assert logits.shape == (3, 3, 40)
    torch.testing.assert_close(out.extra["expected"], expected_discriminator(logits) * m, rtol=1e-5, atol=1e-6)
    hp, size = nucleus_entropy_and_size(logits, 0.8, 10000)
    torch.testing.assert_close(out.extra["nucleus"], hp * m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.extra["nucleus_size"], size.float() * m)
    assert (out.extra["expected"][m == 0] == 0).all() and (out.extra["nucleus"][m == 0] == 0).all()


def test_update_state_saves_the_arbepo_controller_and_the_siren_anchor():
    class Cfg:
        strategy = StrategyConfig()

    Cfg.strategy.arbepo.enabled = Cfg.strategy.siren.enabled = True
    state = UpdateState.create(Cfg)
    state.arbepo.update(0.7)
    state.siren_anchor.set_from(torch.tensor([[0.1, 0.9, 0.5]]), torch.ones(1, 3), Cfg.strategy.siren, ["t"])
    saved = state.state_dict()
    fresh = UpdateState.create(Cfg)
    fresh.load_state_dict(saved)
    assert fresh.arbepo.h_state == 0.7 and fresh.arbepo.temperature() == 0.8 and fresh.arbepo.switches == 1
    assert fresh.siren_anchor.ready and fresh.siren_anchor.value == pytest.approx(0.9)
    plain = UpdateState.create(type("C", (), {"strategy": StrategyConfig()}))
    assert plain.arbepo is None and plain.siren_anchor is None
    plain.load_state_dict(saved)  # a run without the methods ignores their state
