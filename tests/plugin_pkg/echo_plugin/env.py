"""EchoEnv: repeats the action back; saying the secret word wins."""

from __future__ import annotations

import string

import gymnasium as gym
from gymnasium import spaces


class EchoEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, secret: str = "finish", max_steps: int = 10) -> None:
        charset = string.printable
        self.observation_space = spaces.Text(max_length=4096, min_length=0, charset=charset)
        self.action_space = spaces.Text(max_length=256, min_length=0, charset=charset)
        self.secret = secret
        self.max_steps = max_steps
        self._steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._steps = 0
        return "Say something.", {"task": f"say {self.secret}", "admissible_actions": [self.secret]}

    def step(self, action):
        self._steps += 1
        text = "".join(c for c in str(action) if c in string.printable)[:4000]
        won = text.strip() == self.secret
        info = {"task": f"say {self.secret}", "admissible_actions": [self.secret], "won": won}
        return f"You said: {text}", float(won), won, self._steps >= self.max_steps and not won, info
