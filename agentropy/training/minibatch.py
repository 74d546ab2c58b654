"""How an update splits its rows into mini-batches and weights micro-batches inside them."""

from __future__ import annotations

from typing import Any

import torch

from agentropy.nonfinite import require_finite


def mini_batches(n: int, count: int, generator: torch.Generator) -> list[list[int]]:
    """``count`` mini-batches of a random permutation of ``n`` rows (strided, so sizes differ by at most 1)."""
    order = torch.randperm(n, generator=generator).tolist()
    count = max(1, count)
    return [order[i::count] for i in range(count)]


def micro_batches(rows: list[int], size: int, lengths: torch.Tensor | None = None,
                  contents: list[bytes] | None = None) -> list[list[int]]:
    """Split a mini-batch's ``rows`` into forward passes of at most ``size`` rows.

    Without ``lengths``, in the mini-batch's own (random) order. With ``lengths`` (each row's
    token count, prompt and reply), rows are first sorted by it, so that each pass is padded
    only to the widest of rows of similar length. With ``contents`` as well (one key per row,
    equal exactly for identical samples), rows of one length are then ordered by content, so
    identical samples sit next to each other and can share one forward pass (``grouped``). The
    micro-batch weights make the summed loss that of the mini-batch either way, so the gradient
    is the same up to floating-point order; what changes is anything a method computes per
    micro-batch (Clip-Cov's covariance ranking, AEPO's ``z_scope: batch``)."""
    if lengths is None:
        order = list(rows)
    elif contents is None:
        order = sorted(rows, key=lambda i: (int(lengths[i]), i))
    else:
        order = sorted(rows, key=lambda i: (int(lengths[i]), contents[i], i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def take(values: list[Any], index: list[int]) -> list[Any]:
    return [values[i] for i in index]


def micro_weight(agg: str, mask: torch.Tensor, rows: int, mini_tokens: float, mini_rows: int) -> float:
    """Share of a micro-batch in its mini-batch, so summed micro losses equal the mini-batch
    loss: by tokens for ``token-mean``, by sequences for the sequence-level modes."""
    if agg == "token-mean":
        return float(mask.sum()) / mini_tokens
    return rows / max(mini_rows, 1)


def guarded_step(accelerator: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float,
                 where: str, iteration: int) -> float:
    """Clip the gradients and step, unless the gradient norm is NaN/inf.

    ``clip_grad_norm_`` returns a non-finite norm when any gradient is; stepping then would write
    NaN into the weights (and AdamW's moments), so :class:`~agentropy.nonfinite.NonFiniteError`
    is raised first, naming ``where`` (e.g. ``"rl mini-batch 2/2"``, ``"replay"``) and the
    iteration. Returns the norm before clipping."""
    norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm))
    require_finite(norm, "gradient norm", where=where, iteration=iteration)
    optimizer.step()
    return norm
