"""The tiny tokenizer learns the text of the env being trained: tool tags as single tokens,
entity words whole; Household's tokenizer and cache folder stay exactly what they were."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from agentropy.agents.tiny import (
    CHAT_TEMPLATE_TEXTS,
    MANIFEST,
    TinyModelConfig,
    build_tiny_model,
    collect_env_corpus,
    collect_env_texts,
    load_model_and_tokenizer,
    tool_call_tags,
    train_tokenizer,
)
from agentropy.configuration import ConfigError
from agentropy.training.config import ModelConfig, load_config
from agentropy.training.model_setup import tiny_model_folder, tokenizer_env_ids

SEARCH = "agentropy/Search-v0"
HOUSEHOLD = "agentropy/Household-v0"
TAGS = ("</answer>", "</open>", "</search>", "<answer>", "<open>", "<search>")


def test_tool_call_tags_are_read_from_actions():
    assert tool_call_tags(["<search>a b</search>", "<open>x-1</open> then", "<answer>c</answer>"]) == TAGS
    assert tool_call_tags(["go to cabinet 1", "<b>unclosed", "a < b > c", "<x>y</z>"]) == ()
    assert tool_call_tags(["<my_tool>q</my_tool><my_tool>r</my_tool>"]) == ("</my_tool>", "<my_tool>")


def test_household_actions_hold_no_tags_so_its_tokenizer_is_the_plain_bpe():
    corpus = collect_env_corpus([HOUSEHOLD], episodes_per_env=4, max_steps=20)
    assert tool_call_tags(corpus.actions) == ()
    assert corpus.texts == collect_env_texts([HOUSEHOLD], 4, 20)
    assert set(corpus.actions) <= set(corpus.texts) and "look" in corpus.actions


def _auto_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def search_tokenizer(tmp_path_factory):
    """The tokenizer the default tiny build makes for Search-v0 (its corpus and vocabulary size)."""
    default = TinyModelConfig()
    corpus = collect_env_corpus([SEARCH], default.episodes_per_env, default.max_episode_steps)
    tags = tool_call_tags(corpus.actions)
    tokenizer = train_tokenizer(corpus.texts + CHAT_TEMPLATE_TEXTS, default.vocab_size, atomic_tokens=tags)
    folder = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(folder)
    return corpus, tags, tokenizer, folder


def test_search_tokenizer_keeps_tool_tags_whole_and_round_trips(search_tokenizer):
    corpus, tags, tokenizer, folder = search_tokenizer
    assert tags == TAGS
    for tag in TAGS:
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1
    reply = "<action><search>The Glass Tide</search></action>"
    ids = tokenizer.encode(reply, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[pieces.index("<search>") + 1 : pieces.index("</search>")] == ["The", " Glass", " Tide"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == reply  # not special: replies keep their tags
    reloaded = _auto_tokenizer(folder)
    for text in corpus.texts:
        assert reloaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
        assert reloaded.decode(reloaded.encode(text, add_special_tokens=False)) == text


def test_search_tokenizer_does_not_byte_split_entity_words(search_tokenizer):
    from agentropy.envs.search.world import WorldConfig, build_world

    _, _, tokenizer, _ = search_tokenizer
    world = build_world(WorldConfig())
    words = collections.Counter(w for e in world.entities for w in e.title.split())
    common = [w for w, _ in words.most_common(24) if w not in ("of", "The", "and", "the")][:20]
    lengths = {w: len(tokenizer.encode(" " + w, add_special_tokens=False)) for w in common}
    assert all(n == 1 for n in lengths.values()), lengths
    for question in ("Which organisation published 'The Silent Harbour'?", "In which city was the founder born?"):
        ids = tokenizer.encode(question, add_special_tokens=False)
        assert len(ids) <= len(question.split()) + 4  # about one token a word, not one a byte


def test_tiny_folder_key_adds_env_ids_only_off_the_household_default():
    household = load_config("configs/quickstart.yaml").model
    sizes = dataclasses.asdict(household.tiny)
    del sizes["copy_warmup_steps"]  # added later; off, it stays out of the key
    legacy_key = json.dumps({"seed": household.tiny_seed, **sizes}, sort_keys=True)
    legacy = Path(household.tiny_dir).expanduser() / hashlib.sha256(legacy_key.encode()).hexdigest()[:12]
    assert tiny_model_folder(household, HOUSEHOLD) == legacy  # the cached Household model is reused
    assert tokenizer_env_ids(household, SEARCH) == (SEARCH,)
    search = tiny_model_folder(household, SEARCH)
    assert search != legacy and search.parent == legacy.parent
    pinned = dataclasses.replace(household, tiny_envs=[HOUSEHOLD])
    assert tokenizer_env_ids(pinned, SEARCH) == (HOUSEHOLD,) and tiny_model_folder(pinned, SEARCH) == legacy
    assert load_config("configs/alfworld.yaml").model.tiny_envs == [HOUSEHOLD]


def test_tiny_envs_are_checked_at_load_time():
    with pytest.raises(ConfigError, match=r"tiny_envs: must name at least one env"):
        ModelConfig(tiny_envs=[])
    with pytest.raises(ConfigError, match=r"tiny_envs\[1\]"):
        ModelConfig(tiny_envs=[HOUSEHOLD, "agentropy/Nope-v0"])


def test_built_search_model_records_its_tags(tmp_path):
    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=512, episodes_per_env=4,
                          max_episode_steps=10)
    path = build_tiny_model(tmp_path / "m", env_ids=[SEARCH], cfg=cfg)
    assert json.loads((path / MANIFEST).read_text())["atomic_tokens"] == list(TAGS)
    model, tokenizer = load_model_and_tokenizer(path)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("<open>", add_special_tokens=False)) == ["<open>"]
    assert model.config.vocab_size == len(tokenizer)
