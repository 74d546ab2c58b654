"""ALFWorld's experts: the hand-coded one (fixed, deterministic) and the planner (time-boxed).

The hand-coded expert of ``alfworld`` 0.4.2 tracks what the agent holds from the text of the
last command: it drops the held object when that command contains ``put``, but ALFWorld's
grammar says ``move X to Y``. After the first placement it believes it still holds the object,
so pick-two tasks loop forever (this affects the official games too). :class:`HandcodedExpert`
shows the tracker every ``move ...`` command as ``put ...``, which fixes it, and gives the
expert its own random generator (it picks among equal objects at random), so the same game and
seed always give the same expert commands.

The planner expert runs fast-downward; on large kitchen games it can search for minutes with
gigabytes of memory, so :func:`planner_plan` runs it in a subprocess under a time limit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import textworld
from alfworld.agents.expert import handcoded_expert as _handcoded
from alfworld.agents.expert.handcoded_expert import HandCodedAgentFailed, HandCodedAgentTimeout
from alfworld.agents.expert.handcoded_expert_tw import HandCodedTWAgent

from agentropy.envs.alfworld.engine import make_textworld_env, set_planner_translation, set_translation_dir

#: ALFWorld's own step budget for its hand-coded expert (``AlfredExpert``).
EXPERT_MAX_STEPS = 200


@contextlib.contextmanager
def _expert_random(rng: random.Random) -> Iterator[None]:
    """Let the expert module's ``random.choice`` draw from ``rng`` for the duration of a call."""
    saved = _handcoded.random
    _handcoded.random = rng
    try:
        yield
    finally:
        _handcoded.random = saved


class HandcodedExpert:
    """ALFWorld's hand-coded expert for one episode, with the ``move`` -> ``put`` tracker fix.

    It needs the game's ``traj_data.json`` beside the game file, and TextWorld states that carry
    ``facts``. Like ALFWorld's ``AlfredExpert``, its first command is ``look`` and a command it
    proposes that is not admissible becomes ``look``.
    """

    def __init__(self, seed: int = 0, max_steps: int = EXPERT_MAX_STEPS) -> None:
        self.seed = seed
        self.max_steps = max_steps
        self._policy: Any = None
        self._rng = random.Random(seed)
        self.failed = False

    def reset(self, game_file: str | Path, intro: str) -> str:
        """Start an episode from the game's first feedback; return the first command (``look``)."""
        agent = HandCodedTWAgent(max_steps=self.max_steps)
        agent.reset(str(game_file))
        agent.observe(intro)
        self._policy = agent.policy
        self._rng = random.Random(self.seed)
        self.failed = False
        return "look"

    def act(self, state: dict[str, Any], last_command: str) -> str | None:
        """The expert's next command after ``last_command`` led to ``state``; None once it gave up."""
        if self.failed:
            return None
        admissible = state["admissible_commands"]
        tracked = "put" + last_command[len("move"):] if last_command.startswith("move ") else last_command
        with _expert_random(self._rng):
            try:
                action = self._policy.act(state, tracked)
            except (HandCodedAgentTimeout, HandCodedAgentFailed):
                self.failed = True
                return None
        if action == last_command or (last_command == "look" and action not in admissible):
            action = self._rng.choice(admissible)
        return action if action in admissible else "look"


@functools.lru_cache(maxsize=1)
def _validation_env() -> textworld.core.Wrapper:
    # One engine per process: each PddlEnv maps its own 34 MB copy of fast-downward.
    return make_textworld_env(facts=True)


def play_expert(game_file: str | Path, max_steps: int = 150, seed: int = 0) -> tuple[bool, list[str]]:
    """Play the hand-coded expert on a game; return (won, commands played)."""
    env = _validation_env()
    env.load(str(game_file))
    state = env.reset()
    expert = HandcodedExpert(seed=seed)
    action: str | None = expert.reset(game_file, state["feedback"])
    commands = []
    for _ in range(max_steps):
        state, _, _ = env.step(action)
        commands.append(action)
        if state["won"]:
            return True, commands
        action = expert.act(state, action)
        if action is None:
            break
    return False, commands


def _plan_in_this_process(game_file: str, commands: Sequence[str]) -> list[str]:
    set_planner_translation(True)
    env = make_textworld_env(facts=False)
    env.load(game_file)
    env.reset()
    for command in commands:
        env.step(command)
    inner = env.unwrapped
    return list(inner._pddl_state.replan(inner._entity_infos))


def planner_plan(game_file: str | Path, commands: Sequence[str] = (), timeout: float = 30.0,
                 translation_dir: str | Path | None = None) -> list[str] | None:
    """fast-downward's plan from the state that ``commands`` reach, or None past ``timeout`` s.

    Runs in a fresh Python process (the planner can hang on large games and cannot be
    interrupted in-process); an empty list means the planner found no plan. The subprocess
    reads and stores PDDL translations in ``translation_dir``.
    """
    args = [sys.executable, "-m", "agentropy.envs.alfworld.expert", str(game_file), json.dumps(list(commands))]
    if translation_dir is not None:
        args.append(str(translation_dir))
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"planner subprocess failed on {game_file}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # the planner subprocess: game file, JSON list of commands[, translation dir]
    if len(sys.argv) > 3:
        set_translation_dir(sys.argv[3])
    print(json.dumps(_plan_in_this_process(sys.argv[1], json.loads(sys.argv[2]))))
