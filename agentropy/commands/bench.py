"""Benchmark entropy strategies: a strategies x environments x seeds matrix with a report.

    agentropy bench configs/bench/micro.yaml [key.sub=value ...]

Cells already finished are skipped and an interrupted cell resumes from its checkpoint, so
re-running the same command continues the bench. Writes ``report.md`` and PNG plots.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="bench YAML (configs/bench/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every cell")


def run(args: argparse.Namespace) -> int:
    from agentropy.evals.bench import run_bench

    bench_dir = run_bench(args.config, args.overrides)
    print(f"report: {bench_dir / 'report.md'}")
    return 0
