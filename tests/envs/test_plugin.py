"""A third-party package plugs an env in through the ``agentropy.envs`` entry-point group.

The fixture builds and installs ``tests/plugin_pkg`` (its own ``pyproject.toml``) into a
temporary folder with pip -- offline, no build isolation, no dependencies -- and puts that
folder on ``sys.path``; nothing is installed into the interpreter's site-packages, and the
source tree is copied first so the build leaves no ``build/`` or ``*.egg-info`` behind.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest

from agentropy.envs.registry import known_env_ids, make_env

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugin_pkg"
PLUGIN_ID = "echo_plugin/Echo-v0"


@pytest.fixture(scope="module")
def echo_plugin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    src = shutil.copytree(PLUGIN_SRC, tmp / "src")
    target = tmp / "site"
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--disable-pip-version-check",
        "--no-build-isolation", "--no-deps", "--no-index", "--target", str(target), str(src),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip install of the test plugin failed:\n{done.stdout}\n{done.stderr}"
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        gym.registry.pop(PLUGIN_ID, None)
        for name in [m for m in sys.modules if m == "echo_plugin" or m.startswith("echo_plugin.")]:
            del sys.modules[name]
        importlib.invalidate_caches()


def test_plugin_env_is_listed_made_and_stepped_by_id(echo_plugin):
    assert (echo_plugin / "echo_plugin" / "env.py").exists()
    assert PLUGIN_ID in known_env_ids()
    env = make_env(PLUGIN_ID, secret="open sesame")
    obs, info = env.reset(seed=0)
    assert obs == "Say something." and info["task"] == "say open sesame"
    obs, reward, terminated, truncated, _ = env.step("hello")
    assert (obs, reward, terminated, truncated) == ("You said: hello", 0.0, False, False)
    obs, reward, terminated, _, info = env.step("open sesame")
    assert reward == 1.0 and terminated and info["won"]
    assert type(env.unwrapped).__module__ == "echo_plugin.env"


def test_plugin_env_passes_gymnasium_checks(echo_plugin):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env only warns (bad observation, reward, ...)
        check_env(make_env(PLUGIN_ID).unwrapped, skip_render_check=True)
