"""Synthetic runs with known answers, to measure each claim's false-positive rate and power.

A *world* is a set of seeds of one strategy whose data are generated with stated effects switched
on or off. :func:`synthetic_runs` builds them in memory exactly as :func:`load_run` would return
them (``RunData`` with metrics records and per-iteration stats computed from real
``Trajectory`` objects by :func:`iteration_stats`), and :func:`write_run_folder` writes one to
disk in the format ``agentropy analyze`` reads, for end-to-end checks.

What the null worlds contain (what a claim must *not* mistake for its effect):

* every trajectory of a group starts in the same state, and 30 % of actions are no-ops that
  repeat the previous observation; each action is a tool call, and a no-op is a malformed one
  (``info`` names the call and flags it invalid), so a reply follows a tool's response exactly
  when its observation is new and it is not the first;
* replies are ``content... </action>`` (the prompt opens the tag): fixed closing-tag tokens with
  entropy ~0 after the content, whose entropy has group- and reply-level random effects;
* the last iteration's entropy is lower than the first's by the same amount at every turn (a
  drift that does not grow with the turn);
* in the "branch" null, each group adds 2 branches of random global trajectories, forked at a
  turn >= 1 drawn uniformly whatever the entropy;
* in the "collapse" null, entropy falls steadily below half its first value while gradient
  norms are independent of it, so the largest spike lands anywhere in the decline.

Planted effects and their sizes are the fields of :class:`World`; ``PLANTED`` holds the sizes
the calibration reports.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agentropy.evals.dynamics.analysis import Options, analyze
from agentropy.evals.dynamics.branching import WINDOW
from agentropy.evals.dynamics.loading import iteration_stats
from agentropy.evals.dynamics.records import RunData
from agentropy.training.methods.aepo_rollout import leading_mean_entropy
from agentropy.training.trajectory import Step, Trajectory, write_jsonl

FORMAT_CLOSE = (9001, 9002, 9003)  # "</action>": the prompt ends with "<action>", the reply closes the tag
CONTENT_VOCAB = 5000


@dataclass(frozen=True)
class World:
    """Generator settings; the defaults are the flat null (no effect anywhere)."""

    seeds: int = 3
    steps: int = 10  # RL iterations with a metrics record
    groups: int = 6
    group_size: int = 4
    turns: int = 6
    content_tokens: int = 10
    noop_rate: float = 0.3  # actions that leave the observation unchanged
    uniform_shift: float = -0.1  # last vs first iteration, the same at every turn (not a growing drift)
    # planted effects (0 = absent)
    drift_per_turn: float = 0.0  # last iteration: extra entropy change of drift_per_turn * t at turn t
    head_boost: float = 0.0  # first n content tokens after a *new* observation
    tool_head_boost: float = 0.0  # first n content tokens after a tool's response (new and not the first turn)
    shared_states_first: float = 0.0  # chance a new state is the group's shared one, first iteration
    shared_states_last: float = 0.0  # same at the last iteration
    entropy_decline: float = 0.0  # fraction of the first step's entropy lost linearly by the last step
    law_a: float = 0.0  # success = -law_a * exp(H) + b + noise (else independent of H)
    spike_drop: float = 0.0  # extra fall of entropy and reward std at the grad-norm spike
    repeat_first: float = 0.2  # chance a reply copies the group's canonical reply, first iteration
    repeat_last: float = 0.2  # same at the last iteration
    branches: int = 0  # branch trajectories per group (AEPO-style forks of a global one)
    fork_bias: float = 0.0  # planted: a branch's fork turn is drawn with weight exp(fork_bias * dH_t)
    n_head: int = 4


FLAT_NULL = World()
COLLAPSE_NULL = World(entropy_decline=0.7)
BRANCH_NULL = World(branches=2)  # forks at a turn drawn uniformly, whatever the entropy
#: Planted effects, one world per claim family (sizes are what the calibration reports).
PLANTED: dict[str, World] = {
    "exp_law": World(entropy_decline=0.4, law_a=0.5),
    "decline": World(entropy_decline=0.5),
    "drift": World(drift_per_turn=-0.08),
    "post_obs": World(head_boost=0.3),
    "tool_response": World(tool_head_boost=0.3),
    "recurrence": World(shared_states_first=1.0, shared_states_last=1.0),
    "recurrence_late": World(shared_states_first=1.0, shared_states_last=0.5),
    "collapse_reward_std": World(entropy_decline=0.7, spike_drop=0.25),
    "collapse_entropy": World(entropy_decline=0.7, spike_drop=0.25),
    "repeated": World(entropy_decline=0.7, repeat_first=0.2, repeat_last=0.5),
    "branch_entropy": World(branches=2, fork_bias=30.0),
}
#: Which null each claim is calibrated against: the echo-trap claims need a collapse to be tested.
NULL_FOR: dict[str, World] = {claim: COLLAPSE_NULL if claim in ("collapse_reward_std", "collapse_entropy", "repeated")
                              else BRANCH_NULL if claim == "branch_entropy" else FLAT_NULL for claim in PLANTED}
#: What each planted world plants, in words, for the calibration table.
PLANTED_TEXT: dict[str, str] = {
    "exp_law": "success = -0.5 exp(H) + b + noise while entropy falls by 40 %",
    "decline": "entropy falls linearly by 50 % over 10 steps (step noise SD 0.03 nats)",
    "drift": "last-iteration entropy shifted by -0.1 - 0.08 t nats at turn t (the null has the uniform -0.1 only)",
    "post_obs": "first 4 content tokens after a new observation +0.3 nats",
    "tool_response": "first 4 content tokens after a tool's response +0.3 nats (the first reply and replies after a "
                     "malformed call: none)",
    "recurrence": "every real move goes to the group's shared state of that turn (30 % no-ops)",
    "recurrence_late": "shared-state share of real moves falls from 100 % to 50 %",
    "collapse_reward_std": "reward std and entropy fall an extra 0.25 at the grad-norm spike (step noise SD 0.03)",
    "collapse_entropy": "reward std and entropy fall an extra 0.25 at the grad-norm spike (step noise SD 0.03)",
    "repeated": "share of replies copying the group's canonical reply 20 % -> 50 %",
    "branch_entropy": "2 branches per group of 4; a branch's fork turn drawn with weight exp(30 dH_t), a fork - "
                      "stay difference of about +0.12 nats (the null: uniformly over turns >= 1)",
}


def _entropy_series(world: World, rng: np.random.Generator) -> np.ndarray:
    k = np.arange(world.steps)
    base = 1.0 * (1.0 - world.entropy_decline * k / max(world.steps - 1, 1))
    return base + rng.normal(0.0, 0.03, world.steps)


def _records(world: World, rng: np.random.Generator) -> tuple[dict[int, dict[str, Any]], int]:
    """Per-step metrics: entropy, success, grad norm and reward std; returns the spike step too."""
    h = _entropy_series(world, rng)
    grad = rng.lognormal(0.0, 0.3, world.steps)
    spike = int(rng.integers(1, world.steps))
    grad[spike] = grad.max() * 1.5  # the largest norm, at a position independent of everything else
    reward_std = 0.4 + rng.normal(0.0, 0.03, world.steps)
    if world.spike_drop:
        h[spike] -= world.spike_drop
        reward_std[spike] -= world.spike_drop
    if world.law_a:
        success = -world.law_a * np.exp(h) + 2.0 + rng.normal(0.0, 0.03, world.steps)
    else:
        success = 0.3 + rng.normal(0.0, 0.05, world.steps)
    records = {k: {"iteration": k, "phase": "train", "entropy_mean": float(h[k]), "success_rate": float(success[k]),
                   "return_mean": float(success[k]), "grad_norm": float(grad[k]), "reward_std": float(reward_std[k])}
               for k in range(world.steps)}
    return records, spike


def _trajectories(world: World, rng: np.random.Generator, last: bool) -> list[Trajectory]:
    """One iteration's rollouts (the first iteration, or the last one with its planted changes).
    All random draws are made up front as arrays; the loop only assembles Steps."""
    shared = world.shared_states_last if last else world.shared_states_first
    repeat = world.repeat_last if last else world.repeat_first
    shape = (world.groups, world.group_size, world.turns)
    moves = (rng.random(shape) >= world.noop_rate).tolist()
    to_shared = (rng.random(shape) < shared).tolist()
    copies = (rng.random(shape) < repeat).tolist()
    canonical = rng.integers(0, CONTENT_VOCAB, (world.groups, world.turns, world.content_tokens)).tolist()
    fresh = rng.integers(0, CONTENT_VOCAB, (*shape, world.content_tokens)).tolist()
    h = (1.0 + rng.normal(0.0, 0.1, (world.groups, 1, 1, 1)) + rng.normal(0.0, 0.1, (*shape, 1))
         + rng.normal(0.0, 0.3, (*shape, world.content_tokens)))
    if last:
        h = h + world.uniform_shift + world.drift_per_turn * np.arange(world.turns)[None, None, :, None]
    won = (rng.random(shape[:2]) < 0.3).tolist()
    trajs = []
    for g in range(world.groups):
        for j in range(world.group_size):
            steps, anchor = [], f"g{g} start"
            new = [True] * world.turns
            anchors = []
            for t in range(world.turns):
                if t > 0 and moves[g][j][t]:
                    anchor = f"g{g} room {t}" if to_shared[g][j][t] else f"g{g} traj {j} room {t}"
                elif t > 0:
                    new[t] = False  # a no-op: the observation repeats
                anchors.append(anchor)
            head = np.arange(world.content_tokens) < world.n_head
            boost = np.asarray(new, dtype=float)[:, None] * head
            after_tool = np.asarray([t > 0 and new[t] for t in range(world.turns)], dtype=float)[:, None] * head
            hj = np.clip(h[g, j] + world.head_boost * boost + world.tool_head_boost * after_tool, 0.0, None).tolist()
            for t in range(world.turns):
                ids = [*(canonical[g][t] if copies[g][j][t] else fresh[g][j][t]), *FORMAT_CLOSE]
                entropy = [*hj[t], 0.02, 0.01, 0.01]
                # the action's result: a tool call, malformed when the next observation repeats this one
                info = {"tool_call": "search", "invalid_action": t + 1 < world.turns and not new[t + 1]}
                steps.append(Step(turn=t, prompt_ids=[0], response_ids=ids, logprobs=[0.0] * len(ids), entropy=entropy,
                                  reward=0.0, terminated=t == world.turns - 1, truncated=False, anchor_obs=anchors[t],
                                  action="act", group_id=f"g{g}", traj_id=f"g{g}-{j}", info=info))
            trajs.append(Trajectory(traj_id=f"g{g}-{j}", group_id=f"g{g}", task_id=f"task{g}", seed=g, steps=steps,
                                    episode_return=float(won[g][j]), won=won[g][j]))
    if world.branches:
        trajs += _branches(world, rng, trajs, last)
    return trajs


def _branches(world: World, rng: np.random.Generator, globals_: Sequence[Trajectory], last: bool) -> list[Trajectory]:
    """AEPO-style branches: each copies a random global trajectory of its group up to a fork turn
    f >= 1 (steps marked ``branch_prefix``) and re-samples turns f.. with fresh replies. The fork
    turn is uniform over turns >= 1 when ``fork_bias`` is 0, else weighted by exp(fork_bias * dH_t)
    of the source's replies (drawn after everything else, so worlds without branches keep their draws)."""
    out = []
    turns = np.arange(1, world.turns)
    for g in range(world.groups):
        for b in range(world.branches):
            src = globals_[g * world.group_size + int(rng.integers(world.group_size))]
            h0 = leading_mean_entropy(src.steps[0].entropy, WINDOW)
            dh = np.array([leading_mean_entropy(src.steps[t].entropy, WINDOW) - h0 for t in turns])
            weight = np.exp(world.fork_bias * (dh - dh.max()))
            f = int(rng.choice(turns, p=weight / weight.sum()))
            content = np.clip(1.0 + (world.uniform_shift if last else 0.0) + rng.normal(0.0, 0.1, (world.turns, 1))
                              + rng.normal(0.0, 0.3, (world.turns, world.content_tokens)), 0.0, None).tolist()
            tid = f"g{g}-b{b}"
            steps = [dataclasses.replace(s, traj_id=tid, info={**s.info, "branch_prefix": True}) for s in src.steps[:f]]
            for t in range(f, world.turns):
                ids = [*rng.integers(0, CONTENT_VOCAB, world.content_tokens).tolist(), *FORMAT_CLOSE]
                steps.append(Step(turn=t, prompt_ids=[0], response_ids=ids, logprobs=[0.0] * len(ids),
                                  entropy=[*content[t], 0.02, 0.01, 0.01], reward=0.0, terminated=t == world.turns - 1,
                                  truncated=False, anchor_obs=f"g{g} branch {b} room {t}", action="act",
                                  group_id=f"g{g}", traj_id=tid, info={"tool_call": "search", "invalid_action": False}))
            out.append(Trajectory(traj_id=tid, group_id=f"g{g}", task_id=f"task{g}", seed=g, steps=steps,
                                  episode_return=src.episode_return, won=src.won, parent_id=src.traj_id, kind="branch"))
    return out


def synthetic_run(world: World, rng: np.random.Generator, seed: int, strategy: str = "grpo",
                  trajectories: dict[int, list[Trajectory]] | None = None) -> tuple[RunData, dict[int, list[Trajectory]]]:
    """One synthetic run as ``load_run`` returns it (trajectories at the first and last iteration).

    ``trajectories`` reuses another world's rollouts: worlds that differ only in their per-step
    metrics (entropy decline, reward law, spikes) can share the expensive part."""
    records, _ = _records(world, rng)
    trajs = trajectories or {0: _trajectories(world, rng, last=False), world.steps - 1: _trajectories(world, rng, last=True)}
    iterations = {k: iteration_stats(k, t, world.n_head) for k, t in trajs.items()}
    run = RunData(path=Path(f"{strategy}__synthetic__s{seed}"), strategy=strategy, env_id="synthetic", seed=seed,
                  methods=[], records=records, iterations=iterations)
    return run, trajs


def synthetic_runs(world: World, rng: np.random.Generator, strategy: str = "grpo") -> list[RunData]:
    return [synthetic_run(world, rng, seed, strategy)[0] for seed in range(world.seeds)]


def write_run_folder(folder: str | Path, world: World, rng: np.random.Generator, seed: int,
                     strategy: str = "grpo") -> Path:
    """A run folder in the on-disk format ``agentropy analyze`` reads: config.yaml, metrics.jsonl and
    trajectories/iter_XXXXXX_rank0.jsonl."""
    folder = Path(folder)
    run, trajs = synthetic_run(world, rng, seed, strategy)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"run": {"name": folder.name, "seed": seed}, "env": {"id": "synthetic"},
              "strategy": {"advantage": {"estimator": "grpo"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps(r) for r in run.records.values()]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for k, t in trajs.items():
        write_jsonl(t, folder / "trajectories" / f"iter_{k:06d}_rank0.jsonl")
    return folder


@dataclass(frozen=True)
class Rates:
    """Share of simulated worlds in which the claim's verdict was "holds"."""

    claim: str
    null_holds: float  # false-positive rate
    planted_holds: float  # detection rate (power) at the planted size
    nulls: int
    planted: int


def verdicts_of(runs: Sequence[RunData], options: Options | None = None) -> dict[str, str]:
    """claim id -> verdict for the one strategy of ``runs``."""
    result = analyze(runs, options or Options())
    return {row["claim_id"]: row["verdict"] for row in result["claims"]}


def holds_rates(worlds: Sequence[World], claims: Sequence[Sequence[str]], sims: int, seed: int) -> dict[str, float]:
    """Fraction of ``sims`` simulations in which each claim's verdict is "holds".

    ``worlds[i]`` is scored on ``claims[i]``. The worlds must differ only in their per-step
    metrics: each simulation draws one set of rollouts per seed (from ``worlds[0]``) and pairs it
    with every world's metrics."""
    rng = np.random.default_rng(seed)
    hits: dict[str, int] = {c: 0 for cs in claims for c in cs}
    for _ in range(sims):
        shared: list[dict[int, list[Trajectory]] | None] = [None] * worlds[0].seeds
        for world, world_claims in zip(worlds, claims, strict=True):
            runs = []
            for s in range(world.seeds):
                run, shared[s] = synthetic_run(world, rng, s, trajectories=shared[s])
                runs.append(run)
            verdicts = verdicts_of(runs)
            for c in world_claims:
                hits[c] += verdicts[c] == "holds"
    return {c: n / sims for c, n in hits.items()}


def calibrate(nulls: int = 200, planted: int = 50, seed: int = 0) -> list[Rates]:
    """False-positive and detection rates of every claim: the flat and collapse nulls share
    their rollouts; each claim has its own planted world."""
    flat = [c for c, w in NULL_FOR.items() if w == FLAT_NULL]
    collapse = [c for c, w in NULL_FOR.items() if w == COLLAPSE_NULL]
    fpr = holds_rates([FLAT_NULL, COLLAPSE_NULL], [flat, collapse], nulls, seed)
    fpr.update(holds_rates([BRANCH_NULL], [["branch_entropy"]], nulls, seed + 1))
    out = []
    for j, (claim, world) in enumerate(PLANTED.items()):
        power = holds_rates([world], [[claim]], planted, seed + 100 + j)[claim]
        out.append(Rates(claim, fpr[claim], power, nulls, planted))
    return out


def rates_markdown(rates: Sequence[Rates]) -> list[str]:
    """The calibration table for docs/dynamics/calibration.md."""
    from agentropy.evals.dynamics.verdicts import CLAIMS

    rule = {c.id: "; ".join(f"{x.name} {'>' if x.side in ('above', 'by_corridor') else '<'} {x.threshold:g}"
                            for x in c.conditions) for c in CLAIMS}
    lines = ["| claim | verdict rule (95 % CI over 3 seeds entirely ...) | false-positive rate (nulls) | "
             "planted effect | detection rate (worlds) |", "|---|---|---|---|---|"]
    for r in rates:
        lines.append(f"| {r.claim} | {rule[r.claim]} | {r.null_holds:.1%} ({r.nulls}) | {PLANTED_TEXT[r.claim]} | "
                     f"{r.planted_holds:.0%} ({r.planted}) |")
    return lines
