"""Benchmark entropy strategies: a strategies x environments x seeds matrix with a report.

    agentropy bench configs/bench/micro.yaml [key.sub=value ...]

Cells already finished are skipped and an interrupted cell resumes from its checkpoint, so
re-running the same command continues the bench. Writes ``report.md`` and PNG plots.
Start the same command in several terminals to run cells side by side: each process takes the
cells no other one holds. ``--cells 'grpo__*'`` runs only the matching cells.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="bench YAML (configs/bench/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every cell")
    parser.add_argument("--cells", nargs="+", metavar="PATTERN",
                        help="run only the cells whose names (STRATEGY__ENV__sSEED) match one of these shell "
                             "patterns, e.g. 'grpo__*' or '*__s0'; the report covers every finished cell")


def run(args: argparse.Namespace) -> int:
    from agentropy.evals.bench import run_bench

    bench_dir = run_bench(args.config, args.overrides, only=args.cells)
    print(f"report: {bench_dir / 'report.md'}")
    return 0
