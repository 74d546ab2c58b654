"""Draw a Household world from (split, task id, difficulty knobs), deterministically.

One task is one world. The generator

1. picks a task type (from the allowed ones) and a room kind that can pose it;
2. picks a goal combination (object type, target receptacle type) from the split's
   combinations (:data:`catalog.GOAL_COMBOS`; test combinations never occur in train);
3. furnishes the room: every receptacle type of the room kind at its minimum count, the
   goal's receptacle and tool, then more receptacles drawn at random up to the requested
   number (capped by the room kind's maxima); openable receptacles start closed;
4. places the goal objects (one or two instances; two or three for pick-two) anywhere they
   plausibly lie except in a receptacle of the target type, so no start satisfies the goal;
5. adds distractors (other object types that the same task could be about: cleanable for a
   clean task, examinable for a lamp task, fitting the target receptacle for a placement) and
   ambient objects, each in a receptacle where its type plausibly lies;
6. shuffles the objects before numbering them, so ``mug 1`` is not always the goal object.

Randomness comes only from a ``random.Random`` seeded by a string of all inputs, so the same
inputs give the same world on every machine and Python version.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agentropy.envs.household.catalog import (
    EXAMINE,
    GOAL_COMBOS,
    GOAL_TEMPLATES,
    LAMP_FURNITURE,
    LAMP_ROOMS,
    OBJECTS,
    PICK_TWO,
    ROOMS,
    SPLITS,
    TASK_ALIASES,
    TASK_NEEDS,
    TASK_TYPES,
    TOOL_OF,
    objects_in_room,
)
from agentropy.envs.household.world import NOWHERE, State, World

Range = tuple[int, int]


def as_range(value: int | Range | list[int], field: str, minimum: int = 0) -> Range:
    """Accept ``n`` or ``(lo, hi)``; reject anything else with an error naming ``field``."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be an int or a (min, max) pair, got {value!r}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        lo, hi = value
    else:
        raise ValueError(f"{field} must be an int or a (min, max) pair, got {value!r}")
    if lo < minimum or hi < lo:
        raise ValueError(f"{field} must satisfy {minimum} <= min <= max, got {value!r}")
    return int(lo), int(hi)


def task_type_name(name: str, field: str = "task_type") -> str:
    """The canonical ALFWorld task-type name for ``name`` or a short alias."""
    canonical = TASK_ALIASES.get(str(name).strip().lower()) if isinstance(name, str) else None
    if canonical is None:
        raise ValueError(f"{field}: unknown task type {name!r}; known: {', '.join(TASK_TYPES)}")
    return canonical


@dataclass(frozen=True)
class HouseholdConfig:
    """Difficulty knobs. Counts are ``(min, max)`` ranges drawn per task."""

    n_receptacles: Range = (10, 20)  #: receptacles in the room (room kinds cap it: kitchen <= 34)
    n_objects: Range = (6, 12)  #: ambient objects besides goal objects and distractors
    n_distractors: Range = (1, 3)  #: objects of types the same task could have been about
    task_types: tuple[str, ...] = TASK_TYPES  #: task types drawn from (canonical names)

    @classmethod
    def build(
        cls,
        n_receptacles: int | Range = (10, 20),
        n_objects: int | Range = (6, 12),
        n_distractors: int | Range = (1, 3),
        task_types: str | tuple[str, ...] | list[str] | None = None,
    ) -> HouseholdConfig:
        """Validate user-facing values (ints or pairs, aliases) into a config."""
        if task_types is None:
            types = TASK_TYPES
        else:
            names = [task_types] if isinstance(task_types, str) else list(task_types)
            chosen = {task_type_name(t, "task_types") for t in names}
            if not chosen:
                raise ValueError("task_types must name at least one task type")
            types = tuple(t for t in TASK_TYPES if t in chosen)
        return cls(
            n_receptacles=as_range(n_receptacles, "n_receptacles", 1),
            n_objects=as_range(n_objects, "n_objects"),
            n_distractors=as_range(n_distractors, "n_distractors"),
            task_types=types,
        )


def generate(split: str, task_id: int, config: HouseholdConfig, task_type: str | None = None) -> State:
    """The initial state (with its :class:`World`) of task ``task_id`` of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    types = (task_type,) if task_type is not None else config.task_types
    rng = random.Random(
        f"household|{split}|{task_id}|{','.join(types)}|{config.n_receptacles}|{config.n_objects}|{config.n_distractors}"
    )
    task_type = rng.choice(types)
    rooms = [room for room in ROOMS if GOAL_COMBOS[task_type, room, split]]
    room = rng.choice(rooms)
    goal_obj, goal_recep = rng.choice(GOAL_COMBOS[task_type, room, split])

    recep_types = _furnish(rng, room, task_type, goal_obj, goal_recep, config.n_receptacles)
    lamp_recep = NOWHERE
    if room in LAMP_ROOMS:
        lamp_recep = rng.choice([r for r, t in enumerate(recep_types) if t in LAMP_FURNITURE])

    by_type: dict[str, list[int]] = {}
    for r, t in enumerate(recep_types):
        by_type.setdefault(t, []).append(r)

    def spots(obj: str, exclude: str = "") -> list[int]:
        return [r for p in OBJECTS[obj].places if p != exclude for r in by_type.get(p, ())]

    placed: list[tuple[str, int]] = []
    n_goal = rng.randint(2, 3) if task_type == PICK_TWO else rng.randint(1, 2)
    goal_spots = spots(goal_obj, exclude=goal_recep)
    placed += [(goal_obj, rng.choice(goal_spots)) for _ in range(n_goal)]

    others = [o for o in objects_in_room(room) if o != goal_obj and spots(o)]
    similar = [o for o in others if _similar(o, task_type, goal_recep)] or others
    for _ in range(rng.randint(*config.n_distractors)):
        obj = rng.choice(similar)
        placed.append((obj, rng.choice(spots(obj))))
    for _ in range(rng.randint(*config.n_objects)):
        obj = rng.choice(others)
        placed.append((obj, rng.choice(spots(obj))))

    rng.shuffle(placed)
    placed.sort(key=lambda item: item[0])  # stable: numbering follows the shuffled order
    obj_types = [t for t, _ in placed]
    contents: list[list[int]] = [[] for _ in recep_types]
    where = []
    for o, (_, r) in enumerate(placed):
        contents[r].append(o)
        where.append(r)

    task = rng.choice(GOAL_TEMPLATES[task_type]).format(obj=goal_obj, recep=goal_recep)
    world = World(
        split=split, task_id=task_id, task_type=task_type, room=room, goal_obj=goal_obj,
        goal_recep=goal_recep, task=task, recep_types=recep_types, obj_types=obj_types,
        lamp_recep=lamp_recep,
    )
    return State(world, [tuple(c) for c in contents], where)


def _furnish(rng: random.Random, room: str, task_type: str, goal_obj: str, goal_recep: str, n: Range) -> list[str]:
    """Receptacle types of the room, sorted by type (instances numbered in that order)."""
    spec = ROOMS[room]
    counts = {t: lo for t, lo, _ in spec}
    required = [TOOL_OF.get(TASK_NEEDS[task_type])]
    if task_type == EXAMINE:
        if not any(counts[t] for t in LAMP_FURNITURE if t in counts):
            required.append(rng.choice([t for t in LAMP_FURNITURE if t in counts]))
    else:
        required.append(goal_recep)
        elsewhere = [p for p in OBJECTS[goal_obj].places if p in counts and p != goal_recep]
        if not any(counts[p] for p in elsewhere):
            required.append(rng.choice(elsewhere))
    for t in required:
        if t is not None and counts[t] == 0:
            counts[t] = 1
    target = rng.randint(*n)
    maxima = {t: hi for t, _, hi in spec}
    while sum(counts.values()) < target:
        room_left = [t for t, _, _ in spec if counts[t] < maxima[t]]
        if not room_left:
            break
        counts[rng.choice(room_left)] += 1
    return [t for t, _, _ in spec for _ in range(counts[t])]


def _similar(obj: str, task_type: str, goal_recep: str) -> bool:
    """Whether ``obj`` could have been this task's object: the distractor rule."""
    kind = OBJECTS[obj]
    if task_type == EXAMINE:
        return kind.examinable
    need = TASK_NEEDS[task_type]
    if need:
        return bool(kind.can & need)
    return goal_recep in kind.places
