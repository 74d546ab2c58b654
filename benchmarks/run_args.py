"""The command-line shape shared by the benchmarks that time pieces of an RL run:
``[--config FILE] [--model DIR] [key=value ...]``, loaded the way the trainer loads it."""

from __future__ import annotations

import argparse
from typing import Any

from agentropy.training.config import load_config


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/household.yaml")
    parser.add_argument("--model", default="", help="policy folder (default: the tiny model of the config)")
    parser.add_argument("overrides", nargs="*")


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides every timing run uses: no progress bars or TensorBoard, and with ``--model``
    that folder as the policy without SFT."""
    overrides = ["run.progress=false", "run.tensorboard=false", *args.overrides]
    if args.model:
        overrides += [f"model.path={args.model}", "sft.enabled=false"]
    return overrides


def load_run_config(args: argparse.Namespace, *extra: str) -> Any:
    return load_config(args.config, [*run_overrides(args), *extra])
