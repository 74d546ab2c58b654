"""Reports: ``report.md`` with tables and PNG plots, for one run or a whole benchmark.

Every number in a report is read from the runs' ``metrics.jsonl``; nothing is typed in.
A bench report opens with the comparison against a named baseline arm: per metric, the mean
difference paired on seeds, its 95 % t interval, the paired t-test p and the minimum difference
the run could detect at 80 % power (see ``comparison.py``). The descriptive table below it gives
mean +- sample SD (``ddof=1``) over seeds; a strategy "collapsed" in a run when its final training
entropy fell below ``COLLAPSE_RATIO`` times its first-iteration entropy. "entropy last/first"
is that ratio itself, the direct measure of GRPO's entropy collapse; "outside corridor" is the
mean fraction of reply tokens below / above EPO's corridor over the steps (EPO runs only).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.evals import plots
from agentropy.evals.comparison import (
    COMPARED_METRICS,
    TOOL_METRICS,
    compare_to_baseline,
    render_comparison,
    rows_as_dicts,
)
from agentropy.evals.stats import fmt_p, format_mean_sd, is_finite_number, mcnemar, paired_difference
from agentropy.training.entropy_estimate import estimate_footnote
from agentropy.training.run_log import read_metrics

COLLAPSE_RATIO = 0.5

# run_summary key -> ``tool/<name>`` key of the final held-out evaluation (tool-using envs only).
TOOL_SUMMARY_KEYS = {
    "tool_answer_f1": "answer_f1",
    "tool_answer_em": "answer_em",
    "tool_calls_per_episode": "calls_per_episode",
    "tool_malformed_per_episode": "malformed_per_episode",
    "tool_gold_all_hops": "gold_all_hops",
}


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Headline numbers of one run folder."""
    records = read_metrics(run_dir)
    train = [r for r in records if r["phase"] == "train"]
    evals = [r for r in records if r["phase"] == "eval"]
    sft_eval = [r for r in evals if r["iteration"] == -1]
    rl_evals = [r for r in evals if r["iteration"] >= 0] or sft_eval
    entropies = [r["entropy_mean"] for r in train if isinstance(r.get("entropy_mean"), (int, float))]

    def step_mean(key: str) -> float | None:
        values = [r[key] for r in train if is_finite_number(r.get(key))]
        return float(np.mean(values)) if values else None

    final_eval = rl_evals[-1] if rl_evals else {}
    tool = {key: (float(final_eval[f"tool/{name}"]) if is_finite_number(final_eval.get(f"tool/{name}")) else None)
            for key, name in TOOL_SUMMARY_KEYS.items()}
    gaps = [r["aepo/h_tool_mean"] - r["aepo/h_root_mean"] for r in train
            if is_finite_number(r.get("aepo/h_tool_mean")) and is_finite_number(r.get("aepo/h_root_mean"))]

    return {
        "sft_success": sft_eval[0]["success_rate"] if sft_eval else None,
        "final_success": rl_evals[-1]["success_rate"] if rl_evals else None,
        "best_success": max(r["success_rate"] for r in rl_evals) if rl_evals else None,
        "entropy_mean": float(np.mean(entropies)) if entropies else None,
        "entropy_var": float(np.var(entropies)) if entropies else None,
        "entropy_first": entropies[0] if entropies else None,
        "entropy_last": entropies[-1] if entropies else None,
        "entropy_ratio": entropies[-1] / entropies[0] if entropies and entropies[0] > 0 else None,
        "corridor_low": step_mean("epo/viol_low"),
        "corridor_high": step_mean("epo/viol_high"),
        "collapsed": bool(entropies and entropies[-1] < COLLAPSE_RATIO * entropies[0]),
        "wall_s": float(sum(r.get("time_s", 0.0) for r in train)),
        "tokens": float(sum(r.get("train_tokens", 0.0) for r in train)),
        "iterations": len(train),
        "eval_tasks": rl_evals[-1].get("episodes") if rl_evals else None,
        **tool,
        "aepo_branches": step_mean("aepo/branch_mean"),
        "aepo_globals": step_mean("aepo/global_mean"),
        "aepo_h_root": step_mean("aepo/h_root_mean"),
        "aepo_h_tool": step_mean("aepo/h_tool_mean"),
        "aepo_h_tool_minus_root": float(np.mean(gaps)) if gaps else None,
    }


def _pm(values: Sequence[float | None], fmt: str = "{:.3f}") -> str:
    """Mean ± sample SD (ddof=1) over seeds."""
    return format_mean_sd(values, fmt)


def _made_by_lines(run_dir: Path) -> list[str]:
    """Where ``run.json`` records the run's code and machine: say so (the same config and seed give
    other floats under other torch kernels or thread counts)."""
    from agentropy.provenance import describe
    from agentropy.training.run_folder import run_provenance

    record = run_provenance(run_dir)
    return ["", f"Made by: {describe(record)} (`run.json`)."] if record else []


def write_run_report(run_dir: str | Path) -> Path:
    """``report.md`` + plots for one training run."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if r["phase"] == "train"]
    evals = [r for r in records if r["phase"] == "eval"]
    s = run_summary(run_dir)
    lines = [f"# Run report: {run_dir.name}", "",
             "| held-out success after SFT | after RL | best | mean entropy | entropy variance | tokens | wall s |",
             "|---|---|---|---|---|---|---|",
             f"| {_fmt(s['sft_success'])} | {_fmt(s['final_success'])} | {_fmt(s['best_success'])} | "
             f"{_fmt(s['entropy_mean'])} | {_fmt(s['entropy_var'], '{:.2e}')} | {s['tokens']:.0f} | {s['wall_s']:.1f} |",
             "", "## Per iteration", "",
             "| iteration | train success | return | length | entropy | clip frac | grad norm |",
             "|---|---|---|---|---|---|---|"]
    for r in train:
        lines.append(f"| {r['iteration']} | {_fmt(r.get('success_rate'))} | {_fmt(r.get('return_mean'))} | "
                     f"{_fmt(r.get('length_mean'), '{:.1f}')} | {_fmt(r.get('entropy_mean'))} | "
                     f"{_fmt(r.get('clipfrac'))} | {_fmt(r.get('grad_norm'))} |")
    lines += ["", "## Held-out evaluations", "", "| after iteration | success | return | length |", "|---|---|---|---|"]
    for r in evals:
        label = "SFT" if r["iteration"] == -1 else str(r["iteration"])
        lines.append(f"| {label} | {_fmt(r['success_rate'])} | {_fmt(r.get('return_mean'))} | "
                     f"{_fmt(r.get('length_mean'), '{:.1f}')} |")
    note = estimate_footnote(records)
    if note:
        lines += ["", note]
    lines += _tool_use_lines(evals)
    lines += _made_by_lines(run_dir)
    figures = run_dir / "figures"
    runs = {run_dir.name: [records]}
    made = [
        plots.plot_metric_by_step({run_dir.name: [train]}, "entropy_mean", figures / "entropy_vs_step.png",
                                  "Token entropy vs training step", "entropy (nats)"),
        plots.plot_metric_by_step({run_dir.name: [train]}, "success_rate", figures / "success_vs_step.png",
                                  "Training success vs step", "success rate"),
        plots.plot_entropy_by_turn(runs, figures / "entropy_vs_turn.png"),
    ]
    lines += ["", "## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in made]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tool_use_lines(evals: Sequence[dict[str, Any]]) -> list[str]:
    """Held-out tool use per evaluation, for envs that report it (``tool/...`` keys)."""
    rows = [r for r in evals if "tool/episodes" in r]
    if not rows:
        return []
    hops = sorted({int(k.removeprefix("tool/gold_hop")) for r in rows for k in r
                   if k.startswith("tool/gold_hop") and k.removeprefix("tool/gold_hop").isdigit()})
    header = ["after iteration", "tool calls / episode", "malformed / episode", "service errors", "answer EM",
              "answer F1", *[f"gold hop {h}" for h in hops], "gold all hops"]
    lines = ["", "## Tool use (held-out)", "",
             "Gold hop i: share of the episodes whose question has at least i hops that retrieved hop i's "
             "gold article (in search results or opened). EM and F1 count an unanswered episode as 0.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        label = "SFT" if r["iteration"] == -1 else str(r["iteration"])
        cells = [label, _fmt(r.get("tool/calls_per_episode"), "{:.2f}"), _fmt(r.get("tool/malformed_per_episode"), "{:.2f}"),
                 _fmt(r.get("tool/service_errors"), "{:.0f}"), _fmt(r.get("tool/answer_em")), _fmt(r.get("tool/answer_f1")),
                 *[_fmt(r.get(f"tool/gold_hop{h}")) for h in hops], _fmt(r.get("tool/gold_all_hops"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(value: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _corridor(sums: Sequence[dict[str, Any]]) -> str:
    low = [s.get("corridor_low") for s in sums]
    if all(v is None for v in low):
        return "n/a"
    return f"{_pm(low)} / {_pm([s.get('corridor_high') for s in sums])}"


def _run_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _methods(run_dir: Path) -> str:
    """The run's enabled methods over its advantage estimator, so that rows that differ by one
    method (an ablation ladder) show which one."""
    from agentropy.evals.dynamics import enabled_methods

    config = _run_config(run_dir)
    estimator = ((config.get("strategy") or {}).get("advantage") or {}).get("estimator", "grpo")
    return " + ".join([str(estimator), *enabled_methods(config)])


def _corridor_bounds(run_dir: Path) -> tuple[float, float]:
    """EPO's (kappa_l, kappa_r) from the run's saved config; a run without EPO gets the defaults,
    so its plot shows where its entropy sits against the corridor EPO would have used."""
    from agentropy.training.strategy_config import EPOConfig

    epo = (_run_config(run_dir).get("strategy") or {}).get("epo") or {}
    return float(epo.get("kappa_l", EPOConfig.kappa_l)), float(epo.get("kappa_r", EPOConfig.kappa_r))


def _final_task_outcomes(records: Sequence[dict[str, Any]]) -> list[int] | None:
    """Per-task 0/1 outcomes of the final held-out evaluation, when the run logged them
    (``success_by_task``); success is then also compared task by task (McNemar)."""
    evals = [r for r in records if r["phase"] == "eval" and r["iteration"] >= 0]
    outcomes = evals[-1].get("success_by_task") if evals else None
    return [int(x) for x in outcomes] if isinstance(outcomes, list) and outcomes else None


def _task_level_success(records_by_arm: dict[str, dict[int, list[dict[str, Any]]]], baseline: str) -> list[str]:
    """McNemar rows on (seed, task) units, for arms whose runs logged per-task outcomes."""
    lines: list[str] = []
    base = records_by_arm.get(baseline, {})
    for arm, runs in records_by_arm.items():
        if arm == baseline:
            continue
        a: list[int] = []
        b: list[int] = []
        for seed, records in runs.items():
            mine, theirs = _final_task_outcomes(records), _final_task_outcomes(base.get(seed, []))
            if mine and theirs and len(mine) == len(theirs):
                a += mine
                b += theirs
        if a:
            r = mcnemar(a, b)
            lines.append(f"| {arm} | {r.p_a:.3f} | {r.p_b:.3f} | {r.diff:+.3f} | [{r.lo:.3f}, {r.hi:.3f}] | "
                         f"{r.b} / {r.c} | {r.p:.3g} ({r.test}) | {r.n} |")
    if not lines:
        return []
    return ["", "Held-out success task by task (units = seed x task pairs, McNemar; CI: Newcombe paired):", "",
            f"| arm | arm success | {baseline} success | difference | 95 % CI | only arm / only {baseline} | p | units |",
            "|---|---|---|---|---|---|---|---|", *lines, "",
            "The units of one seed share that seed's training run, so this test holds the runs fixed: it says "
            "whether these runs' policies differ on these tasks, not whether runs with other seeds would. For "
            "that, read the 'held-out success (final)' row of the paired-seed table above (n = seeds); a "
            "difference that one seed's run drives shows there as a wide interval."]


def _aepo_lines(per_seed: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """AEPO's rollout, per arm that ran it: how much it branched, and, where it pre-monitored,
    its premise measured on its own probes: the entropy of replies after a tool response (an
    observation) against the first reply's, paired within each run (one value per seed: the
    run's mean over iterations)."""
    rows = []
    for arm, runs in per_seed.items():
        sums = [s for s in runs.values() if s.get("aepo_branches") is not None]
        if not sums:
            continue
        probed = [s for s in sums if s.get("aepo_h_tool_minus_root") is not None]
        cells = ["n/a (no pre-monitoring)", "n/a", "n/a", "n/a", "n/a"]
        if probed:
            gap = paired_difference([s["aepo_h_tool"] for s in probed], [s["aepo_h_root"] for s in probed],
                                    "H_tool", "H_root")
            cells = [_pm([s["aepo_h_root"] for s in probed]), _pm([s["aepo_h_tool"] for s in probed]),
                     f"{gap.mean_diff:+.3f}",
                     "n/a" if not math.isfinite(gap.lo) else f"[{gap.lo:+.3f}, {gap.hi:+.3f}]", fmt_p(gap.p)]
        rows.append(f"| {arm} | {len(sums)} | {_pm([s['aepo_branches'] for s in sums], '{:.2f}')} | "
                    f"{_pm([s['aepo_globals'] for s in sums], '{:.2f}')} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "### AEPO's rollout", "",
            "Branches and global samples per task (k in all), mean over iterations. With entropy pre-monitoring "
            "(`aepo.dynamic_rollouts`) AEPO probes each task once per iteration: H_root is the mean token entropy "
            "of the probe's first reply, H_tool the mean over its replies to a tool response (an observation), "
            "both over the first tokens of each reply as AEPO's code does; tasks whose H_tool is higher get fewer "
            "global samples and more branches. The difference is paired within each run, one value per seed "
            "(the run's mean over iterations); mean ± sample SD over seeds. Where the rollout forked, against "
            "the entropy of the replies it forked at, is measured by `agentropy analyze` (branch_entropy).", "",
            "| arm | seeds | branches per task | global samples per task | H_root | H_tool | H_tool - H_root | "
            "95 % CI (t) | p (paired t) |",
            "|---|---|---|---|---|---|---|---|---|", *rows]


def write_bench_report(bench_dir: str | Path, cells: Sequence[Any], baseline: str | None = None,
                       commands: Sequence[str] = ()) -> Path:
    """``report.md`` + plots comparing strategies over seeds, per environment.

    ``baseline`` names the arm every other arm is compared with (default: the first strategy);
    ``commands``, when given, are named at the top as the ones that made the report, in order."""
    bench_dir = Path(bench_dir)
    figures = bench_dir / "figures"
    by_env: dict[str, dict[str, list[Any]]] = {}
    for cell in cells:
        by_env.setdefault(cell.env, {}).setdefault(cell.strategy, []).append(cell)
    lines = [f"# Benchmark report: {bench_dir.name}", "",
             "Every arm starts from the same SFT checkpoint and is scored on the same fixed held-out test "
             "tasks, so arms are compared seed by seed against the baseline arm first. The descriptive "
             "table after it gives mean ± sample SD (ddof=1) over seeds. 'collapsed' counts seeds whose final "
             f"training entropy fell below {COLLAPSE_RATIO} x its first-iteration entropy.", "",
             *(["Made by " + ", then ".join(f"`{c}`" for c in commands) + ".", ""] if commands else [])]
    summary: dict[str, Any] = {}
    for env, strategies in by_env.items():
        base = baseline if baseline is not None else next(iter(strategies))
        if base not in strategies:
            raise ValueError(f"baseline arm {base!r} is not a strategy of env {env!r}: {sorted(strategies)}")
        table = ["| strategy | methods | seeds | SFT success | final success | best success | entropy mean | "
                 "entropy var across steps | entropy last/first | collapsed | outside corridor low / high | "
                 "wall s | tokens |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        train_runs: dict[str, list[list[dict[str, Any]]]] = {}
        all_runs: dict[str, list[list[dict[str, Any]]]] = {}
        eval_runs: dict[str, list[list[dict[str, Any]]]] = {}
        per_seed: dict[str, dict[int, dict[str, Any]]] = {}
        records_by_seed: dict[str, dict[int, list[dict[str, Any]]]] = {}
        first_run: dict[str, Path] = {}  # a run folder per strategy, for its saved config
        for strategy, arm_cells in strategies.items():
            present = [c for c in arm_cells if (bench_dir / c.name / "metrics.jsonl").exists()]
            dirs = [bench_dir / c.name for c in present]
            sums = [run_summary(d) for d in dirs]
            if dirs:
                first_run[strategy] = dirs[0]
            summary[f"{strategy}/{env}"] = sums
            records = [read_metrics(d) for d in dirs]
            per_seed[strategy] = {int(c.seed): s for c, s in zip(present, sums, strict=True)}
            records_by_seed[strategy] = {int(c.seed): r for c, r in zip(present, records, strict=True)}
            all_runs[strategy] = records
            train_runs[strategy] = [[r for r in rec if r["phase"] == "train"] for rec in records]
            eval_runs[strategy] = [[r for r in rec if r["phase"] == "eval" and r["iteration"] >= 0] for rec in records]
            table.append(
                f"| {strategy} | {_methods(first_run[strategy]) if dirs else 'n/a'} | {len(sums)} | "
                f"{_pm([s['sft_success'] for s in sums])} | "
                f"{_pm([s['final_success'] for s in sums])} | {_pm([s['best_success'] for s in sums])} | "
                f"{_pm([s['entropy_mean'] for s in sums])} | {_pm([s['entropy_var'] for s in sums], '{:.2e}')} | "
                f"{_pm([s.get('entropy_ratio') for s in sums])} | {sum(s['collapsed'] for s in sums)}/{len(sums)} | "
                f"{_corridor(sums)} | {_pm([s['wall_s'] for s in sums], '{:.0f}')} | "
                f"{_pm([s['tokens'] for s in sums], '{:.0f}')} |")
        seeds = sorted({seed for runs in per_seed.values() for seed in runs})
        tasks = sorted({s["eval_tasks"] for sums in per_seed.values() for s in sums.values() if s.get("eval_tasks")})
        has_tools = any(s.get("tool_answer_f1") is not None for runs in per_seed.values() for s in runs.values())
        rows = compare_to_baseline(per_seed, base, COMPARED_METRICS + (TOOL_METRICS if has_tools else ()))
        summary[f"vs_baseline/{env}"] = {"baseline": base, "seeds": seeds, "eval_tasks": tasks,
                                         "rows": rows_as_dicts(rows)}
        note = estimate_footnote(r for runs in all_runs.values() for rec in runs for r in rec)
        lines += [f"## {env}", "",
                  f"Seeds: {', '.join(map(str, seeds)) or 'none'}; held-out tasks per evaluation: "
                  f"{', '.join(map(str, tasks)) or 'n/a'} (the same tasks for every arm); baseline arm: `{base}`.",
                  "", f"### vs baseline ({base})", "", *render_comparison(rows, base),
                  *_task_level_success(records_by_seed, base), *_aepo_lines(per_seed),
                  "", "### All arms (mean ± sample SD over seeds)", "", *table, *(["", note] if note else [])]
        made = [
            plots.plot_metric_by_step(train_runs, "entropy_mean", figures / f"{env}_entropy_vs_step.png",
                                      f"{env}: token entropy vs step", "entropy (nats)"),
            plots.plot_metric_by_step(train_runs, "success_rate", figures / f"{env}_train_success_vs_step.png",
                                      f"{env}: training success vs step", "success rate"),
            plots.plot_metric_by_step(eval_runs, "success_rate", figures / f"{env}_heldout_success_vs_step.png",
                                      f"{env}: held-out success vs step", "success rate"),
            plots.plot_entropy_by_turn(train_runs, figures / f"{env}_entropy_vs_turn.png"),
        ]
        for key, title in [("spear/buffer_size", "SPEAR replay buffer size"),
                           ("aepo/branch_mean", "AEPO branches per task"),
                           ("epo/viol_low", "EPO: fraction of tokens below the corridor"),
                           ("epo/viol_high", "EPO: fraction of tokens above the corridor")]:
            runs = {s: r for s, r in train_runs.items() if any(key in x for rr in r for x in rr)}
            if runs:
                made.append(plots.plot_metric_by_step(runs, key, figures / f"{env}_{key.replace('/', '_')}.png",
                                                      f"{env}: {title}", key))
        for strategy, runs in train_runs.items():
            if runs and any("epo/reference_mean" in x and x["epo/reference_mean"] for x in runs[0]):
                kappa_l, kappa_r = _corridor_bounds(first_run[strategy])
                made.append(plots.plot_corridor(runs[0], figures / f"{env}_{strategy}_epo_corridor.png",
                                                kappa_l, kappa_r))
        lines += [""] + [f"![{p.stem}](figures/{p.name})" for p in made] + [""]
    (bench_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    path = bench_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
