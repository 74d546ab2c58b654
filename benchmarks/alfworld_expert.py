"""ALFWorld's hand-coded expert (with agentropy's tracker fix) on generated games: 100 per type.

For each split (train rooms, held-out test rooms) and each of the six task types, games with
seeds 0..N-1 are generated and validated (:func:`agentropy.envs.alfworld.generator.ensure_game`;
a game the expert loses is redrawn), then the expert is played again through
``agentropy/ALFWorld-v0`` following ``info["expert_action"]``. Reported per (split, type):
the share of first draws the expert won (how often validation had to redraw), the expert's
success through the env (the guarantee users rely on), and its episode lengths.

Last line: ``alfworld expert success on generated games: <percent> (target >= 100)``.

    python benchmarks/alfworld_expert.py [--per-type 100] [--workers 2] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

_ENV = None


def play(job: tuple[str, str, str, int]) -> dict:
    """Generate (or find) one game and play the expert on it through the env."""
    global _ENV
    from agentropy.envs.alfworld.env import ALFWorldEnv
    from agentropy.envs.alfworld.generator import ensure_game

    cache_dir, split, task_type, seed = job
    start = time.perf_counter()
    path = ensure_game(cache_dir, split, task_type, seed)
    generated = time.perf_counter() - start
    if _ENV is None:
        _ENV = ALFWorldEnv(cache_dir=cache_dir)
    _, info = _ENV.reset(options={"game_file": str(path)})
    reward, steps = 0.0, 0
    while steps < 200:
        _, reward, terminated, _, info = _ENV.step(info["expert_action"] or "look")
        steps += 1
        if terminated:
            break
    attempt = json.loads((path.parent / "traj_data.json").read_text())["agentropy"]["attempt"]
    return {"split": split, "type": task_type, "won": reward == 1.0, "steps": steps,
            "first_draw": attempt == 0, "seconds": generated}


def main() -> None:
    from agentropy.envs.alfworld.generator import SPLITS, TASK_TYPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-type", type=int, default=100, help="games per task type and split")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes")
    parser.add_argument("--cache-dir", default=None, help="game cache (default: a temporary folder)")
    args = parser.parse_args()
    console = Console(width=130)

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or tmp
        jobs = [(str(cache_dir), s, t, k) for s in SPLITS for t in TASK_TYPES for k in range(args.per_type)]
        results = []
        with Progress(console=console) as progress, ProcessPoolExecutor(args.workers) as pool:
            bar = progress.add_task("generate + play", total=len(jobs))
            for result in pool.map(play, jobs, chunksize=4):
                results.append(result)
                progress.advance(bar)

    table = Table(title=f"hand-coded expert (tracker fixed), {args.per_type} generated games per row")
    for column in ("split", "task type", "first draw won %", "expert success %", "median steps", "p90 steps",
                   "max steps", "s/game (gen)"):
        table.add_column(column, justify="left" if column in ("split", "task type") else "right")
    for split in SPLITS:
        for task_type in TASK_TYPES:
            rows = [r for r in results if r["split"] == split and r["type"] == task_type]
            steps = sorted(r["steps"] for r in rows)
            table.add_row(split, task_type,
                          f"{100 * sum(r['first_draw'] for r in rows) / len(rows):.1f}",
                          f"{100 * sum(r['won'] for r in rows) / len(rows):.1f}",
                          f"{statistics.median(steps):.0f}", f"{steps[int(0.9 * (len(steps) - 1))]}",
                          f"{steps[-1]}", f"{statistics.mean(r['seconds'] for r in rows):.2f}")
    console.print(table)
    success = 100 * sum(r["won"] for r in results) / len(results)
    first = 100 * sum(r["first_draw"] for r in results) / len(results)
    console.print(f"{len(results)} games; first draws won: {first:.1f}%; cache: {args.cache_dir or '(temporary)'}")
    print(f"alfworld expert success on generated games: {success:.1f} (target >= 100)")


if __name__ == "__main__":
    main()
