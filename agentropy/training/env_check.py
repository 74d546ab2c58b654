"""Resolving ``env.id`` at config-load time, with suggestions among agentropy's own ids.

An unknown id used to surface only after the tiny model was built, with Gymnasium's whole
registry (~95 unrelated ids) in the message. Here it is one line, found before any work.
"""

from __future__ import annotations

import difflib
import importlib


def env_id_problem(env_id: str) -> str | None:
    """``None`` if :func:`agentropy.envs.registry.make_env` can resolve ``env_id``; else why not."""
    from agentropy.envs import registry

    if not env_id:
        return "is empty"
    if ":" in env_id and "/" not in env_id.split(":", 1)[0]:
        module_name, _, attr = env_id.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return f"cannot import module {module_name!r} ({exc})"
        return None if hasattr(module, attr) else f"module {module_name!r} has no attribute {attr!r}"
    import gymnasium as gym

    registry.register_envs()
    if env_id in gym.registry:
        return None
    plugins = registry.register_plugins()
    if env_id in gym.registry:
        return None
    own = [f"{registry.NAMESPACE}/{name}" for name in registry.AGENTROPY_ENVS] + sorted(plugins)
    lowered = {i.lower(): i for i in own}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=2, cutoff=0.5)
    if not close:  # a bare name ("Household") or a wrong namespace ("agentropy/household")
        tail = env_id.rsplit("/", 1)[-1].lower()
        close = [k for k in lowered if tail and tail in k][:2]
    if close:
        return f"unknown env id {env_id!r}; did you mean {' or '.join(repr(lowered[c]) for c in close)}?"
    return f"unknown env id {env_id!r}; agentropy's envs are {', '.join(own)}"
