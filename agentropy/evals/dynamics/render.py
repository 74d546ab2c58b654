"""Writing dynamics.md (claims table first), dynamics.json (every number) and the figures."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.evals.dynamics.common import (
    _get,
)
from agentropy.evals.dynamics.verdicts import CLAIMS, RULE

# ----------------------------------------------------------------------------------------------
# Writing dynamics.md / dynamics.json
# ----------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """Numbers in dynamics.md: 4 significant digits; NaN (not computable) as 'NaN'."""
    return "NaN" if value is None or not math.isfinite(value) else f"{value:.4g}"


def fmt_summary(name: str, s: Mapping[str, Any]) -> str:
    return f"{name} = {fmt(s['mean'])} [{fmt(s['lo'])}, {fmt(s['hi'])}]"


def to_json(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> null, numpy scalars/arrays -> Python, dict keys -> str."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        return to_json(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped."""
    return str(text).replace("|", "\\|")


def claims_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The claims table; claim, source and statistic are written on the first row of each claim."""
    lines = ["| # | claim | source | statistic | strategy | seeds | measured: mean [95% CI] | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    ids: dict[str, int] = {}
    for row in rows:
        first = row["claim_id"] not in ids
        number = ids.setdefault(row["claim_id"], len(ids) + 1)
        texts = [row["claim"], row["source"], row["statistic"]] if first else ["", "", ""]
        measured = "; ".join(fmt_summary(name, s) for name, s in row["values"].items())
        verdict = row["verdict"] + (f" ({row['note']})" if row["note"] else "")
        cells = [str(number), *texts, row["strategy"], str(row["seeds"]), measured, verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _summary_table(strategies: Mapping[str, Mapping[str, Any]], block: str, names: Sequence[str]) -> list[str]:
    lines = ["| strategy | seeds | " + " | ".join(f"{n}: mean [95% CI]" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for label, s in strategies.items():
        cells = [f"{fmt(s[block][n]['mean'])} [{fmt(s[block][n]['lo'])}, {fmt(s[block][n]['hi'])}]" for n in names]
        lines.append("| " + " | ".join(_cell(c) for c in [label, str(len(s["runs"])), *cells]) + " |")
    return lines


def _per_run_table(strategies: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| strategy | run | " + " | ".join(title for title, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for label, s in strategies.items():
        for r in s["per_run"]:
            cells = []
            for _, key in columns:
                value = _get(r, key)
                cells.append(str(value) if isinstance(value, int) or value is None else fmt(value))
            lines.append("| " + " | ".join(_cell(c) for c in [label, r["run"], *cells]) + " |")
    return lines


def _sizes(sizes: Mapping[Any, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(sizes.items(), key=lambda kv: int(kv[0]))) or "none"


def write_dynamics(result: Mapping[str, Any], out_dir: str | Path, command: str = "") -> dict[str, Path]:
    """Write ``dynamics.json`` (every number), the PNGs and ``dynamics.md`` (claims table first)."""
    from datetime import datetime, timezone

    from agentropy.evals import dynamics_plots as dp

    out = Path(out_dir)
    figures = out / "figures"
    strategies = result["strategies"]
    options = result["meta"]["options"]
    per_run = {label: s["per_run"] for label, s in strategies.items()}
    meta = {**result["meta"], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command}

    made = {
        "exp_law": dp.plot_exp_law(per_run, figures / "exp_law.png", options["reward_key"]),
        "entropy_vs_step": dp.plot_step_series(per_run, "entropy", figures / "entropy_vs_step.png",
                                               "Mean token entropy vs step (mean ± std over seeds)", "entropy (nats)"),
        "drift": dp.plot_drift(per_run, {k: s["drift"]["p"] for k, s in strategies.items()}, figures / "drift.png"),
        "post_observation": dp.plot_post_observation({k: s["post_obs"]["by_turn"] for k, s in strategies.items()},
                                                     figures / "post_observation.png", options["n_head"]),
        "recurrence": dp.plot_recurrence({k: {"first iteration": s["recurrence"]["step_group_sizes_first"],
                                              "last iteration": s["recurrence"]["step_group_sizes_last"]}
                                          for k, s in strategies.items()}, figures / "recurrence.png"),
        "collapse": dp.plot_collapse(per_run, figures / "collapse.png"),
        "repeated": dp.plot_step_series(per_run, "repeated_rate", figures / "repeated_outputs.png",
                                        "Repeated-output rate (same group and turn)", "rate"),
    }
    for label, s in strategies.items():
        m = s["entropy_map"]
        made[f"entropy_map/{label}"] = dp.plot_entropy_map(
            m["turns"], m["steps"], m["values"], figures / f"entropy_map_{dp.safe_name(label)}.png",
            f"{label}: mean token entropy by turn and step (mean over seeds)")

    def fig(key: str) -> str:
        return f"![{key}](figures/{made[key].name})"

    listing = ", ".join(f"{k} ({len(s['runs'])} seeds)" for k, s in strategies.items())
    lines = [f"# Entropy dynamics: {meta['env_id']}", "",
             f"{sum(len(s['runs']) for s in strategies.values())} runs, strategies {listing}. "
             f"Generated {meta['date']} on {meta['machine']}" + (f" by `{command}`" if command else "") + ".",
             "", "## Claims table", ""]
    lines += claims_markdown(result["claims"])
    lines += ["", f"**Verdict rule.** {RULE}", "",
              "Conditions (false-positive and detection rates of each rule: `docs/dynamics/calibration.md`):", ""]
    for claim in CLAIMS:
        conds = "; ".join(
            f"{c.name} {'<' if c.side == 'below' else '>'} {c.threshold:g}" if c.side != "by_corridor"
            else f"{c.name} > {c.threshold:g} without EPO's corridor; with it, a CI above {c.threshold:g} refutes "
                 "the claim" for c in claim.conditions)
        scope = " (runs with no entropy method)" if claim.scope == "baseline" else ""
        gate = " (only runs with a collapse event)" if claim.needs_collapse else ""
        lines.append(f"- {claim.id}: {conds}{scope}{gate}")
    lines += ["", "NaN: not computable (for a CI: fewer than 2 seeds with a value). Every number here is in "
              "`dynamics.json` (NaN as null).", ""]
    if meta.get("entropy_note"):
        lines += [meta["entropy_note"], ""]

    lines += ["## Runs", "", "| strategy | methods | run | seed | steps | first | last |", "|---|---|---|---|---|---|---|"]
    for label, s in strategies.items():
        for r in s["per_run"]:
            lines.append(f"| {label} | {'+'.join(s['methods']) or 'none'} | {r['run']} | {r['seed']} | "
                         f"{len(r['steps'])} | {r['steps'][0] if r['steps'] else 'NaN'} | "
                         f"{r['steps'][-1] if r['steps'] else 'NaN'} |")
    unequal = [k for k, s in strategies.items() if not s["equal_length"]]
    lines += ["", "Runs of different lengths are not truncated: per-run statistics use each run's own steps "
              "(its first and last iteration); curves and maps averaged over seeds are aligned by step, and a "
              "step some runs lack is averaged over the runs that have it (`n_runs` in dynamics.json)."
              + (f" Strategies whose runs differ in length: {', '.join(unequal)}." if unequal else ""), ""]

    lines += [f"## 1. Entropy vs reward: R = -a exp(H) + b (R = {options['reward_key']})", ""]
    lines += _summary_table(strategies, "exp_law", ["a", "b", "r2"])
    lines += ["", *_per_run_table(strategies, [("a", "exp_law.a"), ("b", "exp_law.b"), ("R²", "exp_law.r2"),
                                               ("steps", "exp_law.n")]), "", fig("exp_law"), ""]
    lines += ["## 2. Entropy decline", ""]
    lines += _summary_table(strategies, "decline", ["rho", "fell"])
    lines += ["", fig("entropy_vs_step"), ""]
    lines += ["## 3. Per-turn entropy map", ""] + [fig(f"entropy_map/{k}") for k in strategies] + [""]
    lines += ["## 4. Cumulative per-turn drift D(T) ~ c T^p (last vs first iteration)", "",
              "D(T) sums |H_t(last) - H_t(first)| over turns 0..T-1 while both iterations have at least "
              f"{options['min_turn_replies']} replies at the turn. Sampling noise alone gives p ≈ 1, so the "
              "exponent p is descriptive only. The verdict uses excess_t = (H_t(last) - H_t(first))² minus the "
              "sampling variance of both (split-half noise floor): its mean (excess, nats²) is 0 without drift and "
              "its slope on t is 0 unless the drift grows with the turn.", ""]
    lines += _summary_table(strategies, "drift", ["excess", "slope", "p", "c", "r2"])
    lines += ["", *_per_run_table(strategies, [("p", "drift.p"), ("c", "drift.c"), ("log-log R²", "drift.r2"),
                                               ("turns fitted", "drift.n"), ("from step", "drift.from_step"),
                                               ("at step", "drift.at_step")]), "", fig("drift"), ""]
    lines += [f"## 5. Post-observation entropy (first {options['n_head']} tokens vs the rest)", ""]
    lines += ["'ratio' is the old all-token statistic: its rest includes the closing format tags, whose entropy "
              "is ~0, so it exceeds 1 with no observation effect (descriptive only). The verdict uses content tokens "
              "(format tokens removed): log_ratio = log(head / rest), and new_minus_repeat = head entropy after a "
              "new observation minus after a repeated (no-op) one.", ""]
    tools = any(s["post_obs"].get("after_tool", 0) for s in strategies.values())
    if tools:
        lines += ["In this env the agent calls tools: tool_minus_other = head entropy after a tool's response minus "
                  "after none (the first reply, or after a malformed or failed call).", ""]
    lines += _summary_table(strategies, "post_obs", ["log_ratio", "new_minus_repeat",
                                                     *(["tool_minus_other"] if tools else []), "ratio", "head", "rest"])
    lines += ["", "| strategy | paired replies | replies of 1..n tokens (left out) | empty replies (left out) | "
              "replies after a new observation | after a repeated observation |"
              + (" after a tool response | after none |" if tools else ""),
              "|---|---|---|---|---|---|" + ("---|---|" if tools else "")]
    lines += [f"| {k} | {s['post_obs']['pairs']} | {s['post_obs']['short']} | {s['post_obs']['empty']} | "
              f"{s['post_obs'].get('after_new', 'NaN')} | {s['post_obs'].get('after_repeat', 'NaN')} |"
              + (f" {s['post_obs'].get('after_tool', 0)} | {s['post_obs'].get('after_no_tool', 0)} |" if tools else "")
              for k, s in strategies.items()]
    lines += ["", fig("post_observation"), ""]
    branched = {k: s for k, s in strategies.items() if s.get("branch", {}).get("forks", 0)}
    if branched:
        lines += ["### Where the rollout branched (AEPO)", "",
                  "dH = mean entropy of a reply's first 20 tokens minus the trajectory's first reply's (what AEPO's "
                  "fork score grows with). fork_minus_stay = mean dH of the replies a branch was forked at minus "
                  "that of the other replies at the same turn (turns >= 1), weighted by the forks per turn; a rule "
                  "that ignores entropy gives 0.", ""]
        lines += _summary_table(branched, "branch", ["fork_minus_stay"])
        lines += ["", "| strategy | fork points | other replies at turns >= 1 |", "|---|---|---|"]
        lines += [f"| {k} | {s['branch']['forks']} | {s['branch']['stays']} |" for k, s in branched.items()]
        lines += [""]
    lines += ["## 6. State recurrence within a group", ""]
    lines += ["Fraction of distinct (group, anchor) states reached by two or more trajectories of the group, "
              "at each run's first and last iteration; size: mean step-group size (steps sharing an anchor); "
              "group_size: trajectories per group at the first iteration.", ""]
    lines += _summary_table(strategies, "recurrence",
                            ["fraction_first", "fraction_last", "change", "size_first", "size_last", "group_size"])
    lines += ["", "The same without the initial state and no-op observations (an anchor unchanged by the action), "
              "which recur by construction; the verdicts use these:", ""]
    lines += _summary_table(strategies, "recurrence", ["informative_first", "informative_last", "informative_change",
                                                       "informative_size_first"])
    lines += ["", "| strategy | step-group sizes, first iteration, all states (size: count) | "
              "without initial state and no-ops |", "|---|---|---|"]
    lines += [f"| {k} | {_sizes(s['recurrence']['step_group_sizes_first'])} | "
              f"{_sizes(s['recurrence'].get('informative_step_group_sizes_first', {}))} |"
              for k, s in strategies.items()]
    lines += ["", fig("recurrence"), ""]
    lines += [f"## 7. Collapse signals (w = {options['window']}) and repeated outputs", "",
              "Largest grad-norm spike of each run (above the run's median, not the first step) and the change of "
              "reward std and entropy over the w iterations up to it. The echo-trap verdicts use only runs with a "
              "collapse event (entropy below 0.5 x its first value) and subtract the run's mean change over "
              "stretches of the same length (*_excess), since a declining series falls before any step.", ""]
    lines += ["| strategy | runs with a collapse event |", "|---|---|"]
    lines += [f"| {k} | {s['collapse'].get('collapsed_runs', 0)} of {len(s['runs'])} |" for k, s in strategies.items()]
    lines += [""]
    lines += _summary_table(strategies, "collapse", ["d_reward_std_excess", "d_entropy_excess", "d_reward_std",
                                                     "d_entropy", "spike_ratio"])
    lines += ["", *_per_run_table(strategies, [("spike step", "collapse.spike_step"),
                                               ("spike / median", "collapse.spike_ratio"),
                                               ("Δ reward std", "collapse.d_reward_std"),
                                               ("Δ entropy", "collapse.d_entropy")]), ""]
    lines += ["Repeated-output rate: replies identical to another reply of the same group at the same turn, "
              "at each run's first and last iteration. Without a collapse a rising rate is policy sharpening, "
              "not the echo trap.", ""]
    lines += _summary_table(strategies, "repeated", ["first", "last", "change"])
    lines += ["", fig("collapse"), fig("repeated"), ""]

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "dynamics.json"
    payload = {**result, "meta": meta, "rule": RULE, "figures": {k: str(p.relative_to(out)) for k, p in made.items()}}
    json_path.write_text(json.dumps(to_json(payload), indent=1, allow_nan=False))
    md_path = out / "dynamics.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"md": md_path, "json": json_path, **made}

