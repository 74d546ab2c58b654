"""ALFRED's rooms as the ``alfworld`` wheel ships them, read into plain records.

ALFWorld's official games were made from ALFRED trajectories, which cannot be fetched here.
What the wheel does ship is, for each of ALFRED's 120 rooms, the object and receptacle types in
it (``gen/layouts/FloorPlanN-objects.json``) and the ids and agent poses of most of its
receptacles (``FloorPlanN-openable.json``), plus the compatibility tables of
``gen/constants.py``. A :class:`Room` is that data, completed where the layouts are silent:
stove burners, coffee machines, toasters, most garbage cans, towel holders and laundry hampers
get synthetic ALFRED-shaped ids and poses, drawn from a generator seeded by the room number
alone, so a room is the same in every game made from it.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from importlib import resources

from alfworld.gen import constants

#: Receptacle classes the generator places objects in (static furniture, not movable bowls/mugs).
RECEPTACLE_TYPES = frozenset(constants.VAL_RECEPTACLE_OBJECTS) - constants.MOVABLE_RECEPTACLES_SET

#: Lamps toggled by look_at_obj_in_light tasks; they sit on furniture and are never picked up.
LAMP_TYPES = ("DeskLamp", "FloorLamp")

#: The furniture a lamp may stand on or beside (never openable, so the lamp is always in view).
LAMP_FURNITURE = {
    "DeskLamp": ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "DiningTable", "TVStand"),
    "FloorLamp": ("SideTable", "Dresser", "Desk", "TVStand", "CoffeeTable", "DiningTable", "Shelf", "ArmChair", "Sofa"),
}

#: Instances made for a receptacle class the layout file does not list (ALFRED kitchens have 4 burners).
SYNTHETIC_COUNT = {"StoveBurner": 4}

#: Height (ALFRED's y) given to synthetic receptacles; only shapes the id, never shown to the agent.
SYNTHETIC_HEIGHT = {
    "StoveBurner": 0.91, "CoffeeMachine": 0.90, "Toaster": 0.90, "GarbageCan": 0.00,
    "TowelHolder": 1.10, "HandTowelHolder": 1.60, "ToiletPaperHanger": 0.66, "LaundryHamper": 0.00,
    "Toilet": 0.00, "SinkBasin": 0.90, "Shelf": 0.80, "Drawer": 0.40, "Cabinet": 0.50,
    "Safe": 0.20, "Ottoman": 0.00,
}

#: The object id prefix of basin receptacles: ALFRED names them ``Sink|...|SinkBasin``.
BASIN_PREFIX = {"SinkBasin": "Sink", "BathtubBasin": "Bathtub"}

#: Every placeable object class: what some receptacle class can hold, sliced variants excluded.
PLACEABLE_TYPES = frozenset(
    o for objs in constants.VAL_RECEPTACLE_OBJECTS.values() for o in objs if not o.endswith("Sliced")
)


@dataclass(frozen=True)
class Receptacle:
    """A receptacle instance: ALFRED id (``Cabinet|+00.68|+00.50|-02.20``), class, agent pose."""

    id: str
    type: str
    pose: tuple[float, float, int, int]  # agent x, z, rotation (degrees), camera horizon


@dataclass(frozen=True)
class Room:
    """One ALFRED room: its number, kind, receptacles and the object classes present in it."""

    scene: int
    kind: str  # Kitchen | LivingRoom | Bedroom | Bathroom
    receptacles: tuple[Receptacle, ...]
    object_types: tuple[str, ...]  # placeable classes present (at least one receptacle holds them)
    lamp_types: tuple[str, ...]  # lamps present that have furniture to stand on

    @property
    def receptacle_types(self) -> frozenset[str]:
        return frozenset(r.type for r in self.receptacles)

    def holders(self, object_type: str) -> list[Receptacle]:
        """Receptacles of this room that can hold ``object_type`` (ALFRED's compatibility table)."""
        if object_type in LAMP_TYPES:
            return [r for r in self.receptacles if r.type in LAMP_FURNITURE[object_type]]
        return [r for r in self.receptacles if object_type in constants.VAL_RECEPTACLE_OBJECTS[r.type]]


def scene_kind(scene: int) -> str:
    for kind, numbers in constants.SCENE_TYPE.items():
        if scene in numbers:
            return kind
    raise ValueError(f"scene {scene} is not an ALFRED room number")


def split_scenes(split: str) -> list[int]:
    """ALFRED's room numbers for a split: ``train`` rooms, or the held-out ``test`` rooms."""
    if split == "train":
        return sorted(constants.TRAIN_SCENE_NUMBERS)
    if split == "test":
        return sorted(constants.TEST_SCENE_NUMBERS)
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def format_id(type_prefix: str, x: float, y: float, z: float, suffix: str = "") -> str:
    """An ALFRED object id: ``Type|+x.xx|+y.yy|+z.zz`` (and ``|SinkBasin`` for basins)."""
    text = f"{type_prefix}|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}"
    return f"{text}|{suffix}" if suffix else text


def _layout(scene: int, what: str):
    path = resources.files("alfworld.gen") / "layouts" / f"FloorPlan{scene}-{what}.json"
    return json.loads(path.read_text())


def _receptacle_type(layout_id: str) -> str:
    parts = layout_id.split("|")
    return parts[-1] if len(parts) > 4 else parts[0]


def _id_xyz(layout_id: str) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in layout_id.split("|")[1:4])
    return x, y, z


@functools.cache
def load_room(scene: int) -> Room:
    """Read room ``scene`` from the wheel and complete the receptacles its layout lacks."""
    present = set(_layout(scene, "objects"))
    openable = _layout(scene, "openable")
    receptacles = []
    for layout_id, (x, z, rot, horizon) in sorted(openable.items()):
        rtype = _receptacle_type(layout_id)
        if rtype not in RECEPTACLE_TYPES:
            continue
        if rtype in BASIN_PREFIX:  # one layout calls a sink basin "Bathtub|...|SinkBasin"
            layout_id = format_id(BASIN_PREFIX[rtype], *_id_xyz(layout_id), suffix=rtype)
        receptacles.append(Receptacle(layout_id, rtype, (float(x), float(z), int(rot), int(horizon))))

    rng = random.Random(f"agentropy-alfworld-room-{scene}")
    xs = [_id_xyz(r.id)[0] for r in receptacles] or [0.0]
    zs = [_id_xyz(r.id)[2] for r in receptacles] or [0.0]
    listed = {r.type for r in receptacles}
    for rtype in sorted((present & RECEPTACLE_TYPES) - listed):
        for _ in range(SYNTHETIC_COUNT.get(rtype, 1)):
            x, z = rng.uniform(min(xs), max(xs)), rng.uniform(min(zs), max(zs))
            y = SYNTHETIC_HEIGHT.get(rtype, 0.5)
            rid = format_id(BASIN_PREFIX.get(rtype, rtype), x, y, z, suffix=rtype if rtype in BASIN_PREFIX else "")
            pose = (round(x * 4) / 4, round(z * 4) / 4 + 0.5, rng.choice((0, 90, 180, 270)), 30)
            receptacles.append(Receptacle(rid, rtype, pose))

    receptacles.sort(key=lambda r: r.id)
    room = Room(scene, scene_kind(scene), tuple(receptacles), (), ())
    object_types = tuple(sorted(t for t in present & PLACEABLE_TYPES if room.holders(t)))
    lamp_types = tuple(t for t in LAMP_TYPES if t in present and room.holders(t))
    return Room(scene, room.kind, room.receptacles, object_types, lamp_types)
