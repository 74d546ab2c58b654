"""``agentropy/TextWorldExpress-v0``: the TextWorldExpress games behind agentropy's env contract.

TextWorldExpress (``pip install textworld-express``; a Java simulator driven through py4j)
reimplements eight text games: CookingWorld (``cookingworld``), TextWorld Commonsense
(``twc``), Coin Collector (``coin``), MapReader (``mapreader``), Arithmetic, Sorting, Simon Says
(``simonsays``) and Pecking Order (``peckingorder``). Each game has train / dev / test folds of
seeds (train 0-999, dev 10000-10999, test 20000-20999 in version 1.1) and generation
parameters (``game_params``, e.g. ``"numLocations=5,includeDoors=0"``).

``reset(seed, options)``: ``options`` may name ``game``, ``game_params``, ``split``
(``train`` / ``dev`` / ``test``) and ``task_id``; the game seed is the fold's seed number
``task_id`` if given, else ``seed`` (modulo the fold size), else a draw from the env's generator.

``info``: ``task`` (the task description), ``admissible_actions`` (the simulator's valid
actions), ``won``, ``expert_action`` (the next action of the gold path while the agent has
followed it, None once it has left it), ``invalid_action`` (the action was not among the valid
ones; the simulator's own answer is the observation), plus ``score``, ``game``, ``game_seed``.
Reward is the simulator's score change. The episode terminates on task success or failure;
step limits belong to a wrapper.

If the JVM dies mid-episode, the env starts a new one and returns :data:`CRASH_OBSERVATION`
with ``truncated=True`` and ``info["jvm_restarted"] = True``; the next reset plays on.
"""

from __future__ import annotations

import contextlib
from typing import Any

import gymnasium as gym

from agentropy.envs.base import base_info, clean_text, require_packages, text_space
from agentropy.envs.jvm import reap_jvm

GAMES = ("cookingworld", "twc", "coin", "mapreader", "arithmetic", "sorting", "simonsays", "peckingorder")
SPLITS = ("train", "dev", "test")

#: The observation of the step during which the JVM died.
CRASH_OBSERVATION = "The TextWorldExpress simulator stopped unexpectedly; this episode is over."

#: The simulator's own step limit; set out of reach so that time limits live in one wrapper.
_NO_LIMIT = 10**9


def _jvm_errors() -> tuple[type[BaseException], ...]:
    from py4j.protocol import Py4JError

    return (Py4JError, ConnectionError, EOFError, OSError)


class TextWorldExpressEnv(gym.Env[str, str]):
    """One TextWorldExpress simulator (one JVM) as a Gymnasium env; see the module docstring."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, game: str = "cookingworld", game_params: str = "", split: str = "train",
                 render_mode: str | None = None) -> None:
        """
        Args:
            game: default game, one of :data:`GAMES`.
            game_params: default generation parameters, ``"name=value,name=value"``.
            split: default fold: ``train``, ``dev`` or ``test``.
        """
        require_packages("TextWorldExpress-v0", "twx", "textworld_express")
        self._check(game, split)
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.game = game
        self.game_params = game_params
        self.split = split
        self.render_mode = render_mode
        self.observation_space = text_space()
        self.action_space = text_space(max_length=512)
        self._sim: Any = None
        self._seeds: dict[tuple[str, str, str], list[int]] = {}
        self._loaded: tuple[str, str] | None = None
        self._gold: list[str] = []
        self._on_gold = False
        self._steps = 0
        self._infos: dict[str, Any] = {}
        self._obs = ""
        self._game_seed = -1
        self.jvm_restarts = 0

    @staticmethod
    def _check(game: str, split: str) -> None:
        if game not in GAMES:
            raise ValueError(f"game must be one of {GAMES}, got {game!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    # ---- the simulator ---------------------------------------------------------------------
    def _start(self) -> None:
        from textworld_express import TextWorldExpressEnv as Simulator

        self._sim = Simulator(envStepLimit=_NO_LIMIT)
        self._loaded = None

    def _restart(self) -> None:
        """Drop a dead simulator without talking to its JVM, and start a new one.

        The package's own ``close`` asks the JVM to shut down, and py4j retries that forever
        (logging each failure) when the JVM is gone, so the old gateway is closed locally.
        """
        old, self._sim = self._sim, None
        gateway = old._gateway
        reap_jvm(gateway.java_process, kill=True)
        with contextlib.suppress(Exception):
            gateway._gateway_client.close()
            gateway.shutdown_callback_server()
        gateway._gateway_client.is_connected = False  # no more calls (object finalizers) to it
        old.close = lambda: None  # its __del__ would try the JVM again
        self.jvm_restarts += 1
        self._start()

    def _load(self, game: str, params: str) -> None:
        if self._loaded != (game, params):
            try:
                self._sim.load(game, params)
            except ValueError as exc:
                raise ValueError(f"game_params {params!r} rejected for game {game!r}: {exc}") from exc
            self._loaded = (game, params)

    def fold_seeds(self, game: str | None = None, split: str | None = None, game_params: str | None = None) -> list[int]:
        """The seeds of a game's fold, as the package defines them."""
        game, split = game or self.game, split or self.split
        params = self.game_params if game_params is None else game_params
        self._check(game, split)
        key = (game, params, split)
        if key not in self._seeds:
            if self._sim is None:
                self._start()
            self._load(game, params)
            getter = {"train": self._sim.getValidSeedsTrain, "dev": self._sim.getValidSeedsDev,
                      "test": self._sim.getValidSeedsTest}[split]
            self._seeds[key] = sorted(int(s) for s in getter())
        return self._seeds[key]

    # ---- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        game = options.get("game", self.game)
        split = options.get("split", self.split)
        params = options.get("game_params", self.game_params)
        self._check(game, split)
        if self._sim is None:
            self._start()
        try:
            seeds = self.fold_seeds(game, split, params)
        except _jvm_errors():
            self._restart()
            seeds = self.fold_seeds(game, split, params)
        if options.get("task_id") is not None:
            index = int(options["task_id"]) % len(seeds)
        elif seed is not None:
            index = seed % len(seeds)
        else:
            index = int(self.np_random.integers(len(seeds)))
        self._game_seed = seeds[index]
        for attempt in range(2):
            try:
                self._load(game, params)
                obs, infos = self._sim.reset(seed=self._game_seed, gameFold=split, generateGoldPath=True)
                self._gold = [str(a) for a in self._sim.getGoldActionSequence()]
                break
            except _jvm_errors():
                if attempt:
                    raise
                self._restart()
        self._game = game
        self._on_gold = True
        self._steps = 0
        self._infos = infos
        self._obs = clean_text(obs)
        return self._obs, self._info(invalid=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._sim is None or not self._infos:
            raise RuntimeError("call reset() before step()")
        # clean_text: a lone surrogate or other foreign char cannot cross the JVM bridge (py4j
        # fails to encode it, and the episode would end as a simulator crash); it becomes "?".
        command = " ".join(clean_text(str(action)).split())
        invalid = command not in self._infos["validActions"]
        if self._on_gold and not (self._steps < len(self._gold) and command == self._gold[self._steps]):
            self._on_gold = False
        try:
            obs, reward, _, infos = self._sim.step(command)
        except _jvm_errors():
            self._restart()
            self._infos = {}
            info = base_info(task="", jvm_restarted=True, game=self._game, game_seed=self._game_seed)
            self._obs = CRASH_OBSERVATION
            return self._obs, 0.0, False, True, info
        self._steps += 1
        self._infos = infos
        self._obs = clean_text(obs)
        terminated = bool(infos["tasksuccess"] or infos["taskfailure"])
        return self._obs, float(reward), terminated, False, self._info(invalid)

    def render(self) -> str | None:
        return self._obs if self.render_mode == "ansi" else None

    def close(self) -> None:
        if self._sim is not None:
            try:
                self._sim.close()
            except Exception:  # the JVM may already be gone at interpreter exit
                pass
            reap_jvm(self._sim._gateway.java_process)
            self._sim = None
        super().close()

    def _info(self, invalid: bool) -> dict[str, Any]:
        infos = self._infos
        over = infos["tasksuccess"] or infos["taskfailure"]  # some gold paths run on past the win
        expert = self._gold[self._steps] if self._on_gold and self._steps < len(self._gold) and not over else None
        return base_info(
            task=infos.get("taskDescription", ""),
            admissible_actions=[str(a) for a in infos["validActions"]],
            won=bool(infos["tasksuccess"]),
            expert_action=expert,
            invalid_action=invalid,
            score=float(infos["score"]),
            game=self._game,
            game_seed=self._game_seed,
            jvm_restarted=False,
        )
