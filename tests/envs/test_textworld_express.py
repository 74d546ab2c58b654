"""agentropy/TextWorldExpress-v0: gold paths win all eight games, folds are disjoint, a dead JVM is survived.

Every test here starts the Java simulator, so the whole module is marked ``java``; the tests
share one env (one JVM).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("textworld_express")
if shutil.which("java") is None:
    pytest.skip("TextWorldExpress needs a Java runtime", allow_module_level=True)

from gymnasium.utils.env_checker import check_env  # noqa: E402

from agentropy.envs import make_env  # noqa: E402
from agentropy.envs.base import INFO_KEYS, fork  # noqa: E402
from agentropy.envs.textworld_express import CRASH_OBSERVATION, GAMES, SPLITS, TextWorldExpressEnv  # noqa: E402

pytestmark = pytest.mark.java

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "envs"


@pytest.fixture(scope="module")
def env():
    env = TextWorldExpressEnv()
    yield env
    env.close()


@pytest.mark.parametrize("game", GAMES)
def test_gold_path_wins(env, game):
    obs, info = env.reset(seed=2, options={"game": game})
    assert set(INFO_KEYS) <= set(info) and info["task"] and info["admissible_actions"]
    total, terminated, steps = 0.0, False, 0
    while not terminated and steps < 200:
        assert info["expert_action"] in info["admissible_actions"]
        obs, reward, terminated, truncated, info = env.step(info["expert_action"])
        total, steps = total + reward, steps + 1
        assert not info["invalid_action"] and not truncated
    assert terminated and info["won"] and info["score"] == pytest.approx(1.0)
    assert total == pytest.approx(1.0) and info["expert_action"] is None


def test_folds_are_disjoint_as_the_package_defines_them(env):
    for game in GAMES:
        folds = {split: set(env.fold_seeds(game, split)) for split in SPLITS}
        assert all(folds.values())
        assert not folds["train"] & folds["dev"] and not folds["train"] & folds["test"] and not folds["dev"] & folds["test"]
    for split in SPLITS:
        _, info = env.reset(seed=5, options={"game": "coin", "split": split})
        assert info["game_seed"] in env.fold_seeds("coin", split)


def test_options_choose_game_params_and_seed(env):
    _, a = env.reset(seed=7, options={"game": "coin", "game_params": "numLocations=3,includeDoors=0"})
    _, b = env.reset(options={"game": "coin", "game_params": "numLocations=3,includeDoors=0", "task_id": 7})
    assert a == b and a["game_seed"] == env.fold_seeds("coin", "train")[7]
    assert not any(action.startswith("open door") for action in a["admissible_actions"])
    with pytest.raises(ValueError, match="game_params"):
        env.reset(options={"game": "coin", "game_params": "noSuchParam=1"})
    with pytest.raises(ValueError, match="game"):
        env.reset(options={"game": "zork"})
    with pytest.raises(ValueError, match="split"):
        env.reset(options={"split": "valid"})


def test_bad_action_is_reported_and_leaves_the_gold_path(env):
    _, info = env.reset(seed=0, options={"game": "cookingworld"})
    obs, reward, terminated, truncated, info = env.step("juggle the fridge")
    assert info["invalid_action"] and obs and (reward, terminated, truncated) == (0.0, False, False)
    assert info["expert_action"] is None


def test_fork_replays_to_the_same_state(env):
    _, info = env.reset(seed=4, options={"game": "twc"})
    actions = []
    for _ in range(3):
        actions.append(info["expert_action"])
        obs, _, _, _, info = env.step(actions[-1])
    other = TextWorldExpressEnv(game="twc")
    try:
        _, forked_obs, forked_info = fork(other, 4, None, actions)
        assert forked_obs == obs and forked_info["admissible_actions"] == info["admissible_actions"]
    finally:
        other.close()


def test_dead_jvm_truncates_the_episode_and_is_restarted(env):
    env.reset(seed=1, options={"game": "coin"})
    dead = env._sim._gateway.java_process
    dead.kill()
    dead.wait(timeout=10)
    obs, reward, terminated, truncated, info = env.step("look around")
    assert obs == CRASH_OBSERVATION and truncated and not terminated and info["jvm_restarted"]
    assert dead.stdin.closed  # the dead JVM's pipe is released, not left to garbage collection
    restarts = env.jvm_restarts
    _, info = env.reset(seed=1, options={"game": "coin"})
    assert env.jvm_restarts == restarts and info["admissible_actions"]


def test_close_ends_the_jvm_and_releases_its_pipe():
    env = TextWorldExpressEnv()
    env.reset(seed=0, options={"game": "coin"})
    jvm = env._sim._gateway.java_process
    env.close()
    assert jvm.poll() is not None  # exited and reaped, not a zombie until Python exits
    assert jvm.stdin.closed


def test_passes_gymnasium_check_env():
    env = make_env("agentropy/TextWorldExpress-v0", game="arithmetic")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # check_env only warns (bad observation, reward, ...)
            check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()


@pytest.mark.slow
def test_config_trains_and_evaluates_through_the_trainer(tmp_path):
    torch = pytest.importorskip("torch")
    from agentropy.training.config import load_config
    from agentropy.training.trainer import train

    torch.set_num_threads(1)
    cfg = load_config(CONFIGS / "textworld_express.yaml", overrides=[
        f"run.root={tmp_path}", "run.name=twx", "run.tensorboard=false", "run.progress=false",
        "train.iterations=1", "sft.episodes=2", "sft.epochs=1", "eval.episodes=2",
        "rollout.tasks_per_batch=1", "rollout.group_size=2", "rollout.max_turns=3",
    ])
    result = train(cfg)
    assert result.iterations == 1 and (tmp_path / "twx").is_dir()
