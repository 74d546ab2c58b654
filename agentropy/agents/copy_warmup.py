"""A copy warm-up for a from-scratch model: teach it to repeat what it has seen, before SFT.

Tool use is copying. A search agent writes an entity's name from the question into its query,
a document id from the results into ``<open>``, and an answer from the article into
``<answer>``, and on held-out questions those names are ones it has never been trained on.
A transformer copies an unseen span with an *induction circuit*: one head finds the earlier
occurrence of the current token, another copies the token that followed it. A pretrained
checkpoint has one; the embedded tiny model starts from random weights, and on Search-v0's
~190-token episodes SFT forms the circuit late and at a step that varies from run to run.

On synthetic sequences the circuit forms quickly and reliably: a row is a context of random
tokens, a few random filler tokens, then a span copied from a random place in the context;
the loss is taken on the span's tokens after its first (the first cannot be predicted, every
later one can, by copying). A 3-layer, 128-wide model on 16-64-token contexts goes from chance
to near-perfect copying in a sharp step after about 1,700 optimizer steps at batch 32 and
learning rate 1e-3 (``benchmarks/copy_warmup.py``, ``benchmarks/RESULTS.md``). Only the tokenizer's ordinary tokens are drawn,
so the chat markers and tool tags keep the meaning SFT gives them.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class CopyWarmupConfig:
    """Sizes of the synthetic copy task. Steps 0 switches the warm-up off."""

    steps: int = 0
    """Optimizer steps (0 = no warm-up)."""
    batch_size: int = 32
    """Rows per step."""
    lr: float = 1.0e-3
    """AdamW learning rate, constant."""
    min_context: int = 16
    """Shortest context of random tokens; each step draws its length uniformly in [min, max]."""
    max_context: int = 64
    """Longest context; short ones make the circuit form early, long ones make it reach far."""
    min_span: int = 4
    """Shortest copied span."""
    max_span: int = 16
    """Longest copied span (at most the step's context length)."""
    max_gap: int = 8
    """Random filler tokens between the context and the span: the copy cannot be a fixed offset."""


@dataclass
class CopyWarmupResult:
    """What the warm-up reached: copy accuracy on fresh rows after training, and its cost."""

    steps: int
    final_loss: float
    copy_accuracy: float
    """Share of predictable span tokens that greedy decoding copies right, on held-out rows."""
    seconds: float


def ordinary_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that are neither special nor added (chat markers, pad, tool-call tags)."""
    reserved = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    ids = [i for i in range(len(tokenizer)) if i not in reserved]
    if len(ids) < 2:
        raise ValueError("the tokenizer has fewer than 2 ordinary tokens to draw a copy task from")
    return ids


def copy_batch(
    token_ids: list[int], cfg: CopyWarmupConfig, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of the copy task: ``(input_ids, labels)``, labels ``-100`` outside the span.

    All rows of a batch share one context length, span length and total length (no padding):
    ``context + gap filler + span + trailing filler``, the trailing filler making the gap's
    length vary without changing the row's.
    """
    context = rng.randint(cfg.min_context, cfg.max_context)
    span = rng.randint(cfg.min_span, min(cfg.max_span, context))
    length = context + cfg.max_gap + span
    rows, labels = [], []
    for _ in range(cfg.batch_size):
        tokens = [rng.choice(token_ids) for _ in range(context)]
        start = rng.randrange(context - span + 1)
        gap = rng.randint(0, cfg.max_gap)
        filler = [rng.choice(token_ids) for _ in range(cfg.max_gap)]
        row = tokens + filler[:gap] + tokens[start : start + span] + filler[gap:]
        first = context + gap  # position of the span's first token
        label = [-100] * length
        label[first + 1 : first + span] = row[first + 1 : first + span]
        rows.append(row)
        labels.append(label)
    return torch.tensor(rows), torch.tensor(labels)


def copy_accuracy(model: torch.nn.Module, token_ids: list[int], cfg: CopyWarmupConfig, seed: int, batches: int = 4) -> float:
    """Greedy next-token accuracy on the predictable span tokens of fresh rows."""
    rng = random.Random(seed)
    correct = total = 0
    with torch.no_grad():
        for _ in range(batches):
            input_ids, labels = copy_batch(token_ids, cfg, rng)
            logits = model(input_ids=input_ids.to(model.device)).logits[:, :-1]
            target = labels[:, 1:].to(logits.device)
            mask = target != -100
            correct += int((logits.argmax(-1)[mask] == target[mask]).sum())
            total += int(mask.sum())
    return correct / max(total, 1)


def copy_warmup(
    model: torch.nn.Module,
    tokenizer: Any,
    cfg: CopyWarmupConfig,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> CopyWarmupResult:
    """Train ``model`` in place on the copy task for ``cfg.steps`` steps; return what it reached.

    Seeded by ``seed`` (data and nothing else: the caller's global RNG is left alone), so the
    same model, tokenizer and config give the same weights. ``on_step(step, loss)`` is called
    after each optimizer step (progress bars, logs).
    """
    if cfg.steps < 0:
        raise ValueError(f"copy warm-up steps must be >= 0, got {cfg.steps}")
    if not 1 <= cfg.min_context <= cfg.max_context:
        raise ValueError("copy warm-up needs 1 <= min_context <= max_context")
    if not 2 <= cfg.min_span <= cfg.max_span:
        raise ValueError("copy warm-up needs 2 <= min_span <= max_span (a 1-token span has nothing to copy)")
    if cfg.min_span > cfg.min_context:
        raise ValueError("copy warm-up needs min_span <= min_context (a span is copied from the context)")
    token_ids = ordinary_token_ids(tokenizer)
    rng = random.Random(seed)
    started = time.perf_counter()
    loss_value = math.nan
    if cfg.steps:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        for step in range(1, cfg.steps + 1):
            input_ids, labels = copy_batch(token_ids, cfg, rng)
            loss = model(input_ids=input_ids.to(model.device), labels=labels.to(model.device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            if on_step is not None:
                on_step(step, loss_value)
    model.eval()
    accuracy = copy_accuracy(model, token_ids, cfg, seed=seed + 1)
    return CopyWarmupResult(cfg.steps, loss_value, accuracy, round(time.perf_counter() - started, 2))
