"""Arms against a named baseline arm, paired on seeds: the table a bench report opens with.

Every strategy of a bench starts from the same SFT checkpoint and plays the same training and
held-out tasks under the same seed, so seed ``s`` of an arm and seed ``s`` of the baseline form a
pair; the paired difference removes the seed-to-seed variance they share. Only seeds present in
both arms (with the metric defined in both) are paired, and the table says how many there were.

The input is per-seed run summaries (``report.run_summary`` dicts), so the same table can be
rebuilt from a committed ``summary.json`` without the run folders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentropy.evals.stats import (
    PairedDifference,
    fmt,
    fmt_p,
    format_mean_sd,
    is_finite_number,
    min_detectable_difference,
    paired_difference,
)


@dataclass(frozen=True)
class Metric:
    key: str  # run_summary key
    label: str  # column / row label
    spec: str = "{:.3f}"


COMPARED_METRICS: tuple[Metric, ...] = (
    Metric("final_success", "held-out success (final)"),
    Metric("entropy_mean", "entropy mean"),
    Metric("entropy_ratio", "entropy last/first"),
    Metric("entropy_var", "entropy var across steps", "{:.2e}"),
)

# Compared too when the runs' held-out evaluations report tool use (``tool/...`` keys).
TOOL_METRICS: tuple[Metric, ...] = (
    Metric("tool_answer_f1", "answer F1 (final)"),
    Metric("tool_gold_all_hops", "gold retrieved, all hops (final)"),
    Metric("tool_calls_per_episode", "tool calls per episode (final)", "{:.2f}"),
    Metric("tool_malformed_per_episode", "malformed calls per episode (final)", "{:.2f}"),
)


@dataclass(frozen=True)
class ComparisonRow:
    """One arm against the baseline on one metric."""

    arm: str
    baseline: str
    metric: Metric
    seeds: tuple[int, ...]
    arm_mean: float
    baseline_mean: float
    diff: PairedDifference | None  # None when fewer than one seed pairs up
    mdd: float  # minimum detectable difference at 80 % power for these n and SD of the differences


def compare_to_baseline(per_seed: Mapping[str, Mapping[int, Mapping[str, Any]]], baseline: str,
                        metrics: Sequence[Metric] = COMPARED_METRICS) -> list[ComparisonRow]:
    """Rows ``arm - baseline`` for every arm other than ``baseline`` and every metric.

    ``per_seed`` maps arm -> seed -> run summary."""
    if baseline not in per_seed:
        raise ValueError(f"baseline arm {baseline!r} has no runs; arms: {sorted(per_seed)}")
    rows = []
    for arm, runs in per_seed.items():
        if arm == baseline:
            continue
        for metric in metrics:
            seeds = tuple(sorted(s for s in runs if s in per_seed[baseline]
                                 and is_finite_number(runs[s].get(metric.key)) and is_finite_number(per_seed[baseline][s].get(metric.key))))
            if not seeds:
                rows.append(ComparisonRow(arm, baseline, metric, (), math.nan, math.nan, None, math.inf))
                continue
            a = [float(runs[s][metric.key]) for s in seeds]
            b = [float(per_seed[baseline][s][metric.key]) for s in seeds]
            diff = paired_difference(a, b, arm, baseline)
            mdd = min_detectable_difference(diff.sd_diff, diff.n) if diff.n > 1 else math.inf
            rows.append(ComparisonRow(arm, baseline, metric, seeds, float(np.mean(a)), float(np.mean(b)), diff, mdd))
    return rows


def power_line(n_pairs: Sequence[int]) -> str:
    """How large a difference the table could see, in units of the SD of the paired differences."""
    ns = sorted(set(n_pairs))
    if not ns:
        return "Power: no paired seeds."
    parts = []
    for n in ns:
        factor = min_detectable_difference(1.0, n)
        parts.append(f"n = {n}: {'none (one pair has no spread estimate)' if math.isinf(factor) else f'{factor:.2f} x SD'}")
    return ("Power: the minimum detectable difference (paired t-test, two-sided alpha = 0.05, 80 % power) is "
            f"{'; '.join(parts)} of the per-seed differences; the 'MDD' column applies it to each row's SD. "
            "A difference below its MDD that is 'not significant' is not evidence of no effect.")


def render_comparison(rows: Sequence[ComparisonRow], baseline: str) -> list[str]:
    """Markdown: the vs-baseline table and its power line."""
    lines = [f"| arm | metric | arm mean | {baseline} mean | difference (arm - {baseline}) | 95 % CI (t) | p (paired t) "
             "| MDD (80 %) | paired seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        spec = row.metric.spec
        if row.diff is None:
            lines.append(f"| {row.arm} | {row.metric.label} | n/a | n/a | n/a | n/a | n/a | n/a | 0 |")
            continue
        d = row.diff
        lines.append(
            f"| {row.arm} | {row.metric.label} | {fmt(row.arm_mean, spec)} | {fmt(row.baseline_mean, spec)} | "
            f"{fmt(d.mean_diff, spec.replace('{:', '{:+'))} | [{fmt(d.lo, spec)}, {fmt(d.hi, spec)}] | {fmt_p(d.p)} | "
            f"{'n/a' if math.isinf(row.mdd) else fmt(row.mdd, spec)} | {d.n} ({', '.join(map(str, row.seeds))}) |")
    lines += ["", power_line([r.diff.n for r in rows if r.diff is not None])]
    return lines


def rows_as_dicts(rows: Sequence[ComparisonRow]) -> list[dict[str, Any]]:
    """JSON-ready rows (``inf``/``nan`` as ``None``)."""

    def clean(x: float) -> float | None:
        return None if not math.isfinite(x) else float(x)

    return [{"arm": r.arm, "baseline": r.baseline, "metric": r.metric.key, "seeds": list(r.seeds),
             "arm_mean": clean(r.arm_mean), "baseline_mean": clean(r.baseline_mean),
             "diff": clean(r.diff.mean_diff) if r.diff else None,
             "ci95": [clean(r.diff.lo), clean(r.diff.hi)] if r.diff else None,
             "p": clean(r.diff.p) if r.diff else None, "mdd80": clean(r.mdd)} for r in rows]


def comparison_from_summary(summary_path: str | Path, seeds: Sequence[int], baseline: str | None = None,
                            env: str | None = None) -> list[str]:
    """The vs-baseline markdown of a committed bench ``summary.json`` (per-seed run summaries in
    the bench's seed order), for reports whose run folders are not in the repository."""
    data = json.loads(Path(summary_path).read_text())
    by_env: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for key, sums in data.items():
        if "/" not in key or key.startswith("vs_baseline/") or not isinstance(sums, list):
            continue
        arm, arm_env = key.split("/", 1)
        if env is not None and arm_env != env:
            continue
        if len(sums) != len(seeds):
            raise ValueError(f"{key}: {len(sums)} runs but {len(seeds)} seeds given")
        by_env.setdefault(arm_env, {})[arm] = dict(zip(seeds, sums, strict=True))
    lines: list[str] = []
    for arm_env, per_seed in by_env.items():
        base = baseline or next(iter(per_seed))
        lines += [f"## {arm_env}: vs baseline ({base})", "", f"Seeds: {', '.join(map(str, seeds))}.", "",
                  *render_comparison(compare_to_baseline(per_seed, base), base), "",
                  "Mean ± sample SD (ddof=1) over seeds:", "",
                  "| arm | seeds | " + " | ".join(m.label for m in COMPARED_METRICS) + " |",
                  "|---|---|" + "---|" * len(COMPARED_METRICS)]
        for arm, runs in per_seed.items():
            cells = [format_mean_sd([r.get(m.key) for r in runs.values()], m.spec) for m in COMPARED_METRICS]
            lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentropy.evals.comparison BENCH_DIR --seeds 0 1 2 [--baseline ARM]``: write
    BENCH_DIR/comparison.md from BENCH_DIR/summary.json."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("bench_dir")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="the bench's seeds, in its order")
    parser.add_argument("--baseline", default=None, help="baseline arm (default: the first)")
    args = parser.parse_args(argv)
    folder = Path(args.bench_dir)
    lines = [f"# {folder.name}: comparison against the baseline arm", "",
             f"Generated from `summary.json` by `python -m agentropy.evals.comparison {folder} --seeds "
             f"{' '.join(map(str, args.seeds))}" + (f" --baseline {args.baseline}" if args.baseline else "") + "`.",
             "", *comparison_from_summary(folder / "summary.json", args.seeds, args.baseline)]
    (folder / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
