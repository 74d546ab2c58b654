"""TextWorld games from TextWorld's own generator follow the env contract, and the walkthrough wins.

Games are generated once per test session into a shared temporary cache (a cooking game
takes a few seconds to generate, a step a few milliseconds).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
from gymnasium.utils.env_checker import check_env

import agentropy.envs.textworld_env as tw
from agentropy.envs.base import INFO_KEYS, fork
from agentropy.envs.textworld_env import (
    TextWorldEnv,
    challenge_settings,
    clean_feedback,
    ensure_game,
    game_path,
)

HARD_COOKING = {"recipe": 2, "take": 2, "go": 6, "open": True, "cook": True, "cut": True}
BIG_CUSTOM = {"world_size": 5, "nb_objects": 10, "quest_length": 5}


@pytest.fixture(scope="session")
def tw_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("textworld-games")


@pytest.fixture(scope="module")
def cooking(tw_cache):
    env = TextWorldEnv(challenge="tw-cooking", games_per_split=2, cache_dir=tw_cache)
    yield env
    env.close()


def play_expert(env: TextWorldEnv, options: dict) -> tuple[float, bool, dict, list[str]]:
    """Follow ``expert_action`` from reset to the end.

    Returns (return, terminated, last info, expert actions that were not admissible).
    TextWorld's own walkthroughs are not minimal: a harder cooking game's may open the
    fridge twice ("That's already open."), a harmless step outside the admissible list.
    """
    obs, info = env.reset(options=options)
    total, terminated, truncated, outside = 0.0, False, False, []
    while not (terminated or truncated):
        action = info["expert_action"]
        assert action is not None, f"no expert action before the end (obs {obs!r})"
        if action not in info["admissible_actions"]:
            outside.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
    return total, terminated, info, outside


def test_cooking_env_passes_gymnasium_env_checker(cooking):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env only warns (bad observation, reward, ...)
        check_env(cooking, skip_render_check=True)
    obs, info = cooking.reset(seed=0)
    assert set(INFO_KEYS) <= set(info)
    assert "Check the cookbook" in obs and "_____" not in obs  # the title art is stripped
    assert info["task"] and info["expert_action"] == "inventory"  # the cooking walkthrough starts so


@pytest.mark.parametrize(
    "challenge,settings,task_id",
    [("tw-cooking", None, 0), ("tw-cooking", None, 1), ("custom", None, 0)],
    ids=["cooking-0", "cooking-1", "custom-0"],
)
def test_walkthrough_wins_generated_games(tw_cache, challenge, settings, task_id):
    env = TextWorldEnv(challenge=challenge, settings=settings, cache_dir=tw_cache, games_per_split=2)
    try:
        total, terminated, info, outside = play_expert(env, {"split": "train", "task_id": task_id})
        assert terminated and info["won"] and not info["lost"]
        assert info["score"] == info["max_score"] > 0
        assert total == pytest.approx(1.0)  # rewards are score deltas / max score
        assert info["expert_action"] is None
        assert outside == []  # in these small games every walkthrough command is admissible
    finally:
        env.close()


def test_same_seed_same_game_and_observations(cooking, tw_cache):
    actions = ["look", "open fridge", "eat the moon", "inventory"]
    other = TextWorldEnv(challenge="tw-cooking", games_per_split=2, cache_dir=tw_cache)
    try:
        runs = []
        for env in (cooking, other):
            obs, info = env.reset(seed=11)
            trace = [(obs, info)]
            for action in actions:
                trace.append(env.step(action))
            runs.append(trace)
        assert runs[0] == runs[1]
        forked, obs, info = fork(other, 11, None, actions[:2])
        assert (obs, info) == (runs[0][2][0], runs[0][2][4])
    finally:
        other.close()


def test_bad_actions_never_raise_and_are_flagged(cooking):
    cooking.reset(options={"task_id": 0})
    for action in ["", "xyzzy", "look\nopen fridge", "☃ ♞ 日本", "x" * 5000, "take the moon"]:
        obs, reward, terminated, truncated, info = cooking.step(action)
        assert cooking.observation_space.contains(obs)
        assert info["invalid_action"] is True, action
        assert reward == 0.0 and not terminated
    obs, reward, terminated, truncated, info = cooking.step("look")
    assert info["invalid_action"] is False  # admissible


def test_random_text_from_the_action_space_cannot_crash_the_interpreter(cooking, tw_cache):
    """Frotz segfaults the process on backslash escapes such as ``\\a``; the env strips them.

    Runs in a child process, so that a regression fails this test instead of killing the suite.
    """
    assert tw._sanitise("take \\apple\\D") == "take apple D"
    script = textwrap.dedent(
        f"""
        from agentropy.envs.textworld_env import TextWorldEnv
        env = TextWorldEnv(challenge="tw-cooking", games_per_split=2, cache_dir={str(tw_cache)!r})
        env.action_space.seed(0)
        env.reset(options={{"task_id": 0}})
        actions = ["\\\\a", "baKl \\\\Dw:r:4-^", "open \\\\fridge"]
        actions += [env.action_space.sample() for _ in range(150)]
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            assert info["invalid_action"] or reward >= 0
            if terminated or truncated:
                env.reset(options={{"task_id": 0}})
        print("survived", len(actions))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "survived 153"


def test_expert_continues_off_the_walkthrough(cooking):
    obs, info = cooking.reset(options={"task_id": 1})
    walkthrough_first = info["expert_action"]
    _, _, _, _, info = cooking.step("look")  # not the walkthrough's first command
    assert walkthrough_first != "look"
    assert info["expert_action"] is not None  # TextWorld's winning policy takes over
    total, terminated = 0.0, False
    while not terminated:
        _, reward, terminated, truncated, info = cooking.step(info["expert_action"])
        total += reward
        assert not truncated
    assert info["won"] and total == pytest.approx(1.0)


def test_max_steps_truncates(tw_cache):
    env = TextWorldEnv(challenge="tw-cooking", games_per_split=2, cache_dir=tw_cache, max_steps=2)
    try:
        env.reset(options={"task_id": 0})
        assert env.step("look")[3] is False
        _, _, terminated, truncated, info = env.step("look")
        assert truncated and not terminated and info["truncation_reason"] == "max_steps"
    finally:
        env.close()


def test_splits_use_disjoint_seeds_and_cooking_food_splits(tw_cache):
    settings = challenge_settings("tw-cooking", None)
    train = game_path(tw_cache, "tw-cooking", settings, "train", tw.SPLIT_SEEDS["train"])
    test = game_path(tw_cache, "tw-cooking", settings, "test", tw.SPLIT_SEEDS["test"])
    assert train != test and "-train-0-" in train.name and "-test-2000000-" in test.name
    assert TextWorldEnv(games_per_split=2, cache_dir=tw_cache, split="dev").default_split == "valid"
    # The food split itself: TextWorld's cooking generator draws a train game's ingredients from the
    # train (food, preparation) pairs, and a test game's from the test foods or from train foods with
    # test-only preparations, so no (food, cooking, cutting) of a test recipe is a train one.
    from textworld.challenges.tw_cooking.cooking import FOOD_PREPARATIONS_SPLITS, FOODS_SPLITS

    env = TextWorldEnv(challenge="tw-cooking", games_per_split=2, cache_dir=tw_cache)
    seen = {}
    for split in ("train", "test"):
        metadata = json.loads(env.game_file(split, 0).with_suffix(".json").read_text())["metadata"]
        assert metadata["settings"]["split"] == split and f"tw-cooking-{split}-" in metadata["uuid"]
        seen[split] = [(food, (cooking, cutting)) for food, cooking, cutting in metadata["ingredients"]]
        assert seen[split]
    train_pairs = {(food, prep) for food, preps in FOOD_PREPARATIONS_SPLITS["train"].items() for prep in preps}
    assert all(pair in train_pairs for pair in seen["train"]), seen["train"]
    for food, prep in seen["test"]:
        assert (food, prep) not in train_pairs
        assert food in FOODS_SPLITS["test"] or prep in FOOD_PREPARATIONS_SPLITS["test"][food], (food, prep)


def test_concurrent_generation_is_locked_and_cached(tw_cache, monkeypatch):
    calls = []
    real = tw.generate_game

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tw, "generate_game", counting)
    settings = challenge_settings("custom", {"quest_length": 2})
    paths: list = []
    threads = [
        threading.Thread(target=lambda: paths.append(ensure_game(tw_cache, "custom", settings, "train", 7)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(paths)) == 1
    assert paths[0].exists() and paths[0].with_suffix(".json").exists()
    assert ensure_game(tw_cache, "custom", settings, "train", 7) == paths[0] and len(calls) == 1


def test_settings_are_validated_by_name():
    with pytest.raises(ValueError, match="recipes"):
        TextWorldEnv(settings={"recipes": 2})
    with pytest.raises(ValueError, match="tw-nonsense"):
        TextWorldEnv(challenge="tw-nonsense")
    with pytest.raises(ValueError, match="level"):
        TextWorldEnv(challenge="tw-coin_collector")
    with pytest.raises(ValueError, match="task_id 5"):
        TextWorldEnv(games_per_split=2).game_file("train", 5)
    assert challenge_settings("tw-cooking", {"go": 6})["go"] == 6


def test_clean_feedback_strips_title_art_and_prompts():
    raw = "\n\n   ________  __\n  |  \\$$  |\n\nYou are hungry!\n\n\n\n-= Kitchen =-\nA room.\n\n>   -= Kitchen =-0/1"
    assert clean_feedback(raw) == "You are hungry!\n\n-= Kitchen =-\nA room."


@pytest.mark.slow
def test_walkthrough_wins_twenty_generated_games(tw_cache):
    """10 harder cooking games (2 ingredients, 6 rooms, cook and cut) and 10 larger custom quests."""
    games = [("tw-cooking", HARD_COOKING, split, i) for split in ("train", "test") for i in range(5)]
    games += [("custom", BIG_CUSTOM, split, i) for split in ("train", "test") for i in range(5)]
    for challenge, settings, split, task_id in games:
        env = TextWorldEnv(challenge=challenge, settings=settings, cache_dir=tw_cache, games_per_split=5)
        try:
            total, terminated, info, _ = play_expert(env, {"split": split, "task_id": task_id})
            assert terminated and info["won"], (challenge, split, task_id)
            assert total == pytest.approx(1.0)
        finally:
            env.close()
