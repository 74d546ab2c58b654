"""Teacher-forced log-probs and entropies of reply tokens, the quantities every loss uses.

Step samples are packed as ``[left-padded prompt | right-padded reply]``: every reply starts
at the same column, so one forward pass with ``logits_to_keep = R + 1`` computes the LM head
only over reply positions (prompts are long, replies short: this is most of the learner's
speed on small models). Position ids are passed explicitly so left padding does not shift
positions, exactly as the ``hf`` backend does when it samples; that is what makes the first
update's ratio exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentropy.training.entropy import token_entropy


@dataclass
class PackedBatch:
    """Step samples as tensors. ``N`` samples, prompt width ``P``, reply width ``R``.

    ``input_ids`` / ``attention_mask`` / ``position_ids``: ``[N, P + R]``;
    ``response_ids`` / ``response_mask``: ``[N, R]`` (mask is 1 on the agent's reply tokens
    only: never on prompt, observation or padding tokens).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor

    @property
    def reply_width(self) -> int:
        return self.response_ids.shape[1]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                                      self.response_ids, self.response_mask)))

    def select(self, index: torch.Tensor | list[int]) -> PackedBatch:
        """Rows ``index``, trimmed to the widest prompt and reply among them."""
        index = torch.as_tensor(index, dtype=torch.long)
        mask = self.response_mask[index]
        prompt_mask = self.attention_mask[index, : -self.reply_width]
        r = max(int(mask.sum(1).max().item()) if mask.numel() else 0, 1)
        p_total = prompt_mask.shape[1]
        p = max(int(prompt_mask.sum(1).max().item()) if prompt_mask.numel() else 0, 1)
        cols = torch.cat([torch.arange(p_total - p, p_total), torch.arange(p_total, p_total + r)])
        return PackedBatch(
            self.input_ids[index][:, cols],
            self.attention_mask[index][:, cols],
            self.position_ids[index][:, cols],
            self.response_ids[index][:, :r],
            self.response_mask[index][:, :r],
        )


def pack(prompts: list[list[int]], replies: list[list[int]], pad_id: int) -> PackedBatch:
    """Pack ``(prompt, reply)`` id lists; empty replies get an all-zero mask row."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    n = len(prompts)
    p = max((len(x) for x in prompts), default=1)
    r = max(max((len(x) for x in replies), default=1), 1)
    input_ids = torch.full((n, p + r), pad_id, dtype=torch.long)
    attention = torch.zeros((n, p + r), dtype=torch.long)
    response_ids = torch.full((n, r), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, r), dtype=torch.long)
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        if prompt:
            input_ids[i, p - len(prompt) : p] = torch.tensor(prompt)
            attention[i, p - len(prompt) : p] = 1
        if reply:
            input_ids[i, p : p + len(reply)] = torch.tensor(reply)
            attention[i, p : p + len(reply)] = 1
            response_ids[i, : len(reply)] = torch.tensor(reply)
            response_mask[i, : len(reply)] = 1
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)
    return PackedBatch(input_ids, attention, position_ids, response_ids, response_mask)


def reply_logprobs_and_entropy(
    model: torch.nn.Module, batch: PackedBatch, temperature: float = 1.0, return_logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-prob of each reply token and full-vocabulary entropy at ``temperature``.

    Returns two ``[N, R]`` float32 tensors (zeros where ``response_mask`` is 0). Gradients
    flow when called outside ``torch.no_grad``; the entropy keeps its gradient (EPO needs it).
    ``return_logits=True`` also returns the reply logits ``[N, R, V]`` (float32, already divided
    by ``temperature``, with gradient): SIREN's nucleus entropy and Clip_V's ``E_q[S]`` need the
    whole distribution (docs/methods/siren.md). Off by default, so the common path keeps no
    ``[N, R, V]`` tensor alive beyond the entropy computation.
    """
    r = batch.reply_width
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=r + 1,
        use_cache=False,
    )
    logits = out.logits[:, :r].float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    chosen = torch.gather(logits, -1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    mask = batch.response_mask.to(logits.dtype)
    logprobs = (chosen - log_norm) * mask
    entropy = token_entropy(logits) * mask
    if return_logits:
        return logprobs, entropy, logits
    return logprobs, entropy


def _row_keys_tensor(batch: PackedBatch) -> torch.Tensor:
    return torch.cat([batch.input_ids, batch.attention_mask, batch.response_mask.to(batch.input_ids.dtype)], dim=1)


def row_keys(batch: PackedBatch) -> list[bytes]:
    """One key per row, equal exactly when two rows are the same sample (prompt, reply and the
    boundary between them): what ``train.micro_batch_order: grouped`` sorts identical rows by."""
    keys = _row_keys_tensor(batch).cpu().numpy()
    return [row.tobytes() for row in keys]


def distinct_reply_logprobs_and_entropy(
    model: torch.nn.Module, batch: PackedBatch, temperature: float = 1.0, return_logits: bool = False
) -> tuple[torch.Tensor, ...]:
    """:func:`reply_logprobs_and_entropy`, running the model once per *distinct* row.

    Late in RL a policy repeats itself: in a Household positive-control run, 11 % of an
    iteration's (prompt, reply) rows repeat another row at iteration 0 and about half at
    iteration 59. Identical rows have identical log-probs and entropies, so each distinct row is
    forwarded once and its outputs are copied to its duplicates; indexing is differentiable,
    so the backward pass sums the duplicates' gradients into the shared forward: the same
    gradient as separate passes up to floating-point order. Rows are compared on their token
    ids, attention and reply masks (equal rows, equal trimmed widths, equal output shapes)."""
    keys = _row_keys_tensor(batch)
    distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
    n = keys.shape[0]
    if distinct.shape[0] == n:
        return reply_logprobs_and_entropy(model, batch, temperature, return_logits)
    first = torch.full((distinct.shape[0],), n, dtype=torch.long, device=keys.device).scatter_reduce(
        0, inverse, torch.arange(n, device=keys.device), reduce="amin")
    out = reply_logprobs_and_entropy(model, batch.select(first.cpu()), temperature, return_logits)
    if out[0].shape[1] != batch.reply_width:
        raise AssertionError(f"distinct rows trimmed to reply width {out[0].shape[1]}, batch has {batch.reply_width}")
    return tuple(t[inverse] for t in out)
