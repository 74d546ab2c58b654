"""Household env: determinism, forking, invalid actions, splits, the expert, the language."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from agentropy.envs.base import INFO_KEYS, NOTHING_HAPPENS, fork, supports_state
from agentropy.envs.household import expert
from agentropy.envs.household.catalog import (
    GOAL_COMBOS,
    ROOMS,
    SPLITS,
    TASK_TYPES,
    is_test_combo,
)
from agentropy.envs.household.env import HouseholdEnv
from agentropy.envs.household.generator import HouseholdConfig, generate
from agentropy.envs.household.world import GO, apply, goal_reached, local_actions


def random_run(env, seed, options, n_steps, action_seed=0, junk=0.2):
    """Reset, then take ``n_steps`` random admissible (sometimes junk) actions; record all."""
    rng = random.Random(action_seed)
    obs, info = env.reset(seed=seed, options=options)
    record = [(obs, 0.0, False, False, info)]
    actions = []
    for _ in range(n_steps):
        if rng.random() < junk:
            action = rng.choice(["", "dance", "go to moon 1", "take nothing from nowhere"])
        else:
            action = rng.choice(info["admissible_actions"])
        actions.append(action)
        obs, reward, term, trunc, info = env.step(action)
        record.append((obs, reward, term, trunc, info))
        if term or trunc:
            break
    return actions, record


# -- determinism and forking --------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_same_seed_options_and_actions_give_same_observations(seed):
    a1, r1 = random_run(HouseholdEnv(), seed, {"split": "test"}, 40)
    a2, r2 = random_run(HouseholdEnv(), seed, {"split": "test"}, 40)
    assert a1 == a2
    assert r1 == r2


def test_seed_draws_the_task_and_task_id_pins_it():
    env = HouseholdEnv()
    obs_a, info_a = env.reset(seed=1)
    obs_b, info_b = env.reset(seed=2)
    assert info_a["task_id"] != info_b["task_id"]
    pinned = [env.reset(seed=s, options={"task_id": 42})[0] for s in (1, 2, None)]
    assert pinned[0] == pinned[1] == pinned[2]
    # the same task id names unrelated worlds in the two splits
    assert env.reset(options={"task_id": 42, "split": "test"})[0] != pinned[0]


_DIGEST = """
import hashlib, random
from agentropy.envs.household.env import HouseholdEnv
env, digest = HouseholdEnv(), hashlib.sha256()
for seed in range(60):
    obs, info = env.reset(seed=seed, options={"split": ("train", "test")[seed % 2]})
    rng = random.Random(seed)
    for _ in range(15):
        digest.update(obs.encode() + repr(sorted(info.items())).encode())
        obs, *_, info = env.step(rng.choice(info["admissible_actions"]))
print(digest.hexdigest())
"""


def test_worlds_and_episodes_do_not_depend_on_the_hash_seed():
    root = Path(__file__).resolve().parents[2]
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        done = subprocess.run([sys.executable, "-c", _DIGEST], env=env, cwd=root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert len(digests) == 1


@pytest.mark.parametrize("k", [0, 1, 9, 25])
def test_replay_fork_at_turn_k_then_continue_equals_straight_run(k):
    options = {"split": "train", "task_id": 11}
    actions, straight = random_run(HouseholdEnv(), 5, options, 40, action_seed=3)
    assert len(actions) >= 30  # random play runs long with max_steps=50
    env, obs, info = fork(HouseholdEnv, 5, options, actions[:k])
    assert (obs, info) == (straight[k][0], straight[k][4])
    for i, action in enumerate(actions[k:], start=k + 1):
        assert env.step(action) == straight[i]


@pytest.mark.parametrize("k", [0, 4, 17, 33])
def test_get_state_set_state_fork_equals_straight_run(k):
    options = {"task_id": 3, "task_type": "pick_two"}
    actions, straight = random_run(HouseholdEnv(), 0, options, 45, action_seed=8)
    env = HouseholdEnv()
    env.reset(seed=0, options=options)
    for action in actions[:k]:
        env.step(action)
    snapshot = env.get_state()
    for action in actions[k:]:  # the original runs on; the snapshot must not change
        env.step(action)
    other = HouseholdEnv()
    assert supports_state(other)
    other.set_state(snapshot)
    for i, action in enumerate(actions[k:], start=k + 1):
        assert other.step(action) == straight[i]
    # a snapshot can seed several branches, also in another process (it pickles)
    third = HouseholdEnv()
    third.set_state(pickle.loads(pickle.dumps(snapshot)))
    assert third.step(actions[k]) == straight[k + 1]


def test_set_state_rejects_foreign_objects():
    env = HouseholdEnv()
    with pytest.raises(TypeError, match="set_state"):
        env.set_state({"loc": 1})


# -- invalid actions ----------------------------------------------------------------------


INVALID = [
    "",
    "   ",
    "garbage",
    "ünïcödé ☃ 🍎",
    "\x00\x1b[31m",
    "go to",
    "go to moon 1",
    "take mug 99 from cabinet 1",
    "put",
    "open",
    "clean apple 1 with fridge 1",
    "x" * 100_000,
    None,
    42,
]


@pytest.mark.parametrize("action", INVALID, ids=range(len(INVALID)))
def test_invalid_actions_never_raise_and_change_nothing(action):
    env = HouseholdEnv()
    env.reset(seed=4)
    before = env.get_state().key()
    obs, reward, term, trunc, info = env.step(action)
    assert obs == NOTHING_HAPPENS
    assert info["invalid_action"] is True
    assert (reward, term, trunc) == (0.0, False, False)
    after = env.get_state().key()
    assert after[7] == before[7] + 1  # the step counts ...
    assert after[:7] == before[:7]  # ... but nothing else changes


def test_invalid_actions_count_towards_truncation():
    env = HouseholdEnv(max_steps=5)
    env.reset(seed=0)
    ends = [env.step("dance")[3] for _ in range(5)]
    assert ends == [False, False, False, False, True]


def test_go_to_where_the_agent_stands_is_invalid():
    env = HouseholdEnv()
    _, info = env.reset(seed=2)
    target = info["admissible_actions"][0]
    env.step(target)
    obs, _, _, _, info = env.step(target)
    assert obs == NOTHING_HAPPENS and info["invalid_action"]
    assert target not in info["admissible_actions"]


def test_every_admissible_action_is_valid_and_commands_accept_variants():
    env = HouseholdEnv()
    env.reset(seed=9, options={"task_type": "clean"})
    plan = env.expert_plan()
    take = next(i for i, a in enumerate(plan) if a.startswith("take "))
    for action in plan[: take + 1]:
        env.step(action)
    snapshot = env.get_state()
    info = env.step("look")[4]
    for action in info["admissible_actions"]:
        env.set_state(snapshot)
        assert env.step(action)[4]["invalid_action"] is False, action
    obj, src = plan[take][len("take ") :].split(" from ")
    expected = f"You put the {obj} in/on the {src}."
    for variant in (f"put {obj} in/on {src}", f"PUT {obj} ON {src}.", f"put {obj} in {src}", f"move {obj} to {src}"):
        env.set_state(snapshot)
        assert env.step(variant)[0] == expected, variant
    env.set_state(snapshot)
    assert env.step(f"  Go   To {src.upper()} ")[0] == NOTHING_HAPPENS  # already there
    assert env.step(f"  Examine {obj.upper()}. ")[4]["invalid_action"] is False


# -- the language -------------------------------------------------------------------------


def test_observations_read_like_alfworld():
    env = HouseholdEnv()
    obs, info = env.reset(seed=0, options={"task_type": "cool", "task_id": 1})
    assert obs.startswith("You are in the middle of a room. Looking quickly around you, you see a ")
    assert obs.endswith(f"\n\nYour task is to: {info['task']}")
    assert info["task"].startswith(("put a cool ", "cool some "))
    assert env.step("inventory")[0] == "You are not carrying anything."
    obs, *_ = env.step("go to fridge 1")
    assert obs == "You arrive at fridge 1. The fridge 1 is closed."
    obs, *_ = env.step("open fridge 1")
    assert obs.startswith("You open the fridge 1. The fridge 1 is open. In it, you see ")
    assert env.step("close fridge 1")[0] == "You close the fridge 1."
    obs, *_ = env.step("go to countertop 1")
    assert obs.startswith("You arrive at countertop 1. On the countertop 1, you see ")
    assert env.step("look")[0].startswith("You are facing the countertop 1. ")


def test_all_openable_receptacles_start_closed():
    for task_id in range(50):
        state = generate("train", task_id, HouseholdConfig())
        assert state.opened == 0 and state.loc == -1 and state.holding == -1


def test_info_has_every_contract_key():
    env = HouseholdEnv()
    _, info = env.reset(seed=0)
    assert set(INFO_KEYS) <= set(info)
    assert info["expert_action"] in info["admissible_actions"]
    _, _, _, _, info = env.step(info["admissible_actions"][0])
    assert set(INFO_KEYS) <= set(info)


# -- splits and knobs ---------------------------------------------------------------------


def test_train_and_test_goal_combinations_are_disjoint():
    config = HouseholdConfig()
    goals = {split: set() for split in SPLITS}
    for split in SPLITS:
        for task_id in range(600):
            world = generate(split, task_id, config).world
            goals[split].add((world.task_type, world.goal_obj, world.goal_recep))
    assert goals["train"].isdisjoint(goals["test"])
    assert all(is_test_combo(*g) for g in goals["test"])
    assert not any(is_test_combo(*g) for g in goals["train"])
    for split in SPLITS:  # every task type occurs in both splits
        assert {g[0] for g in goals[split]} == set(TASK_TYPES)
    # the catalog itself: held-out combinations never appear among train goals, for any room
    for task_type in TASK_TYPES:
        train = {c for room in ROOMS for c in GOAL_COMBOS[task_type, room, "train"]}
        test = {c for room in ROOMS for c in GOAL_COMBOS[task_type, room, "test"]}
        assert train and test and train.isdisjoint(test)


def test_difficulty_knobs():
    env = HouseholdEnv(n_receptacles=30, n_objects=0, n_distractors=0, task_types=["heat"])
    for seed in range(10):
        env.reset(seed=seed)
        world = env.state.world
        assert world.task_type == "pick_heat_then_place_in_recep" and world.room == "kitchen"
        assert len(world.recep_names) == 30
        n_goal = len(world.targets)
        assert 1 <= n_goal <= 2 and len(world.obj_names) == n_goal
    small = HouseholdEnv(n_receptacles=(4, 4), task_types="examine")
    small.reset(seed=0)
    assert small.state.world.task_type == "look_at_obj_in_light"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_steps": 0}, "max_steps"),
        ({"n_receptacles": (5, 2)}, "n_receptacles"),
        ({"n_objects": "many"}, "n_objects"),
        ({"task_types": ["fly"]}, "task_types"),
        ({"shaping": -1}, "shaping"),
    ],
)
def test_bad_constructor_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        HouseholdEnv(**kwargs)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"split": "dev"}, "split"),
        ({"task_id": -1}, "task_id"),
        ({"task_id": "abc"}, "task_id"),
        ({"task_type": "fly"}, "task_type"),
        ({"level": 3}, "level"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        HouseholdEnv().reset(seed=0, options=options)


# -- reward ---------------------------------------------------------------------------------


def test_reward_is_one_on_success_only_and_episode_terminates():
    env = HouseholdEnv()
    _, info = env.reset(seed=0, options={"task_id": 5})
    rewards, term = [], False
    while not term:
        _, reward, term, trunc, info = env.step(info["expert_action"])
        rewards.append(reward)
        assert not trunc
    assert rewards[-1] == 1.0 and set(rewards[:-1]) <= {0.0}
    assert info["won"] and info["expert_action"] is None


def test_potential_shaping_telescopes():
    plain = HouseholdEnv()
    plain.reset(seed=0, options={"task_id": 8})
    d0 = len(plain.expert_plan())
    env = HouseholdEnv(shaping=0.1)
    _, info = env.reset(seed=0, options={"task_id": 8})
    total = 0.0
    for action in ["look", info["admissible_actions"][0], "dance"]:  # a detour, then the expert
        total += env.step(action)[1]
    term = False
    while not term:
        _, reward, term, _, info = env.step(info["expert_action"])
        total += reward
    assert total == pytest.approx(1.0 + 0.1 * d0)


# -- the expert -----------------------------------------------------------------------------


def test_expert_wins_1000_generated_tasks_of_every_type():
    env = HouseholdEnv()
    won, lengths = 0, {t: [] for t in TASK_TYPES}
    for i in range(1000):
        task_type = TASK_TYPES[i % len(TASK_TYPES)]
        split = SPLITS[(i // len(TASK_TYPES)) % 2]
        _, info = env.reset(options={"split": split, "task_id": i, "task_type": task_type})
        planned = len(env.expert_plan())
        steps, term, trunc = 0, False, False
        while not (term or trunc):
            _, _, term, trunc, info = env.step(info["expert_action"])
            steps += 1
        won += term
        assert steps == planned
        lengths[task_type].append(steps)
    assert won == 1000
    assert all(lengths.values())


def test_expert_recovers_from_any_reachable_state():
    env = HouseholdEnv()
    rng = random.Random(0)
    for i in range(300):
        task_type = TASK_TYPES[i % len(TASK_TYPES)]
        actions, record = random_run(env, i, {"task_id": i, "task_type": task_type}, rng.randint(0, 45), action_seed=i)
        info = record[-1][4]
        if record[-1][2]:  # random play won already
            continue
        env.set_state(env.get_state())  # the expert must also work from a restored state
        plan = env.expert_plan()
        assert plan and plan[0] == info["expert_action"]
        for done, action in enumerate(plan, start=1):  # admissible, and replanning agrees
            assert action in info["admissible_actions"], (i, action)
            _, _, term, _, info = env.step(action)
            assert len(expert.plan(env.get_state())) == len(plan) - done, (i, action)
        assert env.state.won, i


def _shortest_distance(state, limit):
    """Breadth-first search over the world's transitions (ground truth for optimality)."""
    world = state.world
    if goal_reached(world, state):
        return 0
    frontier, seen = [state], {state.key()[:7]}
    for depth in range(1, limit + 1):
        nxt = []
        for s in frontier:
            ops = [(GO, r, -1) for r in range(len(world.recep_names)) if r != s.loc]
            ops += list(local_actions(world, s).values())
            for op in ops:
                child = s.copy()
                if not apply(world, child, op)[1]:
                    continue
                if goal_reached(world, child):
                    return depth
                key = child.key()[:7]
                if key not in seen:
                    seen.add(key)
                    nxt.append(child)
        frontier = nxt
    return None


def test_expert_plans_are_shortest_on_small_worlds():
    config = HouseholdConfig.build(n_receptacles=(4, 6), n_objects=(0, 2), n_distractors=(0, 1))
    rng = random.Random(1)
    checked = 0
    for i in range(36):
        state = generate("train", i, config, TASK_TYPES[i % len(TASK_TYPES)])
        world = state.world
        for _ in range(rng.randint(0, 6)):  # wander off first, so plans start mid-episode
            ops = [(GO, r, -1) for r in range(len(world.recep_names)) if r != state.loc]
            ops += list(local_actions(world, state).values())
            apply(world, state, rng.choice(ops))
        if goal_reached(world, state):
            continue
        plan = expert.plan(state)
        assert _shortest_distance(state, len(plan)) == len(plan), (i, plan)
        checked += 1
    assert checked >= 30
