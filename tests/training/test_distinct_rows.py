"""``train.micro_batch_order: grouped``: each distinct (prompt, reply) row is forwarded once and
its outputs copied to its duplicates; values and gradients equal separate passes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents"))
from tiny_lm import tiny_model_and_tokenizer  # noqa: E402

from agentropy.training.policy import (  # noqa: E402
    distinct_reply_logprobs_and_entropy,
    pack,
    reply_logprobs_and_entropy,
    row_keys,
)


def _batch(tokenizer):
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompts = [enc("you are in the kitchen"), enc("go north"), enc("you are in the kitchen"),
               enc("you are in the kitchen"), enc("go north")]
    replies = [enc("take apple"), enc("look"), enc("take apple"), enc("open fridge"), enc("look")]
    return pack(prompts, replies, tokenizer.eos_token_id)


def _rows_forwarded(model):
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    return seen


def test_keys_are_equal_exactly_for_identical_samples():
    _, tokenizer = tiny_model_and_tokenizer()
    keys = row_keys(_batch(tokenizer))
    assert keys[0] == keys[2] and keys[1] == keys[4]
    assert len(set(keys)) == 3  # same prompt, other reply (row 3) is its own row


def test_distinct_rows_are_forwarded_once_with_equal_values_and_gradients():
    torch.manual_seed(0)
    model, tokenizer = tiny_model_and_tokenizer()
    batch = _batch(tokenizer)
    weights = torch.linspace(0.5, 1.5, 5).unsqueeze(1)  # a different loss weight per row

    seen = _rows_forwarded(model)
    grads = []
    results = []
    for fn in (reply_logprobs_and_entropy, distinct_reply_logprobs_and_entropy):
        model.zero_grad(set_to_none=True)
        logprobs, entropy = fn(model, batch, 0.7)
        ((logprobs * weights).sum() + entropy.sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        results.append((logprobs.detach(), entropy.detach()))
    assert seen == [5, 3]  # 5 rows, 3 distinct
    (lp, ent), (lp_d, ent_d) = results
    assert lp_d.shape == lp.shape and torch.allclose(lp_d, lp, atol=1e-6) and torch.allclose(ent_d, ent, atol=1e-6)
    assert torch.equal(lp_d[0], lp_d[2]) and torch.equal(lp_d[1], lp_d[4])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6), name


def test_a_batch_without_duplicates_takes_the_plain_path_bit_for_bit():
    torch.manual_seed(0)
    model, tokenizer = tiny_model_and_tokenizer()
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    batch = pack([enc("go north"), enc("look")], [enc("look"), enc("go north")], tokenizer.eos_token_id)
    with torch.no_grad():
        plain = reply_logprobs_and_entropy(model, batch)
        distinct = distinct_reply_logprobs_and_entropy(model, batch)
    assert all(torch.equal(a, b) for a, b in zip(plain, distinct, strict=True))


def test_logits_are_copied_to_duplicates_too():
    model, tokenizer = tiny_model_and_tokenizer()
    with torch.no_grad():
        logprobs, entropy, logits = distinct_reply_logprobs_and_entropy(model, _batch(tokenizer), return_logits=True)
    assert logits.shape[:2] == logprobs.shape and torch.equal(logits[0], logits[2])
