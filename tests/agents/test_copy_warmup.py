"""The copy warm-up: its synthetic rows, its determinism, its errors, and its place in the tiny
model's build (cache key and manifest)."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch

from agentropy.agents.copy_warmup import (
    CopyWarmupConfig,
    copy_accuracy,
    copy_batch,
    copy_warmup,
    ordinary_token_ids,
)
from agentropy.agents.tiny import (
    MANIFEST,
    TinyModelConfig,
    build_model,
    build_tiny_model,
    config_key,
    is_built,
    train_tokenizer,
)
from agentropy.training.config import ModelConfig
from agentropy.training.model_setup import tiny_model_folder

SMALL = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["<search>red fox</search> the quick brown fox jumps over the lazy dog"] * 4 + [
        "pack my box with five dozen liquor jugs", "sphinx of black quartz judge my vow"] * 4
    return train_tokenizer(texts, vocab_size=300, atomic_tokens=("<search>", "</search>"))


def test_ordinary_tokens_exclude_special_and_added_tokens(tokenizer):
    ids = ordinary_token_ids(tokenizer)
    reserved = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    assert reserved and not reserved & set(ids)
    assert tokenizer.convert_tokens_to_ids("<search>") not in ids
    assert len(ids) == len(tokenizer) - len(reserved)


def test_copy_rows_repeat_a_context_span_and_label_only_its_predictable_tokens():
    cfg = CopyWarmupConfig(batch_size=16, min_context=10, max_context=20, min_span=3, max_span=6, max_gap=4)
    tokens = list(range(100, 400))
    rng = random.Random(3)
    for _ in range(5):
        input_ids, labels = copy_batch(tokens, cfg, rng)
        assert input_ids.shape == labels.shape and input_ids.shape[0] == 16
        for row, label in zip(input_ids.tolist(), labels.tolist(), strict=True):
            labelled = [i for i, v in enumerate(label) if v != -100]
            assert labelled == list(range(labelled[0], labelled[-1] + 1))  # one contiguous run
            assert [row[i] for i in labelled] == [label[i] for i in labelled]
            span = row[labelled[0] - 1 : labelled[-1] + 1]  # first span token is not labelled
            assert 3 <= len(span) <= 6
            length = len(row)
            context = length - cfg.max_gap - len(span)
            assert 10 <= context <= 20
            assert any(row[s : s + len(span)] == span for s in range(context - len(span) + 1))
            assert labelled[0] - 1 >= context  # the copy comes after the whole context


def test_copy_warmup_is_seeded_and_leaves_global_rng_alone(tokenizer):
    cfg = CopyWarmupConfig(steps=3, batch_size=4, min_context=8, max_context=12, min_span=2, max_span=4)
    weights = []
    for _ in range(2):
        model = build_model(tokenizer, SMALL, seed=0)
        state = torch.random.get_rng_state()
        result = copy_warmup(model, tokenizer, cfg, seed=7)
        assert torch.equal(state, torch.random.get_rng_state())
        assert result.steps == 3 and result.final_loss == result.final_loss  # finite, not NaN
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    untouched = torch.cat([p.detach().flatten() for p in build_model(tokenizer, SMALL, seed=0).parameters()])
    assert not torch.equal(weights[0], untouched)


def test_copy_accuracy_counts_the_labelled_span_tokens(tokenizer):
    """A stand-in model that knows each row's labels: shifted by one position (the logit at p
    predicts token p + 1) it scores 1.0, unshifted it scores about chance."""
    cfg = CopyWarmupConfig(batch_size=4, min_context=8, max_context=8, min_span=4, max_span=4, max_gap=2)
    tokens = ordinary_token_ids(tokenizer)

    class Oracle(torch.nn.Module):
        device = torch.device("cpu")

        def __init__(self, shift: int) -> None:
            super().__init__()
            self.rng, self.shift = random.Random(11), shift  # replays copy_accuracy's draws

        def forward(self, input_ids):
            _, labels = copy_batch(tokens, cfg, self.rng)
            logits = torch.zeros(*input_ids.shape, len(tokenizer))
            target = labels[:, self.shift:].clamp(min=0).unsqueeze(-1)
            logits[:, : labels.shape[1] - self.shift].scatter_(2, target, 1.0)
            return type("Out", (), {"logits": logits})

    assert copy_accuracy(Oracle(shift=1), tokens, cfg, seed=11, batches=3) == 1.0
    assert copy_accuracy(Oracle(shift=0), tokens, cfg, seed=11, batches=3) < 0.2


@pytest.mark.parametrize("field,value,match", [
    ("steps", -1, "steps must be >= 0"),
    ("min_context", 0, "min_context"),
    ("min_span", 1, "1-token span"),
    ("min_context", 3, "min_span <= min_context"),
])
def test_bad_warmup_config_is_refused(tokenizer, field, value, match):
    model = build_model(tokenizer, SMALL, seed=0)
    with pytest.raises(ValueError, match=match):
        copy_warmup(model, tokenizer, replace(CopyWarmupConfig(steps=1), **{field: value}))


def test_warmup_off_keeps_old_cache_keys_and_on_changes_them():
    assert "copy_warmup_steps" not in config_key(TinyModelConfig())
    assert config_key(TinyModelConfig(copy_warmup_steps=5))["copy_warmup_steps"] == 5
    off, on = ModelConfig(), ModelConfig(tiny=TinyModelConfig(copy_warmup_steps=5))
    # the folder of a default build is the one used before the warm-up existed
    assert tiny_model_folder(off, "agentropy/Household-v0").name == "5095330533d0"
    assert tiny_model_folder(on, "agentropy/Household-v0") != tiny_model_folder(off, "agentropy/Household-v0")


def test_build_with_warmup_records_it_in_the_manifest(tmp_path):
    cfg = replace(SMALL, episodes_per_env=2, max_episode_steps=5, copy_warmup_steps=2)
    out = build_tiny_model(tmp_path / "m", seed=0, cfg=cfg)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["copy_warmup_steps"] == 2
    assert manifest["copy_warmup"]["steps"] == 2 and 0.0 <= manifest["copy_warmup"]["copy_accuracy"] <= 1.0
    assert is_built(out, seed=0, cfg=cfg) and not is_built(out, seed=0, cfg=replace(cfg, copy_warmup_steps=0))
