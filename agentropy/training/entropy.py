"""Token entropy and the entropy bookkeeping the strategies share.

Everything here is a pure function on tensors except two small stateful records:
:class:`EntropyHistory` (EPO's per-turn reference, docs/methods/epo.md) and
:class:`EntropyTracker` (per-iteration entropy metrics). Shapes: ``B`` rows (one row is one
step-sample, i.e. one turn of one trajectory, docs/methods/README.md), ``L`` response
positions, ``V`` vocabulary entries. ``mask`` is 1 on generated reply tokens and 0 on padding;
every statistic runs over ``mask == 1`` only (docs/methods/README.md "Rule for this trainer").
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

IdsLike = Sequence[Hashable] | Tensor | np.ndarray


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / T)`` over the last dimension (docs/methods/README.md).

    ``H = logsumexp(z) - sum_v p_v z_v = -sum_v p_v (z_v - logsumexp(z))`` with ``z = logits / T``
    and ``p = softmax(z)``. The second (log-sum-exp) form is used: ``log_softmax`` subtracts the
    max first, so large logits lose no precision to cancellation (verl's first form loses
    ~1e-4 at logits of 1000 in float32). Shapes: ``[..., V] -> [...]``.

    Masked vocabulary entries (``-inf`` logits) get probability 0 and contribute nothing; a
    position whose logits are all ``-inf`` except one has entropy 0, and a position whose
    logits are all ``-inf`` (nothing can be sampled) is given entropy 0 rather than NaN.
    Gradients stay finite in all these cases. NaN or ``+inf`` logits are not valid input and
    give NaN (not checked here, to avoid a device sync per call; the trainer's non-finite
    loss guard stops the update).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = logits / temperature if temperature != 1.0 else logits
    # -inf -> most negative finite number: its probability is still exactly 0, but p * log p is
    # 0 * finite = 0 instead of 0 * -inf = NaN (forward and backward).
    z = z.clamp(min=torch.finfo(z.dtype).min)
    log_probs = torch.log_softmax(z, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    dead = torch.isneginf(logits.amax(dim=-1))
    return torch.where(dead, torch.zeros((), dtype=entropy.dtype, device=entropy.device), entropy)


def group_index(ids: IdsLike, field: str = "ids") -> tuple[Tensor, list[Hashable]]:
    """Map hashable ids (str or int, list/array/tensor) to dense codes ``0..G-1``.

    Returns ``(codes [N] long, keys [G])`` with ``keys`` in order of first appearance, so the
    same input always gives the same codes. ``field`` names the argument in error messages.
    """
    if isinstance(ids, Tensor):
        ids = ids.detach().cpu().tolist()
    elif isinstance(ids, np.ndarray):
        ids = ids.tolist()
    elif isinstance(ids, (str, bytes)):
        raise TypeError(f"{field} must be a sequence of ids, got a single string")
    codes: list[int] = []
    table: dict[Hashable, int] = {}
    for i, key in enumerate(ids):
        try:
            code = table.setdefault(key, len(table))
        except TypeError:
            raise TypeError(f"{field}[{i}] is not hashable: {key!r}") from None
        codes.append(code)
    return torch.tensor(codes, dtype=torch.long), list(table)


def row_mean_entropy(entropy: Tensor, mask: Tensor) -> Tensor:
    """Mean token entropy of each row (one step, or turn): ``H_{i,t} = (1/L_{i,t}) sum_l H_{i,t,l}``.

    Shapes: ``entropy [B, L]``, ``mask [B, L]`` -> ``[B]``. A row without reply tokens gets 0;
    use ``mask.any(-1)`` to tell it apart.
    """
    m = mask.bool()
    total = torch.where(m, entropy, torch.zeros((), dtype=entropy.dtype, device=entropy.device)).sum(-1)
    return total / m.sum(-1).clamp_min(1).to(entropy.dtype)


def trajectory_turn_mean(values: Tensor, mask: Tensor, traj_ids: IdsLike) -> Tensor:
    """EPO's trajectory-level average (docs/methods/epo.md, the form of ``L^H``):

        (1/B) sum_j (1/T_j) sum_t (1/|tau_{j,t}|) sum_i values_{j,t,i}

    i.e. the token mean within each turn (row), the mean over the turns of each trajectory,
    then the mean over trajectories. Shapes: ``values [B, L]`` (one row per turn), ``mask
    [B, L]``, ``traj_ids`` length ``B`` -> scalar. Rows without tokens are not turns here and
    trajectories without any token do not count in ``B``; an empty batch gives 0.
    Differentiable in ``values``.
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    codes, keys = group_index(traj_ids, "traj_ids")
    if codes.numel() != values.shape[0]:
        raise ValueError(f"traj_ids has {codes.numel()} entries for {values.shape[0]} rows")
    codes = codes.to(values.device)
    row_mean = row_mean_entropy(values, mask)
    row_valid = mask.bool().any(-1)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    traj_sum = torch.zeros(len(keys), dtype=values.dtype, device=values.device).index_add(
        0, codes, torch.where(row_valid, row_mean, zero)
    )
    traj_turns = torch.zeros(len(keys), dtype=values.dtype, device=values.device).index_add(
        0, codes, row_valid.to(values.dtype)
    )
    traj_valid = traj_turns > 0
    traj_mean = torch.where(traj_valid, traj_sum / traj_turns.clamp_min(1), zero)
    return traj_mean.sum() / traj_valid.sum().clamp_min(1).to(values.dtype)


class EntropyHistory:
    """EPO's per-turn cumulative entropy reference ``Hbar^ref_t`` (docs/methods/epo.md).

    After RL step ``m`` the trainer calls :meth:`update` with that step's mean token entropy of
    each turn index ``Hbar_m[t]`` (on-policy data only). The reference of turn ``t``
    is the mean of ``Hbar_m[t]`` over the steps ``m`` in which turn ``t`` existed, indexed by
    the TRUE turn number (the released code left-pads with zeros and shifts turns; this is the
    documented default instead). A turn never seen falls back to the global cumulative mean
    ``(1/k) sum_m Hbar_m`` with ``Hbar_m`` the step's token-weighted mean over all turns.

    The paper uses steps ``m < k`` (call :meth:`reference` before :meth:`update`); the code
    includes the current step (call it after). Before the first update there is no reference:
    :meth:`reference` returns NaN, which :func:`losses.epo_loss_terms` reads as "no hinge"
    (EPO's ``L^smooth = 0`` at ``k = 0``). The state is plain Python numbers, so it goes into a
    checkpoint through :meth:`state_dict`.
    """

    def __init__(self) -> None:
        self._turn_sum: dict[int, float] = {}
        self._turn_steps: dict[int, int] = {}
        self._global_sum = 0.0
        self._global_steps = 0

    def __len__(self) -> int:
        """Number of RL steps recorded."""
        return self._global_steps

    @property
    def empty(self) -> bool:
        return self._global_steps == 0

    def update(
        self,
        turn_indices: Sequence[int] | Tensor,
        turn_mean_entropies: Sequence[float] | Tensor,
        token_counts: Sequence[float] | Tensor | None = None,
    ) -> None:
        """Record one RL step. Entries are per sample or per turn; repeated turn indices are
        averaged (token-weighted when ``token_counts`` is given, else per entry), giving
        ``Hbar_m[t]``. Entries with a token count of 0 are ignored. Non-finite values raise."""
        turns = _as_int_list(turn_indices, "turn_indices")
        means = _as_float_list(turn_mean_entropies, "turn_mean_entropies")
        counts = [1.0] * len(means) if token_counts is None else _as_float_list(token_counts, "token_counts")
        if not (len(turns) == len(means) == len(counts)):
            raise ValueError(
                f"turn_indices ({len(turns)}), turn_mean_entropies ({len(means)}) and "
                f"token_counts ({len(counts)}) must have the same length"
            )
        sums: dict[int, float] = {}
        weights: dict[int, float] = {}
        for i, (t, h, c) in enumerate(zip(turns, means, counts, strict=True)):
            if c < 0:
                raise ValueError(f"token_counts[{i}] is negative: {c}")
            if c == 0:
                continue
            if not math.isfinite(h):
                raise ValueError(f"turn_mean_entropies[{i}] is not finite: {h}")
            if t < 0:
                raise ValueError(f"turn_indices[{i}] is negative: {t}")
            sums[t] = sums.get(t, 0.0) + c * h
            weights[t] = weights.get(t, 0.0) + c
        if not weights:
            return
        for t in sums:
            self._turn_sum[t] = self._turn_sum.get(t, 0.0) + sums[t] / weights[t]
            self._turn_steps[t] = self._turn_steps.get(t, 0) + 1
        self._global_sum += sum(sums.values()) / sum(weights.values())
        self._global_steps += 1

    def update_from_tokens(self, entropy: Tensor, mask: Tensor, turn_indices: Sequence[int] | Tensor) -> None:
        """:meth:`update` from per-token entropies ``[B, L]`` of one step (token-weighted)."""
        m = mask.bool()
        self.update(turn_indices, row_mean_entropy(entropy.detach(), m).double().cpu(), m.sum(-1).double().cpu())

    def global_mean(self) -> float:
        """``(1/k) sum_m Hbar_m`` over the recorded steps (NaN before the first update)."""
        return self._global_sum / self._global_steps if self._global_steps else math.nan

    def turn_reference(self, turn: int) -> float:
        """``Hbar^ref_t`` for one turn, with the global-mean fallback for unseen turns (NaN
        while the history is empty)."""
        steps = self._turn_steps.get(int(turn), 0)
        return self._turn_sum[int(turn)] / steps if steps else self.global_mean()

    def reference(
        self,
        turn_indices: Sequence[int] | Tensor,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Per-row reference ``[B]`` for the rows' turn indices (all NaN while empty)."""
        turns = _as_int_list(turn_indices, "turn_indices")
        refs = {t: self.turn_reference(t) for t in set(turns)}
        return torch.tensor([refs[t] for t in turns], dtype=dtype, device=device)

    def state_dict(self) -> dict[str, Any]:
        turns = sorted(self._turn_sum)
        return {
            "turns": turns,
            "turn_sum": [self._turn_sum[t] for t in turns],
            "turn_steps": [self._turn_steps[t] for t in turns],
            "global_sum": self._global_sum,
            "global_steps": self._global_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._turn_sum = {int(t): float(s) for t, s in zip(state["turns"], state["turn_sum"], strict=True)}
        self._turn_steps = {int(t): int(n) for t, n in zip(state["turns"], state["turn_steps"], strict=True)}
        self._global_sum = float(state["global_sum"])
        self._global_steps = int(state["global_steps"])


def entropy_stats(
    values: np.ndarray | Sequence[float], quantiles: Sequence[float] = (0.1, 0.5, 0.9)
) -> dict[str, float]:
    """Mean, population std, count and quantiles (``p10`` ...) of a set of entropies; NaN
    statistics and count 0 for an empty set."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out: dict[str, float] = {"count": float(v.size)}
    if v.size == 0:
        out.update(mean=math.nan, std=math.nan, **{_qname(q): math.nan for q in quantiles})
        return out
    out["mean"] = float(v.mean())
    out["std"] = float(v.std())
    for q, value in zip(quantiles, np.quantile(v, list(quantiles)), strict=True):
        out[_qname(q)] = float(value)
    return out


class EntropyTracker:
    """Collects reply-token entropies over one training iteration and summarises them.

    :meth:`add` takes each (micro-)batch; :meth:`summary` returns flat metrics: over all
    tokens (``{prefix}/token/{mean,std,p10,p50,p90,count}``), over step-samples (turn
    entropies ``H_{i,t}``, ``{prefix}/step/...``), over trajectories (EPO-style mean over turns
    of the turn means, ``{prefix}/traj/...``, when ``traj_ids`` were given) and per turn index
    (``{prefix}/turn_{t}/...`` over that turn's tokens). Add each sample once per
    iteration (for example during the recompute pass), not once per PPO epoch.
    """

    def __init__(self, quantiles: Sequence[float] = (0.1, 0.5, 0.9)) -> None:
        self.quantiles = tuple(quantiles)
        self.reset()

    def reset(self) -> None:
        self._tokens: list[np.ndarray] = []
        self._turn_tokens: dict[int, list[np.ndarray]] = {}
        self._step_means: list[float] = []
        self._traj_turn_means: dict[Hashable, list[float]] = {}

    def add(
        self,
        entropy: Tensor,
        mask: Tensor,
        turn_indices: Sequence[int] | Tensor,
        traj_ids: IdsLike | None = None,
    ) -> None:
        """Record ``entropy [B, L]`` on ``mask [B, L]``; ``turn_indices`` and ``traj_ids`` per row."""
        h = entropy.detach().double().cpu().numpy()
        m = mask.detach().bool().cpu().numpy()
        turns = _as_int_list(turn_indices, "turn_indices")
        if len(turns) != h.shape[0]:
            raise ValueError(f"turn_indices has {len(turns)} entries for {h.shape[0]} rows")
        if traj_ids is not None:
            codes, keys = group_index(traj_ids, "traj_ids")
            if codes.numel() != h.shape[0]:
                raise ValueError(f"traj_ids has {codes.numel()} entries for {h.shape[0]} rows")
            ids = [keys[c] for c in codes.tolist()]
        for row in range(h.shape[0]):
            values = h[row][m[row]]
            if values.size == 0:
                continue
            self._tokens.append(values)
            self._turn_tokens.setdefault(turns[row], []).append(values)
            self._step_means.append(float(values.mean()))
            if traj_ids is not None:
                self._traj_turn_means.setdefault(ids[row], []).append(float(values.mean()))

    def summary(self, prefix: str = "entropy") -> dict[str, float]:
        out: dict[str, float] = {}
        tokens = np.concatenate(self._tokens) if self._tokens else np.zeros(0)
        for name, stats in (
            ("token", entropy_stats(tokens, self.quantiles)),
            ("step", entropy_stats(self._step_means, self.quantiles)),
        ):
            out.update({f"{prefix}/{name}/{k}": v for k, v in stats.items()})
        if self._traj_turn_means:
            traj = [float(np.mean(v)) for v in self._traj_turn_means.values()]
            out.update({f"{prefix}/traj/{k}": v for k, v in entropy_stats(traj, self.quantiles).items()})
        for turn in sorted(self._turn_tokens):
            stats = entropy_stats(np.concatenate(self._turn_tokens[turn]), self.quantiles)
            out.update({f"{prefix}/turn_{turn}/{k}": v for k, v in stats.items()})
        return out


def _qname(q: float) -> str:
    return f"p{round(q * 100):d}" if abs(q * 100 - round(q * 100)) < 1e-9 else f"p{q * 100:g}"


def _as_int_list(values: Sequence[int] | Tensor | np.ndarray, field: str) -> list[int]:
    if isinstance(values, Tensor):
        values = values.detach().cpu().tolist()
    elif isinstance(values, np.ndarray):
        values = values.tolist()
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not float(v).is_integer():
            raise ValueError(f"{field}[{i}] must be an integer, got {v!r}")
        out.append(int(v))
    return out


def _as_float_list(values: Sequence[float] | Tensor | np.ndarray, field: str) -> list[float]:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().tolist()
    elif isinstance(values, np.ndarray):
        values = values.astype(np.float64).tolist()
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field} must hold numbers: {exc}") from None
