"""``configs/search.yaml`` loads, and keeps the settings its copy-learning argument rests on."""

from __future__ import annotations

from agentropy.training.config import load_config


def test_search_config_is_one_hop_short_prompt_tiny_model():
    cfg = load_config("configs/search.yaml")
    assert cfg.env.id == "agentropy/Search-v0"
    assert cfg.env.kwargs == {"min_hops": 1, "max_hops": 1, "top_k": 2, "snippet_chars": 60, "max_doc_chars": 400,
                              "reward": "f1"}
    assert (cfg.model.tiny.num_hidden_layers, cfg.model.tiny.vocab_size, cfg.model.tiny.copy_warmup_steps) == (3, 1024, 2500)
    assert (cfg.prompt.memory_turns, cfg.prompt.restate_task) == (0, True)
    assert (cfg.sft.episodes, cfg.sft.batch_size, cfg.sft.prompt_loss_weight) == (4000, 8, 1.0)
    assert (cfg.rollout.max_tokens, cfg.rollout.temperature) == (32, 1.0)
    assert (cfg.eval.episodes, cfg.eval.temperature) == (256, 0.0)
    assert cfg.train.iterations == 50


def test_search_config_takes_no_household_kwargs():
    """Its env options must not inherit Household's (mappings merge across ``include:``)."""
    kwargs = load_config("configs/search.yaml").env.kwargs
    assert not {"n_receptacles", "n_distractors", "task_types"} & set(kwargs)
