"""Train an agent: SFT warm start on expert demonstrations, then RL, from a YAML config.

    agentropy train configs/quickstart.yaml run.name=my_run train.iterations=20
    agentropy train --resume runs/my_run

Overrides are ``key.sub=value`` (YAML values). ``--resume RUN_DIR`` continues a run from its
last checkpoint with the config saved in the run folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file (omit with --resume)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")


def run(args: argparse.Namespace) -> int:
    from agentropy.training.config import load_config
    from agentropy.training.trainer import train

    overrides = list(args.overrides)
    if args.resume:
        run_dir = Path(args.resume)
        if args.config and "=" in args.config:
            overrides.insert(0, args.config)
        overrides.insert(0, "train.stop_after=null")  # the saved config may hold the interruption point
        cfg = load_config(run_dir / "config.yaml", overrides)
        if cfg.run.dir.resolve() != run_dir.resolve():
            cfg.run.root, cfg.run.name = str(run_dir.parent), run_dir.name
        result = train(cfg, resume=True)
    else:
        if not args.config:
            raise SystemExit("agentropy train: give a CONFIG file or --resume RUN_DIR")
        result = train(load_config(args.config, overrides))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under accelerate / torchrun only the main process reports
    from agentropy.evals.report import write_run_report

    report = write_run_report(result.run_dir)
    print(f"report: {report}")
    if result.sft_success is not None and result.final_success is not None:
        print(f"held-out success: SFT {result.sft_success:.3f} -> RL {result.final_success:.3f}")
    return 0
