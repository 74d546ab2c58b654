"""CANON: conditional advantage estimation with entropy-split groups (docs/methods/canon.md).

Each task group is split at the median of a per-trajectory metric (by default the
turn-averaged entropy) into a low half ``C-`` and a high half ``C+``. Every trajectory is compared
with the **other** half's mean reward (inter-group: whichever half does better is pushed up as a
whole, so the data choose the entropy direction) and with its **own** half's mean
(intra-group); ``mu`` mixes the two. ``mu = 1/2`` is exactly Dr.GRPO (``R_i - mean_G R``) for even
groups. CANON replaces the base estimator (with GiGPO it replaces ``A^E`` only); EMPG
and the AEPO factor then act on its output as usual.

Multi-turn: the unit is the **trajectory** within its task group; step-samples of one
trajectory share its advantage. Statistics count each trajectory once (not every step-sample,
which would let long trajectories dominate the halves). Pass only main samples (ArbEPO
regularisation rows keep ``A = 1``). Metrics are Python floats.

Paper: "Conditional Advantage Estimation for Reinforcement Learning in Large Reasoning Models",
arXiv 2509.23962 (``mu`` of Eq. 5, ``alpha`` of Eq. 8). Departures from the authors' code: the
split metric is a mean over turns of each turn's mean entropy, without division by length
(``canon.metric: token_mean`` is the authors' token mean; ``canon.length_norm`` their ``L_max``
division under ``seq-mean-token-sum``). See ``docs/methods/canon.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from agentropy.training.entropy import IdsLike, group_index, row_mean_entropy
from agentropy.training.strategy_config import CANONConfig  # noqa: F401  (re-exported; defined there to keep it torch-free)
from agentropy.training.update_hooks import Method

FloatsLike = Sequence[float] | Tensor | np.ndarray


def cos_restart(k: int, vmax: float, vmin: float, total: int = 150, warmup: int = 30, cycles: int = 3) -> float:
    """CANON's cosine schedule with restarts (docs/methods/canon.md):

        k < warmup:  vmax (k + 1) / warmup
        else:        vmin + (vmax - vmin) (1 + cos(pi k' / c)) / 2,   c = (total - warmup) // cycles,
                     k' = (k - warmup) mod c
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k < warmup:
        return vmax * (k + 1) / warmup
    cycle = (total - warmup) // cycles
    kk = (k - warmup) % cycle
    return vmin + 0.5 * (vmax - vmin) * (1.0 + math.cos(math.pi * kk / cycle))


def canon_mu(cfg: CANONConfig, step: int = 0, batch_accuracy: float | None = None) -> float:
    """``mu_k`` of the configured schedule: ``constant`` -> ``cfg.mu``; ``anneal`` -> the
    batch mean outcome (intra-group first, inter-group as accuracy rises); ``cosine_restart`` ->
    ``1 - cosR(k; 0.6, 0)``; ``cosine_restart_r`` -> ``cosR(k; 1.0, 0.4)``."""
    if cfg.schedule == "constant":
        return cfg.mu
    if cfg.schedule == "anneal":
        if batch_accuracy is None:
            raise ValueError("canon.schedule 'anneal' needs the batch accuracy (mean outcome)")
        return float(batch_accuracy)
    args = (cfg.schedule_total, cfg.schedule_warmup, cfg.schedule_cycles)
    if cfg.schedule == "cosine_restart":
        return 1.0 - cos_restart(step, cfg.restart_intra_max, cfg.restart_intra_min, *args)
    return cos_restart(step, cfg.restart_r_max, cfg.restart_r_min, *args)


@torch.no_grad()
def canon_advantages(
    returns: FloatsLike,
    entropy: Tensor,
    mask: Tensor,
    group_ids: IdsLike,
    traj_ids: IdsLike,
    cfg: CANONConfig | None = None,
    step: int = 0,
    mu: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """CANON advantages per step-sample (docs/methods/canon.md).

    Per trajectory ``i``: outcome ``R_i`` and metric ``h_i`` (default the turn-averaged entropy
    ``(1/T_i) sum_t H_{i,t}`` of the old policy's full entropies, turns without reply tokens
    skipped). Per task group: sort by ``h`` ascending (stable, ties in batch order),
    ``C-`` = first ``floor(G/2)``, ``C+`` = the rest (the extra one when ``G`` is odd), means
    ``R-``, ``R+`` (both 0 when ``G = 1``), and

        i in C+:  A_i = [mu (R_i - alpha R- + beta) + (1 - mu)(R_i - R+)] / L_norm
        i in C-:  A_i = [mu (alpha R_i - R+ - beta) + (1 - mu)(R_i - R-)] / L_norm

    For ``alpha = 1``, ``beta = 0`` and even ``G``: ``A_i = (R_i - R_bar) + (2 mu - 1) s_i Delta / 2``
    (``s = +1`` on ``C+``, ``-1`` on ``C-``, ``Delta = R+ - R-``), so ``mu = 1/2`` is Dr.GRPO and the
    group sums to 0 for every ``mu``; odd groups sum to ``mu Delta`` (``recenter_odd_groups``
    removes it). ``mu`` overrides the schedule (:func:`canon_mu`).

    Shapes: ``returns`` ``[N]`` (the trajectory's outcome on each of its rows), ``entropy``,
    ``mask`` ``[N, L]``, ids length ``N`` -> ``A [N]`` (float64, no gradient) and metrics
    ``canon/gap_mean`` (mean ``R+ - R-`` over groups with ``G >= 2``), ``canon/frac_groups_gap_pos``,
    ``canon/frac_groups_gap_zero``, ``canon/mu``, ``canon/h_median_mean``, ``canon/adv_abs_mean``,
    ``canon/drgrpo_adv_abs_mean``, ``canon/h_length_corr`` (corr of ``h_i`` and ``T_i``).
    """
    cfg = cfg if cfg is not None else CANONConfig()
    r_rows = _vector(returns, "returns")
    n = r_rows.numel()
    if entropy.shape != mask.shape or entropy.dim() != 2 or entropy.shape[0] != n:
        raise ValueError(f"entropy {tuple(entropy.shape)} and mask {tuple(mask.shape)} must be [N, L] with N = {n}")
    traj, traj_keys = group_index(traj_ids, "traj_ids")
    group, _ = group_index(group_ids, "group_ids")
    if traj.numel() != n or group.numel() != n:
        raise ValueError(f"traj_ids ({traj.numel()}) and group_ids ({group.numel()}) need {n} entries")
    n_traj = len(traj_keys)
    if n == 0:
        return torch.zeros(0, dtype=torch.float64), _empty_metrics(cfg, mu)

    first = torch.full((n_traj,), -1, dtype=torch.long)
    for i, t in enumerate(traj.tolist()):
        if first[t] < 0:
            first[t] = i
        elif r_rows[i] != r_rows[first[t]] or group[i] != group[first[t]]:
            raise ValueError(f"returns / group_ids differ within trajectory {traj_keys[t]!r}")
    r = r_rows[first]
    g_of = group[first]
    h, turns = _trajectory_metric(entropy, mask, traj, n_traj, cfg.metric)

    if mu is None:
        mu = canon_mu(cfg, step, float(r.mean()))
    adv = torch.zeros(n_traj, dtype=torch.float64)
    drgrpo = torch.zeros(n_traj, dtype=torch.float64)
    gaps: list[float] = []
    medians: list[float] = []
    for g in torch.unique(g_of).tolist():
        idx = (g_of == g).nonzero().flatten()
        order = idx[torch.argsort(h[idx], stable=True)]
        size = order.numel()
        lo, hi = order[: size // 2], order[size // 2 :]
        m_lo = r[lo].mean() if size > 1 else r.new_tensor(0.0)
        m_hi = r[hi].mean() if size > 1 else r.new_tensor(0.0)
        adv[hi] = mu * (r[hi] - cfg.alpha * m_lo + cfg.beta) + (1 - mu) * (r[hi] - m_hi)
        adv[lo] = mu * (cfg.alpha * r[lo] - m_hi - cfg.beta) + (1 - mu) * (r[lo] - m_lo)
        if cfg.recenter_odd_groups and size % 2 == 1 and size > 1:
            adv[idx] = adv[idx] - adv[idx].mean()
        if cfg.std_norm:
            std = r[idx].std() if size > 1 else r.new_tensor(1.0)
            adv[idx] = adv[idx] / (std + cfg.std_eps)
        drgrpo[idx] = r[idx] - (r[idx].mean() if size > 1 else 0.0)
        if size > 1:
            gaps.append(float(m_hi - m_lo))
            medians.append(float(h[idx].median() if size % 2 else 0.5 * (h[lo[-1]] + h[hi[0]])))
    adv = adv / cfg.length_norm

    metrics = {
        "canon/mu": float(mu),
        "canon/gap_mean": float(np.mean(gaps)) if gaps else 0.0,
        "canon/frac_groups_gap_pos": float(np.mean([x > 0 for x in gaps])) if gaps else 0.0,
        "canon/frac_groups_gap_zero": float(np.mean([x == 0 for x in gaps])) if gaps else 0.0,
        "canon/h_median_mean": float(np.mean(medians)) if medians else 0.0,
        "canon/adv_abs_mean": float(adv.abs().mean()),
        "canon/drgrpo_adv_abs_mean": float(drgrpo.abs().mean()),
        "canon/h_length_corr": _corr(h, turns),
    }
    return adv[traj], metrics


def _trajectory_metric(entropy: Tensor, mask: Tensor, traj: Tensor, n_traj: int, metric: str) -> tuple[Tensor, Tensor]:
    """``h_i`` per trajectory (float64, CPU) and its number of turns with reply tokens."""
    h = entropy.detach().double().cpu()
    m = mask.detach().bool().cpu()
    has = m.any(-1)
    turns = torch.zeros(n_traj, dtype=torch.float64).index_add(0, traj, has.double())
    if metric == "turn_mean":
        row = torch.where(has, row_mean_entropy(h, m), torch.zeros((), dtype=torch.float64))
        total = torch.zeros(n_traj, dtype=torch.float64).index_add(0, traj, row)
        return total / turns.clamp_min(1), turns
    if metric == "token_mean":
        zero = torch.zeros((), dtype=torch.float64)
        total = torch.zeros(n_traj, dtype=torch.float64).index_add(0, traj, torch.where(m, h, zero).sum(-1))
        count = torch.zeros(n_traj, dtype=torch.float64).index_add(0, traj, m.sum(-1).double())
        return total / count.clamp_min(1), turns
    if metric == "num_turns":
        return turns.clone(), turns
    return torch.arange(n_traj, dtype=torch.float64), turns


def _corr(x: Tensor, y: Tensor) -> float:
    if x.numel() < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    denom = float(xc.norm() * yc.norm())
    return float((xc * yc).sum()) / denom if denom > 0 else 0.0


def _vector(values: FloatsLike, field: str) -> Tensor:
    t = torch.as_tensor(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{field} holds a non-finite value")
    return t


def _empty_metrics(cfg: CANONConfig, mu: float | None) -> dict[str, float]:
    keys = ("gap_mean", "frac_groups_gap_pos", "frac_groups_gap_zero", "h_median_mean", "adv_abs_mean",
            "drgrpo_adv_abs_mean", "h_length_corr")
    out = {f"canon/{k}": 0.0 for k in keys}
    out["canon/mu"] = float(cfg.mu if mu is None else mu)
    return out


# CANON replaces the base advantage (:func:`agentropy.training.methods.compose_advantages`).
METHOD = Method("canon", enabled=lambda strategy: strategy.canon.enabled)
