"""Prompt building: layout, chat template, and the token budget on long episodes."""

import pytest

from agentropy.agents.prompts import PromptConfig, Turn, build_messages, build_prompt_ids
from agentropy.agents.tiny import train_tokenizer

TASK = "put a clean apple in the fridge"


def _observation(i: int) -> str:
    return f"You arrive at cabinet {i}. On the cabinet {i}, you see a mug {i}, a plate {i} and a spoon {i}."


@pytest.fixture(scope="module")
def tokenizer():
    texts = [_observation(i) for i in range(60)] + [TASK, "go to cabinet 3", "Admissible actions"]
    return train_tokenizer(texts * 3, vocab_size=600)


def _history(n: int) -> list[Turn]:
    return [Turn(_observation(i), f"go to cabinet {i + 1}") for i in range(n)]


def test_messages_hold_task_format_admissible_memory_and_observation():
    cfg = PromptConfig(memory_turns=2, restate_task=False)
    system, user = build_messages(cfg, TASK, _history(5), "You see a fridge 1.", ["look", "open fridge 1"])
    assert system["role"] == "system" and user["role"] == "user"
    assert TASK in system["content"] and "<action>your action</action>" in system["content"]
    assert system["content"].endswith("Admissible actions:\nlook\nopen fridge 1")
    assert user["content"] == (
        "(3 earlier turns omitted)\n"
        f"[Step 4] Observation: {_observation(3)}\n[Step 4] Action: go to cabinet 4\n"
        f"[Step 5] Observation: {_observation(4)}\n[Step 5] Action: go to cabinet 5\n"
        "[Step 6] Current observation: You see a fridge 1."
    )


def test_first_turn_has_no_memory_and_admissible_can_be_hidden():
    cfg = PromptConfig(show_admissible=False, action_tag="act", restate_task=False)
    system, user = build_messages(cfg, TASK, [], "Hello.", ["look"])
    assert "Admissible" not in system["content"] and "<act>your action</act>" in system["content"]
    assert user["content"] == "[Step 1] Current observation: Hello."


def test_max_admissible_caps_the_list_with_a_count():
    system, _ = build_messages(PromptConfig(max_admissible=2), TASK, [], "o", ["a", "b", "c", "d"])
    assert system["content"].endswith("Admissible actions:\na\nb\n... (2 more)")


def test_without_system_role_the_system_text_opens_the_user_message():
    (only,) = build_messages(PromptConfig(use_system_role=False, restate_task=False), TASK, [], "obs", [])
    assert only["role"] == "user" and only["content"].startswith("You are an agent") and only["content"].endswith("obs")


def test_ids_are_the_chat_template_rendering_with_generation_prompt(tokenizer):
    cfg = PromptConfig()
    messages = build_messages(cfg, TASK, _history(3), "obs", ["look"])
    ids = build_prompt_ids(tokenizer, cfg, TASK, _history(3), "obs", ["look"])
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_fifty_turn_episode_fits_budget_dropping_oldest_turns_first(tokenizer):
    cfg = PromptConfig(memory_turns=10, max_prompt_tokens=400)
    current = "You open the fridge 1. The fridge 1 is open. In it, you see nothing."
    ids = build_prompt_ids(tokenizer, cfg, TASK, _history(50), current, ["look", "close fridge 1"])
    text = tokenizer.decode(ids)
    assert len(ids) <= 400
    assert TASK in text and f"[Step 51] Current observation: {current}" in text
    assert "Admissible actions:\nlook\nclose fridge 1" in text  # turns go before admissible actions
    assert "[Step 50] Action: go to cabinet 50" in text  # the most recent turn is kept
    kept = text.count("] Action:")
    assert 0 < kept < 10 and f"({50 - kept} earlier turns omitted)" in text
    # Dropping one turn fewer would not fit: the memory is trimmed no more than needed (one piece of slack).
    fuller = build_prompt_ids(tokenizer, PromptConfig(memory_turns=kept + 2, max_prompt_tokens=10_000),
                              TASK, _history(50), current, ["look", "close fridge 1"])
    assert len(fuller) > 400


def test_admissible_list_is_trimmed_after_all_turns_are_gone(tokenizer):
    admissible = [f"go to cabinet {i}" for i in range(40)]
    cfg = PromptConfig(max_prompt_tokens=330)
    ids = build_prompt_ids(tokenizer, cfg, TASK, _history(50), "You see a fridge 1.", admissible)
    text = tokenizer.decode(ids)
    assert len(ids) <= 330
    assert "(50 earlier turns omitted)" in text and "] Action:" not in text
    assert "more)" in text and "go to cabinet 0\n" in text and "go to cabinet 39" not in text
    assert TASK in text and "You see a fridge 1." in text


def test_task_and_observation_are_never_cut_even_over_budget(tokenizer):
    huge = " ".join(_observation(i) for i in range(30))
    cfg = PromptConfig(max_prompt_tokens=50)
    with pytest.warns(UserWarning, match="max_prompt_tokens=50"):
        ids = build_prompt_ids(tokenizer, cfg, TASK, _history(5), huge, ["look"])
    text = tokenizer.decode(ids)
    assert TASK in text and huge in text and "look" not in text.split("Admissible")[-1]


def test_budget_path_renders_only_a_few_times(tokenizer, monkeypatch):
    calls = []
    original = tokenizer.apply_chat_template

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", counting)
    build_prompt_ids(tokenizer, PromptConfig(max_prompt_tokens=10_000), TASK, _history(50), "o", ["look"])
    assert len(calls) == 1
    calls.clear()
    build_prompt_ids(tokenizer, PromptConfig(memory_turns=50, max_prompt_tokens=300), TASK, _history(50), "o", [])
    assert len(calls) <= 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"memory_turns": -1}, "memory_turns"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
        ({"max_admissible": -1}, "max_admissible"),
        ({"action_tag": "<a>"}, "action_tag"),
        ({"system_template": "no task field"}, "system_template"),
        ({"system_template": "{task} {unknown}"}, "system_template"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PromptConfig(**kwargs)


def test_restated_task_closes_the_user_message():
    _, user = build_messages(PromptConfig(), TASK, [], "obs", [])
    assert user["content"].endswith(f"[Step 1] Current observation: obs\nYour task is: {TASK}")
