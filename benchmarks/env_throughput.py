"""Environment throughput: env steps per second in one process.

Each row is a function ``(seconds) -> {"steps": ..., "episodes": ..., "wins": ...}`` in
:data:`ROWS`; add a row for a new env by adding a function. Random rows pick uniformly from
``info["admissible_actions"]`` (one in ten actions is junk text, to exercise the invalid
path); expert rows follow ``info["expert_action"]``. Resets are included in the time.

    python benchmarks/env_throughput.py [--seconds 3] [--rows household-random ...]

Headline (last line): ``household steps/s (random): <value> (target >= 20000)``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from agentropy.envs.registry import make_env

TARGET_STEPS_PER_S = 20_000


def _run(env_id: str, seconds: float, policy: str, **env_kwargs) -> dict[str, float]:
    env = make_env(env_id, **env_kwargs)
    rng = random.Random(0)
    episodes = wins = steps = 0
    obs, info = env.reset(seed=0)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(256):  # check the clock every 256 steps only
            if policy == "expert":
                action = info["expert_action"]
            elif rng.random() < 0.1:
                action = "dance with the fridge"
            else:
                action = rng.choice(info["admissible_actions"])
            obs, reward, terminated, truncated, info = env.step(action)
            steps += 1
            if terminated or truncated:
                episodes += 1
                wins += bool(info["won"])
                obs, info = env.reset(seed=episodes)
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    env.close()
    return {"steps/s": steps / elapsed, "steps": steps, "episodes": episodes, "success": wins / max(episodes, 1)}


ROWS: dict[str, Callable[[float], dict[str, float]]] = {
    "household-random": lambda s: _run("agentropy/Household-v0", s, "random"),
    "household-random-no-expert-info": lambda s: _run("agentropy/Household-v0", s, "random", expert_info=False),
    "household-expert": lambda s: _run("agentropy/Household-v0", s, "expert"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per row")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS), help="rows to run")
    args = parser.parse_args()
    results = {}
    print(f"{'row':34s} {'steps/s':>10s} {'steps':>9s} {'episodes':>9s} {'success':>8s}")
    for name in args.rows:
        r = results[name] = ROWS[name](args.seconds)
        print(f"{name:34s} {r['steps/s']:10.0f} {r['steps']:9d} {r['episodes']:9d} {r['success']:8.3f}", flush=True)
    if "household-random" in results:
        value = results["household-random"]["steps/s"]
        print(f"household steps/s (random): {value:.0f} (target >= {TARGET_STEPS_PER_S})")


if __name__ == "__main__":
    main()
