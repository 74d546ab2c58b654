"""The environment contract every agentropy env follows.

An agentropy environment is a plain ``gymnasium.Env[str, str]``:

* ``observation_space`` and ``action_space`` are :class:`gymnasium.spaces.Text` built by
  :func:`text_space`, so ``check_env`` can verify them;
* ``reset(seed, options)`` accepts ``options={"split": "train" | "test", "task_id": ...}``;
* ``info`` carries, where the env can know them, the keys in :data:`INFO_KEYS`;
* bad actions never raise: they return an explanatory observation and
  ``info["invalid_action"] = True``;
* the same seed, options and actions give the same observations, which is what lets
  :func:`fork` rebuild any env at any point of an episode by replaying its action prefix
  (AEPO's branching needs this). An env may offer faster ``get_state()`` / ``set_state()``.

Nothing in ``agentropy.envs`` imports torch or transformers.
"""

from __future__ import annotations

import importlib.util
import string
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from gymnasium import spaces

#: Keys an env puts in ``info`` where it can know them.
INFO_KEYS = ("task", "admissible_actions", "won", "expert_action", "invalid_action")

#: ALFWorld's answer to a command it cannot carry out.
NOTHING_HAPPENS = "Nothing happens."

#: Every character an observation or action may hold: printable ASCII plus a few
#: typographic characters the real simulators emit. Others are replaced by ``?``.
TEXT_CHARSET = frozenset(string.printable) | frozenset("°–—‘’“”…éèàçöüäßñ×÷±")

#: Upper bound on observation length, in characters.
MAX_TEXT_LENGTH = 1 << 16


def require_packages(env_id: str, extra: str, *modules: str) -> None:
    """Fail at construction, naming the pip extra, when an env's simulator package is missing
    (rather than with an ImportError deep inside the first reset)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"{env_id} needs the package {module!r}: pip install 'agentropy[{extra}]'", name=module
            )


def text_space(max_length: int = MAX_TEXT_LENGTH) -> spaces.Text:
    """A ``Text`` space that admits the empty string and every char of :data:`TEXT_CHARSET`."""
    return spaces.Text(max_length=max_length, min_length=0, charset="".join(sorted(TEXT_CHARSET)))


def clean_text(text: str, max_length: int = MAX_TEXT_LENGTH) -> str:
    """Make ``text`` a member of :func:`text_space`: replace foreign chars, cut to length.

    Real simulators occasionally emit characters outside the charset (tabs in ScienceWorld,
    curly quotes in TextWorld); an observation must still lie in the observation space.
    """
    if all(c in TEXT_CHARSET for c in text) and len(text) <= max_length:
        return text
    return "".join(c if c in TEXT_CHARSET else "?" for c in text)[:max_length]


def base_info(
    task: str = "",
    admissible_actions: Sequence[str] = (),
    won: bool = False,
    expert_action: str | None = None,
    invalid_action: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """An ``info`` dict with every contract key present, so consumers never guess."""
    return {
        "task": task,
        "admissible_actions": list(admissible_actions),
        "won": bool(won),
        "expert_action": expert_action,
        "invalid_action": bool(invalid_action),
        **extra,
    }


def fork(
    make: Callable[[], gym.Env] | gym.Env,
    seed: int | None,
    options: dict[str, Any] | None,
    actions: Sequence[str],
) -> tuple[gym.Env, str, dict[str, Any]]:
    """Rebuild an env at the point reached by ``actions`` after ``reset(seed, options)``.

    Works for any deterministic env: it resets a fresh env (``make`` is a factory) or the
    given env, then replays the action prefix. Returns ``(env, last_obs, last_info)``.
    An env whose replay ends an episode before the prefix is exhausted is a caller error.
    """
    env = make() if callable(make) and not isinstance(make, gym.Env) else make
    obs, info = env.reset(seed=seed, options=options)
    for i, action in enumerate(actions):
        obs, _, terminated, truncated, info = env.step(action)
        if (terminated or truncated) and i != len(actions) - 1:
            raise ValueError(f"episode ended at action {i} of a {len(actions)}-action prefix")
    return env, obs, info


def supports_state(env: gym.Env) -> bool:
    """Whether ``env`` (unwrapped) offers cheap ``get_state`` / ``set_state``."""
    inner = env.unwrapped
    return callable(getattr(inner, "get_state", None)) and callable(getattr(inner, "set_state", None))
