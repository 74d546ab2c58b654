"""Reset and step rates of the real engines: ALFWorld-v0 (in-process and through a process pool)
and TextWorldExpress-v0.

The agent takes the expert action half of the time and a random admissible action otherwise
(seeded), and an episode ends on a win or after ``--episode-steps`` steps.

* ALFWorld games: ``--games`` train games, spread over the six task types, are generated and
  validated first (time reported, not counted). Resets: of a game never translated (PDDL
  translation included, as on a game's very first load on a machine); cold (first load in a
  process, the translation read from the cache's translation folder); warm (a game loaded
  before in this process).
* In-process: one env stepped alone; only ``env.reset`` / ``env.step`` are timed.
* Through the pool: ``--workers`` processes, each owning ``--envs-per-worker`` envs; the main
  process picks every env's action, sends each worker its batch, and waits for all answers,
  in lockstep as a rollout does. Steps/s = env steps / wall time of the whole loop (resets,
  cold loads and pipe round trips included).
* TextWorldExpress: one simulator (one JVM), per game: resets/s and steps/s.

Last line: ``alfworld steps/s through the pool: <value> (target >= 20)``.

    python benchmarks/real_env_throughput.py [--games 12] [--workers 2] [--envs-per-worker 4] [--steps 400]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table


def choose(info: dict, rng: random.Random) -> str:
    if info["expert_action"] and rng.random() < 0.5:
        return info["expert_action"]
    return rng.choice(info["admissible_actions"] or ["look"])


def make_games(cache_dir: Path, count: int, progress: Progress) -> list[str]:
    from agentropy.envs.alfworld.evalset import train_entries
    from agentropy.envs.alfworld.generator import ensure_game

    task = progress.add_task("generating ALFWorld train games", total=count)
    paths = []
    for task_type, seed in train_entries(count):
        paths.append(str(ensure_game(cache_dir, "train", task_type, seed)))
        progress.advance(task)
    return paths


def alfworld_in_process(cache_dir: Path, games: list[str], steps: int, episode_steps: int, progress: Progress) -> dict:
    from agentropy.envs.alfworld import engine
    from agentropy.envs.alfworld.env import ALFWorldEnv

    env = ALFWorldEnv(cache_dir=cache_dir)
    rng = random.Random(0)
    untranslated, cold = [], []
    engine.set_translation_dir(None)  # as if no translation were stored: translate again
    for path in games[:6]:
        engine.uninstall_speedups()  # empties the in-memory caches, as in a new process
        engine.install_speedups()
        start = time.perf_counter()
        env.reset(options={"game_file": path})
        untranslated.append(time.perf_counter() - start)
    engine.set_translation_dir(cache_dir / "translations")
    engine.uninstall_speedups()
    engine.install_speedups()
    for path in games:  # first load of each game in this process, translation read from disk
        start = time.perf_counter()
        env.reset(options={"game_file": path})
        cold.append(time.perf_counter() - start)
    warm = []
    for path in games:
        start = time.perf_counter()
        env.reset(options={"game_file": path})
        warm.append(time.perf_counter() - start)
    task = progress.add_task("ALFWorld in-process", total=steps)
    busy, episode, done_steps = 0.0, 0, 0
    _, info = env.reset(options={"game_file": games[0]})
    in_episode = 0
    while done_steps < steps:
        action = choose(info, rng)
        start = time.perf_counter()
        _, _, terminated, _, info = env.step(action)
        busy += time.perf_counter() - start
        done_steps, in_episode = done_steps + 1, in_episode + 1
        progress.advance(task)
        if terminated or in_episode >= episode_steps:
            episode, in_episode = episode + 1, 0
            start = time.perf_counter()
            _, info = env.reset(options={"game_file": games[episode % len(games)]})
            busy += time.perf_counter() - start
    env.close()
    return {
        "untranslated reset s": sum(untranslated) / len(untranslated),
        "cold reset s": sum(cold) / len(cold),
        "warm reset s": sum(warm) / len(warm),
        "steps/s": done_steps / busy,
        "episodes": episode,
    }


def _worker(conn, cache_dir: str, games: list[str], n_envs: int, offset: int) -> None:
    """Own ``n_envs`` ALFWorld envs; answer each batch of actions with (info) per env."""
    from agentropy.envs.alfworld.env import ALFWorldEnv

    envs = [ALFWorldEnv(cache_dir=cache_dir) for _ in range(n_envs)]
    episode = [offset + i for i in range(n_envs)]
    infos = [env.reset(options={"game_file": games[e % len(games)]})[1] for env, e in zip(envs, episode, strict=True)]
    conn.send([_slim(i) for i in infos])
    while True:
        message = conn.recv()
        if message is None:
            break
        actions, episode_over = message
        out = []
        for k, (env, action) in enumerate(zip(envs, actions, strict=True)):
            _, reward, terminated, _, info = env.step(action)
            if terminated or episode_over[k]:
                episode[k] += n_envs * 1000  # a different game next, deterministic
                _, info = env.reset(options={"game_file": games[episode[k] % len(games)]})
            out.append(_slim(info) | {"ended": terminated or episode_over[k]})
        conn.send(out)
    for env in envs:
        env.close()


def _slim(info: dict) -> dict:
    return {"admissible_actions": info["admissible_actions"], "expert_action": info["expert_action"]}


def alfworld_pool(cache_dir: Path, games: list[str], workers: int, envs_per_worker: int, rounds: int,
                  episode_steps: int, progress: Progress) -> dict:
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for w in range(workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, str(cache_dir), games, envs_per_worker, w * envs_per_worker),
                           daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    start_up = time.perf_counter()
    infos = [pipe.recv() for pipe in pipes]  # first resets (cold loads) done
    start_up = time.perf_counter() - start_up
    rng = random.Random(0)
    lengths = [[0] * envs_per_worker for _ in range(workers)]
    task = progress.add_task("ALFWorld through the pool", total=rounds)
    start = time.perf_counter()
    for _ in range(rounds):
        for w, pipe in enumerate(pipes):
            actions = [choose(info, rng) for info in infos[w]]
            lengths[w] = [n + 1 for n in lengths[w]]
            pipe.send((actions, [n >= episode_steps for n in lengths[w]]))
        for w, pipe in enumerate(pipes):
            infos[w] = pipe.recv()
            lengths[w] = [0 if info["ended"] else n for info, n in zip(infos[w], lengths[w], strict=True)]
        progress.advance(task)
    wall = time.perf_counter() - start
    for pipe in pipes:
        pipe.send(None)
    for proc in procs:
        proc.join(timeout=30)
    total = rounds * workers * envs_per_worker
    return {"start-up s": start_up, "steps": total, "wall s": wall, "steps/s": total / wall}


def textworld_express(steps: int, progress: Progress) -> list[tuple[str, float, float]]:
    from agentropy.envs.textworld_express import GAMES, TextWorldExpressEnv

    env = TextWorldExpressEnv()
    rng = random.Random(0)
    rows = []
    task = progress.add_task("TextWorldExpress", total=len(GAMES))
    for game in GAMES:
        env.reset(seed=0, options={"game": game})  # loads the game
        start = time.perf_counter()
        for seed in range(20):
            env.reset(seed=seed, options={"game": game})
        reset_rate = 20 / (time.perf_counter() - start)
        _, info = env.reset(seed=0, options={"game": game})
        busy = 0.0
        for _ in range(steps):
            action = choose(info, rng)
            t = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            busy += time.perf_counter() - t
            if terminated or truncated:
                _, info = env.reset(seed=rng.randrange(1000), options={"game": game})
        rows.append((game, reset_rate, steps / busy))
        progress.advance(task)
    env.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=12, help="ALFWorld train games to play (2 per task type)")
    parser.add_argument("--steps", type=int, default=400, help="in-process ALFWorld steps")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool processes")
    parser.add_argument("--envs-per-worker", type=int, default=4, help="ALFWorld envs per pool process")
    parser.add_argument("--rounds", type=int, default=100, help="lockstep rounds through the pool")
    parser.add_argument("--episode-steps", type=int, default=30, help="ALFWorld episode length cap")
    parser.add_argument("--twx-steps", type=int, default=300, help="TextWorldExpress steps per game")
    parser.add_argument("--cache-dir", default=None, help="ALFWorld game cache (default: a temporary folder)")
    args = parser.parse_args()
    console = Console(width=130)

    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        cache_dir = Path(args.cache_dir or tmp)
        start = time.perf_counter()
        games = make_games(cache_dir, args.games, progress)
        generation = time.perf_counter() - start
        alone = alfworld_in_process(cache_dir, games, args.steps, args.episode_steps, progress)
        pooled = alfworld_pool(cache_dir, games, args.workers, args.envs_per_worker, args.rounds,
                               args.episode_steps, progress)
        twx = textworld_express(args.twx_steps, progress)

    table = Table(title=f"ALFWorld-v0 ({len(games)} generated train games, hand-coded expert on)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("generate + validate, s per game (first use only)", f"{generation / len(games):.2f}")
    table.add_row("first reset, game never translated (one per type), s", f"{alone['untranslated reset s']:.3f}")
    table.add_row("cold reset (first load in a process, stored translation), s", f"{alone['cold reset s']:.3f}")
    table.add_row("warm reset (game seen before), s", f"{alone['warm reset s']:.3f}")
    table.add_row("in-process steps/s (resets included)", f"{alone['steps/s']:.1f}")
    table.add_row(f"pool: {args.workers} workers x {args.envs_per_worker} envs, start-up s", f"{pooled['start-up s']:.1f}")
    table.add_row("pool steps/s (wall clock, resets and IPC included)", f"{pooled['steps/s']:.1f}")
    console.print(table)

    twx_table = Table(title="TextWorldExpress-v0 (one JVM)")
    for column in ("game", "resets/s", "steps/s"):
        twx_table.add_column(column, justify="right" if column != "game" else "left")
    for game, resets, steps in twx:
        twx_table.add_row(game, f"{resets:.0f}", f"{steps:.0f}")
    console.print(twx_table)
    console.print(f"machine: {os.cpu_count()} cores; in-process ALFWorld episodes: {alone['episodes']}")
    print(f"alfworld steps/s through the pool: {pooled['steps/s']:.1f} (target >= 20)")


if __name__ == "__main__":
    main()
