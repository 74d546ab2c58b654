"""The ``agentropy`` command: one sub-command per module in ``agentropy/commands/``.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their command runs, so ``agentropy play`` never imports torch.

A :class:`~agentropy.errors.UserError` (a bad config, a reused run folder, a NaN with its dump
file) is printed as its message alone, without a traceback, and sets the exit code (2 for
usage errors); ``agentropy --debug COMMAND`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback

from agentropy.errors import UserError

#: command name -> (module under agentropy.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "play": ("play", "play an environment in the terminal, or watch the expert"),
    "make-model": ("make_model", "build the tiny offline model and tokenizer"),
    "train": ("train", "run SFT warm start and RL from a YAML config"),
    "eval": ("evaluate", "evaluate a model on an environment split"),
    "bench": ("bench", "run a strategy x env x seed benchmark matrix and write a report"),
    "analyze": ("analyze", "measure entropy dynamics of bench runs against the papers' claims"),
    "serve-model": ("serve_model", "serve a model over an OpenAI-compatible completions API"),
    "serve-search": ("serve_search", "run the local search service for Search-v0"),
    "config": ("config", "show every config field with its value, default and help"),
}


DESCRIPTION = """\
Train tool-using LLM agents with reinforcement learning on multi-turn text environments (an SFT
warm start, then GRPO or GiGPO with any mix of entropy strategies), evaluate them, and benchmark
the strategies against each other."""

EXAMPLES = """\
examples:
  agentropy play agentropy/Household-v0 --expert
  agentropy train configs/quickstart.yaml run.name=my_run
  agentropy eval --model runs/my_run/final_model --episodes 64
  agentropy bench configs/bench/micro.yaml
  agentropy config show configs/quickstart.yaml

`agentropy COMMAND --help` shows a command's options and examples."""


def user_text(doc: str) -> str:
    """A command module's docstring as help text: reST's ``x`` and :func:`x` shown as `x`.
    Line breaks are kept (``RawDescriptionHelpFormatter``), so each example stays on its line."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", doc.strip())
    return text.replace("``", "`")


class _CommandParser(argparse.ArgumentParser):
    """A command's parser that lets ``key=value`` overrides come after options.

    Plain argparse matches a command's optional positionals (``CONFIG``, the overrides) before
    the first option, so ``agentropy train --resume RUN train.iterations=60`` would be refused
    with "unrecognized arguments". Intermixed parsing collects positionals wherever they are;
    commands with their own subcommands (which intermixed parsing cannot handle) parse as usual.
    """

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._parsing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentropy", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of configuration and usage errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(f"agentropy.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"agentropy.commands.{module_name}":
                continue  # command not shipped in this build
            raise
        p = sub.add_parser(name, help=help_text, description=user_text(module.__doc__ or help_text),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(str(exc), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
