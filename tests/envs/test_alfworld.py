"""agentropy/ALFWorld-v0: generated games, ALFWorld's engine and experts, the env contract.

Games are generated once per session into a temporary cache, preferring bathroom, bedroom and
living-room rooms (they load in a fraction of a kitchen's time); heat and cool tasks only exist
in kitchens.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("fast_downward")

from alfworld.gen import constants  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from agentropy.envs import make_env  # noqa: E402
from agentropy.envs.alfworld import engine, evalset  # noqa: E402
from agentropy.envs.alfworld.env import ALFWorldEnv  # noqa: E402
from agentropy.envs.alfworld.expert import play_expert  # noqa: E402
from agentropy.envs.alfworld.generator import (  # noqa: E402
    SPLITS,
    TASK_TYPES,
    ensure_game,
    generate_game,
    rooms_for,
    write_game,
)
from agentropy.envs.alfworld.rooms import load_room  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "envs"
from agentropy.envs.base import fork  # noqa: E402


def _quick_seed(split: str, task_type: str) -> int:
    """The first seed whose room is not a kitchen, where the task type allows one."""
    for seed in range(40):
        scene = generate_game(split, task_type, seed).traj_data["scene"]["scene_num"]
        if load_room(scene).kind != "Kitchen":
            return seed
    return 0


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("alfworld-cache")


@pytest.fixture(scope="session")
def games(cache_dir):
    """One validated game per (split, task type), in the session cache."""
    return {
        (split, task_type): ensure_game(cache_dir, split, task_type, _quick_seed(split, task_type))
        for split in SPLITS
        for task_type in TASK_TYPES
    }


@pytest.fixture(scope="session")
def small_game(games):
    return games[("train", "pick_and_place_simple")]


@pytest.fixture(scope="session")
def env(cache_dir):
    env = ALFWorldEnv(cache_dir=cache_dir)
    yield env
    env.close()


def test_same_seed_gives_the_same_game_bytes(cache_dir, small_game, tmp_path):
    a = generate_game("train", "pick_two_obj_and_place", 7)
    b = generate_game("train", "pick_two_obj_and_place", 7)
    assert json.dumps(a.game) == json.dumps(b.game) and json.dumps(a.traj_data) == json.dumps(b.traj_data)
    assert a.game["pddl_problem"] != generate_game("train", "pick_two_obj_and_place", 8).game["pddl_problem"]
    # validated games, walkthrough included, are byte-identical across cache folders
    seed = _quick_seed("train", "pick_and_place_simple")
    again = ensure_game(tmp_path, "train", "pick_and_place_simple", seed)
    assert again.read_bytes() == small_game.read_bytes()
    assert (again.parent / "traj_data.json").read_bytes() == (small_game.parent / "traj_data.json").read_bytes()


def test_train_and_test_rooms_are_alfreds_disjoint_splits():
    train, test = set(constants.TRAIN_SCENE_NUMBERS), set(constants.TEST_SCENE_NUMBERS)
    for task_type in TASK_TYPES:
        train_rooms, test_rooms = set(rooms_for(task_type, "train")), set(rooms_for(task_type, "test"))
        assert train_rooms and test_rooms
        assert train_rooms <= train and test_rooms <= test and not train_rooms & test_rooms
        for seed in range(25):
            assert generate_game("train", task_type, seed).traj_data["scene"]["scene_num"] in train
            assert generate_game("test", task_type, seed).traj_data["scene"]["scene_num"] in test


def test_rooms_and_targets_suit_the_task_type():
    needs = {"pick_clean_then_place_in_recep": "SinkBasin", "pick_heat_then_place_in_recep": "Microwave",
             "pick_cool_then_place_in_recep": "Fridge"}
    for task_type in TASK_TYPES:
        for seed in range(15):
            traj = generate_game("train", task_type, seed).traj_data
            room = load_room(traj["scene"]["scene_num"])
            params = traj["pddl_params"]
            assert room.kind in constants.GOALS_VALID[task_type]
            if task_type in needs:
                assert needs[task_type] in room.receptacle_types and params["parent_target"] != needs[task_type]
            if task_type == "look_at_obj_in_light":
                assert params["toggle_target"] in ("DeskLamp", "FloorLamp") and params["parent_target"] == ""
            else:
                assert params["object_target"] in constants.VAL_RECEPTACLE_OBJECTS[params["parent_target"]]


def test_game_files_have_alfworlds_shape(small_game):
    game = json.loads(small_game.read_text())
    traj = json.loads((small_game.parent / "traj_data.json").read_text())
    assert list(game) == ["pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"]
    assert game["solvable"] is True and game["walkthrough"][0] == "look"
    assert "UNKNOWN GOAL" not in game["grammar"] and "(:goal" in game["pddl_problem"]
    assert traj["task_type"] == "pick_and_place_simple"
    assert set(traj["pddl_params"]) == {"object_target", "parent_target", "toggle_target", "mrecep_target", "object_sliced"}
    # ALFRED ids, mangled: Type|+x.xx|+y.yy|+z.zz, basins Sink|...|SinkBasin
    mangled = re.findall(r"^\s+(\S+) - (?:object|receptacle)$", game["pddl_problem"], flags=re.M)
    number = r"(?:_(?:plus|minus)_)?\d\d_dot_\d\d"  # ALFRED writes 0 as 00.00
    shape = re.compile(rf"^[A-Za-z]+(?:_bar_{number}){{3}}(?:_bar_(?:SinkBasin|BathtubBasin))?$")
    assert mangled and all(shape.match(name) for name in mangled), [n for n in mangled if not shape.match(n)]


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_expert_wins_generated_games_of_every_type(env, games, task_type):
    for split in SPLITS:
        path = games[(split, task_type)]
        obs, info = env.reset(options={"game_file": path})
        assert info["task_type"] == task_type and not info["won"]
        reward, terminated = 0.0, False
        for _ in range(150):
            obs, reward, terminated, truncated, info = env.step(info["expert_action"])
            if terminated:
                break
        assert terminated and info["won"] and reward == 1.0, (split, task_type, obs)
        # the stored walkthrough is a demonstration that wins too
        env.reset(options={"game_file": path})
        for command in json.loads(path.read_text())["walkthrough"]:
            _, reward, terminated, _, info = env.step(command)
        assert terminated and reward == 1.0


def test_first_observation_and_commands_read_as_alfworlds(env, small_game):
    obs, info = env.reset(options={"game_file": small_game})
    assert obs.startswith("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. "
                          "Looking quickly around you, you see a ")
    assert obs.endswith(f"\n\nYour task is to: {info['task']}.")
    assert re.fullmatch(r"(put a|put some) \w+ (in|on) \w+", info["task"])
    receptacles = re.findall(r"an? ([a-z]+ \d+)", obs.split("you see", 1)[1].split("\n\n")[0])
    admissible = info["admissible_actions"]
    assert {"look", "inventory", "help"} <= set(admissible)
    assert sorted(a for a in admissible if a.startswith("go to ")) == sorted(f"go to {r}" for r in receptacles)
    obs, reward, terminated, _, info = env.step(f"go to {receptacles[0]}")
    assert obs.startswith(f"You arrive at {receptacles[0]}. ") and not info["invalid_action"]
    assert reward == 0.0 and not terminated
    assert env.step("inventory")[0] == "You are not carrying anything."
    obs, reward, terminated, truncated, info = env.step("fly to the moon")
    assert obs == "Nothing happens." and info["invalid_action"] and (reward, terminated, truncated) == (0.0, False, False)
    assert env.step("  GO TO   " + receptacles[-1].upper())[4]["invalid_action"] is False


def test_reset_options_pick_split_type_and_game(env, games):
    for split in SPLITS:
        seed = _quick_seed(split, "look_at_obj_in_light")
        _, info = env.reset(options={"split": split, "task_type": "look_at_obj_in_light", "task_id": seed})
        assert info["task_type"] == "look_at_obj_in_light"
        assert info["game_file"] == str(games[(split, "look_at_obj_in_light")])
    a = env.reset(seed=3, options={"task_type": "look_at_obj_in_light", "split": "test"})
    b = env.reset(options={"task_type": "look_at_obj_in_light", "split": "test", "task_id": 3})
    assert a == b
    with pytest.raises(ValueError, match="task_type"):
        env.reset(options={"task_type": "make_coffee"})
    with pytest.raises(ValueError, match="split"):
        env.reset(options={"split": "dev"})
    with pytest.raises(FileNotFoundError, match="game_file"):
        env.reset(options={"game_file": "/nonexistent/game.tw-pddl"})


def test_official_data_dir_is_read_like_alfworld(games, tmp_path):
    data = tmp_path / "json_2.1.1"
    for name, path in [("pick_and_place_simple-Pencil-None-Shelf-319", games[("test", "pick_and_place_simple")]),
                       ("pick_and_place_with_movable_recep-Pen-Mug-Desk-301", games[("test", "pick_two_obj_and_place")])]:
        trial = data / "valid_unseen" / name / "trial_T0"
        trial.mkdir(parents=True)
        for file in ("game.tw-pddl", "traj_data.json"):
            shutil.copy(path.parent / file, trial / file)
    env = ALFWorldEnv(data_dir=data, split="test", expert=None)
    try:
        for seed in range(3):  # the movable-receptacle folder is skipped, as ALFWorld does
            _, info = env.reset(seed=seed)
            assert "pick_and_place_simple-Pencil" in info["game_file"] and info["expert_action"] is None
    finally:
        env.close()
    with pytest.raises(FileNotFoundError, match="data_dir"):
        ALFWorldEnv(data_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="train"):
        ALFWorldEnv(data_dir=data, split="train")


def test_fork_replays_to_the_same_state(env, cache_dir, small_game):
    options = {"game_file": str(small_game)}
    _, info = env.reset(options=options)
    actions = []
    for _ in range(4):
        actions.append(info["expert_action"])
        obs, _, _, _, info = env.step(actions[-1])
    forked, forked_obs, forked_info = fork(lambda: ALFWorldEnv(cache_dir=cache_dir), None, options, actions)
    try:
        assert forked_obs == obs and forked_info == info
    finally:
        forked.close()


def test_passes_gymnasium_check_env(cache_dir, small_game):
    env = make_env("agentropy/ALFWorld-v0", cache_dir=str(cache_dir), games=[str(small_game)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # check_env only warns (bad observation, reward, ...)
            check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()


def test_speedups_leave_the_engine_output_unchanged(small_game):
    def walk() -> list:
        tw = engine.make_textworld_env(facts=True)
        tw.load(str(small_game))
        state, rng, seen = tw.reset(), random.Random(0), []
        for _ in range(20):
            state, _, _ = tw.step(rng.choice(state["admissible_commands"]))
            seen.append((state["feedback"], state["admissible_commands"], [str(f) for f in state["facts"]]))
        engine.close_textworld_env(tw)
        return seen

    fast = walk()
    engine.uninstall_speedups()
    try:
        original = engine.install_speedups
        engine.install_speedups = lambda: None
        try:
            plain = walk()
        finally:
            engine.install_speedups = original
    finally:
        engine.install_speedups()
    assert fast == plain


def test_translations_are_stored_once_and_read_back(cache_dir, games):
    stored = list((cache_dir / "translations").rglob("*.pkl.z"))
    assert len(stored) >= len(games)
    engine.uninstall_speedups()  # empty the in-memory caches
    engine.install_speedups()
    translate = engine._ORIGINALS["pddl2sas"]
    engine._ORIGINALS["pddl2sas"] = lambda *args: pytest.fail("translated a game whose translation is stored")
    try:
        tw = engine.make_textworld_env(facts=False)
        tw.load(str(games[("test", "pick_heat_then_place_in_recep")]))
        assert tw.reset()["admissible_commands"]
        engine.close_textworld_env(tw)
    finally:
        engine._ORIGINALS["pddl2sas"] = translate


def test_expert_tracker_fix_wins_where_alfworlds_expert_loops(tmp_path):
    from alfworld.agents.expert.handcoded_expert_tw import HandCodedTWAgent

    path = write_game(generate_game("train", "pick_two_obj_and_place", 1), tmp_path / "pick_two")
    won, commands = play_expert(path)
    assert won and commands.count(next(c for c in commands if c.startswith("move "))) == 1

    tw = engine.make_textworld_env(facts=True)
    tw.load(str(path))
    state = tw.reset()
    unfixed = HandCodedTWAgent(max_steps=200)
    unfixed.reset(str(path))
    unfixed.observe(state["feedback"])
    random.seed(0)
    action = "look"
    for _ in range(len(commands) * 3):
        state, _, _ = tw.step(action)
        if state["won"]:
            break
        try:
            action = unfixed.act(state, 0, False, action)
        except NameError:  # HandCodedAgentTimeout / HandCodedAgentFailed
            break
        action = action if action in state["admissible_commands"] else "look"
    engine.close_textworld_env(tw)
    assert not state["won"]


def test_eval_set_is_fixed_and_hashed(small_game, games, tmp_path):
    entries = evalset.eval_set_entries()
    assert len(entries) == 140 == len(set(entries))
    assert {t for t, _ in entries[:6]} == set(TASK_TYPES)
    assert {t: sum(1 for e in entries if e[0] == t) for t in TASK_TYPES} == evalset.EVAL_SET_COUNTS
    assert evalset.train_entries(8) == [(t, 0) for t in TASK_TYPES] + [(TASK_TYPES[0], 1), (TASK_TYPES[1], 1)]
    files = [games[("test", t)] for t in TASK_TYPES]
    digest = evalset.eval_set_hash(files)
    assert digest == evalset.eval_set_hash(files) and re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest != evalset.eval_set_hash(files[::-1])
    copy = tmp_path / "game.tw-pddl"
    shutil.copy(small_game.parent / "traj_data.json", tmp_path / "traj_data.json")
    copy.write_bytes(small_game.read_bytes() + b" ")
    assert evalset.eval_set_hash([copy]) != evalset.eval_set_hash([small_game])


@pytest.mark.slow
def test_planner_expert_wins_in_a_subprocess(cache_dir, games):
    env = ALFWorldEnv(cache_dir=cache_dir, expert="planner", planner_timeout=120)
    try:
        _, info = env.reset(options={"game_file": games[("train", "look_at_obj_in_light")]})
        for _ in range(30):
            _, reward, terminated, _, info = env.step(info["expert_action"])
            if terminated:
                break
        assert reward == 1.0
    finally:
        env.close()


@pytest.mark.slow
def test_eval_set_hash_matches_the_recorded_one(tmp_path):
    _, digest = evalset.build_eval_set(tmp_path, workers=2)
    assert digest == evalset.EVAL_SET_SHA256


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
def test_expert_wins_five_games_per_type(tmp_path, split):
    env = ALFWorldEnv(cache_dir=tmp_path, split=split)
    try:
        for task_type in TASK_TYPES:
            for task_id in range(5):
                _, info = env.reset(options={"task_type": task_type, "task_id": task_id})
                for _ in range(200):
                    _, reward, terminated, _, info = env.step(info["expert_action"] or "look")
                    if terminated:
                        break
                assert reward == 1.0, (split, task_type, task_id)
    finally:
        env.close()


@pytest.mark.slow
def test_config_trains_and_evaluates_through_the_trainer(cache_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from agentropy.training.config import load_config
    from agentropy.training.trainer import train

    torch.set_num_threads(1)
    cfg = load_config(CONFIGS / "alfworld.yaml", overrides=[
        f"run.root={tmp_path}", "run.name=alfworld", "run.tensorboard=false", "run.progress=false",
        "train.iterations=1", "sft.episodes=2", "sft.epochs=1", "eval.episodes=2",
        "rollout.tasks_per_batch=1", "rollout.group_size=2", "rollout.max_turns=3",
        f"env.kwargs.cache_dir={cache_dir}", "env.kwargs.num_train_games=12",
    ])
    result = train(cfg)
    assert result.iterations == 1 and (tmp_path / "alfworld").is_dir()
