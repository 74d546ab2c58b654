"""Steps per second, start-up time and memory of the simulator-backed envs (ScienceWorld, TextWorld).

For each env, the agent takes the expert action half of the time and a random admissible
action otherwise (seeded), resetting when an episode ends; a step's time is only the
``env.step`` call, which includes building ``info`` (admissible actions, expert action).

* ScienceWorld: start-up = constructing the env and its first reset (JVM launch, task
  load, gold-path generation); a row with ``max_admissible=0`` shows the cost of the
  simulator's valid-action enumeration. Memory per env = resident size of its JVM plus the
  growth of this Python process, averaged over ``--sw-envs`` envs alive at once, after the
  first reset and again after the stepping run (the JVM heap is capped at 256 MB).
* TextWorld: generation = making and compiling one game (first use; cached afterwards);
  start-up = constructing the env and resetting it on a cached game. The game runs inside
  this process, so memory per env = this process's growth over ``--tw-envs`` envs.

Last line: ``scienceworld steps/s: <value> (target >= 5)``.

    python benchmarks/sim_env_throughput.py [--steps 150] [--sw-envs 2]
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time

import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

SW_TASKS = ["find-living-thing", "use-thermometer", "chemistry-mix", "boil", "power-component"]


def drive(env, steps: int, seed: int, options_for, progress: Progress, label: str) -> tuple[float, int]:
    """Step ``env`` ``steps`` times (expert half the time); return (steps/s, episodes)."""
    rng = random.Random(seed)
    episode = 0
    obs, info = env.reset(seed=seed, options=options_for(episode))
    busy = 0.0
    task = progress.add_task(label, total=steps)
    for _ in range(steps):
        choices = info["admissible_actions"] or ["look around"]
        action = info["expert_action"] if info["expert_action"] and rng.random() < 0.5 else rng.choice(choices)
        start = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(action)
        busy += time.perf_counter() - start
        progress.advance(task)
        if terminated or truncated:
            episode += 1
            obs, info = env.reset(options=options_for(episode))
    return steps / busy, episode + 1


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def scienceworld_rows(args, progress: Progress) -> tuple[list[tuple], float]:
    from agentropy.envs.scienceworld import ScienceWorldEnv

    rows = []

    def options_for(episode: int) -> dict:
        return {"task_name": SW_TASKS[episode % len(SW_TASKS)], "split": "train"}

    py_before = rss_mib(psutil.Process().pid)
    envs, starts = [], []
    for i in range(args.sw_envs):
        start = time.perf_counter()
        env = ScienceWorldEnv(max_steps=30)
        env.reset(seed=i, options=options_for(0))
        starts.append(time.perf_counter() - start)
        envs.append(env)
    py_growth = max(rss_mib(psutil.Process().pid) - py_before, 0.0) / len(envs)
    at_start = sum(rss_mib(env.simulator_pid) for env in envs) / len(envs) + py_growth
    for env in envs[1:]:
        env.close()
    env = envs[0]
    rate, episodes = drive(env, args.steps, 0, options_for, progress, "ScienceWorld (admissible <= 50)")
    after_run = rss_mib(env.simulator_pid) + py_growth
    rows.append(("ScienceWorld", "max_admissible=50", f"{rate:.1f}", f"{sum(starts) / len(starts):.2f}",
                 f"{at_start:.0f} -> {after_run:.0f}", str(episodes)))
    env.max_admissible = 0
    fast, episodes = drive(env, args.steps, 1, options_for, progress, "ScienceWorld (no admissible)")
    rows.append(("ScienceWorld", "max_admissible=0 (expert or 'look around')", f"{fast:.1f}", "", "",
                 str(episodes)))
    env.close()
    return rows, rate


def textworld_rows(args, progress: Progress) -> list[tuple]:
    from agentropy.envs.textworld_env import TextWorldEnv

    rows = []
    cache = tempfile.mkdtemp(prefix="agentropy-tw-bench-")
    try:
        for challenge, settings in (("tw-cooking", {"recipe": 2, "take": 2, "go": 6, "cook": True, "cut": True}),
                                    ("custom", {"world_size": 5, "quest_length": 5})):
            env = TextWorldEnv(challenge=challenge, settings=settings, cache_dir=cache, games_per_split=2)
            start = time.perf_counter()
            env.game_file("train", 0)
            generation = time.perf_counter() - start
            env.game_file("train", 1)
            env.close()
            before = rss_mib(psutil.Process().pid)
            start = time.perf_counter()
            envs = [TextWorldEnv(challenge=challenge, settings=settings, cache_dir=cache, games_per_split=2)
                    for _ in range(args.tw_envs)]
            for env in envs:
                env.reset(options={"task_id": 0})
            startup = (time.perf_counter() - start) / len(envs)
            memory = max(rss_mib(psutil.Process().pid) - before, 0.0) / len(envs)
            for env in envs[1:]:
                env.close()
            env = envs[0]
            rate, episodes = drive(env, args.tw_steps, 0, lambda e: {"task_id": e % 2}, progress, f"TextWorld {challenge}")
            rows.append(("TextWorld", f"{challenge} (generation {generation:.1f} s)", f"{rate:.0f}",
                         f"{startup:.2f}", f"{memory:.0f}", str(episodes)))
            env.close()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="ScienceWorld steps per row")
    parser.add_argument("--tw-steps", type=int, default=500, help="TextWorld steps per row")
    parser.add_argument("--sw-envs", type=int, default=2, help="ScienceWorld envs alive at once for the memory figure")
    parser.add_argument("--tw-envs", type=int, default=5, help="TextWorld envs alive at once for the memory figure")
    parser.add_argument("--skip-textworld", action="store_true")
    args = parser.parse_args()

    console = Console(width=130)
    rows: list[tuple] = []
    sw_rate = 0.0
    with Progress(console=console, transient=True) as progress:
        if shutil.which("java"):
            sw_rows, sw_rate = scienceworld_rows(args, progress)
            rows += sw_rows
        else:
            console.print("no 'java' on PATH: ScienceWorld skipped (apt-get install -y default-jre-headless)")
        if not args.skip_textworld:
            rows += textworld_rows(args, progress)

    table = Table(title="simulator-backed envs (one env, one process)")
    for column in ("env", "setting", "steps/s", "start-up s", "memory MiB / env", "episodes"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(f"scienceworld steps/s: {sw_rate:.1f} (target >= 5)")


if __name__ == "__main__":
    main()
