"""The first-order entropy changes used by STEER (Omega, docs/methods/steer.md) and by Clip_V
(D = E_pi[S] - S, docs/methods/clip_bv.md) predict the actual entropy change of one small SGD step on a softmax
(float64, tabular logits, the PPO surrogate's own gradient).

- Clip_V: an SGD step on all logits of the position changes the entropy by ``eta A rho D``.
- STEER: Omega is the part of that step carried by the sampled token's own logit: moving only
  ``z_k`` changes the entropy by ``-eta p Omega`` (one factor ``p`` more than the code's Omega),
  so ``sign(Delta H) = -sign(Omega)``.
"""

from __future__ import annotations

import torch

from agentropy.training.entropy import token_entropy
from agentropy.training.losses import ppo_token_loss
from agentropy.training.methods.clip_bv import entropy_discriminator, expected_discriminator
from agentropy.training.methods.steer import entropy_change_estimate

F64 = torch.float64
ETA = 1e-6
CASES = 300


def _cases(seed: int, off_policy: bool):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(CASES):
        v = int(torch.randint(2, 8, (1,), generator=gen))
        z = torch.randn(v, generator=gen, dtype=F64) * float(torch.rand(1, generator=gen) * 3 + 0.1)
        old = z + (torch.randn(v, generator=gen, dtype=F64) * 0.05 if off_policy else 0.0)
        k = int(torch.randint(0, v, (1,), generator=gen))
        adv = 1.0 if bool(torch.rand(1, generator=gen) < 0.5) else -1.0
        yield z, old, k, adv


def _ppo_loss(z: torch.Tensor, old: torch.Tensor, k: int, adv: float) -> torch.Tensor:
    logp = torch.log_softmax(z, -1)[k]
    logq = torch.log_softmax(old, -1)[k]
    loss, flags = ppo_token_loss(torch.exp(logp - logq).view(1, 1), torch.tensor([[adv]], dtype=F64),
                                 clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    assert not any(bool(f.any()) for f in flags.values())  # ratios near 1: no clip active
    return loss.sum()


def _predictions(z, old, k, adv):
    """(Omega, D, rho, p) of the sampled token, from the functions the methods use."""
    logp = torch.log_softmax(z, -1)[k].view(1, 1)
    logq = torch.log_softmax(old, -1)[k].view(1, 1)
    h_old = token_entropy(old).view(1, 1)
    one = torch.ones(1, 1)
    a = torch.tensor([[adv]], dtype=F64)
    omega = entropy_change_estimate(logp, logq, h_old, a, one).item()
    _, d = entropy_discriminator(logq, h_old, one, expected_discriminator(old).view(1, 1))
    return omega, d.item(), torch.exp(logp - logq).item(), logp.exp().item()


def _sgd_entropy_change(z, old, k, adv, own_logit_only: bool) -> float:
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_ppo_loss(zz, old, k, adv), zz)
    if own_logit_only:
        grad = torch.zeros_like(grad).index_fill_(0, torch.tensor([k]), grad[k].item())
    return (token_entropy(z - ETA * grad) - token_entropy(z)).item()


def test_clip_v_discriminator_predicts_the_full_step_on_policy():
    checked = 0
    for z, old, k, adv in _cases(0, off_policy=False):
        _, d, rho, _ = _predictions(z, old, k, adv)
        dh = _sgd_entropy_change(z, old, k, adv, own_logit_only=False)
        predicted = ETA * adv * rho * d
        assert abs(dh - predicted) <= 1e-4 * ETA + 1e-3 * abs(predicted)
        if abs(predicted) > 1e-3 * ETA:
            assert (dh > 0) == (predicted > 0)
            checked += 1
    assert checked > CASES * 0.8


def test_steer_omega_predicts_the_own_logit_step():
    for off_policy in (False, True):
        checked = 0
        for z, old, k, adv in _cases(1 + off_policy, off_policy):
            omega, _, _, p = _predictions(z, old, k, adv)
            dh = _sgd_entropy_change(z, old, k, adv, own_logit_only=True)
            if not off_policy:  # exact first order: Delta H = -eta p Omega
                assert abs(dh + ETA * p * omega) <= 1e-4 * ETA + 1e-3 * abs(ETA * p * omega)
            if abs(ETA * p * omega) > 2e-2 * ETA:  # H^old vs H: signs can differ only near 0
                assert (dh > 0) == (omega < 0), (z, k, adv, omega, dh)
                checked += 1
        assert checked > CASES * 0.5


def test_steer_and_clip_v_agree_on_the_worked_example():
    # q = [0.7, 0.2, 0.1]; token 0 with A = +1 lowers entropy by both
    # estimates, token 2 with A = +1 raises it by both.
    z = torch.tensor([0.7, 0.2, 0.1], dtype=F64).log()
    for k, lowers in ((0, True), (2, False)):
        omega, d, _, _ = _predictions(z, z, k, 1.0)
        assert (omega > 0) == lowers and (d < 0) == lowers
        assert (_sgd_entropy_change(z, z, k, 1.0, own_logit_only=False) < 0) == lowers
        assert (_sgd_entropy_change(z, z, k, 1.0, own_logit_only=True) < 0) == lowers
