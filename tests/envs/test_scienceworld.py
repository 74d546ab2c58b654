"""The real ScienceWorld simulator behind the env contract: gold paths win, a dead JVM is survived.

Every test that starts the simulator is marked ``java``; they share one env (one JVM).
The pure helpers (action filtering, ambiguity prompts, the missing-Java error) need no JVM.
"""

from __future__ import annotations

import shutil
import warnings

import psutil
import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("scienceworld", reason="ScienceWorld-v0 needs the 'sciworld' (or 'envs') extra")

from agentropy.envs.base import INFO_KEYS, fork
from agentropy.envs.scienceworld import (
    CRASH_OBSERVATION,
    JavaNotFoundError,
    ScienceWorldEnv,
    ambiguity_choices,
    filter_actions,
    find_java,
    split_action,
)

#: Five tasks from five topics whose gold paths are short (6-24 actions).
GOLD_TASKS = ["lifespan-longest-lived", "find-living-thing", "power-component", "use-thermometer", "chemistry-mix"]


@pytest.fixture(scope="module")
def env():
    env = ScienceWorldEnv(task_name="find-living-thing", max_steps=60)
    yield env
    env.close()


def java_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name().startswith("java")]


@pytest.mark.java
@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime")
class TestSimulator:
    def test_passes_gymnasium_env_checker(self, env):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # check_env only warns (bad observation, reward, ...)
            check_env(env, skip_render_check=True)
        obs, info = env.reset(seed=0)
        assert set(INFO_KEYS) <= set(info)
        assert info["task_name"] == "find-living-thing"
        assert obs.endswith(info["task"]) and "This room is called" in obs
        assert 0 < len(info["admissible_actions"]) <= 50
        assert info["expert_action"] is not None

    def test_same_seed_same_variation_and_observations(self, env):
        actions = ["look around", "open door to kitchen", "go to kitchen", "pick up the moon"]
        runs = []
        for _ in range(2):
            obs, info = env.reset(seed=5, options={"split": "test"})
            trace = [(obs, info)] + [env.step(a) for a in actions]
            runs.append(trace)
        assert runs[0] == runs[1]
        assert runs[0][0][1]["variation"] in env.variations("find-living-thing", "test")
        _, obs, info = fork(env, 5, {"split": "test"}, actions[:3])
        assert (obs, info) == (runs[0][3][0], runs[0][3][4])

    def test_splits_are_the_simulators_and_disjoint(self, env):
        train, dev, test = (set(env.variations("find-living-thing", s)) for s in ("train", "dev", "test"))
        assert train and dev and test
        assert not (train & dev or train & test or dev & test)
        _, info = env.reset(options={"split": "dev", "task_id": 0})
        assert info["variation"] == min(dev)

    @pytest.mark.parametrize("task_name", GOLD_TASKS)
    def test_gold_path_through_the_wrapper_wins(self, env, task_name):
        obs, info = env.reset(options={"task_name": task_name, "split": "train", "task_id": 0})
        total, terminated, truncated, steps = 0.0, False, False, 0
        while not (terminated or truncated):
            action = info["expert_action"]
            assert action is not None, f"{task_name}: gold path ended at step {steps} without a win"
            obs, reward, terminated, truncated, info = env.step(action)
            assert -1.0 <= reward <= 1.0
            total += reward
            steps += 1
        assert terminated and info["won"] and info["score"] == 100
        assert total == pytest.approx(1.0)  # score deltas scaled to [0, 1] sum to the final score

    def test_bad_actions_never_raise_and_are_flagged(self, env):
        env.reset(options={"task_id": 0})
        for action in ["", "xyzzy", "look around\nopen door", "☃ ♞ 日本", "x" * 5000, "7"]:
            obs, reward, terminated, truncated, info = env.step(action)
            assert env.observation_space.contains(obs)
            assert info["invalid_action"] is True, action
            assert reward == 0.0 and not terminated
        assert info["expert_action"] is None  # off the gold path now

    def test_max_steps_truncates(self, env):
        assert ScienceWorldEnv().max_steps == 30  # the default; constructing starts no JVM
        env.max_steps = 2
        try:
            env.reset(options={"task_id": 0})
            assert env.step("look around")[3] is False
            _, _, terminated, truncated, info = env.step("look around")
            assert truncated and not terminated and info["truncation_reason"] == "max_steps"
        finally:
            env.max_steps = 60

    def test_killed_jvm_truncates_episode_and_restarts(self, env):
        env.reset(options={"task_id": 0})
        env.step("look around")
        pid = env.simulator_pid
        dead = env._sim.process
        [java] = [p for p in java_children() if p.pid == pid]
        java.kill()
        java.wait(timeout=10)
        obs, reward, terminated, truncated, info = env.step("open door to kitchen")
        assert obs == CRASH_OBSERVATION and reward == 0.0
        assert dead.stdin.closed and dead.returncode is not None  # pipe released, process reaped
        assert truncated and not terminated and info["truncation_reason"] == "simulator_crashed"
        assert env.simulator_pid != pid and psutil.pid_exists(env.simulator_pid)
        assert env.step("look around")[4]["truncation_reason"] == "simulator_crashed"  # until reset
        obs, info = env.reset(options={"task_id": 0})
        _, _, _, truncated, info = env.step(info["expert_action"])
        assert not truncated and info["invalid_action"] is False

    def test_unknown_options_and_tasks_are_named(self, env):
        with pytest.raises(ValueError, match="task_nam"):
            env.reset(options={"task_nam": "boil"})
        with pytest.raises(ValueError, match="boil-the-ocean"):
            env.reset(options={"task_name": "boil-the-ocean"})
        with pytest.raises(ValueError, match="task_id 9999"):
            env.reset(options={"task_id": 9999})


def test_missing_java_is_named_with_the_fix(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(JavaNotFoundError, match="Java runtime.*apt-get install -y default-jre-headless"):
        find_java()
    with pytest.raises(JavaNotFoundError):
        ScienceWorldEnv()


def test_filter_actions_drops_nonsense_and_caps_fairly():
    valid = [
        "look around", "inventory", "reset task", "mix hallway", "go to kitchen", "open door to kitchen",
        "focus on door to kitchen", "connect air to apple", "connect apple to bowl", "look at agent",
        "pick up apple", "pick up bowl", "eat apple", "move apple to bowl", "move bowl to apple",
        "look at apple", "look at bowl",
    ]
    everything = filter_actions(valid, "In your inventory, you see:\n\ta bowl\n", electrical=False, limit=None)
    assert everything == sorted([
        "look around", "inventory", "go to kitchen", "open door to kitchen", "pick up apple", "pick up bowl",
        "eat apple", "move apple to bowl", "move bowl to apple", "look at apple", "look at bowl",
    ])
    # limit 7: both object-free actions, then one-object verbs in turn (eat, go to, look at, open,
    # pick up), alphabetical inside a verb; two-object actions do not fit.
    capped = filter_actions(valid, "", electrical=False, limit=7)
    assert capped == sorted(["look around", "inventory", "eat apple", "go to kitchen", "look at apple",
                             "open door to kitchen", "pick up apple"])
    # the bowl is held, so "move bowl to apple" ranks before "move apple to bowl"
    held = filter_actions(valid, "\ta bowl", electrical=False, limit=10)
    assert "move bowl to apple" in held and "move apple to bowl" not in held
    assert "connect apple to bowl" in filter_actions(valid, "", electrical=True, limit=None)


def test_split_action_and_ambiguity_prompt():
    assert split_action("move apple in bowl to counter") == ("move", ("apple in bowl", "counter"))
    assert split_action("pour cup into pot") == ("pour", ("cup", "pot"))
    assert split_action("focus on red box") == ("focus on", ("red box",))
    assert split_action("wait1") == ("wait1", ())
    prompt = ("Ambiguous request: Please enter the number for the action you intended (or blank to cancel):\n"
              "0:\tmove pea seed (in seed jar) to flower pot 1\n1:\tmove pea seed (in pea plant) to flower pot 1\n")
    assert ambiguity_choices(prompt) == ["0", "1"]
    assert ambiguity_choices("You move to the kitchen.") == []
