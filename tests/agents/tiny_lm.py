"""A tiny Qwen2 LM and tokenizer shared by the backend and server tests."""

from __future__ import annotations

import torch

CORPUS = [
    "You are in the middle of a room. Looking around you, you see a cabinet 1, a countertop 1, and a fridge 1.",
    "Your task is to: put a clean apple in fridge.",
    "<action>go to fridge 1</action>",
    "open fridge 1",
    "take apple 1 from countertop 1",
] * 5


def tiny_model_and_tokenizer():
    """A ~0.1M-parameter Qwen2; embeddings scaled by 5 so entropies span ~1.5-4.5 nats."""
    from agentropy.agents.tiny import TinyModelConfig, build_model, train_tokenizer

    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    cfg = TinyModelConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    model = build_model(tokenizer, cfg, seed=0)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(5.0)
    return model, tokenizer
