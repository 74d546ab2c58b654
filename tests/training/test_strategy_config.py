"""Strategy config blocks: documented defaults, validation of the docs/methods/README.md conflicts,
and the shipped configs/strategies/*.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from agentropy.configuration import ConfigError, from_dict
from agentropy.training.advantages import grpo
from agentropy.training.methods import compose_advantages
from agentropy.training.methods.aepo import aepo_factor
from agentropy.training.methods.empg import empg_modulate
from agentropy.training.strategy_config import (
    AEPOConfig,
    SPEARConfig,
    StrategyConfig,
)

STRATEGIES = Path(__file__).resolve().parents[2] / "configs" / "strategies"
EXPECTED_ENABLED = {
    "grpo": [],
    "epo": ["epo"],
    "empg": ["empg"],
    "aepo": ["aepo"],
    "spear": ["spear", "clip_cov"],
    "clip_cov": ["clip_cov"],
    "all": ["aepo", "spear", "empg", "clip_cov", "epo"],
}


def test_defaults_are_the_documented_values_and_valid():
    cfg = StrategyConfig()
    assert cfg.validate() == [] and cfg.enabled() == []
    epo = cfg.epo
    assert (epo.enabled, epo.entropy_coef, epo.kappa_l, epo.kappa_r, epo.alpha, epo.gamma, epo.mode) == (
        False,
        1e-3,
        0.0,
        2.0,
        0.1,
        3.0,
        "token",
    )
    pl = cfg.policy_loss
    assert (pl.clip_low, pl.clip_high, pl.dual_clip, pl.agg, pl.kl_coef) == (0.2, 0.2, 3.0, "token-mean", 0.0)
    adv = cfg.advantage
    assert (adv.estimator, adv.norm_by_std, adv.eps, adv.gamma, adv.omega, adv.mode) == (
        "grpo",
        True,
        1e-6,
        0.95,
        1.0,
        "mean_norm",
    )
    assert (cfg.empg.k, cfg.empg.k_prime, cfg.empg.zeta, cfg.empg.eps) == (1.0, 1.0, 0.05, 1e-8)
    aepo = AEPOConfig()
    assert (aepo.adv_weight, aepo.premonitor_beta, aepo.branch_threshold, aepo.entropy_weight) == (
        0.2,
        0.5,
        0.5,
        0.2,
    )
    assert (aepo.consecutive_penalty, aepo.beam_size, aepo.entropy_window_tokens, aepo.z_scope) == (
        0.05,
        2,
        20,
        "step",
    )
    spear = SPEARConfig()
    assert (spear.buffer_size, spear.baseline_buffer_size, spear.tolerate_steps, spear.trigger_factor) == (
        2048,
        10240,
        5,
        1.5,
    )
    assert (spear.sil_coef, spear.sil_ramp_steps, spear.tool_reward, spear.tool_reward_steps) == (
        1.0,
        200,
        "cosine",
        200,
    )
    assert (cfg.clip_cov.ratio, cfg.clip_cov.cov_lb, cfg.clip_cov.cov_ub) == (2e-4, 1.0, 5.0)
    assert (cfg.kl_cov.ratio, cfg.kl_cov.kl_coef) == (2e-3, 1.0)


def test_contradictions_raise_naming_every_field():
    cfg = StrategyConfig()
    cfg.epo.kappa_l, cfg.epo.kappa_r = 2.0, 1.5
    cfg.policy_loss.dual_clip = 1.0
    cfg.clip_cov.enabled = cfg.kl_cov.enabled = True
    with pytest.raises(ValueError) as err:
        cfg.validate()
    text = str(err.value)
    assert "strategy.epo.kappa_r" in text and "strategy.policy_loss.dual_clip" in text
    assert "strategy.clip_cov.enabled and strategy.kl_cov.enabled" in text


@pytest.mark.parametrize(
    "edit, field",
    [
        (
            lambda c: setattr(c.kl_cov, "enabled", True) or setattr(c.aepo, "enabled", True),
            "strategy.kl_cov.enabled",
        ),
        (lambda c: setattr(c.clip_cov, "cov_ub", 0.5), "strategy.clip_cov.cov_ub"),
        (lambda c: setattr(c.spear, "trigger_factor", 0.0), "strategy.spear.trigger_factor"),
        (
            lambda c: setattr(c.spear, "recalibration", "decay") or setattr(c.spear, "decay_weight", 0.0),
            "strategy.spear.decay_weight",
        ),
        (lambda c: setattr(c.advantage, "shared_prefix", "once"), "strategy.advantage.shared_prefix"),
        (lambda c: setattr(c.empg, "k", 0.0), "strategy.empg.k"),
        (
            lambda c: setattr(c.aepo, "rollout_budget", 4) or setattr(c.aepo, "initial_rollouts", 6),
            "strategy.aepo.initial_rollouts",
        ),
    ],
)
def test_single_contradictions(edit, field):
    cfg = StrategyConfig()
    edit(cfg)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cfg.validate()


def test_conflict_warnings_of_the_composition_rules():
    cfg = StrategyConfig()
    cfg.empg.enabled = cfg.aepo.enabled = True
    cfg.aepo.z_scope = "batch"
    cfg.aepo.adv_weight = 0.3
    assert sum("with EMPG on" in w for w in cfg.validate()) == 2
    cfg = StrategyConfig()
    cfg.epo.enabled = cfg.spear.enabled = True
    cfg.epo.kappa_l = 0.5
    assert any("entropy floor" in w and "strategy.epo.kappa_l" in w for w in cfg.validate())
    cfg = StrategyConfig()
    cfg.aepo.enabled = cfg.clip_cov.enabled = True
    cfg.aepo.sg_clip_high_entropy_only = False
    assert any("limit it to high-entropy tokens" in w for w in cfg.validate())
    cfg = StrategyConfig()
    cfg.spear.enabled, cfg.spear.tolerate_steps = True, 20
    assert any("capped" in w for w in cfg.validate())


@pytest.mark.parametrize("name", sorted(EXPECTED_ENABLED))
def test_shipped_strategy_yaml_loads_validates_and_enables_its_blocks(name):
    data = yaml.safe_load((STRATEGIES / f"{name}.yaml").read_text())
    assert list(data) == ["strategy"]
    cfg = from_dict(StrategyConfig, data["strategy"] or {})
    assert cfg.validate() == []
    assert cfg.enabled() == EXPECTED_ENABLED[name]


def test_all_strategies_compose_on_a_small_batch():
    data = yaml.safe_load((STRATEGIES / "all.yaml").read_text())
    cfg = from_dict(StrategyConfig, data["strategy"])
    entropy = torch.tensor([[0.2, 0.6, 0.0], [1.0, 3.0, 2.0], [0.5, 0.0, 0.0], [2.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    res = compose_advantages(
        episode_returns=[1.0, 1.0, 0.0, 0.0],
        group_ids=["g"] * 4,
        traj_ids=["A", "A", "B", "B"],
        turn_indices=[0, 1, 0, 1],
        entropy=entropy,
        mask=mask,
        cfg=cfg,
    )
    assert torch.isfinite(res.token_advantages).all() and (res.token_advantages[mask == 0] == 0).all()
    # The same numbers composed by hand, in the fixed order base -> EMPG -> AEPO factor: EPO, SPEAR and
    # Clip-Cov act on the loss, not on advantages. Base: GRPO over returns [1, 1, 0, 0] (mean 0.5,
    # unbiased std sqrt(1/3) = 0.577350): +-0.5 / (0.577350 + eps 1e-6) = +-0.866024. Turn entropies (mean over
    # the reply tokens): (0.2 + 0.6) / 2 = 0.4, (1 + 3 + 2) / 3 = 2.0, 0.5, (2 + 2) / 2 = 2.0.
    adv, empg, aepo = cfg.advantage, cfg.empg, cfg.aepo
    assert (adv.estimator, adv.episode_stats, aepo.entropy_advantage) == ("grpo", "all_steps", True)
    assert not getattr(cfg, "canon", None) or not cfg.canon.enabled
    base = grpo([1.0, 1.0, 0.0, 0.0], ["g"] * 4, norm_by_std=adv.norm_by_std, eps=adv.eps).double()
    assert base.tolist() == pytest.approx([0.866024, 0.866024, -0.866024, -0.866024], abs=1e-6)
    step, _ = empg_modulate([0.4, 2.0, 0.5, 2.0], base, ["A", "A", "B", "B"], [0, 1, 0, 1],
                            k=empg.k, k_prime=empg.k_prime, zeta=empg.zeta, eps=empg.eps)
    expected = step.unsqueeze(-1) * mask * aepo_factor(entropy.double(), mask, aepo.adv_weight, aepo.z_scope)
    assert torch.allclose(res.token_advantages.double(), expected, atol=1e-6, rtol=0)
    # EMPG's modulation did act: the steps differ from the base (the high-entropy turns are damped)
    assert not torch.allclose(step, base, atol=1e-3)


def test_loader_refuses_unknown_and_ill_typed_strategy_fields():
    with pytest.raises(ConfigError, match="kapa"):
        from_dict(StrategyConfig, {"epo": {"kapa": 1.0}})
    with pytest.raises(ConfigError, match="epo.mode"):
        from_dict(StrategyConfig, {"epo": {"mode": "turn"}})
    assert from_dict(StrategyConfig, {"policy_loss": {"dual_clip": None}}).policy_loss.dual_clip is None
