"""``agentropy play``: the expert's trajectory, and interactive play driven by stdin."""

from __future__ import annotations

import io

from agentropy.cli import main
from agentropy.envs.household.env import HouseholdEnv


def test_play_expert_prints_a_won_trajectory(capsys):
    assert main(["play", "agentropy/Household-v0", "--seed", "3", "--expert"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("You are in the middle of a room.")
    assert "Your task is to: " in out
    env = HouseholdEnv()
    env.reset(seed=3)
    plan = env.expert_plan()
    for turn, action in enumerate(plan, start=1):
        assert f"[{turn}] > {action}\n" in out
    assert f"Episode over: won after {len(plan)} turns, return 1." in out


def test_play_expert_on_the_test_split(capsys):
    assert main(["play", "agentropy/Household-v0", "--seed", "3", "--split", "test", "--expert"]) == 0
    assert "Episode over: won" in capsys.readouterr().out


def test_play_interactive_reads_commands_until_quit(capsys, monkeypatch):
    env = HouseholdEnv()
    _, info = env.reset(seed=3)
    first = info["admissible_actions"][0]
    arrival = env.step(first)[0]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{first}\ndance\ninventory\nquit\nlook\n"))
    assert main(["play", "agentropy/Household-v0", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "Admissible actions:" in out and f"1. {first}" in out
    assert arrival in out
    assert "Nothing happens." in out
    assert "You are not carrying anything." in out
    assert "You are facing" not in out  # nothing is read after quit
    assert "Episode over: not won after 3 turns" in out


def test_play_interactive_accepts_numbers_and_wins_with_expert_moves(capsys, monkeypatch):
    env = HouseholdEnv()
    env.reset(seed=5)
    plan = env.expert_plan()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(plan) + "\n"))
    assert main(["play", "agentropy/Household-v0", "--seed", "5", "--hide-admissible"]) == 0
    out = capsys.readouterr().out
    assert "Admissible actions:" not in out
    assert "(reward 1)" in out and f"won after {len(plan)} turns" in out


def test_play_interactive_stops_cleanly_at_end_of_input(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n"))
    assert main(["play", "agentropy/Household-v0", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "(end of input)" in out and "after 1 turn," in out


def test_play_unknown_env_fails_with_the_known_ids(capsys):
    assert main(["play", "agentropy/Nope-v0"]) == 2
    assert "agentropy/Household-v0" in capsys.readouterr().err
