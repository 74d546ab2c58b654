"""Reports: ``report.md`` with tables and PNG plots, for one run or a whole benchmark.

Every number in a report is read from the runs' ``metrics.jsonl``; nothing is typed in.
Seeds are summarised as mean +- std; a strategy "collapsed" in a run when its final training
entropy fell below ``COLLAPSE_RATIO`` times its first-iteration entropy. "entropy last/first"
is that ratio itself, the direct measure of GRPO's entropy collapse; "outside corridor" is the
mean fraction of reply tokens below / above EPO's corridor over the steps (EPO runs only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.evals import plots
from agentropy.training.run_log import read_metrics

COLLAPSE_RATIO = 0.5


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Headline numbers of one run folder."""
    records = read_metrics(run_dir)
    train = [r for r in records if r["phase"] == "train"]
    evals = [r for r in records if r["phase"] == "eval"]
    sft_eval = [r for r in evals if r["iteration"] == -1]
    rl_evals = [r for r in evals if r["iteration"] >= 0] or sft_eval
    entropies = [r["entropy_mean"] for r in train if isinstance(r.get("entropy_mean"), (int, float))]

    def step_mean(key: str) -> float | None:
        values = [r[key] for r in train if isinstance(r.get(key), (int, float))]
        return float(np.mean(values)) if values else None

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
    }


def _pm(values: Sequence[float | None], fmt: str = "{:.3f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{fmt.format(np.mean(vals))} ± {fmt.format(np.std(vals))}"


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


def write_bench_report(bench_dir: str | Path, cells: Sequence[Any]) -> Path:
    """``report.md`` + plots comparing strategies over seeds, per environment."""
    bench_dir = Path(bench_dir)
    figures = bench_dir / "figures"
    by_env: dict[str, dict[str, list[str]]] = {}
    for cell in cells:
        by_env.setdefault(cell.env, {}).setdefault(cell.strategy, []).append(cell.name)
    lines = [f"# Benchmark report: {bench_dir.name}", "",
             "Held-out success is measured on the same fixed test tasks for every cell; "
             "mean ± std over seeds. 'collapsed' counts seeds whose final training entropy fell "
             f"below {COLLAPSE_RATIO} x its first-iteration entropy.", ""]
    summary: dict[str, Any] = {}
    for env, strategies in by_env.items():
        lines += [f"## {env}", "",
                  "| strategy | methods | seeds | SFT success | final success | best success | entropy mean | "
                  "entropy var across steps | entropy last/first | collapsed | outside corridor low / high | "
                  "wall s | tokens |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        train_runs: dict[str, list[list[dict[str, Any]]]] = {}
        all_runs: dict[str, list[list[dict[str, Any]]]] = {}
        eval_runs: dict[str, list[list[dict[str, Any]]]] = {}
        first_run: dict[str, Path] = {}  # a run folder per strategy, for its saved config
        for strategy, names in strategies.items():
            dirs = [bench_dir / n for n in names if (bench_dir / n / "metrics.jsonl").exists()]
            sums = [run_summary(d) for d in dirs]
            if dirs:
                first_run[strategy] = dirs[0]
            summary[f"{strategy}/{env}"] = sums
            records = [read_metrics(d) for d in dirs]
            all_runs[strategy] = records
            train_runs[strategy] = [[r for r in rec if r["phase"] == "train"] for rec in records]
            eval_runs[strategy] = [[r for r in rec if r["phase"] == "eval" and r["iteration"] >= 0] for rec in records]
            lines.append(
                f"| {strategy} | {_methods(first_run[strategy]) if dirs else 'n/a'} | {len(sums)} | "
                f"{_pm([s['sft_success'] for s in sums])} | "
                f"{_pm([s['final_success'] for s in sums])} | {_pm([s['best_success'] for s in sums])} | "
                f"{_pm([s['entropy_mean'] for s in sums])} | {_pm([s['entropy_var'] for s in sums], '{:.2e}')} | "
                f"{_pm([s.get('entropy_ratio') for s in sums])} | {sum(s['collapsed'] for s in sums)}/{len(sums)} | "
                f"{_corridor(sums)} | {_pm([s['wall_s'] for s in sums], '{:.0f}')} | "
                f"{_pm([s['tokens'] for s in sums], '{:.0f}')} |")
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
                           ("aepo/branches_mean", "AEPO branches per task"),
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
