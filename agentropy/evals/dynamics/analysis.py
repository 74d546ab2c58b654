"""The analysis: every per-run number, then summaries over seeds per strategy."""

from __future__ import annotations

import math
import platform
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agentropy.evals.dynamics.branching import ForkContrast
from agentropy.evals.dynamics.common import (
    CI_LEVEL,
    AnalysisError,
    _get,
)
from agentropy.evals.dynamics.records import RunData
from agentropy.evals.dynamics.statistics import (
    PostObsContrast,
    PostObsCounts,
    Recurrence,
    change_before_spike_vs_any,
    collapse_signals,
    collapsed,
    cumulative_drift,
    drift_vs_noise,
    entropy_decline,
    entropy_map,
    fit_exp_law,
    fit_power_law,
    mean_ci,
    pool_post_observation,
)
from agentropy.evals.dynamics.verdicts import claims_table
from agentropy.training.entropy_estimate import estimate_footnote

#: A run "collapsed" when its mean token entropy fell below this fraction of its first value
#: (the bench report's definition); the echo-trap statistics are computed only for such runs.
COLLAPSE_RATIO = 0.5

# ----------------------------------------------------------------------------------------------
# The analysis: per run, then per strategy
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    n_head: int = 4  # head tokens of the post-observation split
    window: int = 5  # steps before the grad-norm spike
    reward_key: Literal["success_rate", "return_mean"] = "success_rate"  # R of the entropy-reward law
    min_turn_replies: int = 4  # drift uses turns with at least this many replies at both steps


def analyze_run(run: RunData, options: Options) -> dict[str, Any]:
    """Every per-run number (plain floats, NaN where not computable)."""
    steps, entropy = run.series("entropy_mean")
    _, reward = run.series(options.reward_key)
    _, grad = run.series("grad_norm")
    _, reward_std = run.series("reward_std")
    law = fit_exp_law(entropy, reward)
    decline = entropy_decline(steps, entropy)

    traj_steps = sorted(run.iterations)
    first, last = run.iterations[traj_steps[0]], run.iterations[traj_steps[-1]]
    drift = cumulative_drift(*(
        {t: h for t, h in it.turn_entropy.items() if it.turn_replies.get(t, 0) >= options.min_turn_replies}
        for it in (last, first)))
    power = fit_power_law(drift)
    usable = [t for t in first.turn_entropy
              if min(first.turn_replies.get(t, 0), last.turn_replies.get(t, 0)) >= options.min_turn_replies]
    vs_noise = drift_vs_noise(first.turn_entropy, last.turn_entropy, first.turn_halves, last.turn_halves, usable)
    contrast = PostObsContrast()
    for it in run.iterations.values():
        contrast.add(it.post_contrast)

    post_by_turn: dict[int, PostObsCounts] = defaultdict(PostObsCounts)
    for it in run.iterations.values():
        for t, c in it.post_obs.items():
            post_by_turn[t].add(c)
    post = pool_post_observation(post_by_turn)
    forks = ForkContrast()
    for it in run.iterations.values():
        forks.add(it.forks)

    signals = collapse_signals(steps, grad, reward_std, entropy, options.window)
    spike = steps.index(signals.spike_step) if signals.spike_step is not None else -1
    collapse_event = collapsed(entropy, COLLAPSE_RATIO)
    rep_first = first.repeated / first.replies if first.replies else math.nan
    rep_last = last.repeated / last.replies if last.replies else math.nan
    return {
        "run": run.name, "seed": run.seed, "steps": steps, "first_step": traj_steps[0], "last_step": traj_steps[-1],
        "entropy": entropy, "reward": reward, "grad_norm": grad, "reward_std": reward_std,
        "exp_law": asdict(law),
        "decline": asdict(decline),
        "turn_entropy": {k: run.iterations[k].turn_entropy for k in traj_steps},
        "drift": {"from_step": traj_steps[0], "at_step": traj_steps[-1], "D": drift.tolist(), **asdict(power),
                  "excess_mean": vs_noise.mean_excess, "excess_slope": vs_noise.slope, "excess_turns": vs_noise.n,
                  "excess_by_turn": dict(zip(vs_noise.turns, vs_noise.excess, strict=True))},
        "post_obs": {
            "ratio": post.ratio, "head": post.head_mean, "rest": post.rest_mean,
            "pairs": post.pairs, "short": post.short, "empty": post.empty,
            "content_log_ratio": contrast.log_ratio, "content_head": contrast.content.head_mean,
            "content_rest": contrast.content.rest_mean, "content_pairs": contrast.content.pairs,
            "new_minus_repeat": contrast.new_minus_repeat, "after_new": contrast.head_new_n,
            "after_repeat": contrast.head_repeat_n, "tool_minus_other": contrast.tool_minus_other,
            "after_tool": contrast.head_tool_n, "after_no_tool": contrast.head_other_n,
            "by_turn": {t: {"ratio": c.ratio, "head": c.head_mean, "rest": c.rest_mean, "pairs": c.pairs,
                            "short": c.short, "empty": c.empty} for t, c in sorted(post_by_turn.items())},
        },
        "branch": {"fork_minus_stay": forks.fork_minus_stay, "forks": forks.forks, "stays": forks.stays},
        "recurrence": {
            "first": _recurrence_json(first.recurrence), "last": _recurrence_json(last.recurrence),
            "change": last.recurrence.fraction - first.recurrence.fraction,
            "informative_first": _recurrence_json(first.recurrence_informative),
            "informative_last": _recurrence_json(last.recurrence_informative),
            "informative_change": last.recurrence_informative.fraction - first.recurrence_informative.fraction,
            "trajectories_per_group": first.trajectories / first.recurrence.groups if first.recurrence.groups else math.nan,
        },
        "collapse": {**asdict(signals), "window": options.window, "collapsed": collapse_event,
                     # the echo-trap statistics only where a collapse happened (NaN otherwise)
                     "d_entropy_excess": change_before_spike_vs_any(entropy, spike, options.window)
                     if collapse_event else math.nan,
                     "d_reward_std_excess": change_before_spike_vs_any(reward_std, spike, options.window)
                     if collapse_event else math.nan},
        "repeated": {"first": rep_first, "last": rep_last, "change": rep_last - rep_first,
                     "change_if_collapsed": rep_last - rep_first if collapse_event else math.nan},
        "repeated_rate": [run.iterations[k].repeated / run.iterations[k].replies
                          if k in run.iterations and run.iterations[k].replies else math.nan for k in steps],
    }


def _recurrence_json(r: Recurrence) -> dict[str, Any]:
    return {"fraction": r.fraction, "states": r.states, "recurring": r.recurring, "groups": r.groups,
            "mean_step_group_size": r.mean_step_group_size, "step_group_sizes": r.step_group_sizes}


def _summaries(per_run: Sequence[Mapping[str, Any]], paths: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """{name: Summary json} for each name -> dotted path into the per-run dicts."""
    return {name: mean_ci([_get(r, path) for r in per_run]).to_json() for name, path in paths.items()}


def _aligned(per_run: Sequence[Mapping[str, Any]], key: str) -> dict[str, list]:
    """Mean over runs of a per-step series, aligned by step; n_runs per step."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in per_run:
        for k, v in zip(r["steps"], r[key], strict=True):
            if math.isfinite(v):
                by_step[k].append(v)
    steps = sorted(by_step)
    return {"steps": steps, "mean": [float(np.mean(by_step[k])) for k in steps],
            "n_runs": [len(by_step[k]) for k in steps]}


def analyze_strategy(runs: Sequence[RunData], options: Options) -> dict[str, Any]:
    """Per-run numbers of one strategy's runs and their summaries over seeds."""
    per_run = [analyze_run(r, options) for r in sorted(runs, key=lambda r: (r.seed, r.name))]
    emap = entropy_map([r["turn_entropy"] for r in per_run])
    post_turns = sorted({t for r in per_run for t in r["post_obs"]["by_turn"]})
    lengths = {r["run"]: len(r["steps"]) for r in per_run}
    sizes_first: Counter[int] = Counter()
    sizes_last: Counter[int] = Counter()
    informative_first: Counter[int] = Counter()
    for r in per_run:
        sizes_first.update(r["recurrence"]["first"]["step_group_sizes"])
        sizes_last.update(r["recurrence"]["last"]["step_group_sizes"])
        informative_first.update(r["recurrence"]["informative_first"]["step_group_sizes"])
    return {
        "runs": [r["run"] for r in per_run],
        "seeds": [r["seed"] for r in per_run],
        "methods": sorted({m for r in runs for m in r.methods}),
        "baseline": all(r.baseline for r in runs),
        "corridor": all("epo" in r.methods for r in runs),
        "steps_per_run": lengths,
        "equal_length": len(set(lengths.values())) <= 1,
        "per_run": per_run,
        "exp_law": _summaries(per_run, {"a": "exp_law.a", "b": "exp_law.b", "r2": "exp_law.r2"}),
        "decline": _summaries(per_run, {"rho": "decline.rho", "fell": "decline.fell"}),
        "entropy_by_step": _aligned(per_run, "entropy"),
        "entropy_map": {"turns": emap.turns, "steps": emap.steps, "values": emap.values.tolist(),
                        "n_runs": emap.n_runs.tolist()},
        "drift": _summaries(per_run, {"p": "drift.p", "c": "drift.c", "r2": "drift.r2",
                                      "excess": "drift.excess_mean", "slope": "drift.excess_slope"}),
        "post_obs": {
            **_summaries(per_run, {"ratio": "post_obs.ratio", "head": "post_obs.head", "rest": "post_obs.rest",
                                   "log_ratio": "post_obs.content_log_ratio",
                                   "new_minus_repeat": "post_obs.new_minus_repeat",
                                   "tool_minus_other": "post_obs.tool_minus_other"}),
            "after_new": sum(r["post_obs"]["after_new"] for r in per_run),
            "after_tool": sum(r["post_obs"].get("after_tool", 0) for r in per_run),
            "after_no_tool": sum(r["post_obs"].get("after_no_tool", 0) for r in per_run),
            "after_repeat": sum(r["post_obs"]["after_repeat"] for r in per_run),
            "pairs": sum(r["post_obs"]["pairs"] for r in per_run),
            "short": sum(r["post_obs"]["short"] for r in per_run),
            "empty": sum(r["post_obs"]["empty"] for r in per_run),
            "by_turn": {t: mean_ci([r["post_obs"]["by_turn"][t]["ratio"] for r in per_run
                                    if t in r["post_obs"]["by_turn"]]).to_json() for t in post_turns},
        },
        "branch": {**_summaries(per_run, {"fork_minus_stay": "branch.fork_minus_stay"}),
                   "forks": sum(r["branch"]["forks"] for r in per_run),
                   "stays": sum(r["branch"]["stays"] for r in per_run)},
        "recurrence": {
            **_summaries(per_run, {"fraction_first": "recurrence.first.fraction",
                                   "fraction_last": "recurrence.last.fraction",
                                   "change": "recurrence.change",
                                   "size_first": "recurrence.first.mean_step_group_size",
                                   "size_last": "recurrence.last.mean_step_group_size",
                                   "group_size": "recurrence.trajectories_per_group",
                                   "informative_first": "recurrence.informative_first.fraction",
                                   "informative_last": "recurrence.informative_last.fraction",
                                   "informative_change": "recurrence.informative_change",
                                   "informative_size_first": "recurrence.informative_first.mean_step_group_size"}),
            "informative_step_group_sizes_first": dict(sorted(informative_first.items())),
            "step_group_sizes_first": dict(sorted(sizes_first.items())),
            "step_group_sizes_last": dict(sorted(sizes_last.items())),
        },
        "collapse": {**_summaries(per_run, {"d_reward_std": "collapse.d_reward_std", "d_entropy": "collapse.d_entropy",
                                            "spike_ratio": "collapse.spike_ratio",
                                            "d_entropy_excess": "collapse.d_entropy_excess",
                                            "d_reward_std_excess": "collapse.d_reward_std_excess"}),
                     "collapsed_runs": sum(bool(r["collapse"]["collapsed"]) for r in per_run)},
        "repeated": _summaries(per_run, {"first": "repeated.first", "last": "repeated.last",
                                         "change": "repeated.change",
                                         "change_if_collapsed": "repeated.change_if_collapsed"}),
    }


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, so that a committed
    ``dynamics.json`` names its runs as a clone of the repository sees them."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def analyze(runs: Sequence[RunData], options: Options | None = None) -> dict[str, Any]:
    """The whole analysis: strategies side by side, then the claims table."""
    options = options or Options()
    if not runs:
        raise AnalysisError("no runs to analyze")
    by_strategy: dict[str, list[RunData]] = defaultdict(list)
    for run in runs:
        by_strategy[run.strategy].append(run)
    strategies = {label: analyze_strategy(rs, options) for label, rs in sorted(by_strategy.items())}
    result = {
        "meta": {
            "env_id": runs[0].env_id,
            "runs": [_shown_path(r.path) for r in runs],
            "options": asdict(options),
            "ci_level": CI_LEVEL,
            "machine": f"{platform.node()} ({platform.platform()}, {platform.processor() or platform.machine()})",
            "entropy_note": estimate_footnote(r for run in runs for r in run.records.values()),
        },
        "strategies": strategies,
    }
    result["claims"] = claims_table(strategies)
    return result


