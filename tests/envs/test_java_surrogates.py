"""A lone surrogate in an action must not cross the JVM bridge: before, py4j failed to encode it,
the episode was truncated as a simulator crash and the JVM restarted."""

from __future__ import annotations

import shutil

import pytest

pytestmark = [pytest.mark.java, pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime")]

SURROGATE_ACTIONS = ["look\ud800around", "\udfff", "open \ud83d door"]


def _no_crash(env, info, truncated):
    assert truncated is False
    assert not info.get("jvm_restarted") and info.get("truncation_reason") is None
    assert info["invalid_action"] is True


def test_scienceworld_takes_lone_surrogates():
    pytest.importorskip("scienceworld")
    from agentropy.envs.scienceworld import ScienceWorldEnv

    env = ScienceWorldEnv(task_name="find-living-thing", max_steps=60)
    try:
        env.reset(options={"task_id": 0})
        pid = env._sim.process.pid
        for action in SURROGATE_ACTIONS:
            obs, reward, terminated, truncated, info = env.step(action)
            _no_crash(env, info, truncated)
            assert env.observation_space.contains(obs) and not terminated
        assert env._sim.process.pid == pid  # the same JVM
    finally:
        env.close()


def test_textworld_express_takes_lone_surrogates():
    pytest.importorskip("textworld_express")
    from agentropy.envs.textworld_express import CRASH_OBSERVATION, TextWorldExpressEnv

    env = TextWorldExpressEnv()
    try:
        env.reset(seed=0)
        for action in SURROGATE_ACTIONS:
            obs, reward, terminated, truncated, info = env.step(action)
            assert obs != CRASH_OBSERVATION
            _no_crash(env, info, truncated)
    finally:
        env.close()
