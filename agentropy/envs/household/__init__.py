"""Household: a fast, pure-Python, procedurally generated ALFWorld-like environment.

``agentropy/Household-v0``; see :mod:`agentropy.envs.household.env` for the contract, the
train/test split and the reward.
"""

from agentropy.envs.household.env import HouseholdEnv

__all__ = ["HouseholdEnv"]
