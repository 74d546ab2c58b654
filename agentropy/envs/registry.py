"""Finding environments: Gymnasium ids, ``package.module:Class`` paths and plugins.

A config names an env in one of three ways, and :func:`make_env` accepts all of them:

1. a Gymnasium id (``agentropy/Household-v0``, or any id another package registered);
2. ``package.module:Class`` for an unregistered ``gymnasium.Env`` subclass;
3. an id that a third-party package declares in the ``agentropy.envs`` entry-point group
   (``name = "pkg.module:Class"``); it is registered with Gymnasium on first use.

agentropy's own envs are registered under ``agentropy/<Name>-v0`` when this module is
imported. Registration is lazy (entry points are strings), so envs whose optional
dependencies are missing are listed but only fail, with a clear message, when made.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

import gymnasium as gym

NAMESPACE = "agentropy"

#: agentropy's envs: name -> entry point. Optional dependency (pip extra) in the comment.
AGENTROPY_ENVS: dict[str, str] = {
    "Household-v0": "agentropy.envs.household.env:HouseholdEnv",
    "Search-v0": "agentropy.envs.search.env:SearchEnv",
    "ScienceWorld-v0": "agentropy.envs.scienceworld:ScienceWorldEnv",  # extra: sciworld
    "TextWorld-v0": "agentropy.envs.textworld_env:TextWorldEnv",
    "TextWorldExpress-v0": "agentropy.envs.textworld_express:TextWorldExpressEnv",  # extra: twx
    "ALFWorld-v0": "agentropy.envs.alfworld.env:ALFWorldEnv",  # extra: alfworld
}

PLUGIN_GROUP = "agentropy.envs"


def register_envs() -> None:
    """Register agentropy's own envs with Gymnasium (idempotent)."""
    for name, entry_point in AGENTROPY_ENVS.items():
        env_id = f"{NAMESPACE}/{name}"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=True, order_enforce=False)


def _plugin_entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}


def register_plugins() -> list[str]:
    """Register every env declared in the ``agentropy.envs`` entry-point group; return ids."""
    ids = []
    for name, value in _plugin_entry_points().items():
        if name not in gym.registry:
            gym.register(id=name, entry_point=value, disable_env_checker=True)
        ids.append(name)
    return ids


def known_env_ids() -> list[str]:
    """Every id :func:`make_env` can make: Gymnasium's registry plus declared plugins."""
    register_envs()
    register_plugins()
    return sorted(gym.registry.keys())


def _load_class(path: str) -> type:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for env {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (env {path!r})") from exc


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Make an env by Gymnasium id, plugin id or ``package.module:Class``.

    agentropy's own envs are registered without Gymnasium's order-enforcing and passive
    checker wrappers: tests check them instead, and the wrappers cost time on every step.
    """
    register_envs()
    if ":" in name and "/" not in name.split(":", 1)[0]:
        cls = _load_class(name)
        return cls(**kwargs)
    if name not in gym.registry:
        register_plugins()
    if name not in gym.registry:
        known = "\n  ".join(known_env_ids())
        raise ValueError(
            f"unknown env id {name!r}. Known ids:\n  {known}\n"
            "or give a 'package.module:Class' path, or declare an 'agentropy.envs' entry point."
        )
    try:
        return gym.make(name, disable_env_checker=True, **kwargs)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"env {name!r} needs an optional dependency that is not installed ({exc.name}); "
            "see the README's 'Environments' table for the pip extra to install"
        ) from exc


register_envs()
