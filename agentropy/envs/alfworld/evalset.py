"""The fixed, versioned ALFWorld-v0 evaluation set, and a command that generates and hashes it.

The eval set is 140 games (ALFWorld's valid_seen size) generated from ALFRED's held-out
``test`` rooms, spread evenly over the six task types. Its identity is the SHA-256 of the game
files in order (:func:`eval_set_hash`), recorded below as :data:`EVAL_SET_SHA256`: two machines
that report the same hash evaluated on the same games. Changing the list or the generator
means a new :data:`EVAL_SET_VERSION` and a new hash.

    python -m agentropy.envs.alfworld.evalset                 # generate, print the hash
    python -m agentropy.envs.alfworld.evalset --train-games 600 --workers 2

The second form also pre-generates the first 600 train games (so training never waits on
generation). Scores on these games are not directly comparable with published ALFWorld
numbers (see :mod:`.generator`).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from agentropy.envs.alfworld.generator import GENERATOR_VERSION, TASK_TYPES, default_cache_dir, ensure_game

EVAL_SET_VERSION = 1
EVAL_SET_SPLIT = "test"

#: Games per task type; 140 in all, ALFWorld's evaluation size.
EVAL_SET_COUNTS = {
    "pick_and_place_simple": 24,
    "look_at_obj_in_light": 24,
    "pick_clean_then_place_in_recep": 23,
    "pick_heat_then_place_in_recep": 23,
    "pick_cool_then_place_in_recep": 23,
    "pick_two_obj_and_place": 23,
}

#: SHA-256 of eval set v1 made by generator v1 (see :func:`eval_set_hash`).
EVAL_SET_SHA256 = "2a86835216262ebd314b60dfa859f59085ab01fae419353ea8a2becb6a7113f5"


def eval_set_entries(task_types: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """(task_type, seed) of every eval game, the types interleaved so any prefix mixes them."""
    types = [t for t in TASK_TYPES if task_types is None or t in task_types]
    longest = max(EVAL_SET_COUNTS.values())
    return [(t, k) for k in range(longest) for t in types if k < EVAL_SET_COUNTS[t]]


def train_entries(num_games: int, task_types: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """(task_type, seed) of the first ``num_games`` train games, round-robin over the types."""
    types = [t for t in TASK_TYPES if task_types is None or t in task_types]
    return [(types[i % len(types)], i // len(types)) for i in range(num_games)]


def _ensure(args: tuple[str, str, str, int]) -> Path:
    return ensure_game(*args)


def ensure_games(
    cache_dir: str | Path,
    split: str,
    entries: Sequence[tuple[str, int]],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Generate (or find in the cache) every game of ``entries``; return their game files in order."""
    jobs = [(str(cache_dir), split, task_type, seed) for task_type, seed in entries]
    if workers <= 1:
        paths = []
        for job in jobs:
            paths.append(_ensure(job))
            if progress:
                progress(1)
        return paths
    with ProcessPoolExecutor(max_workers=workers) as pool:
        paths = []
        for path in pool.map(_ensure, jobs):
            paths.append(path)
            if progress:
                progress(1)
        return paths


def eval_set_hash(game_files: Sequence[str | Path]) -> str:
    """SHA-256 over each game's ``game.tw-pddl`` and ``traj_data.json`` bytes, in order."""
    digest = hashlib.sha256(f"alfworld-evalset-v{EVAL_SET_VERSION}-gen-v{GENERATOR_VERSION}\n".encode())
    for path in map(Path, game_files):
        for name in ("game.tw-pddl", "traj_data.json"):
            data = (path.parent / name).read_bytes()
            digest.update(f"{name} {len(data)}\n".encode())
            digest.update(data)
    return digest.hexdigest()


def build_eval_set(cache_dir: str | Path | None = None, workers: int = 1,
                   progress: Callable[[int], None] | None = None) -> tuple[list[Path], str]:
    """Generate the eval set into the cache; return its game files and its hash."""
    paths = ensure_games(cache_dir or default_cache_dir(), EVAL_SET_SPLIT, eval_set_entries(), workers, progress)
    return paths, eval_set_hash(paths)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.progress import Progress

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help="game cache folder (default ~/.cache/agentropy/alfworld)")
    parser.add_argument("--workers", type=int, default=1, help="processes generating games in parallel")
    parser.add_argument("--train-games", type=int, default=0, help="also pre-generate this many train games")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()

    with Progress() as bar:
        task = bar.add_task("eval set (test rooms)", total=len(eval_set_entries()))
        paths, digest = build_eval_set(cache_dir, args.workers, lambda n: bar.advance(task, n))
        if args.train_games:
            task = bar.add_task("train games", total=args.train_games)
            ensure_games(cache_dir, "train", train_entries(args.train_games), args.workers,
                         lambda n: bar.advance(task, n))
    print(f"games in {cache_dir}")
    verdict = "matches" if digest == EVAL_SET_SHA256 else f"DIFFERS from the recorded {EVAL_SET_SHA256 or '(none)'}"
    print(f"eval set v{EVAL_SET_VERSION}: {len(paths)} games, sha256 {digest} ({verdict})")
    return 0 if digest == EVAL_SET_SHA256 else 1


if __name__ == "__main__":
    raise SystemExit(main())
