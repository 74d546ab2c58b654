"""What a Household world is made of: rooms, receptacles, objects and the six task types.

The tables are plain data, modelled on ALFWorld/ALFRED's scene contents (``gen/constants.py``):
which receptacles a room kind holds (with how many of each), which receptacles can be opened,
where each object type plausibly lies, and which objects can be cleaned, heated, cooled or
examined under a lamp. The generator draws worlds from these tables; nothing here is random.

The train/test split is decided here too: a goal *combination* (task type, object type,
target receptacle type) is held out for the test split when a CRC-32 of its name falls in a
fixed residue class, so the split is stable across Python versions and hash seeds.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Task types, named as in ALFWorld's ``traj_data.json``.
PICK = "pick_and_place_simple"
PICK_TWO = "pick_two_obj_and_place"
CLEAN = "pick_clean_then_place_in_recep"
HEAT = "pick_heat_then_place_in_recep"
COOL = "pick_cool_then_place_in_recep"
EXAMINE = "look_at_obj_in_light"

TASK_TYPES: tuple[str, ...] = (PICK, PICK_TWO, CLEAN, HEAT, COOL, EXAMINE)

#: Short names accepted wherever a task type is named.
TASK_ALIASES: dict[str, str] = {
    "pick": PICK,
    "pick_and_place": PICK,
    "pick_two": PICK_TWO,
    "clean": CLEAN,
    "heat": HEAT,
    "cool": COOL,
    "examine": EXAMINE,
    "look_at_obj_in_light": EXAMINE,
    **{t: t for t in TASK_TYPES},
}

#: Two sentence templates per task type, as in ALFWorld's ``goal_library``.
GOAL_TEMPLATES: dict[str, tuple[str, str]] = {
    PICK: ("put a {obj} in {recep}.", "put some {obj} on {recep}."),
    PICK_TWO: ("put two {obj} in {recep}.", "find two {obj} and put them in {recep}."),
    CLEAN: ("put a clean {obj} in {recep}.", "clean some {obj} and put it in {recep}."),
    HEAT: ("put a hot {obj} in {recep}.", "heat some {obj} and put it in {recep}."),
    COOL: ("put a cool {obj} in {recep}.", "cool some {obj} and put it in {recep}."),
    EXAMINE: ("look at {obj} under the {recep}.", "examine the {obj} with the {recep}."),
}

# Object state bits: what was done to an object, and (as capabilities) what can be done.
IS_CLEAN = 1
IS_HOT = 2
IS_COOL = 4

#: State bit a task type needs on its object before placing it.
TASK_NEEDS: dict[str, int] = {PICK: 0, PICK_TWO: 0, CLEAN: IS_CLEAN, HEAT: IS_HOT, COOL: IS_COOL, EXAMINE: 0}

#: Receptacle type that applies a state bit ("clean X with sinkbasin 1", ...).
TOOL_OF: dict[int, str] = {IS_CLEAN: "sinkbasin", IS_HOT: "microwave", IS_COOL: "fridge"}

OPENABLE: frozenset[str] = frozenset({"cabinet", "drawer", "fridge", "microwave", "safe"})

#: Furniture a desk lamp stands on.
LAMP_FURNITURE: tuple[str, ...] = ("desk", "sidetable", "dresser")
LAMP = "desklamp"

#: Room kind -> ((receptacle type, min count, max count), ...).
ROOMS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "kitchen": (
        ("cabinet", 2, 10), ("coffeemachine", 1, 1), ("countertop", 1, 3), ("diningtable", 0, 2),
        ("drawer", 1, 6), ("fridge", 1, 1), ("garbagecan", 1, 1), ("microwave", 1, 1),
        ("shelf", 0, 3), ("sinkbasin", 1, 1), ("stoveburner", 2, 4), ("toaster", 0, 1),
    ),
    "bathroom": (
        ("bathtubbasin", 0, 1), ("cabinet", 1, 4), ("countertop", 1, 1), ("drawer", 0, 4),
        ("garbagecan", 1, 1), ("handtowelholder", 0, 1), ("shelf", 0, 3), ("sinkbasin", 1, 2),
        ("toilet", 1, 1), ("toiletpaperhanger", 1, 1), ("towelholder", 1, 1),
    ),
    "bedroom": (
        ("armchair", 0, 1), ("bed", 1, 1), ("cabinet", 0, 2), ("desk", 0, 1), ("drawer", 1, 6),
        ("dresser", 0, 1), ("garbagecan", 1, 1), ("laundryhamper", 0, 1), ("safe", 0, 1),
        ("shelf", 0, 5), ("sidetable", 1, 2),
    ),
    "livingroom": (
        ("armchair", 0, 2), ("cabinet", 0, 4), ("coffeetable", 1, 1), ("desk", 0, 1),
        ("diningtable", 0, 1), ("drawer", 0, 4), ("dresser", 0, 1), ("garbagecan", 1, 1),
        ("ottoman", 0, 1), ("shelf", 0, 4), ("sidetable", 1, 2), ("sofa", 1, 1), ("tvstand", 0, 1),
    ),
}

#: Rooms that have a desk lamp (on one of :data:`LAMP_FURNITURE`).
LAMP_ROOMS: frozenset[str] = frozenset({"bedroom", "livingroom"})


@dataclass(frozen=True)
class ObjectKind:
    """One object type: rooms it occurs in, where it lies, what can be done to it."""

    name: str
    rooms: frozenset[str]
    places: tuple[str, ...]
    can: int  # IS_CLEAN | IS_HOT | IS_COOL bits: cleanable, heatable, coolable
    examinable: bool


_ROOM_CODES = {"K": "kitchen", "B": "bathroom", "R": "bedroom", "L": "livingroom"}
_CAN_CODES = {"c": IS_CLEAN, "h": IS_HOT, "f": IS_COOL}

# name: (room codes, places, abilities: c=clean h=heat f=cool(fridge) x=examine under a lamp)
_OBJECT_TABLE = {
    "alarmclock": ("R", "desk sidetable dresser shelf", "x"),
    "apple": ("K", "countertop diningtable fridge microwave garbagecan sinkbasin", "chf"),
    "book": ("RL", "bed desk sidetable shelf drawer dresser sofa armchair coffeetable", "x"),
    "bowl": ("KRL", "countertop diningtable cabinet fridge microwave shelf sinkbasin desk coffeetable sidetable", "cfx"),
    "box": ("RL", "sofa armchair coffeetable sidetable tvstand shelf dresser desk diningtable", "x"),
    "bread": ("K", "countertop diningtable fridge microwave cabinet", "hf"),
    "butterknife": ("K", "countertop diningtable drawer sinkbasin", "c"),
    "candle": ("BL", "countertop cabinet shelf toilet drawer sidetable coffeetable", ""),
    "cd": ("RL", "desk sidetable drawer shelf safe dresser garbagecan", "x"),
    "cellphone": ("RL", "bed desk sidetable drawer dresser sofa armchair safe shelf", "x"),
    "cloth": ("BR", "countertop cabinet sinkbasin bathtubbasin drawer shelf laundryhamper", "c"),
    "creditcard": ("KRL", "desk sidetable drawer dresser shelf sofa armchair coffeetable safe countertop diningtable", "x"),
    "cup": ("K", "countertop diningtable cabinet fridge microwave shelf sinkbasin", "chf"),
    "dishsponge": ("KB", "countertop diningtable cabinet drawer sinkbasin shelf", "c"),
    "egg": ("K", "countertop diningtable fridge microwave sinkbasin garbagecan", "hf"),
    "fork": ("K", "countertop diningtable drawer sinkbasin", "c"),
    "handtowel": ("B", "handtowelholder countertop cabinet", ""),
    "kettle": ("K", "countertop stoveburner cabinet sinkbasin shelf", "c"),
    "keychain": ("RL", "desk sidetable drawer dresser shelf safe sofa coffeetable", "x"),
    "knife": ("K", "countertop diningtable drawer sinkbasin", "c"),
    "ladle": ("K", "countertop diningtable drawer sinkbasin", "c"),
    "laptop": ("RL", "bed desk sofa armchair coffeetable dresser sidetable", "x"),
    "lettuce": ("K", "countertop diningtable fridge sinkbasin", "cf"),
    "mug": ("KRL", "countertop diningtable cabinet coffeemachine fridge microwave shelf sinkbasin desk sidetable coffeetable", "chfx"),
    "newspaper": ("L", "sofa armchair coffeetable sidetable diningtable garbagecan ottoman", "x"),
    "pan": ("K", "countertop diningtable cabinet fridge stoveburner sinkbasin", "cf"),
    "pen": ("RL", "desk sidetable drawer dresser shelf", "x"),
    "pencil": ("RL", "desk sidetable drawer dresser shelf", "x"),
    "peppershaker": ("K", "countertop diningtable cabinet drawer shelf", ""),
    "pillow": ("RL", "bed sofa armchair ottoman", "x"),
    "plate": ("K", "countertop diningtable cabinet fridge microwave shelf sinkbasin", "chf"),
    "pot": ("K", "countertop diningtable cabinet fridge stoveburner sinkbasin shelf", "cf"),
    "potato": ("K", "countertop diningtable fridge microwave garbagecan sinkbasin", "chf"),
    "remotecontrol": ("L", "sofa armchair coffeetable sidetable tvstand dresser drawer ottoman", "x"),
    "saltshaker": ("K", "countertop diningtable cabinet drawer shelf", ""),
    "soapbar": ("B", "countertop cabinet sinkbasin bathtubbasin toilet garbagecan", "c"),
    "soapbottle": ("KB", "countertop cabinet shelf garbagecan toilet", ""),
    "spatula": ("K", "countertop diningtable drawer sinkbasin", "c"),
    "spoon": ("K", "countertop diningtable drawer sinkbasin", "c"),
    "spraybottle": ("B", "countertop cabinet toilet shelf garbagecan", ""),
    "statue": ("RL", "shelf desk sidetable coffeetable dresser tvstand diningtable", "x"),
    "tissuebox": ("BRL", "countertop shelf toilet cabinet sidetable coffeetable dresser", "x"),
    "toiletpaper": ("B", "countertop cabinet toilet toiletpaperhanger shelf garbagecan drawer", ""),
    "tomato": ("K", "countertop diningtable fridge microwave garbagecan sinkbasin", "chf"),
    "towel": ("B", "towelholder countertop cabinet shelf", ""),
    "vase": ("RL", "shelf desk sidetable coffeetable dresser tvstand diningtable cabinet", "x"),
    "watch": ("RL", "desk sidetable drawer dresser shelf safe coffeetable", "x"),
    "winebottle": ("K", "countertop diningtable cabinet fridge shelf", "f"),
}

OBJECTS: dict[str, ObjectKind] = {
    name: ObjectKind(
        name=name,
        rooms=frozenset(_ROOM_CODES[c] for c in rooms),
        places=tuple(places.split()),
        can=sum(bit for code, bit in _CAN_CODES.items() if code in abilities),
        examinable="x" in abilities,
    )
    for name, (rooms, places, abilities) in _OBJECT_TABLE.items()
}


def room_receptacle_types(room: str) -> tuple[str, ...]:
    return tuple(t for t, _, _ in ROOMS[room])


def objects_in_room(room: str) -> tuple[str, ...]:
    """Object types that occur in ``room`` and have somewhere to lie there."""
    types = set(room_receptacle_types(room))
    return tuple(o.name for o in OBJECTS.values() if room in o.rooms and types.intersection(o.places))


def is_test_combo(task_type: str, obj: str, recep: str) -> bool:
    """Whether a goal combination is held out for the test split (about one in five)."""
    return zlib.crc32(f"{task_type}|{obj}|{recep}".encode()) % 5 == 0


def _goal_combos(task_type: str, room: str) -> list[tuple[str, str]]:
    """All (object type, target type) goals of ``task_type`` that ``room`` can pose."""
    if task_type == EXAMINE:
        if room not in LAMP_ROOMS:
            return []
        return [(o, LAMP) for o in objects_in_room(room) if OBJECTS[o].examinable]
    need = TASK_NEEDS[task_type]
    tool = TOOL_OF.get(need)
    types = room_receptacle_types(room)
    if tool is not None and tool not in types:
        return []
    combos = []
    for o in objects_in_room(room):
        kind = OBJECTS[o]
        if need and not kind.can & need:
            continue
        spots = [p for p in kind.places if p in types]
        for r in spots:
            # The object must have somewhere else to start, or the goal would hold at once.
            if r != tool and any(p != r for p in spots):
                combos.append((o, r))
    return combos


def _split_combos() -> dict[tuple[str, str, str], tuple[tuple[str, str], ...]]:
    table = {}
    for task_type in TASK_TYPES:
        for room in ROOMS:
            combos = _goal_combos(task_type, room)
            for split, held_out in (("train", False), ("test", True)):
                table[task_type, room, split] = tuple(
                    c for c in combos if is_test_combo(task_type, *c) == held_out
                )
    return table


#: (task type, room kind, split) -> goal combinations (object type, target type) of that split.
GOAL_COMBOS: dict[tuple[str, str, str], tuple[tuple[str, str], ...]] = _split_combos()

SPLITS: tuple[str, ...] = ("train", "test")
