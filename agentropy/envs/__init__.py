"""Gymnasium text environments and their registry. Importing this registers agentropy's envs."""

from agentropy.envs.registry import known_env_ids, make_env, register_envs

__all__ = ["known_env_ids", "make_env", "register_envs"]
