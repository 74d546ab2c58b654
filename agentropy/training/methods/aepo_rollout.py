"""AEPO's dynamic entropy-balanced rollout, adapted to environment turns (docs/methods/aepo.md).

In AEPO a "tool call" returns an observation that the model continues from; here that is an
env step. The entropy of a turn, H_t, is the mean token entropy of its reply, over the
reply's first ``entropy_window_tokens`` tokens as in the AEPO code (default 20; 0 = all), and
every entropy is divided by ln|V| before it is compared, as the AEPO code does. The knobs are
the rollout fields of :class:`~agentropy.training.strategy_config.AEPOConfig` (``strategy.aepo``).

**Entropy pre-monitoring** (``dynamic_rollouts``). One probe trajectory per task gives
H_root (its first reply) and H_tool_mean (the mean over its later replies, each answering an
observation; H_root if there are none). Of the budget k, the task gets

    m = clip(floor(k * sigmoid(beta_pm * (H_root - H_tool_mean))) + 1, 1, k)

global samples (AEPO code, beta_pm = 0.5); the other k - m slots go to branches. A more
uncertain task gets more global samples, more uncertain feedback more branching. Probe
trajectories are returned with ``kind="probe"`` in their own group (``<group>-probe``); they
are not part of the k and trainers skip them. Without pre-monitoring m = ``initial_rollouts``
(default k // 2).

**Entropy-balanced branching**. At every turn t >= 1 of a live trajectory (a reply
to an observation), with dH = (H_t - H_init) / ln|V| (H_init: the trajectory's first reply,
inherited by branches) and l the task's count of consecutive rounds that branched, the AEPO
code's rule is

    score = clip((u + beta * dH) * max(0, 1 - c * l), 0, 1),   u ~ U(0, 1);   fork iff score >= tau

that is, P(fork) = clip(1 - tau / (1 - c*l) + beta * dH, 0, 1): the paper's
(alpha + gamma * dH) * (1 - P(l)) with the uniform draw u in the role of alpha. Defaults:
tau = 0.5, beta = 0.2, c = 0.05 (ARPO reduces to P = 0.5 + 0.2 dH at l = 0). l counts per
task: +1 after a round in which the task spawned a branch, back to 0 after one without.
Each trajectory forks at most ``beam_size - 1`` branches per round, never beyond the budget.

A branch is a new trajectory (``kind="branch"``, ``parent_id`` = its source) that starts at
the observation the source's current reply answers, so it re-samples that turn. Its env is
forked with ``get_state``/``set_state`` where the env supports them, else by replaying the
action prefix (:func:`agentropy.envs.base.fork`). It copies the source's steps up to the fork,
each marked ``info["branch_prefix"] = True`` (GiGPO counts such steps once; docs/methods/README.md).

**Exact budget.** When all of a task's trajectories have ended with slots left (too few
branches), the rest start at once as fresh global samples (ARPO adds one per round; starting
them together keeps the lockstep short). Every task ends with exactly k trajectories.

Paper: arXiv 2510.14545 (AEPO; ARPO, arXiv 2507.19849, for the branching rule). Environment
turns stand for tool calls; branching needs environments that can fork, otherwise
``aepo.branching: false``. See ``docs/methods/aepo.md``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentropy.agents.backends.base import GenerationBackend
from agentropy.envs.pool import EnvPool
from agentropy.training.rollout import (
    Episode,
    Lockstep,
    Reply,
    RolloutConfig,
    TaskSpec,
    Timing,
    _round_progress,
    check_not_all_failed,
    derive_seed,
    group_id_of,
    new_trajectory,
    rollout_metrics,
)
from agentropy.training.strategy_config import AEPOConfig
from agentropy.training.trajectory import Trajectory

#: Sampling-seed phases of the AEPO rollout (the plain rollout is phase 0).
PROBE_PHASE, MAIN_PHASE, DECISION_PHASE = 1, 2, 3


def branching_from_config(cfg: Any) -> AEPOConfig | None:
    """The AEPO block of a full experiment config if it turns the branching rollout on, else None.

    A plain :class:`RolloutConfig` never branches by itself.
    """
    aepo = getattr(getattr(cfg, "strategy", None), "aepo", None)
    if isinstance(aepo, AEPOConfig) and aepo.enabled and aepo.branching:
        return aepo
    return None


# --------------------------------------------------------------------------------------
# The formulas, as pure functions (the tests check them by hand).
# --------------------------------------------------------------------------------------


def global_count(k: int, h_root: float, h_tool_mean: float, beta_pm: float = 0.5) -> int:
    """m = clip(floor(k * sigmoid(beta_pm * (H_root - H_tool_mean))) + 1, 1, k)."""
    x = beta_pm * (h_root - h_tool_mean)
    sigmoid = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    return int(min(max(math.floor(k * sigmoid) + 1, 1), k))


def branch_score(u: float, dh: float, consecutive: int, cfg: AEPOConfig) -> float:
    """clip((u + beta * dH) * max(0, 1 - c * l), 0, 1): the AEPO code's candidate score."""
    factor = max(0.0, 1.0 - cfg.consecutive_penalty * consecutive)
    return min(max((u + cfg.entropy_weight * dh) * factor, 0.0), 1.0)


def entropy_scale(tokenizer: Any) -> float:
    """ln|V|, |V| = ``len(tokenizer)``: rollout entropies are divided by it, as in the AEPO code."""
    vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else int(tokenizer.vocab_size)
    return math.log(max(vocab, 2))


def leading_mean_entropy(entropy: Sequence[float], window: int | None) -> float:
    """Mean token entropy of a reply's first ``window`` tokens (all of them if ``window`` is 0/None)."""
    head = list(entropy[:window]) if window else list(entropy)
    return float(sum(head) / len(head)) if head else 0.0


def premonitor_entropies(probe: Trajectory, window: int | None = None) -> tuple[float, float] | None:
    """(H_root, H_tool_mean) of a probe trajectory; None if it has no reply."""
    turns = [leading_mean_entropy(s.entropy, window) for s in probe.steps]
    if not turns:
        return None
    h_root = turns[0]
    return h_root, (float(np.mean(turns[1:])) if len(turns) > 1 else h_root)


# --------------------------------------------------------------------------------------
# The rollout.
# --------------------------------------------------------------------------------------


@dataclass
class _TaskBook:
    """Budget and branching state of one task."""

    task: TaskSpec
    group_id: str
    m: int
    started: int = 0
    globals_: int = 0
    branches: int = 0
    top_ups: int = 0
    consecutive: int = 0
    runs: list[int] = dataclasses.field(default_factory=list)
    h_root: float | None = None
    h_tool: float | None = None

    def end_round(self, spawned: bool) -> None:
        if spawned:
            self.consecutive += 1
        else:
            if self.consecutive:
                self.runs.append(self.consecutive)
            self.consecutive = 0


def _run_probes(backend: GenerationBackend, tokenizer: Any, cfg: RolloutConfig, pool: EnvPool,
                tasks: Sequence[TaskSpec], iteration: int, seed: int, progress: Any) -> tuple[list[Trajectory], Timing]:
    engine = Lockstep(backend, tokenizer, cfg, pool, iteration, seed, phase=PROBE_PHASE)
    specs = []
    for ti, task in enumerate(tasks):
        gid = f"{group_id_of(iteration, ti)}-probe"
        specs.append((ti, task, new_trajectory(task, gid, gid, cfg.split, kind="probe")))
    check_not_all_failed(engine.start(specs))
    with _round_progress(progress, cfg.max_turns, len(specs)) as advance:
        while engine.live():
            engine.run_round()
            advance(len(engine.live()))
    return engine.trajectories(), engine.timing


def collect_branching(
    backend: GenerationBackend,
    tokenizer: Any,
    cfg: RolloutConfig,
    aepo: AEPOConfig,
    tasks: Sequence[TaskSpec],
    iteration: int,
    seed: int = 0,
    *,
    pool: EnvPool,
    progress: Any = None,
    fork_method: str = "auto",
    rng: np.random.Generator | None = None,
) -> tuple[list[Trajectory], dict[str, Any]]:
    """The AEPO rollout: exactly k trajectories per task (plus one probe each when pre-monitoring).

    ``aepo`` supplies the rollout knobs (``rollout_budget`` k, default ``cfg.group_size``;
    ``dynamic_rollouts``; ``initial_rollouts``; ``beam_size``; ``branch_threshold``;
    ``entropy_weight``; ``consecutive_penalty``; ``premonitor_beta``; ``entropy_window_tokens``,
    the reply tokens a turn entropy averages; ``premonitor_max_tokens``, the probes' reply cap).
    ``fork_method``: ``"auto"`` | ``"state"`` | ``"replay"`` (see :meth:`EnvPool.fork`).
    ``rng`` draws the branching uniforms (default: seeded from ``(seed, iteration)``).

    Returns ``(trajectories, metrics)``: the k trajectories of task 0 (in the order they
    started), task 1, ..., then the probes. Metrics add, per task, ``aepo/global_counts``,
    ``aepo/branch_counts``, ``aepo/m`` and ``aepo/consecutive_runs`` (lengths of runs of
    consecutive branching rounds), and scalar summaries ``aepo/*_mean``.
    """
    t_start = time.perf_counter()
    k = aepo.rollout_budget or cfg.group_size
    if k < 1:
        raise ValueError(f"strategy.aepo.rollout_budget must be >= 1, got {k}")
    window = aepo.entropy_window_tokens or None
    scale = entropy_scale(tokenizer)
    rng = rng if rng is not None else np.random.default_rng(derive_seed(seed, iteration, DECISION_PHASE))
    books = [_TaskBook(task, group_id_of(iteration, ti), m=0) for ti, task in enumerate(tasks)]
    default_m = min(aepo.initial_rollouts or max(1, k // 2), k)

    probes: list[Trajectory] = []
    timing = Timing()
    if aepo.dynamic_rollouts and k > 1:
        probe_cfg = dataclasses.replace(cfg, max_tokens=min(cfg.max_tokens, aepo.premonitor_max_tokens or cfg.max_tokens))
        probes, timing = _run_probes(backend, tokenizer, probe_cfg, pool, tasks, iteration, seed, progress)
        for book, probe in zip(books, probes, strict=True):
            ent = premonitor_entropies(probe, window)
            if ent is None:
                book.m = default_m
                continue
            book.h_root, book.h_tool = ent
            book.m = global_count(k, book.h_root / scale, book.h_tool / scale, aepo.premonitor_beta)
    else:
        for book in books:
            book.m = default_m

    engine = Lockstep(backend, tokenizer, cfg, pool, iteration, seed, phase=MAIN_PHASE)

    def start_globals(ti: int, count: int) -> None:
        book = books[ti]
        specs = []
        for _ in range(count):
            tid = f"{book.group_id}-g{book.globals_}"
            specs.append((ti, book.task, new_trajectory(book.task, book.group_id, tid, cfg.split)))
            book.globals_ += 1
            book.started += 1
        engine.start(specs)

    for ti, book in enumerate(books):
        start_globals(ti, book.m)
    check_not_all_failed(engine.episodes)
    fork_failures = 0

    with _round_progress(progress, cfg.max_turns, k * len(books)) as advance:
        while engine.live():
            replies = engine.generate(engine.live())
            forks = _decide_forks(replies, books, aepo, k, scale, window, rng)
            made = engine.fork(forks, fork_method)
            for (src, _), ep in zip(forks, made, strict=True):
                if ep is None:  # nothing was collected on it yet: free the slot for a top-up
                    books[src.task_index].started -= 1
                    books[src.task_index].branches -= 1
                    fork_failures += 1
            engine.step(replies)
            live_tasks = {ep.task_index for ep in engine.live()}
            for ti, book in enumerate(books):
                if ti not in live_tasks and book.started < k:
                    book.top_ups += k - book.started
                    start_globals(ti, k - book.started)
            advance(len(engine.live()))

    for book in books:
        book.end_round(False)
    main = [ep.traj for ep in sorted(engine.episodes, key=lambda ep: ep.task_index)]
    probe_generate_s = timing.generate_s
    for name in ("generate_s", "env_s", "prompt_s", "generate_calls", "env_steps", "generated_tokens"):
        setattr(timing, name, getattr(timing, name) + getattr(engine.timing, name))
    metrics = rollout_metrics(main, timing, time.perf_counter() - t_start)
    runs = [r for b in books for r in b.runs]

    def mean(values: Sequence[float | None]) -> float:
        vals = [v for v in values if v is not None]
        return float(np.mean(vals)) if vals else math.nan

    metrics.update({
        "aepo/global_counts": [b.globals_ for b in books],
        "aepo/branch_counts": [b.branches for b in books],
        "aepo/m": [b.m for b in books],
        "aepo/consecutive_runs": [list(b.runs) for b in books],
        "aepo/global_mean": mean([b.globals_ for b in books]),
        "aepo/branch_mean": mean([b.branches for b in books]),
        "aepo/top_up_mean": mean([b.top_ups for b in books]),
        "aepo/m_mean": mean([b.m for b in books]),
        "aepo/consecutive_mean": mean(runs) if runs else 0.0,
        "aepo/consecutive_max": float(max(runs)) if runs else 0.0,
        "aepo/fork_failures": float(fork_failures),
        "aepo/h_root_mean": mean([b.h_root for b in books]),
        "aepo/h_tool_mean": mean([b.h_tool for b in books]),
        "aepo/probe_generate_s": probe_generate_s,
    })
    return main + probes, metrics


def _decide_forks(replies: Sequence[Reply], books: list[_TaskBook], cfg: AEPOConfig, k: int, scale: float,
                  window: int | None, rng: np.random.Generator) -> list[tuple[Episode, Trajectory]]:
    """This round's branches: ``(source episode, new trajectory)`` pairs, budget respected.

    Replies are visited in episode order; each reply at turn >= 1 is a candidate for up to
    ``beam_size - 1`` forks while its task has slots left. H_init is the entropy of the
    trajectory's first step, which a branch copied from its parent (so it inherits it). Every
    task's consecutive count ``l`` is updated after the round's decisions.
    """
    forks: list[tuple[Episode, Trajectory]] = []
    spawned = [False] * len(books)
    for reply in replies:
        ep = reply.episode
        book = books[ep.task_index]
        if ep.turn < 1:
            continue
        h_init = leading_mean_entropy(ep.traj.steps[0].entropy, window)
        dh = (leading_mean_entropy(reply.completion.entropy, window) - h_init) / scale
        for _ in range(cfg.beam_size - 1):
            if book.started >= k:
                break
            u = float(rng.random())
            if branch_score(u, dh, book.consecutive, cfg) >= cfg.branch_threshold:
                tid = f"{book.group_id}-b{book.branches}"
                forks.append((ep, new_trajectory(book.task, book.group_id, tid, ep.traj.split, kind="branch",
                                                 parent_id=ep.traj.traj_id)))
                book.branches += 1
                book.started += 1
                spawned[ep.task_index] = True
    for book, s in zip(books, spawned, strict=True):
        book.end_round(s)
    return forks
