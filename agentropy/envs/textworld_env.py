"""TextWorld (Côté et al., 2018) games behind the agentropy env contract.

Games come from TextWorld's own generator: a registered challenge such as ``tw-cooking``
(the First TextWorld Problems cooking games) or ``custom`` (``tw-make custom``: a random
world with a quest of a given length). A game is fixed by (challenge, difficulty settings,
split, seed); it is generated on first use into a cache folder and reused afterwards, with a
file lock so that parallel workers never generate the same game twice or read half a file.
A generated game is kept only if its own walkthrough wins it (see :func:`generate_game`).

Splits: game ``task_id`` *i* of split *s* uses seed ``SPLIT_SEEDS[s] + i``, so the splits
never share a world; ``tw-cooking`` also passes the split to its generator, which then draws
foods and preparations from its own train / valid / test pools.

Each episode runs the compiled game through ``textworld.start`` (the game engine plus
TextWorld's state tracking), which gives the admissible commands, the score, and the
walkthrough via ``EnvInfos``. ``textworld.gym`` is not used: it still speaks the old 4-tuple
gym API, and the direct API is simpler to adapt. ``expert_action`` is the next walkthrough
command while every action so far followed the walkthrough, and otherwise the first command
of TextWorld's winning policy from the current state (``policy_commands``), which the game
logic recomputes after every action. Reward is the score change divided by the game's
maximum score, so an episode's rewards sum to its final normalised score in [0, 1].
``invalid_action`` is set when the command is not admissible and the game logic recognised
no action in it (a working phrasing outside the list, such as ``take onion`` for ``take
onion from fridge``, is valid).

``get_state`` / ``set_state`` are not offered: a step costs a few milliseconds, so
:func:`agentropy.envs.base.fork` replaying the action prefix is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym

from agentropy.envs.base import base_info, clean_text, text_space

#: First game seed of each split (task_id i of split s uses seed SPLIT_SEEDS[s] + i).
SPLIT_SEEDS = {"train": 0, "valid": 1_000_000, "test": 2_000_000}
SPLIT_ALIASES = {"dev": "valid", "validation": "valid"}

#: Difficulty settings of ``tw-make custom`` and their defaults here (a small world, one quest).
CUSTOM_DEFAULTS: dict[str, Any] = {
    "world_size": 3, "nb_objects": 8, "quest_length": 3, "quest_breadth": 1, "nb_parallel_quests": 1,
    "theme": "house", "include_adj": False,
}
#: Defaults for the cooking challenge: one ingredient to find in a closed container, one room.
#: ``recipe_seed=None`` draws the recipe from the game seed (``tw-make`` would fix it at 0).
COOKING_DEFAULTS: dict[str, Any] = {"recipe": 1, "take": 1, "go": 1, "open": True, "recipe_seed": None}

#: Bumped when generation changes, so that caches made by older code are not reused.
GENERATOR_VERSION = 1
#: Generation attempts (new seeds) before giving up on a game that cannot be won.
_GENERATION_ATTEMPTS = 5


def default_cache_dir() -> Path:
    """``$AGENTROPY_CACHE/textworld``, else ``~/.cache/agentropy/textworld``."""
    root = os.environ.get("AGENTROPY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agentropy")
    return Path(root) / "textworld"


def challenge_settings(challenge: str, settings: dict[str, Any] | None) -> dict[str, Any]:
    """All difficulty settings of ``challenge``: its defaults updated by ``settings``.

    The challenges' own settings are the ones ``tw-make <challenge>`` accepts (read from
    the challenge's argument parser); ``split`` is not a setting but a reset option.
    """
    import textworld.challenges

    if challenge == "custom":
        defaults = dict(CUSTOM_DEFAULTS)
    elif challenge in textworld.challenges.CHALLENGES:
        parser = argparse.ArgumentParser(add_help=False)
        textworld.challenges.CHALLENGES[challenge][2](parser)
        defaults = {action.dest: action.default for action in parser._actions}
        defaults.pop("split", None)
        if challenge == "tw-cooking":
            defaults.update(COOKING_DEFAULTS)
    else:
        known = ["custom", *sorted(textworld.challenges.CHALLENGES)]
        raise ValueError(f"challenge {challenge!r} is unknown; TextWorld offers {known}")
    unknown = set(settings or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {challenge} setting(s) {sorted(unknown)}; known: {sorted(defaults)}")
    merged = {**defaults, **(settings or {})}
    missing = [key for key, value in merged.items() if value is None and key != "recipe_seed"]
    if missing:
        raise ValueError(f"{challenge} needs setting(s) {missing} (see 'tw-make {challenge} --help')")
    return merged


def game_path(cache_dir: Path, challenge: str, settings: dict[str, Any], split: str, seed: int) -> Path:
    """Where the game for these arguments lives in the cache (the name encodes all of them)."""
    key = json.dumps({"challenge": challenge, "settings": settings, "split": split, "seed": seed,
                      "version": GENERATOR_VERSION}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{challenge}-{split}-{seed}-{digest}.z8"


def _options(seeds: int | dict[str, int], path: Path):
    import textworld

    options = textworld.GameOptions()
    options.seeds = seeds
    options.path = str(path)
    options.file_ext = ".z8"
    options.force_recompile = True
    return options


def _make(challenge: str, settings: dict[str, Any], split: str, seed: int, path: Path):
    import textworld.challenges
    from textworld.generator import make_game

    options = _options(seed, path)
    if challenge == "custom":
        options.nb_rooms = settings["world_size"]
        options.nb_objects = settings["nb_objects"]
        options.nb_parallel_quests = settings["nb_parallel_quests"]
        length, breadth = settings["quest_length"], settings["quest_breadth"]
        options.chaining.min_length = options.chaining.max_length = options.chaining.max_depth = length
        options.chaining.min_breadth = options.chaining.max_breadth = breadth
        options.grammar.theme = settings["theme"]
        options.grammar.include_adj = settings["include_adj"]
        return make_game(options), options
    generator_settings = dict(settings)
    if challenge == "tw-cooking":
        generator_settings["split"] = split
        if generator_settings["recipe_seed"] is None:
            generator_settings["recipe_seed"] = seed
    return textworld.challenges.CHALLENGES[challenge][1](settings=generator_settings, options=options), options


def walkthrough_wins(path: Path) -> bool:
    """Whether playing the game's own walkthrough wins it."""
    import textworld

    with _quiet():
        game = textworld.start(str(path), request_infos=textworld.EnvInfos(won=True, extras=["walkthrough"]))
        try:
            state = game.reset()
            for command in state.get("extra.walkthrough") or []:
                state, _, done = game.step(command)
                if done:
                    break
            return bool(state.won)
        finally:
            game.close()


def generate_game(challenge: str, settings: dict[str, Any], split: str, seed: int, path: Path) -> Path:
    """Generate and compile one game to ``path`` (a ``.z8`` with its ``.json`` beside it).

    A game is kept only if its own walkthrough wins it: TextWorld sometimes names two
    objects so that the game's parser cannot tell them apart ("Which do you mean, the
    locker or the type 0 locker?"), which makes the quest unwinnable. Such a game, or a
    world that admits no quest of the asked shape, is discarded and the next attempt uses
    seed ``seed + 10_000_000 * attempt`` (outside every split's seed range).
    """
    from textworld.generator import QuestGenerationError, compile_game

    for attempt in range(_GENERATION_ATTEMPTS):
        try:
            with _quiet():  # tw-cooking's generator plays its walkthrough through Jericho
                game, options = _make(challenge, settings, split, seed + 10_000_000 * attempt, path)
        except QuestGenerationError:
            continue
        built = Path(compile_game(game, options))
        if walkthrough_wins(built):
            return built
    raise ValueError(f"TextWorld made no winnable {challenge} game for settings {settings} "
                     f"(seed {seed}, {_GENERATION_ATTEMPTS} attempts); relax the settings")


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_game(cache_dir: Path, challenge: str, settings: dict[str, Any], split: str, seed: int) -> Path:
    """The cached game for these arguments, generated first if absent.

    Generation runs under an exclusive file lock in a private temporary folder; the game's
    ``.json`` and then its ``.z8`` are moved into place, so a ``.z8`` in the cache is
    always complete. Concurrent callers wait on the lock and then reuse the file.
    """
    path = game_path(cache_dir, challenge, settings, split, seed)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            return path
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
        try:
            built = generate_game(challenge, settings, split, seed, tmp / path.name)
            os.replace(built.with_suffix(".json"), path.with_suffix(".json"))
            os.replace(built, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


_BANNER_LINE = re.compile(r"^[\s_|\\/$<>]+$")


def clean_feedback(text: str) -> str:
    """Game text without the ASCII-art title, the ``>`` prompt lines and runs of blank lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    lines = [line for line in lines if not line.lstrip().startswith(">") and not _BANNER_LINE.match(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


#: The Z-machine reads at most this many characters of a command.
MAX_COMMAND_LENGTH = 190


def _sanitise(action: str) -> str:
    """One line of printable ASCII without backslashes.

    The game reads raw input, so a newline would be two commands; and Jericho's Frotz crashes the
    whole process (a segfault, no Python exception) on some backslash escapes such as ``\\a`` or
    ``\\D``, which random text from the action space produces. No game command uses a backslash.
    """
    kept = "".join(c if " " <= c <= "~" and c != "\\" else " " for c in str(action))
    return " ".join(kept.split())[:MAX_COMMAND_LENGTH]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Jericho's notices that TextWorld's own games are not in its list of known games."""
    import jericho

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jericho.UnsupportedGameWarning)
        yield


class TextWorldEnv(gym.Env[str, str]):
    """Generated TextWorld games as a ``gymnasium.Env[str, str]``.

    Args:
        challenge: ``"tw-cooking"`` (default), ``"custom"``, or another TextWorld challenge
            (``tw-simple``, ``tw-coin_collector``, ``tw-treasure_hunter``).
        settings: difficulty settings, as ``tw-make <challenge>`` names them (e.g.
            ``{"recipe": 2, "take": 2, "go": 6, "cook": True}`` or, for custom,
            ``{"world_size": 5, "quest_length": 5}``); unnamed ones take the defaults.
        split: default split (``train`` / ``valid`` / ``test``).
        games_per_split: number of distinct games per split (``task_id`` ranges over them).
        max_steps: steps before the episode is truncated.
        cache_dir: folder of generated games (default :func:`default_cache_dir`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        challenge: str = "tw-cooking",
        settings: dict[str, Any] | None = None,
        split: str = "train",
        games_per_split: int = 100,
        max_steps: int = 50,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.challenge = challenge
        self.settings = challenge_settings(challenge, settings)
        self.default_split = self._split(split)
        if games_per_split < 1:
            raise ValueError(f"games_per_split must be >= 1, got {games_per_split}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.games_per_split = games_per_split
        self.max_steps = max_steps
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.observation_space = text_space()
        self.action_space = text_space()
        self._game: Any = None
        self._game_file: Path | None = None
        self._state: Any = None
        self._walkthrough: list[str] = []
        self._walk_index = 0
        self._steps = 0

    @staticmethod
    def _split(split: str) -> str:
        split = SPLIT_ALIASES.get(split, split)
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)} (or dev), got {split!r}")
        return split

    def game_file(self, split: str, task_id: int) -> Path:
        """The game for ``task_id`` of ``split``, generated into the cache if needed."""
        split = self._split(split)
        if not 0 <= task_id < self.games_per_split:
            raise ValueError(f"task_id {task_id} is out of range [0, {self.games_per_split})")
        return ensure_game(self.cache_dir, self.challenge, self.settings, split, SPLIT_SEEDS[split] + task_id)

    def _start(self, path: Path) -> None:
        import textworld

        if self._game is not None and self._game_file == path:
            return
        if self._game is not None:
            self._game.close()
        infos = textworld.EnvInfos(
            admissible_commands=True, policy_commands=True, score=True, max_score=True,
            won=True, lost=True, objective=True, moves=True, extras=["walkthrough"],
        )
        with _quiet():
            self._game = textworld.start(str(path), request_infos=infos)
        self._game_file = path

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start a game: ``options`` may name ``split``, ``task_id`` or a ``game_file`` path."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"split", "task_id", "game_file"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; TextWorld takes split, task_id, game_file")
        if options.get("game_file"):
            path = Path(options["game_file"])
            if not path.is_file():
                raise ValueError(f"game_file {str(path)!r} does not exist")
        else:
            split = options.get("split", self.default_split)
            task_id = options.get("task_id")
            if task_id is None:
                task_id = int(self.np_random.integers(self.games_per_split))
            path = self.game_file(split, int(task_id))
        self._start(path)
        with _quiet():
            self._state = self._game.reset()
        self._walkthrough = list(self._state.get("extra.walkthrough") or [])
        self._walk_index, self._steps = 0, 0
        obs = clean_text(clean_feedback(self._state.feedback))
        return obs, self._info(invalid=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        command = _sanitise(action)
        admissible = set(self._state.admissible_commands or [])
        previous_score, previous_moves = self._state.score, self._state.moves
        with _quiet():
            self._state, _, done = self._game.step(command)
        self._steps += 1
        on_walkthrough = 0 <= self._walk_index < len(self._walkthrough)
        if on_walkthrough and command.lower() == self._walkthrough[self._walk_index].lower():
            self._walk_index += 1
        else:
            self._walk_index = -1
        invalid = command not in admissible and self._state.moves == previous_moves
        max_score = self._state.max_score or 1
        reward = (self._state.score - previous_score) / max_score
        terminated = bool(done or self._state.won or self._state.lost)
        truncated = not terminated and self._steps >= self.max_steps
        info = self._info(invalid)
        if truncated:
            info["truncation_reason"] = "max_steps"
        return clean_text(clean_feedback(self._state.feedback)), float(reward), terminated, truncated, info

    def _expert_action(self) -> str | None:
        if 0 <= self._walk_index < len(self._walkthrough):
            return self._walkthrough[self._walk_index]
        policy = self._state.get("policy_commands") or []
        return policy[0] if policy and not (self._state.won or self._state.lost) else None

    def _info(self, invalid: bool) -> dict[str, Any]:
        state = self._state
        return base_info(
            task=clean_text(state.objective or ""),
            admissible_actions=[clean_text(c) for c in state.admissible_commands or []],
            won=bool(state.won),
            expert_action=self._expert_action(),
            invalid_action=invalid,
            score=state.score,
            max_score=state.max_score,
            lost=bool(state.lost),
            game_file=str(self._game_file),
        )

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
        self._game, self._game_file, self._state = None, None, None
