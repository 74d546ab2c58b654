"""``agentropy --help`` and every command's ``--help``: a user-facing description, and each
example of the command's docstring on a line of its own (argparse's default formatter used to
run them together into one paragraph)."""

from __future__ import annotations

import importlib

import pytest

from agentropy.cli import COMMANDS, main


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _examples(doc: str) -> list[str]:
    return [line.strip() for line in doc.splitlines() if line.startswith("    agentropy ")]


def test_top_level_help_is_for_users_with_one_example_per_line(capsys):
    text = _help(capsys, ["--help"])
    lines = text.splitlines()
    assert lines[2].startswith("Train tool-using LLM agents with reinforcement learning")
    assert "sub-command per module" not in text and "agentropy/commands" not in text
    examples = lines[lines.index("examples:") + 1 :]
    assert examples[:5] == ["  agentropy play agentropy/Household-v0 --expert",
                            "  agentropy train configs/quickstart.yaml run.name=my_run",
                            "  agentropy eval --model runs/my_run/final_model --episodes 64",
                            "  agentropy bench configs/bench/micro.yaml",
                            "  agentropy config show configs/quickstart.yaml"]
    for name in COMMANDS:
        assert any(line.strip().startswith(f"{name} ") or line.strip() == name for line in lines), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_shows_each_example_on_its_own_line(name, capsys):
    module = importlib.import_module(f"agentropy.commands.{COMMANDS[name][0]}")
    examples = _examples(module.__doc__)
    assert examples, f"agentropy {name}: its docstring has no example line"
    assert all(e.startswith(f"agentropy {name}") for e in examples)
    lines = [line.strip() for line in _help(capsys, [name, "--help"]).splitlines()]
    for example in examples:
        assert example in lines
    assert sum(line.count("agentropy ") for line in lines if line.startswith("agentropy ")) == len(examples)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_has_no_developer_markup(name, capsys):
    text = _help(capsys, [name, "--help"])
    assert "``" not in text and ":func:" not in text and ":class:" not in text


def test_config_show_help_has_its_examples(capsys):
    lines = [line.strip() for line in _help(capsys, ["config", "show", "--help"]).splitlines()]
    assert "agentropy config show configs/quickstart.yaml rollout.max_turns=20" in lines


@pytest.mark.parametrize("argv, arguments, resume", [
    (["train", "--resume", "runs/a", "train.iterations=60"], ["train.iterations=60"], "runs/a"),
    (["train", "c.yaml", "--overwrite", "x=1", "y=2"], ["c.yaml", "x=1", "y=2"], None),
    (["train", "c.yaml", "x=1", "--resume", "runs/a", "y=2"], ["c.yaml", "x=1", "y=2"], "runs/a"),
])
def test_overrides_may_follow_options(argv, arguments, resume):
    """``agentropy train --resume RUN train.iterations=60`` used to fail with "unrecognized
    arguments": argparse had already matched the (empty) overrides before the first option.
    (``train`` sorts its positionals into config files and overrides itself.)"""
    from agentropy.cli import build_parser

    args = build_parser().parse_args(argv)
    assert ([a for a in [args.config, *args.overrides] if a], args.resume) == (arguments, resume)


def test_bench_overrides_after_cells_patterns_stay_patterns():
    """An option taking several values keeps what follows it: overrides go before ``--cells``."""
    from agentropy.cli import build_parser

    args = build_parser().parse_args(["bench", "b.yaml", "x=1", "--cells", "grpo__*", "epo__*"])
    assert (args.config, args.overrides, args.cells) == ("b.yaml", ["x=1"], ["grpo__*", "epo__*"])
