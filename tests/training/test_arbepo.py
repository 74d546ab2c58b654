"""ArbEPO (T1-T5, hand values with their derivations beside them): the bang-bang controller,
episode selection, the entropy direction of temperature-guided REINFORCE, splicing,
regularisation-row bookkeeping; and the check that ArbEPO is not combined with another
closed-loop entropy controller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from agentropy.training.entropy import token_entropy
from agentropy.training.entropy_controllers import active_controllers, validate_controllers
from agentropy.training.losses import clipped_surrogate
from agentropy.training.methods.arbepo import (
    ArbEPOConfig,
    TemperatureController,
    entropy_estimate,
    mark_regularization,
    regularization_budget,
    regularization_rollout_config,
    regularization_rows,
    select_regularization_episodes,
    select_regularization_tasks,
    splice_regularization,
    statistics_mask,
    unit_advantages,
)
from agentropy.training.trajectory import Step, Trajectory

F64 = torch.float64


def _traj(gid: str, j: int, ret: float, turns: int = 1, kind: str = "global") -> Trajectory:
    tid = f"{gid}-g{j}"
    steps = [Step(turn=t, prompt_ids=[1], response_ids=[2], logprobs=[-0.1], entropy=[0.5], reward=0.0,
                  terminated=t == turns - 1, truncated=False, anchor_obs="o", action="a", group_id=gid, traj_id=tid)
             for t in range(turns)]
    return Trajectory(traj_id=tid, group_id=gid, task_id="t", seed=0, steps=steps, episode_return=ret, kind=kind)


def _groups(n_groups: int, rewards: list[float]) -> list[Trajectory]:
    return [_traj(f"it0-t{g}", j, r) for g in range(n_groups) for j, r in enumerate(rewards)]


# --------------------------------------------------------------------------- controller


def test_controller_switches_at_the_target():
    ctl = TemperatureController(target=0.5, t_high=1.2, t_low=0.8)
    assert ctl.temperature() == 1.2  # initial state 0
    ctl.update(0.3)
    assert ctl.temperature() == 1.2
    ctl.update(0.5)
    assert ctl.temperature() == 1.2  # H <= H*: still heating (the code's <=)
    assert ctl.switches == 0
    ctl.update(0.5000001)
    assert ctl.temperature() == 0.8 and ctl.above_target and ctl.switches == 1
    ctl.update(0.6)
    assert ctl.switches == 1
    ctl.update(0.4)
    assert ctl.temperature() == 1.2 and ctl.switches == 2
    with pytest.raises(ValueError, match="not finite"):
        ctl.update(float("nan"))
    clone = TemperatureController()
    clone.load_state_dict(ctl.state_dict())
    assert clone.state_dict() == ctl.state_dict() and clone.temperature() == 1.2
    assert ctl.metrics() == {"arbepo/temperature": 1.2, "arbepo/H_state": 0.4, "arbepo/H_target": 0.5,
                             "arbepo/switches": 2.0}


@pytest.mark.parametrize(("h", "kept", "n_reg", "temp"), [
    (0.3, 45, 45, 1.2), (0.3, 100, 60, 1.2), (0.6, 45, 22, 0.8), (0.6, 100, 30, 0.8), (0.5, 45, 45, 1.2),
])
def test_t1_controller_and_budget(h, kept, n_reg, temp):
    ctl = TemperatureController(0.5)
    ctl.update(h)
    reg = _groups(kept, [1.0, 0.0])  # each mixed pair keeps its correct episode
    chosen, metrics = select_regularization_episodes(reg, 2560, ctl, ArbEPOConfig(reg_max=60))
    assert len(chosen) == n_reg and metrics["arbepo/n_reg"] == n_reg and metrics["arbepo/n_kept"] == kept
    assert metrics["arbepo/temperature"] == temp
    assert all(t.episode_return == 1.0 for t in chosen)


def test_budget_scales_with_the_batch():
    cfg = ArbEPOConfig()
    assert regularization_budget(2560, cfg) == 60
    assert regularization_budget(128, cfg) == 3
    assert regularization_budget(8, cfg) == 1  # at least one
    assert regularization_budget(8, ArbEPOConfig(reg_max=5)) == 5


def test_t2_selection_by_group_advantage():
    from agentropy.training.advantages import grpo

    rewards = [1.0, 0.0, 0.0, 1.0, 0.0]
    adv = grpo(torch.tensor(rewards, dtype=F64), ["g"] * 5, norm_by_std=True, eps=1e-6)
    # mean 0.4; unbiased std sqrt((2 * 0.36 + 3 * 0.16) / 4) = sqrt(0.3) = 0.547723;
    #   A = 0.6 / 0.547724 = 1.095443 for the two 1s, -0.4 / 0.547724 = -0.730295 for the three 0s
    assert adv.tolist() == pytest.approx([1.095443, -0.730295, -0.730295, 1.095443, -0.730295], abs=1e-6)
    reg = [_traj("g", j, r) for j, r in enumerate(rewards)] + _groups(1, [1.0, 1.0]) + [_traj("w", 0, 0.0)]
    chosen, metrics = select_regularization_episodes(reg, 1000, TemperatureController(), ArbEPOConfig(reg_max=60))
    assert [t.traj_id for t in chosen] == ["g-g0", "g-g3"]  # all-correct and all-wrong groups give none
    assert metrics["arbepo/reg_acc"] == pytest.approx(4 / 8)
    none, metrics = select_regularization_episodes(_groups(3, [1.0, 1.0]), 1000, TemperatureController())
    assert none == [] and metrics["arbepo/n_reg"] == 0.0
    main = _groups(2, [1.0, 0.0])
    batch, _ = splice_regularization(main, none)
    assert batch == main  # nothing kept: train on the main batch alone


def test_t3_temperature_guided_reinforce_moves_entropy_in_the_right_direction():
    z = torch.tensor([2.0, 1.0, 0.0], dtype=F64)
    pi = z.softmax(-1)
    # z = [2, 1, 0]: exp z = [7.389056, 2.718282, 1], sum 11.107338, pi = [0.665241, 0.244728, 0.090031];
    #   H = -sum pi ln pi = 0.271156 + 0.344481 + 0.216758 = 0.832396
    assert pi.tolist() == pytest.approx([0.665241, 0.244728, 0.090031], abs=1e-6)
    assert token_entropy(z).item() == pytest.approx(0.832396, abs=1e-6)
    zz = z.clone().requires_grad_(True)
    (grad_h,) = torch.autograd.grad(token_entropy(zz), zz)
    coef = (pi**2 * (z - (pi * z).sum()) ** 2).sum().item()
    # z_bar = sum pi z = 1.575210; z - z_bar = [0.424790, -0.575210, -1.575210];
    #   sum pi^2 (z - z_bar)^2 = 0.079856 + 0.019816 + 0.020112 = 0.119784
    assert coef == pytest.approx(0.119784, abs=1e-6)
    eta = 1e-4
    # dH/dz_k = -pi_k (ln pi_k + H) = -pi_k (z_k - z_bar); the step pi^T - pi changes H by
    #   -sum_k pi_k (z_k - z_bar)(pi^T_k - pi_k) per unit eta.
    # T = 1.2: exp(z / 1.2) = [5.294490, 2.300976, 1], sum 8.595466, pi^T = [0.615963, 0.267696, 0.116340];
    #   pi^T - pi = [-0.049278, 0.022968, 0.026310]; -(0.665241 * 0.424790 * -0.049278 + 0.244728 * -0.575210
    #   * 0.022968 + 0.090031 * -1.575210 * 0.026310) = -(-0.013925 - 0.003233 - 0.003731) = 0.020890.
    # T = 0.8: exp(z / 0.8) = [12.182494, 3.490343, 1], sum 16.672837, pi^T = [0.730679, 0.209343, 0.059978];
    #   pi^T - pi = [0.065438, -0.035385, -0.030053]; -(0.018492 + 0.004981 + 0.004262) = -0.027735.
    for temp, pi_t, first_order in ((1.2, [0.615963, 0.267696, 0.116340], 0.020890),
                                    (0.8, [0.730679, 0.209343, 0.059978], -0.027735), (1.0, None, 0.0)):
        target = (z / temp).softmax(-1)
        if pi_t is not None:
            assert target.tolist() == pytest.approx(pi_t, abs=1e-6)
        direction = (grad_h * (target - pi)).sum().item()
        assert direction == pytest.approx(first_order, abs=1e-6)
        # the expected unit-reward REINFORCE step on samples from pi^T is delta z = eta (pi^T - pi)
        dh = (token_entropy(z + eta * (target - pi)) - token_entropy(z)).item() / eta
        assert dh == pytest.approx(first_order, abs=1e-6)
        if temp != 1.0:
            assert (dh > 0) == (temp > 1)


def test_t4_regularisation_loss_is_reinforce():
    logp0 = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    reg = torch.tensor([False, True])
    adv = unit_advantages(torch.tensor([-0.4, 0.9], dtype=F64), mask, reg)
    assert adv.tolist() == [[-0.4, -0.4, -0.4], [1.0, 1.0, 0.0]]
    logp = logp0[1:].clone().requires_grad_(True)
    loss, _ = clipped_surrogate(logp, logp0[1:], adv[1:], mask[1:], 0.2, 0.2)
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0].tolist() == pytest.approx([-0.5, -0.5, 0.0])  # -1 / N_tok
    above = (logp0[1:] + 0.5).clone().requires_grad_(True)  # rho = e^0.5 > 1 + eps_h
    loss, _ = clipped_surrogate(above, logp0[1:], adv[1:], mask[1:], 0.2, 0.2)
    (g,) = torch.autograd.grad(loss, above)
    assert g.abs().max().item() == 0.0


def test_t5_batch_composition():
    main = _groups(5, [1.0, 0.0])  # 10 main trajectories
    reg = mark_regularization(_groups(3, [1.0]))
    batch, metrics = splice_regularization(main, reg, "replace")
    assert len(batch) == 10 and batch[:3] == reg and batch[3:] == main[3:]
    assert all(t not in batch for t in main[:3])
    batch, metrics = splice_regularization(main, reg, "add")
    assert len(batch) == 13 and batch[:10] == main and metrics["arbepo/alpha_implied"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="mark_regularization"):
        splice_regularization(main, _groups(1, [1.0]))


def test_marking_keeps_regularisation_out_of_main_groups_and_statistics():
    fresh = [_traj("it0-t0", 0, 1.0, turns=2)]
    marked = mark_regularization(fresh)
    assert fresh[0].kind == "global" and fresh[0].group_id == "it0-t0"  # input untouched
    t = marked[0]
    assert (t.kind, t.group_id, t.traj_id) == ("regularization", "reg-it0-t0", "reg-it0-t0-g0")
    assert {(s.group_id, s.traj_id) for s in t.steps} == {("reg-it0-t0", "reg-it0-t0-g0")}
    assert mark_regularization(marked)[0].group_id == "reg-it0-t0"  # idempotent
    probe = _traj("it0-t1", 0, 0.0, kind="probe")
    batch = [_traj("it0-t0", 1, 0.0, turns=3), probe, *marked]
    rows = regularization_rows(batch)
    assert rows.tolist() == [False, False, False, True, True]  # probe left out, as gather_samples
    assert regularization_rows(batch, include_probes=True).tolist() == [False] * 4 + [True] * 2
    mask = torch.ones(5, 2)
    assert statistics_mask(mask, rows).sum(-1).tolist() == [2, 2, 2, 0, 0]


def test_entropy_estimates():
    values = torch.tensor([[0.2, 0.4, 9.0], [0.6, 9.0, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert entropy_estimate(values, mask, "full_old") == pytest.approx(0.4)
    assert entropy_estimate(-values, mask, "surprisal_update") == pytest.approx(0.4)
    assert entropy_estimate(values, torch.zeros(2, 3)) == 0.0


def test_task_selection_and_rollout_config():
    assert select_regularization_tasks(list(range(8))) == [0, 1]
    assert select_regularization_tasks(list(range(3))) == [0]  # at least one
    assert select_regularization_tasks([]) == []
    from agentropy.training.rollout import RolloutConfig

    rcfg = regularization_rollout_config(RolloutConfig(group_size=8, temperature=1.0), 0.8, 4)
    assert (rcfg.temperature, rcfg.group_size) == (0.8, 4)
    assert regularization_rollout_config(RolloutConfig(group_size=6), 1.2).group_size == 6


def test_config_defaults_and_validation():
    cfg = ArbEPOConfig()
    assert (cfg.enabled, cfg.target_entropy, cfg.temperature_high, cfg.temperature_low, cfg.task_fraction,
            cfg.adv_threshold, cfg.mix) == (False, 0.5, 1.2, 0.8, 0.25, 0.05, "add")
    with pytest.raises(ValueError, match="arbepo.temperature_low"):
        ArbEPOConfig(temperature_low=1.5)
    with pytest.raises(ValueError, match="arbepo.mix"):
        ArbEPOConfig(mix="both")


# --------------------------------------------------------------------------- controllers (one closed-loop controller)


@dataclass
class _Block:
    enabled: bool = False
    alpha: float = 0.1
    entropy_bonus: bool = True
    entropy_advantage: bool = True


@dataclass
class _Strategy:
    epo: _Block = field(default_factory=_Block)
    siren: _Block = field(default_factory=_Block)
    arbepo: _Block = field(default_factory=_Block)
    steer: _Block = field(default_factory=_Block)
    clip_cov: _Block = field(default_factory=_Block)
    clip_b: _Block = field(default_factory=_Block)
    clip_v: _Block = field(default_factory=_Block)
    aepo: _Block = field(default_factory=_Block)
    allow_multi_entropy_controllers: bool = False


def test_validate_controllers_refuses_two_controllers_naming_the_fields():
    assert validate_controllers(_Strategy()) == []
    one = _Strategy(arbepo=_Block(enabled=True))
    assert validate_controllers(one) == []
    two = _Strategy(siren=_Block(enabled=True), arbepo=_Block(enabled=True))
    with pytest.raises(ValueError) as err:
        validate_controllers(two)
    text = str(err.value)
    assert "strategy.siren.enabled" in text and "strategy.arbepo.enabled" in text
    assert "allow_multi_entropy_controllers" in text
    two.allow_multi_entropy_controllers = True
    assert validate_controllers(two) == []
    epo_smoothing = _Strategy(epo=_Block(enabled=True), arbepo=_Block(enabled=True))
    with pytest.raises(ValueError, match="strategy.epo.enabled"):
        validate_controllers(epo_smoothing)
    bonus_only = _Strategy(epo=_Block(enabled=True, alpha=0.0), arbepo=_Block(enabled=True))
    assert active_controllers(bonus_only) == ["strategy.arbepo.enabled"]  # no corridor: no set-point
    with pytest.raises(ValueError, match="clip_b.enabled and strategy.clip_v.enabled"):
        validate_controllers(_Strategy(clip_b=_Block(enabled=True), clip_v=_Block(enabled=True)))
    assert validate_controllers(object()) == []  # missing blocks count as disabled


def test_validate_controllers_warnings():
    s = _Strategy(siren=_Block(enabled=True), epo=_Block(enabled=True), allow_multi_entropy_controllers=True)
    assert any("SIREN with EPO" in w for w in validate_controllers(s))
    guards = _Strategy(steer=_Block(enabled=True), clip_v=_Block(enabled=True), aepo=_Block(enabled=True))
    warnings = validate_controllers(guards)
    assert any("one token-level guard" in w and "strategy.clip_v" in w and "strategy.steer" in w for w in warnings)
    assert any("z > 0" in w for w in warnings)


def test_shipped_yaml_enables_arbepo():
    import yaml

    from agentropy.configuration import from_dict

    path = Path(__file__).resolve().parents[2] / "configs" / "strategies" / "arbepo.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["strategy"] and list(data["strategy"]) == ["arbepo"]
    assert from_dict(ArbEPOConfig, data["strategy"]["arbepo"]).enabled
