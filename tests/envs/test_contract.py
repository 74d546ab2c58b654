"""Every registered agentropy env follows the contract; the registry finds envs three ways."""

from __future__ import annotations

import importlib.util
import shutil
import warnings

import pytest
from gymnasium.utils.env_checker import check_env

from agentropy.envs.base import INFO_KEYS
from agentropy.envs.household.env import HouseholdEnv
from agentropy.envs.registry import AGENTROPY_ENVS, NAMESPACE, known_env_ids, make_env

#: Envs that start a Java simulator.
JAVA_ENVS = {"ScienceWorld-v0", "TextWorldExpress-v0"}
#: Envs whose resets take seconds (ALFWorld's engine re-plans each reset).
SLOW_ENVS = {"ALFWorld-v0"}


def _params():
    for name in AGENTROPY_ENVS:
        marks = [pytest.mark.java] if name in JAVA_ENVS else []
        marks += [pytest.mark.slow] if name in SLOW_ENVS else []
        yield pytest.param(name, marks=marks, id=name)


def make_or_skip(name: str):
    """Make ``agentropy/<name>``, or skip when its module or optional dependency is absent."""
    module = AGENTROPY_ENVS[name].split(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.skip(f"{module} does not exist yet (env {name} not implemented in this checkout)")
    if name in JAVA_ENVS and shutil.which("java") is None:
        pytest.skip(f"{name} needs a Java runtime and none is on PATH")
    try:
        return make_env(f"{NAMESPACE}/{name}")
    except ModuleNotFoundError as exc:
        missing = getattr(exc.__cause__, "name", None) or exc.name or ""
        if missing.split(".")[0] == "agentropy":
            raise  # a broken import inside agentropy is a bug, not a missing extra
        pytest.skip(f"{name}: optional dependency {missing!r} is not installed ({exc})")


@pytest.mark.parametrize("name", _params())
def test_registered_env_passes_gymnasium_env_checker(name):
    env = make_or_skip(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # check_env only warns (bad observation, reward, ...)
            check_env(env.unwrapped)
        obs, info = env.reset(seed=0)
        assert set(INFO_KEYS) <= set(info), f"{name}: info lacks {set(INFO_KEYS) - set(info)}"
        _, _, _, _, info = env.step("")  # an empty action is bad input, never an exception
        assert set(INFO_KEYS) <= set(info)
        assert info["invalid_action"] is True
    finally:
        env.close()


def test_household_env_checker_raises_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env only warns (bad observation, reward, ...)
        check_env(make_env(f"{NAMESPACE}/Household-v0").unwrapped)


@pytest.mark.parametrize(
    ("flaw", "message"),
    [("step observation outside the space", "not within the observation space"), ("infinite reward", "inf")],
)
def test_env_checker_with_warnings_as_errors_fails_on_a_flawed_env(flaw, message):
    """The pattern the check_env tests use can fail: a Household env whose step observation is not a
    string (outside its Text space), or whose step reward is infinite, passes a plain check_env
    with a warning only; the warnings-as-errors filter turns that into a failure. Gymnasium's
    logger must also be at WARN or below, else check_env's warnings are never emitted."""
    import gymnasium

    class Flawed(HouseholdEnv):
        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            if flaw == "step observation outside the space":
                obs = 123
            else:
                reward = float("inf")
            return obs, reward, terminated, truncated, info

    assert gymnasium.logger.min_level <= gymnasium.logger.WARN
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(Flawed(), skip_render_check=True)  # no exception: a warning only
    assert any(message in str(w.message) for w in caught)
    with pytest.raises(UserWarning, match=message):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(Flawed(), skip_render_check=True)


def test_agentropy_ids_are_registered():
    ids = known_env_ids()
    for name in AGENTROPY_ENVS:
        assert f"{NAMESPACE}/{name}" in ids


def test_wrong_id_raises_value_error_listing_known_ids():
    with pytest.raises(ValueError) as excinfo:
        make_env("agentropy/Houshold-v0")
    message = str(excinfo.value)
    assert "agentropy/Houshold-v0" in message
    for name in AGENTROPY_ENVS:
        assert f"{NAMESPACE}/{name}" in message


def test_module_class_path_makes_an_unregistered_class_with_kwargs():
    env = make_env("agentropy.envs.household.env:HouseholdEnv", max_steps=7, task_types=["cool"])
    assert type(env) is HouseholdEnv and env.max_steps == 7
    obs, info = env.reset(seed=1)
    assert info["task_type"] == "pick_cool_then_place_in_recep"
    assert env.step(info["expert_action"])[4]["invalid_action"] is False


@pytest.mark.parametrize("path", ["agentropy.envs.household.env:NoSuchEnv", "agentropy.no_such_module:Env"])
def test_bad_module_class_path_raises_value_error(path):
    with pytest.raises(ValueError, match="agentropy"):
        make_env(path)


def test_gymnasium_id_forwards_kwargs():
    env = make_env(f"{NAMESPACE}/Household-v0", max_steps=3)
    assert env.unwrapped.max_steps == 3
    env.reset(seed=0)
    assert [env.step("dance")[3] for _ in range(3)] == [False, False, True]


def test_missing_simulator_package_names_the_extra():
    from agentropy.envs.base import require_packages

    require_packages("X-v0", "envs", "json")  # present: no error
    with pytest.raises(ModuleNotFoundError, match=r"X-v0 needs the package 'no_such_sim': pip install 'agentropy\[envs\]'") as exc:
        require_packages("X-v0", "envs", "json", "no_such_sim")
    assert exc.value.name == "no_such_sim"
