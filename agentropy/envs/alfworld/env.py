"""``agentropy/ALFWorld-v0``: ALFWorld's own text engine behind agentropy's env contract.

Games come from one of three places, in this order of precedence:

* ``reset(options={"game_file": path})`` plays that game (generated or official);
* ``ALFWorldEnv(data_dir=...)`` plays ALFWorld's official game folders (``json_2.1.1`` style:
  ``<data_dir>/<split>/<task folder>/trial_*/game.tw-pddl``; split ``test`` reads
  ``valid_unseen``, and ``valid_seen`` / ``valid_unseen`` may be named directly);
* otherwise generated games (:mod:`.generator`): ``train`` games from ALFRED's training rooms,
  ``test`` games from its held-out rooms, the latter being the fixed eval set of
  :mod:`.evalset`. Each is generated once, validated by the expert, and cached on disk.

``reset(seed, options)`` picks game number ``options["task_id"]`` if given, else ``seed``
(modulo the pool size), else a draw from the env's generator; ``options["task_type"]``
restricts the pool to one of the six task types, ``options["split"]`` overrides the split.

The observation is ALFWorld's text (the first one starts with ``-= Welcome to TextWorld,
ALFRED! =-`` and ends with ``Your task is to: ...``); commands are ALFWorld's (``go to
cabinet 1``, ``take apple 1 from countertop 2``, ``move apple 1 to fridge 1``). A command that
is not admissible gets ALFWorld's "Nothing happens." and ``info["invalid_action"] = True``.
Reward is 1.0 on the step that reaches the goal, which also terminates the episode.

``info``: ``task``, ``task_type``, ``admissible_actions``, ``won``, ``expert_action`` (the
hand-coded expert's next command by default, ALFWorld's own default; ``expert="planner"`` asks
fast-downward in a time-boxed subprocess, which takes seconds and is redone whenever the agent
leaves the plan; ``expert=None`` turns it off and steps faster), ``invalid_action``,
``game_file``. The issue asked for the planner by default; it is not, because it can search for
minutes on kitchen games (on some kitchen pick_two games, over 10 minutes at 2 GB without a plan).

One env keeps one engine; the engine keeps the last games' PDDL translations in memory and
every translation on disk (``<cache_dir>/translations``), so a game is translated once per
machine and loading it again costs tens of milliseconds instead of about a second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from agentropy.envs.alfworld.engine import close_textworld_env, make_textworld_env, set_translation_dir
from agentropy.envs.alfworld.evalset import eval_set_entries, train_entries
from agentropy.envs.alfworld.expert import HandcodedExpert, planner_plan
from agentropy.envs.alfworld.generator import TASK_TYPES, default_cache_dir, ensure_game, translation_dir
from agentropy.envs.base import NOTHING_HAPPENS, base_info, clean_text, text_space

#: ALFWorld's train set size; the default number of generated train games (made on first use).
NUM_TRAIN_GAMES = 3553

#: Official-data split names for agentropy's split names.
OFFICIAL_SPLITS = {"train": "train", "test": "valid_unseen", "valid_seen": "valid_seen", "valid_unseen": "valid_unseen"}

EXPERTS = ("handcoded", "planner", None)


def official_game_files(data_dir: str | Path, split: str, task_types: Sequence[str]) -> list[Path]:
    """Solvable official games of a split, as ALFWorld's ``AlfredTWEnv`` collects them, sorted."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data_dir {str(root)!r} does not exist; point it at ALFWorld's json_2.1.1 folder "
            "(with train/, valid_seen/, valid_unseen/ inside), or leave it unset to use generated games"
        )
    if split not in OFFICIAL_SPLITS:
        raise ValueError(f"split must be one of {sorted(OFFICIAL_SPLITS)} with data_dir, got {split!r}")
    folder = root / OFFICIAL_SPLITS[split]
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir has no {OFFICIAL_SPLITS[split]!r} folder for split {split!r}: {folder}")
    games = []
    for traj in sorted(folder.rglob("traj_data.json")):
        game = traj.parent / "game.tw-pddl"
        if "movable" in str(traj.parent) or "Sliced" in str(traj.parent) or not game.exists():
            continue
        if json.loads(traj.read_text()).get("task_type") not in task_types:
            continue
        if json.loads(game.read_text()).get("solvable", False):
            games.append(game)
    if not games:
        raise FileNotFoundError(f"no solvable games of types {list(task_types)} under {folder}")
    return games


def _task_from_intro(intro: str) -> str:
    marker = "Your task is to: "
    return intro.split(marker, 1)[1].strip().rstrip(".") if marker in intro else ""


class ALFWorldEnv(gym.Env[str, str]):
    """ALFWorld (TextWorld-PDDL engine) on generated or official games; see the module docstring."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        split: str = "train",
        task_types: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        games: Sequence[str | Path] | None = None,
        num_train_games: int = NUM_TRAIN_GAMES,
        expert: str | None = "handcoded",
        planner_timeout: float = 30.0,
        render_mode: str | None = None,
    ) -> None:
        """
        Args:
            split: default split: ``train`` or ``test`` (generated games), or with ``data_dir``
                also ``valid_seen`` / ``valid_unseen``.
            task_types: the task types to draw from (default: all six).
            cache_dir: generated-game cache (default ``$AGENTROPY_CACHE/alfworld`` or
                ``~/.cache/agentropy/alfworld``).
            data_dir: ALFWorld's official ``json_2.1.1`` folder, used instead of generated games.
            games: an explicit list of game files to draw from instead of any split.
            num_train_games: size of the generated train pool (each made on first use).
            expert: ``"handcoded"`` (default), ``"planner"`` (slow) or None.
            planner_timeout: seconds the planner may take per step before ``expert_action`` is None.
        """
        types = tuple(task_types) if task_types else TASK_TYPES
        unknown = [t for t in types if t not in TASK_TYPES]
        if unknown:
            raise ValueError(f"task_types: unknown {unknown}; known: {list(TASK_TYPES)}")
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if num_train_games < 1:
            raise ValueError(f"num_train_games must be >= 1, got {num_train_games}")
        self.split = split
        self.task_types = types
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.data_dir = Path(data_dir).expanduser() if data_dir else None
        self.games = [Path(g) for g in games] if games else None
        self.num_train_games = num_train_games
        self.expert = expert
        self.planner_timeout = planner_timeout
        self.render_mode = render_mode
        if self.data_dir is not None:
            official_game_files(self.data_dir, split, types)  # fail now, with a clear message
        elif split not in ("train", "test") and not self.games:
            raise ValueError(f"split must be 'train' or 'test' for generated games, got {split!r}")

        set_translation_dir(translation_dir(self.cache_dir))
        self.observation_space = text_space()
        self.action_space = text_space(max_length=512)
        self._engine = make_textworld_env(facts=expert == "handcoded")
        self._loaded: Path | None = None
        self._handcoded = HandcodedExpert()
        self._official_cache: dict[tuple[str, tuple[str, ...]], list[Path]] = {}
        self._state: Any = None
        self._history: list[str] = []
        self._plan: list[str] = []
        self._expert_on = False
        self._task = ""
        self._task_type = ""
        self._last_obs = ""

    # ---- choosing a game -------------------------------------------------------------------
    def _pool(self, split: str, task_type: str | None) -> list[Any]:
        types = (task_type,) if task_type else self.task_types
        if self.games:
            return self.games
        if self.data_dir is not None:
            key = (split, types)
            if key not in self._official_cache:
                self._official_cache[key] = official_game_files(self.data_dir, split, types)
            return self._official_cache[key]
        # options["task_type"] selects a subset of the env's games, it does not make new ones
        if split == "test":
            return [e for e in eval_set_entries(self.task_types) if e[0] in types]
        if split == "train":
            return [e for e in train_entries(self.num_train_games, self.task_types) if e[0] in types]
        raise ValueError(f"options['split'] must be 'train' or 'test' for generated games, got {split!r}")

    def _choose_game(self, seed: int | None, options: dict[str, Any]) -> Path:
        if options.get("game_file"):
            path = Path(options["game_file"]).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"options['game_file'] {str(path)!r} does not exist")
            return path
        task_type = options.get("task_type")
        if task_type is not None and task_type not in TASK_TYPES:
            raise ValueError(f"options['task_type'] must be one of {list(TASK_TYPES)}, got {task_type!r}")
        split = options.get("split", self.split)
        pool = self._pool(split, task_type)
        if not pool:
            raise ValueError(f"options['task_type'] {task_type!r} is not among this env's task_types {list(self.task_types)}")
        if options.get("task_id") is not None:
            index = int(options["task_id"]) % len(pool)
        elif seed is not None:
            index = seed % len(pool)
        else:
            index = int(self.np_random.integers(len(pool)))
        entry = pool[index]
        if isinstance(entry, Path):
            return entry
        return ensure_game(self.cache_dir, split, entry[0], entry[1])

    # ---- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        path = self._choose_game(seed, dict(options or {}))
        if path != self._loaded:
            self._engine.load(str(path))
            self._loaded = path
        self._state = self._engine.reset()
        intro = self._state["feedback"]
        traj_file = path.parent / "traj_data.json"
        traj = json.loads(traj_file.read_text()) if traj_file.exists() else {}
        self._task = _task_from_intro(intro)
        self._task_type = traj.get("task_type", "")
        self._history = []
        self._plan = []
        self._expert_on = self.expert is not None and bool(traj)
        expert_action = None
        if self._expert_on and self.expert == "handcoded":
            self._handcoded = HandcodedExpert(seed=0)
            expert_action = self._handcoded.reset(path, intro)
        elif self._expert_on:
            expert_action = self._planner_action()
        self._last_obs = clean_text(intro)
        return self._last_obs, self._info(expert_action, invalid=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        command = " ".join(str(action).lower().split())
        invalid = command not in self._state["admissible_commands"]
        if invalid:
            command = command or "<empty>"
        self._state, _, _ = self._engine.step(command)
        self._history.append(command)
        won = bool(self._state["won"])
        expert_action = None
        if self._expert_on and not won and self.expert == "handcoded":
            expert_action = self._handcoded.act(self._state, command)
        elif self._expert_on and not won:
            expert_action = self._planner_action()
        feedback = NOTHING_HAPPENS if invalid else self._state["feedback"]
        self._last_obs = clean_text(feedback)
        return self._last_obs, 1.0 if won else 0.0, won, False, self._info(expert_action, invalid)

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None

    def close(self) -> None:
        if getattr(self, "_engine", None) is not None:
            close_textworld_env(self._engine)
            self._engine = None
        super().close()

    # ---- helpers ---------------------------------------------------------------------------
    def _planner_action(self) -> str | None:
        """The plan's next command: the rest of the last plan while the agent follows it, else a new plan."""
        if self._plan and self._history and self._history[-1] == self._plan[0]:
            self._plan = self._plan[1:]
        else:
            self._plan = planner_plan(self._loaded, self._history, self.planner_timeout,
                                      translation_dir(self.cache_dir)) or []
        return self._plan[0] if self._plan else None

    def _info(self, expert_action: str | None, invalid: bool) -> dict[str, Any]:
        return base_info(
            task=self._task,
            admissible_actions=self._state["admissible_commands"],
            won=self._state["won"],
            expert_action=expert_action,
            invalid_action=invalid,
            task_type=self._task_type,
            game_file=os.fspath(self._loaded),
        )
