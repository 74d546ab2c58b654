"""Deterministic ALFWorld games, written offline from the data in the ``alfworld`` wheel.

A game is what ALFWorld's own engine loads: a folder with ``game.tw-pddl`` (``{"pddl_domain",
"grammar", "pddl_problem", "solvable", "walkthrough"}``) and ``traj_data.json`` (``task_type``
and ``pddl_params``, read by ALFWorld's hand-coded expert). For a (split, task type, seed) the
generator

1. picks an ALFRED room whose kind suits the task (``GOALS_VALID``) from the split's rooms
   (``train``: ``TRAIN_SCENE_NUMBERS``; ``test``: the held-out ``TEST_SCENE_NUMBERS``, like
   ALFWorld's unseen split) and that has what the task needs (a lamp, a sink basin, a
   microwave, a fridge);
2. picks the target object class and receptacle class (and lamp) so the task is solvable;
3. places 1-3 instances of every object class of the room (2-3 of a pick-two target) in
   receptacles that can hold them, never the target object in a receptacle of the target
   class, so the goal is not satisfied at the start;
4. writes the PDDL problem with ALFRED-shaped ids (``Cabinet|+00.68|+00.50|-02.20``), which
   ALFWorld's demangler turns into ``cabinet 3``, and the goal from ALFWorld's goal library.

:func:`ensure_game` then plays ALFWorld's hand-coded expert (with the tracker fix of
:mod:`.expert`) on it and keeps it only if the expert wins, storing the winning commands as
the game's ``walkthrough``; a lost game is redrawn with the next attempt number. Games are
cached on disk, so each is generated once.

These are not ALFWorld's official games (its valid_seen / valid_unseen sets): placements,
counts, synthetic receptacles and task pairs differ, so scores are not directly comparable with
published ALFWorld numbers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alfworld.gen import constants, goal_library

from agentropy.envs.alfworld.rooms import LAMP_TYPES, Receptacle, Room, format_id, load_room, split_scenes

#: Bump when a change alters any generated game's bytes; it names the cache folder.
GENERATOR_VERSION = 1

#: ALFWorld's six task types, in ALFWorld's numbering order (1..6 of ``TASK_TYPES`` there).
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

SPLITS = ("train", "test")

#: Objects that can hold other objects (ALFRED's movable receptacles).
RECEPTACLE_OBJECTS = frozenset({"Mug", "Cup", "Bowl", "Plate", "Pot", "Pan", "Box"})

#: What each state-change task needs: the appliance in the room and the ability of the object.
APPLIANCE = {
    "pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
    "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
    "pick_cool_then_place_in_recep": ("Fridge", "Coolable"),
}

#: Receptacle classes a task may not name as its target: its own appliance (and for cleaning,
#: any basin, where the object would be cleaned where it lies).
EXCLUDED_TARGETS = {
    "pick_clean_then_place_in_recep": frozenset({"SinkBasin", "BathtubBasin"}),
    "pick_heat_then_place_in_recep": frozenset({"Microwave"}),
    "pick_cool_then_place_in_recep": frozenset({"Fridge"}),
}

#: Tries per seed before giving up (the expert wins over 99% of first draws).
MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Task:
    """What a game asks: ALFRED class names (``Apple``, ``CounterTop``, ``DeskLamp``)."""

    task_type: str
    object_target: str
    parent_target: str = ""
    toggle_target: str = ""


@dataclass(frozen=True)
class GeneratedGame:
    """A game before it is written: the ``game.tw-pddl`` dict and the ``traj_data.json`` dict."""

    game: dict[str, Any]
    traj_data: dict[str, Any]


def mangle(alfred_id: str) -> str:
    """ALFRED id -> PDDL name, as ALFWorld spells it (``|`` -> ``_bar_``, ``+`` -> ``_plus_``...)."""
    return (
        alfred_id.replace("-", "_minus_").replace("|", "_bar_").replace("+", "_plus_")
        .replace(".", "_dot_").replace(",", "_comma_")
    )


def location_name(x: float, z: float, rot: int, horizon: int) -> str:
    """ALFWorld's location name for an agent pose: ``loc|x/0.25|z/0.25|rot/90|horizon``, mangled."""
    return mangle(f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{rot // 90}|{horizon}")


def _check(split: str, task_type: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")


def candidate_tasks(room: Room, task_type: str) -> list[Task]:
    """Every solvable task of ``task_type`` in ``room`` (empty if the room's kind does not suit it)."""
    if room.kind not in constants.GOALS_VALID[task_type]:
        return []
    if task_type == "look_at_obj_in_light":
        return [Task(task_type, o, toggle_target=lamp) for lamp in room.lamp_types for o in room.object_types]
    appliance, ability = APPLIANCE.get(task_type, (None, None))
    if appliance and appliance not in room.receptacle_types:
        return []
    tasks = []
    for obj in room.object_types:
        if ability and obj not in constants.VAL_ACTION_OBJECTS[ability]:
            continue
        holder_types = {r.type for r in room.holders(obj)}
        if len(holder_types) < 2:  # the target must be able to start somewhere else
            continue
        for recep in sorted(holder_types - EXCLUDED_TARGETS.get(task_type, frozenset())):
            tasks.append(Task(task_type, obj, parent_target=recep))
    return tasks


def rooms_for(task_type: str, split: str) -> list[int]:
    """The split's rooms in which some ``task_type`` task is solvable, sorted."""
    _check(split, task_type)
    return [s for s in split_scenes(split) if candidate_tasks(load_room(s), task_type)]


def _task_sentence(task: Task, rng: random.Random) -> str:
    template = rng.choice(goal_library.gdict[task.task_type]["templates"])
    return template.format(obj=task.object_target.lower(), recep=task.parent_target.lower(),
                           toggle=task.toggle_target.lower(), mrecep="")


def _goal_pddl(task: Task) -> str:
    text = goal_library.gdict[task.task_type]["pddl"].replace("#", "-")
    return text.format(obj=task.object_target, recep=task.parent_target, toggle=task.toggle_target)


def _place_objects(room: Room, task: Task, rng: random.Random) -> list[tuple[str, str, Receptacle]]:
    """(ALFRED id, class, parent) for every object instance of the game, lamps included."""
    taken: set[str] = set()
    placed = []

    def put(otype: str, parent: Receptacle) -> None:
        px, py, pz = (float(v) for v in parent.id.split("|")[1:4])
        while True:
            oid = format_id(otype, px + rng.uniform(-0.3, 0.3), py + rng.uniform(0.0, 0.1), pz + rng.uniform(-0.3, 0.3))
            if oid not in taken:
                break
        taken.add(oid)
        placed.append((oid, otype, parent))

    for otype in room.object_types:
        holders = room.holders(otype)
        if otype == task.object_target and task.parent_target:
            holders = [r for r in holders if r.type != task.parent_target]
        low = 2 if otype == task.object_target and task.task_type == "pick_two_obj_and_place" else 1
        for _ in range(rng.randint(low, constants.MAX_NUM_OF_OBJ_INSTANCES)):
            put(otype, rng.choice(holders))
    for lamp in room.lamp_types:
        put(lamp, rng.choice(room.holders(lamp)))
    return placed


def _locations(room: Room, rng: random.Random) -> tuple[dict[str, str], str]:
    """A distinct location per receptacle (bumping the camera horizon on a clash) and a start."""
    used: set[str] = set()
    where = {}
    for r in room.receptacles:
        x, z, rot, horizon = r.pose
        loc = location_name(x, z, rot, horizon)
        while loc in used:
            horizon += 15
            loc = location_name(x, z, rot, horizon)
        used.add(loc)
        where[r.id] = loc
    while True:
        x, z = rng.choice(room.receptacles).pose[:2]
        start = location_name(x + rng.choice((-0.5, 0.5)), z + rng.choice((-0.5, 0.5)), rng.choice((0, 90, 180, 270)), 30)
        if start not in used:
            return where, start


def _problem(room: Room, task: Task, placed, where: dict[str, str], start: str, name: str) -> str:
    receps = room.receptacles
    otypes = sorted({otype for _, otype, _ in placed})
    rtypes = sorted(room.receptacle_types)
    objects = ["agent1 - agent"]
    objects += [f"{t}Type - otype" for t in otypes]
    objects += [f"{t}Type - rtype" for t in rtypes]
    objects += [f"{mangle(oid)} - object" for oid, _, _ in sorted(placed)]
    objects += [f"{mangle(r.id)} - receptacle" for r in receps]
    objects += [f"{loc} - location" for loc in sorted(set(where.values()) | {start})]

    init = [f"(atLocation agent1 {start})"]
    for r in receps:
        init.append(f"(receptacleType {mangle(r.id)} {r.type}Type)")
        init.append(f"(receptacleAtLocation {mangle(r.id)} {where[r.id]})")
        if r.type in constants.OPENABLE_CLASS_SET:
            init.append(f"(openable {mangle(r.id)})")
    for rtype in rtypes:
        for otype in otypes:
            if otype in constants.VAL_RECEPTACLE_OBJECTS[rtype]:
                init.append(f"(canContain {rtype}Type {otype}Type)")
    abilities = (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable"), ("Sliceable", "sliceable"))
    for oid, otype, parent in sorted(placed):
        o = mangle(oid)
        init.append(f"(objectType {o} {otype}Type)")
        init.append(f"(inReceptacle {o} {mangle(parent.id)})")
        init.append(f"(objectAtLocation {o} {where[parent.id]})")
        if otype in LAMP_TYPES:
            init.append(f"(toggleable {o})")
            continue
        init.append(f"(pickupable {o})")
        if otype in RECEPTACLE_OBJECTS:
            init.append(f"(isReceptacleObject {o})")
        init += [f"({pred} {o})" for key, pred in abilities if otype in constants.VAL_ACTION_OBJECTS[key]]

    lines = [f"(define (problem {name})", "(:domain alfred)", "(:objects"]
    lines += [f"        {line}" for line in objects]
    lines += ["        )", "", "(:init"]
    lines += [f"        {fact}" for fact in init]
    lines += ["        )", ""]
    return "\n".join(lines) + _goal_pddl(task).strip("\n") + "\n"


def domain_and_grammar() -> tuple[str, str]:
    """ALFWorld's PDDL domain and text grammar, as shipped in the wheel."""
    data = resources.files("alfworld") / "data"
    return (data / "alfred.pddl").read_text(), (data / "alfred.twl2").read_text()


def generate_game(split: str, task_type: str, seed: int, attempt: int = 0) -> GeneratedGame:
    """The game for (split, task_type, seed, attempt): a pure function of its arguments."""
    _check(split, task_type)
    rng = random.Random(f"agentropy-alfworld-v{GENERATOR_VERSION}|{split}|{task_type}|{seed}|{attempt}")
    room = load_room(rng.choice(rooms_for(task_type, split)))
    task = rng.choice(candidate_tasks(room, task_type))
    placed = _place_objects(room, task, rng)
    where, start = _locations(room, rng)
    name = f"agentropy_{split}_{task_type}_{seed}_{attempt}"
    domain, grammar = domain_and_grammar()
    sentence = _task_sentence(task, rng)
    game = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", sentence),
        "pddl_problem": _problem(room, task, placed, where, start, name),
        "solvable": False,  # set by ensure_game once the expert has won
        "walkthrough": None,
    }
    traj_data = {
        "task_type": task_type,
        "pddl_params": {
            "object_target": task.object_target,
            "parent_target": task.parent_target,
            "toggle_target": task.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "scene": {"floor_plan": f"FloorPlan{room.scene}", "scene_num": room.scene},
        "task_id": name,
        "turk_annotations": {"anns": [{"task_desc": sentence}]},
        "agentropy": {"generator_version": GENERATOR_VERSION, "split": split, "seed": seed, "attempt": attempt},
    }
    return GeneratedGame(game, traj_data)


def write_game(game: GeneratedGame, folder: Path) -> Path:
    """Write ``game.tw-pddl`` and ``traj_data.json`` into ``folder``; return the game file path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "traj_data.json").write_text(json.dumps(game.traj_data, indent=1) + "\n")
    path = folder / "game.tw-pddl"
    path.write_text(json.dumps(game.game, indent=1) + "\n")
    return path


def default_cache_dir() -> Path:
    """``$AGENTROPY_CACHE/alfworld`` or ``~/.cache/agentropy/alfworld``."""
    root = os.environ.get("AGENTROPY_CACHE")
    return Path(root) / "alfworld" if root else Path.home() / ".cache" / "agentropy" / "alfworld"


def translation_dir(cache_dir: str | Path) -> Path:
    """Where the engine stores the games' PDDL translations (see :mod:`.engine`)."""
    return Path(cache_dir) / "translations"


def game_dir(cache_dir: str | Path, split: str, task_type: str, seed: int) -> Path:
    """Where the game for (split, task_type, seed) lives in the cache."""
    _check(split, task_type)
    return Path(cache_dir) / f"v{GENERATOR_VERSION}" / split / task_type / f"{seed:06d}"


def ensure_game(cache_dir: str | Path, split: str, task_type: str, seed: int, max_steps: int = 150) -> Path:
    """Path of the validated game (split, task_type, seed), generating it if the cache lacks it.

    Each attempt is written to a temporary folder beside the target, played by the hand-coded
    expert, and moved into place only if the expert won (with its commands as walkthrough), so
    concurrent processes never see a half-written or unvalidated game. The game's translation
    is stored in the cache's translation folder on the way, so later loads are fast.
    """
    from agentropy.envs.alfworld.engine import set_translation_dir
    from agentropy.envs.alfworld.expert import play_expert

    final = game_dir(cache_dir, split, task_type, seed)
    if (final / "game.tw-pddl").exists():
        return final / "game.tw-pddl"
    set_translation_dir(translation_dir(cache_dir))
    final.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(MAX_ATTEMPTS):
        game = generate_game(split, task_type, seed, attempt)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            path = write_game(game, tmp)
            won, commands = play_expert(path, max_steps=max_steps)
            if not won:
                continue
            game.game["solvable"] = True
            game.game["walkthrough"] = commands
            write_game(game, tmp)
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same game first
                if not (final / "game.tw-pddl").exists():
                    raise
            return final / "game.tw-pddl"
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError(f"no solvable game for split={split!r} task_type={task_type!r} seed={seed} "
                       f"in {MAX_ATTEMPTS} attempts")
