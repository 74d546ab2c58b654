"""SIREN: selective, self-anchored entropy regularisation (docs/methods/siren.md).

Three pieces: (1) the entropy of each position is taken over its **nucleus** only (top-p, the
crossing token excluded), (2) only the **peak** positions of each trajectory count (top 20% by
that entropy, a per-trajectory quantile), and (3) instead of a bonus ``-lambda H`` the loss adds a
squared penalty ``lambda (H^sel - H_anchor)^2`` that pulls the selected entropy back to its value
at the first update. The penalty is a closed-loop entropy controller: do not run it with EPO's
corridor or ArbEPO unless allowed (:func:`agentropy.training.entropy_controllers.validate_controllers`).

Multi-turn mapping: a "row" of the source code (one response) is a **trajectory** here,
so step-samples are grouped by ``traj_ids``: the quantile runs over all reply tokens of the
trajectory present, ``s_i`` is the trajectory's mean selected entropy and ``H^sel`` the mean over
trajectories. ``row: turn`` uses each step-sample as its own row (literal code behaviour).
Shapes: ``B`` rows (step-samples), ``L`` reply positions, ``V`` vocabulary entries.

Paper: "Rethinking Entropy Regularization in Large Reasoning Models", arXiv 2509.25133 (the
formulas follow the released code). Departure from the authors' code: the unit of the quantile
and of ``s_i`` is a trajectory; the authors' unit is one response: ``siren.row: turn``. See
``docs/methods/siren.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from agentropy.training.entropy import IdsLike, group_index
from agentropy.training.strategy_config import SIRENConfig  # noqa: F401  (re-exported; defined there to keep it torch-free)
from agentropy.training.update_hooks import Method

Stats = dict[str, Tensor]


class NucleusEntropyError(RuntimeError):
    """The top-p entropy could not be computed. Raised, never replaced by the full entropy
    (the source code's silent ``except: fallback`` is a known quirk, not copied)."""


def nucleus_entropy(logits: Tensor, top_p: float = 0.8, top_k: int = 10000, temperature: float = 1.0) -> Tensor:
    """Top-p (nucleus) entropy **with gradient** (docs/methods/siren.md).

    Sort the top-``K`` probabilities ``p_(1) >= p_(2) >= ...`` of ``softmax(logits / T)``, with
    cumulative sums ``c_r``. The nucleus is ``N = {(r): c_r < P}``: **the token whose cumulative
    sum first reaches P is excluded** (searchsorted-left, the code's convention; standard nucleus
    sampling would include it). With ``p~ = p / sum_N p``:

        H^P = -sum_{v in N} p~_v log p~_v,      dH^P/dz_v = -p~_v (log p~_v + H^P) on N, 0 off N

    If ``p_(1) >= P`` the nucleus is empty and ``H^P = 0`` with zero gradient: confident positions
    contribute nothing. Membership is not differentiated. ``p~`` is computed as a softmax over
    the nucleus logits only, so entries outside the nucleus get exactly zero gradient.

    Shapes: ``logits [..., V]`` -> ``[...]``. Raises :class:`NucleusEntropyError` on non-finite
    logits (NaN, +inf, or a position with every logit ``-inf``) or a non-finite result; invalid
    arguments raise ``ValueError``.
    """
    return _nucleus(logits, top_p, top_k, temperature)[0]


def nucleus_entropy_and_size(
    logits: Tensor, top_p: float = 0.8, top_k: int = 10000, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """:func:`nucleus_entropy` and the nucleus size ``n_j = #{r: c_r < P}`` (long, no gradient),
    for the ``siren/nucleus_size_mean`` metric. Shapes ``[..., V] -> ([...], [...])``."""
    return _nucleus(logits, top_p, top_k, temperature)


def _nucleus(logits: Tensor, top_p: float, top_k: int, temperature: float) -> tuple[Tensor, Tensor]:
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not top_k >= 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be [..., V] with V >= 1, got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    z = logits / temperature if temperature != 1.0 else logits
    with torch.no_grad():
        log_norm = torch.logsumexp(z.detach(), dim=-1)
        bad = ~torch.isfinite(log_norm)
        if bool(bad.any()):
            raise NucleusEntropyError(
                f"nucleus_entropy: non-finite logits at {int(bad.sum())} of {bad.numel()} positions "
                "(NaN, +inf, or every logit -inf)"
            )
    k = min(int(top_k), z.shape[-1])
    top_logits, _ = z.topk(k, dim=-1, sorted=True)
    with torch.no_grad():
        cum = (top_logits.detach() - log_norm.unsqueeze(-1)).exp().cumsum(dim=-1)
        keep = cum < top_p
        size = keep.sum(dim=-1)
        # An empty nucleus is computed over the top-1 token alone: p~ = 1 gives H^P = 0 and a zero
        # gradient, with no all--inf softmax (whose backward would be NaN).
        calc = keep.clone()
        calc[..., 0] = True
    nucleus_logits = top_logits.masked_fill(~calc, -math.inf)
    log_p = torch.log_softmax(nucleus_logits, dim=-1)
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    log_p = torch.where(calc, log_p, zero)
    p = torch.where(calc, log_p.exp(), zero)
    h = -(p * log_p).sum(dim=-1)
    if not bool(torch.isfinite(h.detach()).all()):
        raise NucleusEntropyError("nucleus_entropy: non-finite result")
    return h, size


@torch.no_grad()
def peak_entropy_mask(
    h_topp: Tensor, mask: Tensor, row_ids: IdsLike | None = None, quantile: float = 0.8
) -> Tensor:
    """SIREN's peak-entropy selection (docs/methods/siren.md):

        tau_i = Quantile_q {H^P_j : m_j = 1, j in row i}   (linear interpolation, as torch.nanquantile)
        M_j   = 1[H^P_j > tau_i] * m_j                      (strict: a row of equal values selects none)

    A "row" is the set of step-samples sharing a ``row_ids`` entry (pass ``traj_ids`` for the
    trajectory rows of the multi-turn default, ``siren.row: trajectory``), or each step-sample
    alone when ``row_ids`` is None. Shapes: ``h_topp``, ``mask`` ``[B, L]``, ``row_ids`` length
    ``B`` -> bool ``[B, L]``.
    """
    if h_topp.shape != mask.shape or h_topp.dim() != 2:
        raise ValueError(f"h_topp {tuple(h_topp.shape)} and mask {tuple(mask.shape)} must be the same [B, L]")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    h = h_topp.detach().double()
    m = mask.bool()
    codes, n_groups = _row_codes(row_ids, h.shape[0], h.device)
    if n_groups == 0:
        return m.clone()
    # one [groups, longest] table of each group's valid values, NaN-padded, so every tau comes
    # from a single nanquantile call (a group without tokens gets NaN: nothing selected)
    token_group = codes.unsqueeze(-1).expand_as(m)[m]
    values = h[m]
    order = torch.argsort(token_group, stable=True)
    token_group, values = token_group[order], values[order]
    counts = torch.bincount(token_group, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(values.numel(), device=h.device) - starts[token_group]
    table = torch.full((n_groups, max(int(counts.max()), 1)), math.nan,
                       dtype=torch.float64, device=h.device)
    table[token_group, slot] = values
    tau = torch.nanquantile(table, quantile, dim=1)
    return (h > tau[codes].unsqueeze(-1)) & m


class SIRENAnchor:
    """SIREN's anchor ``H_anchor``: the selected top-p entropy at the first update, then frozen
    (docs/methods/siren.md).

    :meth:`set_from` takes the old policy's top-p entropies of the whole first rollout batch
    (recompute pass, no gradient) and stores ``H_anchor = H^sel`` computed exactly as the loss
    computes it. With ``per_turn=True`` (``siren.anchor: per_turn``, our option, not in the
    authors' code, modelled on EPO's per-turn reference) it also stores one anchor per turn index,

        H_anchor[t] = sum_i (1/n_i) sum_{j in i, turn t} M_j H^P_j  /  sum_i (1/n_i) #{j in i, turn t: M_j = 1}

    (``n_i`` = selected tokens of row ``i``), i.e. each selected token weighted as it weighs in
    ``H^sel``, so the penalty is exactly 0 on the anchor batch in both modes. Unseen turns fall
    back to the global anchor. The state is plain numbers (:meth:`state_dict`).
    """

    def __init__(self, per_turn: bool = False) -> None:
        self.per_turn = per_turn
        self.value: float | None = None
        self.turn_values: dict[int, float] = {}

    @classmethod
    def from_config(cls, cfg: SIRENConfig) -> SIRENAnchor:
        return cls(per_turn=cfg.anchor == "per_turn")

    @property
    def ready(self) -> bool:
        return self.value is not None

    @torch.no_grad()
    def set_from(
        self,
        h_topp_old: Tensor,
        mask: Tensor,
        cfg: SIRENConfig | None = None,
        traj_ids: IdsLike | None = None,
        turns: Sequence[int] | Tensor | None = None,
    ) -> dict[str, float]:
        """Set the anchor from the first batch (``h_topp_old [B, L]`` under pi_old). Raises if
        already set (the anchor is frozen; load it from a checkpoint instead). Returns metrics."""
        if self.ready:
            raise RuntimeError("SIRENAnchor is already set; it is frozen after the first update")
        cfg = cfg if cfg is not None else SIRENConfig()
        row_ids = _row_ids(cfg, traj_ids)
        h = h_topp_old.detach().double()
        m = mask.bool()
        selected = peak_entropy_mask(h, m, row_ids, cfg.quantile)
        codes, n_groups = _row_codes(row_ids, h.shape[0], h.device)
        means, weights, valid = _selected_means(h, selected, m, codes, n_groups)
        if not bool(valid.any()):
            raise ValueError("SIRENAnchor.set_from: the batch has no reply tokens")
        self.value = float(means[valid].sum() / valid.sum())
        if self.per_turn:
            row_turns = _turn_tensor(turns, h.shape[0], h.device)
            token_w = torch.where(selected, weights[codes].unsqueeze(-1).expand_as(h), torch.zeros_like(h))
            num = torch.zeros(int(row_turns.max()) + 1, dtype=torch.float64, device=h.device)
            den = torch.zeros_like(num)
            num.index_add_(0, row_turns, (token_w * h).sum(-1))
            den.index_add_(0, row_turns, token_w.sum(-1))
            self.turn_values = {int(t): float(num[t] / den[t]) for t in range(num.numel()) if den[t] > 0}
        return {"siren/anchor": self.value, "siren/anchor_turns": float(len(self.turn_values))}

    def target(
        self,
        selected: Tensor,
        mask: Tensor,
        codes: Tensor,
        n_groups: int,
        turns: Sequence[int] | Tensor | None = None,
    ) -> Tensor:
        """The set-point the penalty compares ``H^sel`` with: ``H_anchor`` (global), or with
        per-turn anchors ``(1/B) sum_i a_i``, ``a_i = sum_j M_j H_anchor[t_j] / sum_j M_j`` (0 for a
        row with nothing selected, as its ``s_i``). Shapes as :func:`siren_loss`; returns a 0-dim
        float64 tensor (no gradient)."""
        if not self.ready:
            raise RuntimeError("SIRENAnchor is not set: call set_from on the first batch")
        device = selected.device
        if not self.per_turn:
            return torch.tensor(self.value, dtype=torch.float64, device=device)
        row_turns = _turn_tensor(turns, selected.shape[0], device).tolist()
        row_anchor = torch.tensor([self.turn_values.get(t, self.value) for t in row_turns],
                                  dtype=torch.float64, device=device)
        anchors = row_anchor.unsqueeze(-1).expand(selected.shape)
        means, _, valid = _selected_means(anchors, selected, mask.bool(), codes, n_groups)
        return means[valid].sum() / valid.sum().clamp_min(1)

    def state_dict(self) -> dict[str, Any]:
        turns = sorted(self.turn_values)
        return {"per_turn": self.per_turn, "value": self.value, "turns": turns,
                "turn_values": [self.turn_values[t] for t in turns]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.per_turn = bool(state["per_turn"])
        self.value = None if state["value"] is None else float(state["value"])
        self.turn_values = {int(t): float(v) for t, v in zip(state["turns"], state["turn_values"], strict=True)}


def siren_loss(
    h_topp: Tensor,
    mask: Tensor,
    anchor: SIRENAnchor | float,
    cfg: SIRENConfig | None = None,
    traj_ids: IdsLike | None = None,
    turns: Sequence[int] | Tensor | None = None,
    selected: Tensor | None = None,
    nucleus_size: Tensor | None = None,
) -> tuple[Tensor, Stats]:
    """SIREN's term, added to the policy loss (docs/methods/siren.md):

        s_i   = sum_j M_j H^P_j / sum_j M_j   (0 if row i selects nothing; such rows still count)
        H^sel = (1/B) sum_i s_i               (seq-mean-token-mean over the B rows with reply tokens)
        L     = lambda_H (H^sel - H_anchor)^2

    so a selected token gets ``dL/dH^P_j = 2 lambda (H^sel - H_anchor) M_j / (B n_i)``: entropy is
    pushed down above the anchor and up below it, only at selected positions, only inside the
    nucleus. ``h_topp [B, L]`` is :func:`nucleus_entropy` of the current forward pass (with
    gradient); ``mask`` the **original** reply mask (not EDC/Clip-Cov masks). ``M`` is
    :func:`peak_entropy_mask` of ``h_topp.detach()`` over trajectory rows (``traj_ids``, needed
    when ``cfg.row == "trajectory"``) unless ``selected`` is given (e.g. computed once from pi_old
    over whole trajectories). On a micro-batch the rows are the trajectory parts present.
    ``anchor`` is a :class:`SIRENAnchor` (``turns`` per row needed for per-turn anchors) or a number.

    Returns the scalar term and stats ``siren/h_sel``, ``siren/anchor``, ``siren/reg_loss``,
    ``siren/frac_selected`` (selected / valid tokens), ``siren/frac_rows_empty``,
    ``siren/topp_entropy_mean`` and, with ``nucleus_size``, ``siren/nucleus_size_mean``.
    """
    cfg = cfg if cfg is not None else SIRENConfig()
    if h_topp.shape != mask.shape or h_topp.dim() != 2:
        raise ValueError(f"h_topp {tuple(h_topp.shape)} and mask {tuple(mask.shape)} must be the same [B, L]")
    m = mask.bool()
    row_ids = _row_ids(cfg, traj_ids)
    codes, n_groups = _row_codes(row_ids, h_topp.shape[0], h_topp.device)
    if selected is None:
        selected = peak_entropy_mask(h_topp.detach(), m, row_ids, cfg.quantile)
    else:
        if selected.shape != m.shape:
            raise ValueError(f"selected {tuple(selected.shape)} must match h_topp {tuple(m.shape)}")
        selected = selected.bool() & m
    means, _, valid = _selected_means(h_topp, selected, m, codes, n_groups)
    n_rows = valid.sum().clamp_min(1)
    zero = torch.zeros((), dtype=means.dtype, device=means.device)
    h_sel = torch.where(valid, means, zero).sum() / n_rows.to(means.dtype)
    if isinstance(anchor, SIRENAnchor):
        target = anchor.target(selected, m, codes, n_groups, turns)
    else:
        target = torch.tensor(float(anchor), dtype=torch.float64, device=h_topp.device)
    target = target.to(h_sel.dtype)
    loss = cfg.coef * (h_sel - target) ** 2
    with torch.no_grad():
        n_valid = m.sum().clamp_min(1).to(torch.float64)
        rows_selected = torch.zeros(n_groups, dtype=torch.float64, device=m.device).index_add_(
            0, codes, selected.sum(-1).to(torch.float64))
        stats: Stats = {
            "siren/h_sel": h_sel.detach(),
            "siren/anchor": target.detach(),
            "siren/reg_loss": loss.detach(),
            "siren/frac_selected": selected.sum().to(torch.float64) / n_valid,
            "siren/frac_rows_empty": (valid & (rows_selected == 0)).sum().to(torch.float64) / n_rows.to(torch.float64),
            "siren/topp_entropy_mean": torch.where(m, h_topp.detach().double(), torch.zeros((), dtype=torch.float64,
                                                   device=m.device)).sum() / n_valid,
        }
        if nucleus_size is not None:
            size = nucleus_size.to(device=m.device, dtype=torch.float64)
            stats["siren/nucleus_size_mean"] = torch.where(m, size, torch.zeros_like(size)).sum() / n_valid
    return loss, stats


# ---------------------------------------------------------------------------------------
# helpers


def _row_ids(cfg: SIRENConfig, traj_ids: IdsLike | None) -> IdsLike | None:
    if cfg.row == "turn":
        return None
    if traj_ids is None:
        raise ValueError("siren.row is 'trajectory': pass traj_ids (one per row)")
    return traj_ids


def _row_codes(row_ids: IdsLike | None, n_rows: int, device: torch.device) -> tuple[Tensor, int]:
    if row_ids is None:
        return torch.arange(n_rows, device=device), n_rows
    codes, keys = group_index(row_ids, "traj_ids")
    if codes.numel() != n_rows:
        raise ValueError(f"traj_ids has {codes.numel()} entries for {n_rows} rows")
    return codes.to(device), len(keys)


def _turn_tensor(turns: Sequence[int] | Tensor | None, n_rows: int, device: torch.device) -> Tensor:
    if turns is None:
        raise ValueError("per-turn SIREN anchors need turns (one turn index per row)")
    t = torch.as_tensor(turns.detach().cpu() if isinstance(turns, Tensor) else list(turns), dtype=torch.long)
    t = t.reshape(-1)
    if t.numel() != n_rows:
        raise ValueError(f"turns has {t.numel()} entries for {n_rows} rows")
    if t.numel() and int(t.min()) < 0:
        raise ValueError("turns must be >= 0")
    return t.to(device)


def _selected_means(
    values: Tensor, selected: Tensor, mask: Tensor, codes: Tensor, n_groups: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per row group: ``s_g = sum M v / sum M`` (0 if nothing selected), ``1 / n_g`` (0 if
    none) and whether the group has any reply token. Differentiable in ``values``."""
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    picked = torch.where(selected, values, zero).sum(-1)
    sums = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, codes, picked)
    counts = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(
        0, codes, selected.sum(-1).to(values.dtype))
    tokens = torch.zeros(n_groups, dtype=torch.long, device=values.device).index_add(0, codes, mask.sum(-1).long())
    has = counts > 0
    means = torch.where(has, sums / counts.clamp_min(1), zero)
    inv = torch.where(has, 1.0 / counts.clamp_min(1), zero)
    return means, inv.detach(), tokens > 0


# --------------------------------------------------------------------------------------
# Hooks into the update (:mod:`agentropy.training.update_hooks`).
# --------------------------------------------------------------------------------------


def _pi_old_nucleus(strategy: Any) -> Any:
    siren = strategy.siren

    def extra(logits: Tensor, m: Tensor) -> dict[str, Tensor]:
        hp, size = nucleus_entropy_and_size(logits, siren.top_p, siren.top_k)
        return {"nucleus": hp * m, "nucleus_size": size * m}

    return extra


def _after_pi_old(ctx: Any) -> None:
    """The anchor at the first update (then frozen), and the peak positions of each whole
    trajectory, chosen once per iteration under pi_old."""
    anchor, siren, samples = ctx.state.siren_anchor, ctx.strategy.siren, ctx.samples
    if anchor is None:
        return
    nucleus = ctx.old.extra["nucleus"]
    if not anchor.ready:
        ctx.metrics.update(anchor.set_from(nucleus, ctx.stat_mask, siren, samples.traj_ids, samples.turns))
    rows_of = samples.traj_ids if siren.row == "trajectory" else None
    ctx.extra["siren/selected"] = peak_entropy_mask(nucleus, ctx.stat_mask, rows_of, siren.quantile)


def _extra_loss(ctx: Any, mini: Any, mb: Any) -> Tensor | None:
    """The penalty on this micro-batch's trajectory parts, weighted by its share of the
    mini-batch's main tokens (the term has its own aggregation)."""
    if not mb.has_main:
        return None
    siren, samples = ctx.strategy.siren, ctx.samples
    h_topp, size = nucleus_entropy_and_size(mb.logits, siren.top_p, siren.top_k)
    term, stats = siren_loss(h_topp, mb.stat_mask, ctx.state.siren_anchor, siren,
                             traj_ids=[samples.traj_ids[i] for i in mb.idx],
                             turns=[samples.turns[i] for i in mb.idx],
                             selected=ctx.extra["siren/selected"][mb.idx, : mb.width].to(ctx.device),
                             nucleus_size=size)
    mb.stats.update({k: float(v) for k, v in stats.items()})
    return term * (float(mb.stat_mask.sum()) / mini.stat_tokens)


METHOD = Method(
    "siren",
    enabled=lambda strategy: strategy.siren.enabled,
    create_state=lambda strategy: {"siren_anchor": SIRENAnchor.from_config(strategy.siren)},
    state_keys=("siren_anchor",),
    pi_old_extra=_pi_old_nucleus,
    after_pi_old=_after_pi_old,
    extra_loss=_extra_loss,
    needs_logits=True,
)
