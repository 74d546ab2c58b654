"""A Household world: its fixed layout, its small mutable state, and ALFWorld's command language.

:class:`World` is everything that stays fixed during an episode (receptacle and object names,
the goal, the lamp's place) plus caches of the strings the commands are made of. It is never
mutated after construction apart from those caches, so states share it freely.

:class:`State` is everything that changes: where the agent stands, what it holds, which
receptacles are open (a bit mask), what lies in each receptacle (tuples), which objects are
clean/hot/cool (bit masks), whether the lamp is on. All fields are ints, bools or tuples held
in flat lists, so :meth:`State.copy` is a handful of list copies; that is what makes
``get_state``/``set_state`` cheap.

Commands follow ALFWorld's grammar and feedback sentences::

    go to X | open X | close X | take O from X | put O in/on X | clean O with X
    heat O with X | cool O with X | use desklamp N | examine X | look | inventory

A command is valid exactly when it is admissible; anything else answers "Nothing happens.".
:func:`admissible` returns the valid commands (with their parsed operation) for a state, and
:func:`apply` carries one out.
"""

from __future__ import annotations

from agentropy.envs.base import NOTHING_HAPPENS
from agentropy.envs.household.catalog import (
    EXAMINE,
    IS_CLEAN,
    IS_COOL,
    IS_HOT,
    LAMP,
    OBJECTS,
    OPENABLE,
    PICK_TWO,
    TASK_NEEDS,
    TOOL_OF,
)

# Operation codes. An operation is a tuple (code, a, b) with object/receptacle indices.
GO, OPEN, CLOSE, TAKE, PUT, TREAT, USE, EXAMINE_RECEP, EXAMINE_OBJ, LOOK, INVENTORY = range(11)

_TREAT_VERB = {IS_CLEAN: "clean", IS_HOT: "heat", IS_COOL: "cool"}
_STATE_WORDS = ((IS_CLEAN, "clean"), (IS_HOT, "hot"), (IS_COOL, "cool"))
_LOOK_OP = (LOOK, -1, -1)
_INVENTORY_OP = (INVENTORY, -1, -1)
NOWHERE = -1  # the agent's location before its first "go to"; an object's when held


def list_items(items: list[str]) -> str:
    """ALFWorld's enumeration: "nothing", "a mug 1", "a mug 1, and a cup 2", ..."""
    if not items:
        return "nothing"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ", and " + items[-1]


class World:
    """The fixed part of an episode. Build with keyword arguments; see the generator."""

    __slots__ = (
        "split", "task_id", "task_type", "room", "goal_obj", "goal_recep", "task", "need",
        "recep_names", "recep_types", "openable", "tool_kind", "obj_names", "obj_types", "obj_can",
        "lamp_recep", "lamp_name", "targets", "is_target", "dsts", "is_dst", "tools",
        "recep_index", "obj_index", "intro",
        "go_str", "open_str", "close_str", "examine_recep_str", "examine_obj_str", "a_obj",
        "use_str", "go_lookup", "_go_lists", "_take", "_put", "_treat",
    )

    def __init__(
        self,
        *,
        split: str,
        task_id: int,
        task_type: str,
        room: str,
        goal_obj: str,
        goal_recep: str,
        task: str,
        recep_types: list[str],
        obj_types: list[str],
        lamp_recep: int,
    ) -> None:
        self.split, self.task_id, self.task_type, self.room = split, task_id, task_type, room
        self.goal_obj, self.goal_recep, self.task = goal_obj, goal_recep, task
        self.need = TASK_NEEDS[task_type]
        self.recep_types = tuple(recep_types)
        self.recep_names = _number(recep_types)
        self.openable = tuple(t in OPENABLE for t in recep_types)
        tool_bits = {t: bit for bit, t in TOOL_OF.items()}
        self.tool_kind = tuple(tool_bits.get(t, 0) for t in recep_types)
        self.obj_types = tuple(obj_types)
        self.obj_names = _number(obj_types)
        self.obj_can = tuple(OBJECTS[t].can for t in obj_types)
        self.lamp_recep = lamp_recep
        self.lamp_name = f"{LAMP} 1" if lamp_recep >= 0 else ""
        self.targets = tuple(o for o, t in enumerate(obj_types) if t == goal_obj)
        self.is_target = tuple(t == goal_obj for t in obj_types)
        self.dsts = tuple(r for r, t in enumerate(recep_types) if t == goal_recep)
        self.is_dst = tuple(t == goal_recep for t in recep_types)
        tool = TOOL_OF.get(self.need)
        self.tools = tuple(r for r, t in enumerate(recep_types) if t == tool)
        self.recep_index = {n: r for r, n in enumerate(self.recep_names)}
        self.obj_index = {n: o for o, n in enumerate(self.obj_names)}

        self.go_str = tuple(f"go to {n}" for n in self.recep_names)
        self.open_str = tuple(f"open {n}" for n in self.recep_names)
        self.close_str = tuple(f"close {n}" for n in self.recep_names)
        self.examine_recep_str = tuple(f"examine {n}" for n in self.recep_names)
        self.examine_obj_str = tuple(f"examine {n}" for n in self.obj_names)
        self.a_obj = tuple(f"a {n}" for n in self.obj_names)
        self.use_str = f"use {self.lamp_name}"
        self.go_lookup = {s: (GO, r, -1) for r, s in enumerate(self.go_str)}
        self._go_lists: dict[int, list[str]] = {}
        self._take: dict[tuple[int, int], str] = {}
        self._put: dict[tuple[int, int], str] = {}
        self._treat: dict[tuple[int, int], str] = {}
        self.intro = (
            "You are in the middle of a room. Looking quickly around you, you see "
            + list_items([f"a {n}" for n in self.recep_names])
            + "."
        )

    # Command strings, built once and memoised: steps reuse them instead of formatting anew.
    def go_list(self, loc: int) -> list[str]:
        """``go to X`` for every receptacle but the one at ``loc``."""
        lst = self._go_lists.get(loc)
        if lst is None:
            lst = self._go_lists[loc] = [s for r, s in enumerate(self.go_str) if r != loc]
        return lst

    def take_str(self, o: int, r: int) -> str:
        s = self._take.get((o, r))
        if s is None:
            s = self._take[o, r] = f"take {self.obj_names[o]} from {self.recep_names[r]}"
        return s

    def put_str(self, o: int, r: int) -> str:
        s = self._put.get((o, r))
        if s is None:
            s = self._put[o, r] = f"put {self.obj_names[o]} in/on {self.recep_names[r]}"
        return s

    def treat_str(self, o: int, r: int) -> str:
        s = self._treat.get((o, r))
        if s is None:
            verb = _TREAT_VERB[self.tool_kind[r]]
            s = self._treat[o, r] = f"{verb} {self.obj_names[o]} with {self.recep_names[r]}"
        return s


def _number(types: list[str]) -> tuple[str, ...]:
    """ALFWorld's names: each type numbered from 1 in list order ("cabinet 1", "cabinet 2")."""
    seen: dict[str, int] = {}
    names = []
    for t in types:
        seen[t] = seen.get(t, 0) + 1
        names.append(f"{t} {seen[t]}")
    return tuple(names)


class State:
    """The mutable part of an episode; every field is a scalar or a list of immutables."""

    __slots__ = ("world", "loc", "holding", "opened", "contents", "where", "props", "lamp_on", "steps", "won")

    def __init__(
        self,
        world: World,
        contents: list[tuple[int, ...]],
        where: list[int],
        loc: int = NOWHERE,
        holding: int = -1,
        opened: int = 0,
        props: list[int] | None = None,
        lamp_on: bool = False,
        steps: int = 0,
        won: bool = False,
    ) -> None:
        self.world = world
        self.loc = loc
        self.holding = holding
        self.opened = opened  # bit r set <=> receptacle r is open
        self.contents = contents  # receptacle -> tuple of object indices, in arrival order
        self.where = where  # object -> receptacle index, or NOWHERE while held
        self.props = props if props is not None else [0] * len(where)  # IS_CLEAN|IS_HOT|IS_COOL
        self.lamp_on = lamp_on
        self.steps = steps
        self.won = won

    def copy(self) -> State:
        return State(
            self.world, list(self.contents), list(self.where), self.loc, self.holding, self.opened,
            list(self.props), self.lamp_on, self.steps, self.won,
        )

    def key(self) -> tuple:
        """Everything that defines the state, as a hashable value (tests compare states with it)."""
        return (
            self.loc, self.holding, self.opened, tuple(self.contents), tuple(self.where),
            tuple(self.props), self.lamp_on, self.steps, self.won,
        )


def local_actions(world: World, state: State) -> dict[str, tuple[int, int, int]]:
    """Valid commands other than ``go to``, with their operations, in display order."""
    ops: dict[str, tuple[int, int, int]] = {}
    r, h = state.loc, state.holding
    if r >= 0:
        if world.openable[r]:
            if state.opened >> r & 1:
                ops[world.close_str[r]] = (CLOSE, r, -1)
                inside = True
            else:
                ops[world.open_str[r]] = (OPEN, r, -1)
                inside = False
        else:
            inside = True
        if inside:
            if h < 0:
                for o in state.contents[r]:
                    ops[world.take_str(o, r)] = (TAKE, o, r)
            else:
                ops[world.put_str(h, r)] = (PUT, h, r)
        kind = world.tool_kind[r]
        if h >= 0 and kind and world.obj_can[h] & kind:
            ops[world.treat_str(h, r)] = (TREAT, h, r)
        if r == world.lamp_recep:
            ops[world.use_str] = (USE, r, -1)
        ops[world.examine_recep_str[r]] = (EXAMINE_RECEP, r, -1)
    if h >= 0:
        ops[world.examine_obj_str[h]] = (EXAMINE_OBJ, h, -1)
    ops["inventory"] = _INVENTORY_OP
    ops["look"] = _LOOK_OP
    return ops


def canonical(text: str) -> str:
    """Normalise a typed command: case, spaces, a final full stop, and ``put``'s variants.

    ``put mug 1 in cabinet 1``, ``put mug 1 on cabinet 1`` and ALFWorld 0.4's
    ``move mug 1 to cabinet 1`` all become ``put mug 1 in/on cabinet 1``.
    """
    t = " ".join(text.lower().split()).rstrip(".").rstrip()
    if t.startswith(("put ", "move ")):
        rest = t[4:] if t[0] == "p" else t[5:]
        for sep in (" in/on ", " into ", " onto ", " in ", " on ", " to "):
            obj, found, recep = rest.partition(sep)
            if found and obj and recep:
                return f"put {obj} in/on {recep}"
    return t


def view(world: World, state: State, r: int) -> str:
    """What the agent sees of receptacle ``r``, in ALFWorld's words."""
    name = world.recep_names[r]
    if world.openable[r] and not state.opened >> r & 1:
        return f"The {name} is closed."
    a_obj = world.a_obj
    items = [a_obj[o] for o in state.contents[r]]
    if r == world.lamp_recep:
        items.insert(0, f"a {world.lamp_name}")
    if world.openable[r]:
        return f"The {name} is open. In it, you see {list_items(items)}."
    return f"On the {name}, you see {list_items(items)}."


def apply(world: World, state: State, op: tuple[int, int, int]) -> tuple[str, bool]:
    """Carry out a valid operation; return (feedback, whether the state may have changed)."""
    code, a, b = op
    if code == GO:
        state.loc = a
        return f"You arrive at {world.recep_names[a]}. {view(world, state, a)}", True
    if code == TAKE:
        state.contents[b] = tuple(x for x in state.contents[b] if x != a)
        state.where[a] = NOWHERE
        state.holding = a
        return f"You pick up the {world.obj_names[a]} from the {world.recep_names[b]}.", True
    if code == PUT:
        state.contents[b] = state.contents[b] + (a,)
        state.where[a] = b
        state.holding = -1
        return f"You put the {world.obj_names[a]} in/on the {world.recep_names[b]}.", True
    if code == OPEN:
        state.opened |= 1 << a
        return f"You open the {world.recep_names[a]}. {view(world, state, a)}", True
    if code == CLOSE:
        state.opened &= ~(1 << a)
        return f"You close the {world.recep_names[a]}.", True
    if code == TREAT:
        kind = world.tool_kind[b]
        props = state.props[a] | kind
        if kind == IS_HOT:
            props &= ~IS_COOL
        elif kind == IS_COOL:
            props &= ~IS_HOT
        state.props[a] = props
        verb = _TREAT_VERB[kind]
        return f"You {verb} the {world.obj_names[a]} using the {world.recep_names[b]}.", True
    if code == USE:
        state.lamp_on = not state.lamp_on
        return f"You turn {'on' if state.lamp_on else 'off'} the {world.lamp_name}.", True
    if code == EXAMINE_RECEP:
        return view(world, state, a), False
    if code == EXAMINE_OBJ:
        words = [w for bit, w in _STATE_WORDS if state.props[a] & bit]
        if not words:
            return f"There's nothing special about {world.obj_names[a]}.", False
        return f"The {world.obj_names[a]} is {' and '.join(words)}.", False
    if code == LOOK:
        if state.loc < 0:
            return world.intro, False
        return f"You are facing the {world.recep_names[state.loc]}. {view(world, state, state.loc)}", False
    if code == INVENTORY:
        if state.holding < 0:
            return "You are not carrying anything.", False
        return f"You are carrying: {world.a_obj[state.holding]}.", False
    return NOTHING_HAPPENS, False


def goal_reached(world: World, state: State) -> bool:
    """ALFWorld's goal test for the episode's task type."""
    if world.task_type == EXAMINE:
        h = state.holding
        return state.lamp_on and state.loc == world.lamp_recep and h >= 0 and world.is_target[h]
    if world.task_type == PICK_TWO:
        is_target = world.is_target
        return any(sum(is_target[o] for o in state.contents[d]) >= 2 for d in world.dsts)
    need, where, props, is_dst = world.need, state.where, state.props, world.is_dst
    return any(where[o] >= 0 and is_dst[where[o]] and props[o] & need == need for o in world.targets)
