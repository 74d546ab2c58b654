"""An omniscient planner for Household tasks: a shortest plan from any reachable state.

Every command costs one step, the agent carries one object at a time, and an object's state
(clean/hot/cool) only changes in the agent's hands. A plan therefore has a fixed shape:
for each goal object still to deliver, *fetch* it (go to where it lies, open that receptacle if
closed, put down whatever else is in hand there, take it), *treat* it if the task needs it
(go to the sink/microwave/fridge, clean/heat/cool), then *deliver* it (go to the target, open
it if closed, put it in); a lamp task ends with going to the lamp and switching it on instead.
Opening is remembered, so a receptacle opened once costs nothing the second time.

The planner enumerates the choices this shape leaves open -- which object(s), in which order,
into which target receptacle -- simulates each, and keeps the shortest. Target receptacles that
are interchangeable for the plan (same open/closed state, same goal objects inside, not the
current location, holding no candidate) are tried once. Ties break by index order, so the plan
is deterministic. Within the fixed shape the plan is optimal; the shape is optimal because
every step it takes is necessary for the goal (a held object must be put down before taking
another, a closed receptacle must be opened before use), so plans are shortest paths.
"""

from __future__ import annotations

from itertools import permutations

from agentropy.envs.household.catalog import EXAMINE, PICK_TWO
from agentropy.envs.household.world import State, World


def plan(state: State) -> list[str]:
    """The commands that reach the goal from ``state`` (empty when it is already reached)."""
    world = state.world
    if state.won:
        return []
    if world.task_type == EXAMINE:
        return _plan_examine(world, state)
    if world.task_type == PICK_TWO:
        return _plan_place(world, state, 2)
    return _plan_place(world, state, 1)


class _Sim:
    """A scratch copy of the few state fields a plan changes, recording the commands."""

    __slots__ = ("world", "state", "loc", "hold", "opened", "moved", "acts")

    def __init__(self, world: World, state: State) -> None:
        self.world, self.state = world, state
        self.loc, self.hold, self.opened = state.loc, state.holding, state.opened
        self.moved: dict[int, int] = {}  # object -> receptacle it was put down in by this plan
        self.acts: list[str] = []

    def go(self, r: int) -> None:
        if self.loc != r:
            self.acts.append(self.world.go_str[r])
            self.loc = r

    def open(self, r: int) -> None:
        if self.world.openable[r] and not self.opened >> r & 1:
            self.acts.append(self.world.open_str[r])
            self.opened |= 1 << r

    def fetch(self, o: int) -> None:
        if self.hold == o:
            return
        src = self.moved.get(o, self.state.where[o])
        self.go(src)
        self.open(src)
        if self.hold >= 0:  # hands full: leave the held object here
            self.acts.append(self.world.put_str(self.hold, src))
            self.moved[self.hold] = src
        self.acts.append(self.world.take_str(o, src))
        self.hold = o

    def treat(self, o: int) -> None:
        world = self.world
        if self.state.props[o] & world.need == world.need:
            return
        tool = self.loc if self.loc in world.tools else world.tools[0]
        self.go(tool)
        self.acts.append(world.treat_str(o, tool))

    def deliver(self, o: int, d: int) -> None:
        self.go(d)
        self.open(d)
        self.acts.append(self.world.put_str(o, d))
        self.moved[o] = d
        self.hold = -1


def _plan_place(world: World, state: State, n_needed: int) -> list[str]:
    """Shortest plan putting ``n_needed`` goal objects (treated if needed) into one target."""
    where, is_target, need, props = state.where, world.is_target, world.need, state.props
    best: list[str] | None = None
    seen_kinds = set()
    for d in world.dsts:
        inside = [o for o in state.contents[d] if is_target[o] and props[o] & need == need]
        missing = n_needed - len(inside)
        if missing <= 0:
            return []
        candidates = [o for o in world.targets if where[o] != d or props[o] & need != need]
        if len(candidates) < missing:
            continue
        # Receptacles that differ only in name give plans of equal length: try one of each kind.
        kind = (len(inside), state.opened >> d & 1, d == state.loc, any(where[o] == d for o in candidates))
        if kind in seen_kinds and kind[3] is False:
            continue
        seen_kinds.add(kind)
        for order in permutations(candidates, missing):
            sim = _Sim(world, state)
            for o in order:
                sim.fetch(o)
                if need:
                    sim.treat(o)
                sim.deliver(o, d)
            if best is None or len(sim.acts) < len(best):
                best = sim.acts
    return best if best is not None else []


def _plan_examine(world: World, state: State) -> list[str]:
    """Shortest plan to stand at the lit lamp holding a goal object."""
    lamp = world.lamp_recep
    best: list[str] | None = None
    for o in world.targets:
        sim = _Sim(world, state)
        sim.fetch(o)  # taking it at the lit lamp already reaches the goal
        sim.go(lamp)
        if not state.lamp_on:
            sim.acts.append(world.use_str)
        if best is None or len(sim.acts) < len(best):
            best = sim.acts
    return best if best is not None else []
