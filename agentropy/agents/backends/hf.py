"""The ``hf`` generation backend: a transformers causal LM sampled by our own loop.

Why our own loop rather than ``model.generate``: the trainer needs, for every generated token,
the log-probability of the sampled token and the entropy of the distribution it came from,
exactly as its own teacher-forced forward pass will recompute them (logits divided by the
sampling temperature, as in verl; docs/methods/README.md, "Samples, tokens and entropy"):

    z' = z / T,   log p = z' - logsumexp(z'),   H = -sum_v p_v log p_v = logsumexp(z') - sum_v p_v z'_v

over the **full vocabulary at the sampling temperature T**. Sampling runs on the same tensors,
so these numbers cost two element-wise passes over the ``(batch, vocab)`` logits per step.

Conventions (the trainer relies on them):

* ``top_p < 1``: the token is drawn from the nucleus of ``softmax(z/T)``, but ``logprobs`` and
  ``entropy`` describe the full ``softmax(z/T)``: that is the distribution the trainer
  recomputes, so the first update's importance ratio is exactly 1.
* ``temperature == 0``: greedy (argmax); ``logprobs`` and ``entropy`` are reported at T = 1.
* The EOS token that ends a reply is part of ``token_ids`` (with its logprob and entropy) so the
  policy learns to stop; ``text`` is decoded without special tokens.
* A stop string ends the reply at the token that completes it; ``token_ids`` keep that token,
  and ``text`` is cut just after the stop string, which it **includes** (so ``</action>`` as a
  stop string still leaves a parseable ``<action>...</action>``); ``extra["stop"]`` names it.
* Reproducible: the same prompts, params and ``params.seed`` give the same completions on the
  same device. One ``torch.Generator`` seeded by ``params.seed`` gives every row one uniform
  number per step, and a row's token depends on its own number only (inverse-CDF sampling), so
  rows that finish early and leave the batch change nothing for the others. ``seed=None``
  draws from torch's global RNG.
* Rows that finished (EOS or stop string) are dropped from the batch once they are half of it,
  so a few long replies do not keep paying for the whole batch.

Shapes in the loop: ``R = len(prompts) * n`` rows; logits ``(R, V)``; outputs ``(R, max_tokens)``.
Prompts are left-padded (position ids count real tokens only) and the prompt is prefilled
once per prompt, its KV cache then repeated ``n`` times.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from agentropy.agents.backends.base import Completion, SamplingParams


def token_logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``tokens`` and full-vocabulary entropy under ``softmax(logits / T)``.

    ``logits``: ``(..., V)``, any float dtype (computed in float32); ``tokens``: ``(...)``.
    Returns two float32 tensors of shape ``(...)``. ``T == 0`` means T = 1 (greedy decoding
    reports the untempered distribution). This is the formula the backend uses per step,
    exposed so a teacher-forced pass can be checked against it.
    """
    logp = _log_softmax(logits, temperature)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), _entropy(logp)


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    z = logits.float()
    if temperature > 0 and temperature != 1.0:
        z = z / temperature
    return torch.log_softmax(z, dim=-1)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    # -sum p log p from log-softmax output (the log-sum-exp form); nansum drops 0 * -inf terms
    # of tokens a model masks with -inf logits.
    return -(logp.exp() * logp).nansum(dim=-1)


def _check_logits(logp: torch.Tensor, step: int) -> None:
    """Refuse NaN log-probs (NaN or +inf logits, or a row of -inf): sampling from them would
    return an out-of-range token id and fail later with an index error that never says NaN."""
    if bool(torch.isnan(logp).any()):
        from agentropy.nonfinite import NonFiniteError

        rows = torch.isnan(logp).any(dim=-1).nonzero().flatten().tolist()
        raise NonFiniteError(f"non-finite logits (NaN) at generation step {step} in rows {rows[:5]}",
                             where="sampler")


def _sample(
    logp: torch.Tensor, temperature: float, top_p: float, uniform: torch.Tensor | None
) -> torch.Tensor:
    """Draw one token per row from ``exp(logp)`` (its top-p nucleus if ``top_p < 1``).

    Inverse-CDF sampling with one uniform number per row, ``uniform``: ``(R,)`` in [0, 1). A row's
    draw depends only on its own number, so rows that leave the batch early do not shift the
    random stream of the others, and a seeded row is reproducible whatever else is in the batch
    step. A token of probability 0 is never drawn (the CDF does not rise at it).
    """
    if temperature == 0:
        return logp.argmax(dim=-1)
    probs = logp.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before
        # it already does (the most likely token is always kept).
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    # Strictly below the total mass, so the zero-probability tail after the last kept token
    # (top-p) is never reached even when u * total rounds up.
    target = torch.minimum(uniform.unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    index = torch.searchsorted(cdf, target, right=True)
    return (index if order is None else order.gather(-1, index)).squeeze(-1)


def _eos_ids(tokenizer: Any, model: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if source is None:
            continue
        ids.extend([source] if isinstance(source, int) else list(source))
    return tuple(dict.fromkeys(int(i) for i in ids))


class HFBackend:
    """Batched sampling from a transformers causal LM with exact per-token logprob and entropy.

    ``model`` and ``tokenizer`` come from ``from_pretrained`` (the tiny model or any checkpoint).
    Sampling runs on the model's device; ``device``, if given, moves the model there (in place,
    as ``nn.Module.to`` does) here and in :meth:`sync_weights`. ``eos_token_ids`` default to the
    model's generation config plus the tokenizer's EOS; ``()`` disables EOS (benchmarks).
    ``max_batch_size`` caps the rows (prompts x n) sampled together, to bound memory.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str | torch.device | None = None,
        eos_token_ids: Iterable[int] | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else None
        self.max_batch_size = max_batch_size
        self._stoppers: dict[tuple[tuple[str, ...], int, torch.device], _StopStrings] = {}
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids is not None else _eos_ids(tokenizer, model)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_ids or (0,))[0])
        self.sync_weights(model)

    def sync_weights(self, model: Any) -> None:
        """Sample from ``model`` from now on. In-process, so this is a reference, not a copy."""
        if self.device is not None and next(model.parameters()).device != self.device:
            model = model.to(self.device)
        self.model = model

    @property
    def _device(self) -> torch.device:
        return self.device if self.device is not None else next(self.model.parameters()).device

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """``len(prompts) * params.n`` completions, prompt-major (see ``GenerationBackend``)."""
        vocab = self.model.get_output_embeddings().weight.shape[0]
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise ValueError(f"prompts[{i}] has token ids outside [0, {vocab})")
        if not prompts:
            return []
        device = self._device
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        per_chunk = len(prompts) if self.max_batch_size is None else max(1, self.max_batch_size // params.n)
        was_training = self.model.training
        self.model.eval()
        try:
            completions: list[Completion] = []
            for start in range(0, len(prompts), per_chunk):
                completions += self._generate_chunk(
                    prompts[start : start + per_chunk], params, generator, device
                )
            return completions
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def _generate_chunk(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> list[Completion]:
        n, steps, temperature, top_p = params.n, params.max_tokens, params.temperature, params.top_p
        prompt_len = max(len(p) for p in prompts)
        rows = len(prompts) * n

        input_ids = torch.full((len(prompts), prompt_len), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), prompt_len + steps), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, prompt_len - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, prompt_len - len(prompt) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask[:, :prompt_len].cumsum(-1) - 1).clamp(min=0)

        out = self.model(
            input_ids=input_ids,
            attention_mask=mask[:, :prompt_len],
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        next_position = positions[:, -1:] + 1
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            next_position = next_position.repeat_interleave(n, dim=0)

        tokens = torch.full((rows, steps), self.pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((rows, steps), dtype=torch.float32, device=device)
        entropy = torch.zeros((rows, steps), dtype=torch.float32, device=device)
        lengths = torch.full((rows,), steps, dtype=torch.long, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=device)
        stopper = self._stopper(params.stop, logits.shape[-1], device) if params.stop else None
        stop_hits: dict[int, str] = {}
        # The batch shrinks as rows finish: ``live[j]`` is the output row of batch row j.
        live = torch.arange(rows, device=device)
        live_done = torch.zeros(rows, dtype=torch.bool, device=device)

        for t in range(steps):
            logp = _log_softmax(logits, temperature)
            _check_logits(logp, t)
            uniform = None
            if temperature > 0:
                uniform = torch.rand(rows, generator=generator, device=device)
                uniform = uniform if live.numel() == rows else uniform[live]
            token = _sample(logp, temperature, top_p, uniform).masked_fill(live_done, self.pad_token_id)
            tokens[live, t] = token
            logprobs[live, t] = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)
            entropy[live, t] = _entropy(logp)
            done = torch.isin(token, eos) & ~live_done
            if stopper is not None:
                for j, s in stopper.check(tokens, token, live, t, live_done | done).items():
                    stop_hits[int(live[j])] = s
                    done[j] = True
            live_done |= done
            lengths[live[done]] = t + 1
            finished[live[done]] = True
            running = int((~live_done).sum())
            if running == 0 or t == steps - 1:
                break
            if running <= live.numel() // 2:
                # Drop finished rows once they are half the batch: later steps cost less, and
                # each row's computation is unchanged (rows never interact).
                keep = (~live_done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                live, token, mask, next_position = live[keep], token[keep], mask[keep], next_position[keep]
                live_done = live_done[keep]
            mask[:, prompt_len + t] = 1
            out = self.model(
                input_ids=token.unsqueeze(-1),
                attention_mask=mask[:, : prompt_len + t + 1],
                position_ids=next_position,
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1, :]
            next_position = next_position + 1
        return self._completions(tokens, logprobs, entropy, lengths, finished, stop_hits)

    def _stopper(self, stop: tuple[str, ...], vocab_size: int, device: torch.device) -> _StopStrings:
        key = (stop, vocab_size, device)
        if key not in self._stoppers:
            self._stoppers[key] = _StopStrings(self.tokenizer, stop, vocab_size, device)
        return self._stoppers[key]

    def _completions(
        self,
        tokens: torch.Tensor,
        logprobs: torch.Tensor,
        entropy: torch.Tensor,
        lengths: torch.Tensor,
        finished: torch.Tensor,
        stop_hits: dict[int, str],
    ) -> list[Completion]:
        """Move everything to the host once and cut each row at its length."""
        ids, lps, ents = tokens.tolist(), logprobs.tolist(), entropy.tolist()
        lengths_, finished_ = lengths.tolist(), finished.tolist()
        texts = self.tokenizer.batch_decode(
            [row[:k] for row, k in zip(ids, lengths_, strict=True)], skip_special_tokens=True
        )
        completions = []
        for r, k in enumerate(lengths_):
            text, extra = texts[r], {}
            if r in stop_hits:
                stop = stop_hits[r]
                cut = text.find(stop)
                text = text[: cut + len(stop)] if cut >= 0 else text
                extra["stop"] = stop
            completions.append(
                Completion(
                    token_ids=ids[r][:k],
                    logprobs=lps[r][:k],
                    entropy=ents[r][:k],
                    finish_reason="stop" if finished_[r] else "length",
                    text=text,
                    extra=extra,
                )
            )
        return completions


class _StopStrings:
    """Finds rows whose reply has just completed a stop string.

    A row still running has no stop string before this step, so one found now was completed by
    the token just sampled, and that token must spell the stop string's last character (or a
    fragment of it, which decodes alone to U+FFFD). A vocabulary table of such tokens, built
    once per stop set, picks the few rows worth a look; only their tails are decoded: enough
    tokens to spell the longest stop string (every token spells at least one byte, so
    ``4 * len`` tokens cover it) plus the completing one. Stop strings ending in whitespace
    skip the table (SentencePiece tokens decode alone without their leading space).
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], vocab_size: int, device: torch.device) -> None:
        if any(not s for s in stop):
            raise ValueError("SamplingParams.stop holds an empty string")
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.window = 4 * max(len(s) for s in self.stop) + 1
        self.may_complete: torch.Tensor | None = None
        last_chars = {s[-1] for s in self.stop}
        if not any(c.isspace() for c in last_chars):
            known = min(vocab_size, len(tokenizer))
            pieces = tokenizer.batch_decode([[i] for i in range(known)], skip_special_tokens=True)
            table = [any(c in piece for c in last_chars) or "\ufffd" in piece for piece in pieces]
            table += [True] * (vocab_size - known)
            self.may_complete = torch.tensor(table, dtype=torch.bool, device=device)

    def check(
        self, tokens: torch.Tensor, token: torch.Tensor, live: torch.Tensor, t: int, finished: torch.Tensor
    ) -> dict[int, str]:
        """Batch rows (indices into ``live``) whose tail in ``tokens[live]`` ends a stop string."""
        candidates = ~finished if self.may_complete is None else self.may_complete[token] & ~finished
        active = candidates.nonzero().squeeze(-1).tolist()
        if not active:
            return {}
        tails = tokens[live[active], max(0, t + 1 - self.window) : t + 1].tolist()
        hits = {}
        for row, text in zip(
            active, self.tokenizer.batch_decode(tails, skip_special_tokens=True), strict=True
        ):
            found = [s for s in self.stop if s in text]
            if found:
                hits[row] = min(found, key=text.find)
        return hits
