"""The offline tiny model: tokenizer from env text, Qwen2 LM, save/load round trips, caching."""

import json

import gymnasium as gym
import pytest
import torch

from agentropy.agents.tiny import (
    CHAT_TEMPLATE,
    CHAT_TEMPLATE_TEXTS,
    MANIFEST,
    TinyModelConfig,
    build_model,
    build_tiny_model,
    collect_env_texts,
    is_built,
    load_model_and_tokenizer,
    train_tokenizer,
)
from agentropy.envs.base import base_info, text_space

SMALL = TinyModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256, episodes_per_env=6,
                        max_episode_steps=12)
TOY_ID = "agentropy-test/Buttons-v0"


class ButtonsEnv(gym.Env):
    """Press numbered buttons in order, then say done. Its text has unicode and punctuation."""

    def __init__(self):
        self.observation_space, self.action_space = text_space(), text_space()

    def _info(self, invalid=False):
        nxt = f"press button {self.pressed + 1}" if self.pressed < self.target else "done"
        return base_info(task=f"press buttons 1 to {self.target} in order, then say done",
                         admissible_actions=[nxt, "look", "done"], expert_action=nxt, won=self.won,
                         invalid_action=invalid)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.target, self.pressed, self.won = int(self.np_random.integers(2, 6)), 0, False
        return f"A panel with {self.target} buttons — “café” style, 20°.", self._info()

    def step(self, action):
        if action == f"press button {self.pressed + 1}":
            self.pressed += 1
            return f"Button {self.pressed} lights up!", 0.0, False, False, self._info()
        if action == "done" and self.pressed == self.target:
            self.won = True
            return "You win.", 1.0, True, False, self._info()
        return "Nothing happens.", 0.0, False, False, self._info(invalid=True)


if TOY_ID not in gym.registry:
    gym.register(TOY_ID, entry_point=ButtonsEnv)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", env_ids=[TOY_ID], cfg=SMALL)


def test_collected_text_covers_tasks_observations_actions_and_prompts():
    texts = collect_env_texts([TOY_ID], episodes_per_env=4, max_steps=12)
    assert any(t.startswith("press buttons 1 to") for t in texts)
    assert "Nothing happens." in texts and "press button 1" in texts and "<action>press button 1</action>" in texts
    assert any("Admissible actions:" in t for t in texts) and any("Current observation:" in t for t in texts)
    assert len(texts) == len(set(texts)) and texts == collect_env_texts([TOY_ID], 4, 12)


def test_tokenizer_round_trips_every_env_string_it_was_trained_on(built):
    texts = collect_env_texts([TOY_ID], SMALL.episodes_per_env, SMALL.max_episode_steps)
    _, tokenizer = load_model_and_tokenizer(built)
    trained = train_tokenizer(texts + CHAT_TEMPLATE_TEXTS, SMALL.vocab_size)
    for s in texts:
        ids = tokenizer.encode(s, add_special_tokens=False)
        assert tokenizer.decode(ids) == s
        assert ids == trained.encode(s, add_special_tokens=False)  # AutoTokenizer rebuilds it exactly
    assert len(tokenizer.encode("press button 1", add_special_tokens=False)) < len("press button 1") / 2


def test_chat_template_and_special_tokens(built):
    _, tokenizer = load_model_and_tokenizer(built)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert not tokenizer.apply_chat_template(messages, tokenize=False).endswith("assistant\n")
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>", "<|im_start|>assistant\n"):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1 + 2 * special.endswith("\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_model_round_trips_through_save_and_from_pretrained(tmp_path):
    tokenizer = train_tokenizer(["go to the fridge 1", "open the drawer 2"] * 5, vocab_size=300)
    model = build_model(tokenizer, SMALL, seed=3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(tmp_path)
    assert type(loaded).__name__ == "Qwen2ForCausalLM" and not loaded.training
    ids = torch.tensor([loaded_tok.encode("open the fridge 1")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids(t)
                                                     for t in ("<|im_end|>", "<|endoftext|>")]
    same_seed = build_model(tokenizer, SMALL, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same_seed.parameters(), strict=True))


def test_default_size_is_about_half_a_million_parameters():
    tokenizer = train_tokenizer([f"word{i} " * 3 for i in range(2000)], vocab_size=4096)
    model = build_model(tokenizer)
    n = sum(p.numel() for p in model.parameters())
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tokenizer)
    assert 3e5 < n < 1e6  # small enough for SFT + RL on a 2-core CPU in minutes


def test_build_is_cached_and_rebuilt_only_when_the_request_changes(built):
    stamp = (built / MANIFEST).stat().st_mtime_ns
    assert build_tiny_model(built, env_ids=[TOY_ID], cfg=SMALL) == built
    assert (built / MANIFEST).stat().st_mtime_ns == stamp
    assert is_built(built, [TOY_ID], 0, SMALL) and not is_built(built, [TOY_ID], 1, SMALL)
    manifest = json.loads((built / MANIFEST).read_text())
    assert manifest["env_ids"] == [TOY_ID] and manifest["n_params"] > 0 and manifest["vocab_size"] > 256


def test_rebuild_replaces_the_folder_atomically(tmp_path):
    out = tmp_path / "m"
    build_tiny_model(out, env_ids=[TOY_ID], cfg=SMALL, seed=0)
    build_tiny_model(out, env_ids=[TOY_ID], cfg=SMALL, seed=1)
    assert json.loads((out / MANIFEST).read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left behind


def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not an agentropy tiny model"):
        build_tiny_model(tmp_path, env_ids=[TOY_ID], cfg=SMALL)


def test_household_build_round_trips_its_text(tmp_path):
    pytest.importorskip("agentropy.envs.household.env")
    cfg = TinyModelConfig(episodes_per_env=4, max_episode_steps=20, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=1)
    path = build_tiny_model(tmp_path / "hh", cfg=cfg)
    _, tokenizer = load_model_and_tokenizer(path)
    texts = collect_env_texts(episodes_per_env=4, max_steps=20)
    assert any("Your task is to:" in t for t in texts)
    assert all(tokenizer.decode(tokenizer.encode(s, add_special_tokens=False)) == s for s in texts)


def test_make_model_command(tmp_path, capsys):
    from agentropy.cli import main

    argv = ["make-model", str(tmp_path / "cli"), "--envs", TOY_ID, "--episodes", "4", "--hidden-size", "64",
            "--layers", "1"]
    assert main(argv) == 0
    assert "built" in capsys.readouterr().out
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out
    model, _ = load_model_and_tokenizer(tmp_path / "cli")
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 64
