"""How an update splits its rows into mini-batches and weights micro-batches inside them."""

from __future__ import annotations

from typing import Any

import torch


def mini_batches(n: int, count: int, generator: torch.Generator) -> list[list[int]]:
    """``count`` mini-batches of a random permutation of ``n`` rows (strided, so sizes differ by at most 1)."""
    order = torch.randperm(n, generator=generator).tolist()
    count = max(1, count)
    return [order[i::count] for i in range(count)]


def take(values: list[Any], index: list[int]) -> list[Any]:
    return [values[i] for i in index]


def micro_weight(agg: str, mask: torch.Tensor, rows: int, mini_tokens: float, mini_rows: int) -> float:
    """Share of a micro-batch in its mini-batch, so summed micro losses equal the mini-batch
    loss: by tokens for ``token-mean``, by sequences for the sequence-level modes."""
    if agg == "token-mean":
        return float(mask.sum()) / mini_tokens
    return rows / max(mini_rows, 1)
