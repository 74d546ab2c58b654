"""Benchmark entropy strategies: a strategies x environments x seeds matrix with a report.

    agentropy bench configs/bench/micro.yaml [key.sub=value ...]

Cells already finished are skipped and an interrupted cell resumes from its checkpoint, so
re-running the same command continues the bench. Writes ``report.md`` and PNG plots.
Start the same command in several terminals to run cells side by side: each process takes the
cells no other one holds. ``--cells 'grpo__*'`` runs only the matching cells.
``--export DIR`` runs nothing: it copies the finished cells' compact records into DIR and writes
the report from them there (on a clone, it rewrites the report from the committed records).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="bench YAML (configs/bench/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every cell")
    parser.add_argument("--cells", nargs="+", metavar="PATTERN",
                        help="run only the cells whose names (STRATEGY__ENV__sSEED) match one of these shell "
                             "patterns, e.g. 'grpo__*' or '*__s0'; the report covers every finished cell")
    parser.add_argument("--export", metavar="DIR",
                        help="run nothing: copy each finished cell's metrics.jsonl, config.yaml and done.json "
                             "into DIR/<cell>/ and write report.md, cells.md and the figures there from them")


def run(args: argparse.Namespace) -> int:
    from agentropy.evals.bench import run_bench

    if args.export:
        from agentropy.evals.bench_export import export_bench

        out = export_bench(args.config, args.export)
        print(f"report: {out / 'report.md'}\ncells: {out / 'cells.md'}")
        return 0

    bench_dir = run_bench(args.config, args.overrides, only=args.cells)
    print(f"report: {bench_dir / 'report.md'}")
    return 0
