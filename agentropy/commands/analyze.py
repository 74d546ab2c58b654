"""Measure the entropy dynamics of training runs against the papers' claims.

    agentropy analyze runs/bench/dynamics --out docs/dynamics
    agentropy analyze runs/grpo_s0 runs/grpo_s1 runs/epo_s0 runs/epo_s1

Each RUN_DIR is a run folder (config.yaml, metrics.jsonl, trajectories/) or a bench folder,
which stands for its <strategy>__<env>__s<seed> cells. All runs must share one env (--env keeps
the cells of one env of a bench). Writes dynamics.md (claims table first), dynamics.json (every
number), figures/*.png and aggregates/<run>/aggregates.json (the per-iteration numbers, a few kB a
run) to --out; ``agentropy analyze <out>/aggregates`` regenerates the report without the runs.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or bench folders")
    parser.add_argument("--out", default=None,
                        help="output folder (default: RUN_DIR/dynamics for one RUN_DIR, else ./dynamics)")
    parser.add_argument("--env", default=None, help="keep only bench cells of this env label (or env.id substring)")
    parser.add_argument("--head-tokens", type=int, default=4,
                        help="n of the post-observation split: first n tokens of a reply vs the rest")
    parser.add_argument("--window", type=int, default=5, help="iterations before a grad-norm spike to measure over")
    parser.add_argument("--reward-key", choices=["success_rate", "return_mean"], default="success_rate",
                        help="R of the entropy-reward law R = -a exp(H) + b")
    parser.add_argument("--min-turn-replies", type=int, default=4,
                        help="the drift fit uses turns with at least this many replies (late turns are rare and noisy)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from agentropy.evals.dynamics import AnalysisError, Options, analyze, load_runs, write_dynamics
    from agentropy.evals.dynamics.aggregates import write_aggregates

    if args.head_tokens < 0:
        raise SystemExit(f"agentropy analyze: --head-tokens must be >= 0, got {args.head_tokens}")
    if args.window < 1:
        raise SystemExit(f"agentropy analyze: --window must be >= 1, got {args.window}")
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "dynamics" if len(args.runs) == 1 else Path("dynamics"))
    options = Options(n_head=args.head_tokens, window=args.window, reward_key=args.reward_key,
                      min_turn_replies=args.min_turn_replies)
    try:
        runs = load_runs(args.runs, n_head=options.n_head, env=args.env, progress=not args.no_progress)
        result = analyze(runs, options)
    except AnalysisError as exc:
        raise SystemExit(f"agentropy analyze: {exc}") from None
    words = ["agentropy", "analyze", *args.runs, "--out", str(out), "--head-tokens", str(options.n_head),
             "--window", str(options.window), "--reward-key", options.reward_key,
             "--min-turn-replies", str(options.min_turn_replies)]
    command = " ".join(shlex.quote(w) for w in words + (["--env", args.env] if args.env else []))
    paths = write_dynamics(result, out, command=command)
    write_aggregates(runs, out, options.n_head)  # so the report can be regenerated from a clone
    for row in result["claims"]:
        print(f"{row['claim_id']:<20} {row['strategy']:<16} {row['verdict']}")
    print(f"report: {paths['md']}")
    return 0
