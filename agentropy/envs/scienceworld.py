"""ScienceWorld (Wang et al., 2022) behind the agentropy env contract.

ScienceWorld is a Scala simulator of elementary-school science tasks (boil water, grow a
plant, build a circuit, ...): 30 tasks, each with hundreds of variations that the simulator
itself splits into train / dev / test. The ``scienceworld`` package runs it in a Java
process and talks to it over py4j. This module starts that process itself (one per env) so
that it can pass JVM options and restart it when it dies. With the default 256 MB heap cap
a JVM's resident size is about 190 MB after the first reset and levels off near 350 MB
after episodes of several tasks (about 670 MB and growing with the JVM's default heap);
the Python side adds about 20 MB per env.

What the env adds to the raw simulator:

* task selection by ``reset(options={"task_name", "variation", "split", "task_id"})``,
  drawing from the simulator's own variation splits with the env's seeded RNG; the first
  observation is the room description followed by the task description;
* ``admissible_actions``: the simulator's valid-action list holds thousands of entries
  (mostly ``connect X to Y``); :func:`filter_actions` cuts it to ``max_admissible`` by rules
  that use no oracle knowledge; after an ``Ambiguous request`` prompt it lists the numbered
  answers instead. ``invalid_action`` is set when the simulator matches no action;
* ``expert_action``: the next action of the simulator's gold path while every action so
  far followed it. Gold paths cost a second or more to generate, so the first one made for
  a (task, variation, simplifications) is kept for the life of the process; the world is
  deterministic, so it stays valid;
* reward: the change of the score scaled to [0, 1] (score 100 = won, a negative score =
  failed, which ends the episode as the upstream wrapper does);
* crash handling: a dead JVM is restarted and the episode reported truncated with
  ``info["truncation_reason"] = "simulator_crashed"``.

``get_state`` / ``set_state`` are not offered (the simulator cannot save a state); AEPO's
branching uses :func:`agentropy.envs.base.fork`, which replays the action prefix.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import subprocess
import weakref
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from agentropy.envs.base import base_info, clean_text, require_packages, text_space
from agentropy.envs.jvm import reap_jvm

logger = logging.getLogger(__name__)

#: JVM options: a small heap and the serial collector. Measured on the 30 tasks: enough for
#: the largest (mendelian genetics) and its gold-path generation.
DEFAULT_JAVA_OPTIONS: tuple[str, ...] = ("-Xmx256m", "-XX:+UseSerialGC")

#: agentropy split name -> the simulator's variation split.
SPLITS = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "test": "test"}

UNKNOWN_ACTION = "No known action matches that input."
CRASH_OBSERVATION = "The ScienceWorld simulator stopped unexpectedly; this episode is over."
SIMULATOR_ERROR = "The simulator could not carry out that action."

#: Actions with no object.
_BASIC_ACTIONS = ("look around", "inventory", "task", "wait1", "wait")
#: One-object verbs and two-object templates (verb, joint) of the simulator's action grammar.
_SINGLE_VERBS = ("look at ", "look in ", "focus on ", "pick up ", "put down ", "go to ", "open ", "close ",
                 "activate ", "deactivate ", "eat ", "read ", "mix ", "flush ", "disconnect ")
_PAIR_TEMPLATES = (("move ", " to "), ("pour ", " into "), ("pour ", " in "), ("use ", " on "),
                   ("dunk ", " into "), ("dunk ", " in "), ("connect ", " to "))
#: The ten locations of ScienceWorld's map: only ``go to`` makes sense on them.
_LOCATIONS = frozenset({"kitchen", "bathroom", "bedroom", "living room", "hallway", "art studio",
                        "workshop", "greenhouse", "outside", "foundry"})
#: Objects no action helps with: the agent itself, the air around it, the inventory.
_INERT = frozenset({"agent", "air", "inventory"})
_AMBIGUOUS = "Ambiguous request"
_CHOICE = re.compile(r"^(\d+):", re.MULTILINE)

#: (task, variation, simplifications) -> gold action sequence, shared by the envs of a process.
_GOLD_PATHS: dict[tuple[str, int, str], list[str]] = {}


class JavaNotFoundError(RuntimeError):
    """No Java runtime: ScienceWorld's simulator is a JVM program."""


def find_java(java_path: str | None = None) -> str:
    """Path of the ``java`` executable: ``java_path``, else ``$JAVA_HOME/bin/java``, else PATH."""
    candidates = [java_path] if java_path else []
    if not java_path and os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    if not java_path:
        candidates.append("java")
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise JavaNotFoundError(
        f"ScienceWorld needs a Java runtime (Java 11 or newer), but no 'java' executable was found "
        f"(tried {candidates}). Install one, e.g. 'apt-get install -y default-jre-headless' on "
        "Debian/Ubuntu, or point JAVA_HOME (or java_path=...) at an installed JDK/JRE."
    )


@dataclass
class _Simulator:
    """One ScienceWorld JVM and the py4j handle on its ``PythonInterface``."""

    gateway: Any
    server: Any
    process: subprocess.Popen
    stderr: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))

    def alive(self) -> bool:
        return self.process.poll() is None


def _launch(java: str, java_options: tuple[str, ...]) -> _Simulator:
    from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
    from scienceworld.constants import BASEPATH, JAR_PATH

    stderr: collections.deque = collections.deque(maxlen=20)
    port, process = launch_gateway(
        classpath=JAR_PATH, javaopts=list(java_options), java_path=java, die_on_exit=True,
        cwd=BASEPATH, redirect_stderr=stderr, return_proc=True,
    )
    gateway = JavaGateway(gateway_parameters=GatewayParameters(auto_field=True, port=port), java_process=process)
    server = gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()
    return _Simulator(gateway, server, process, stderr)


def _shutdown(sim: _Simulator) -> None:
    """Stop a simulator, alive or dead (also the GC finalizer of its env).

    The JVM holds no state worth saving, so it is killed and reaped (``reap_jvm``) rather than
    asked to shut down (which fails on a dead JVM). The py4j client is then marked
    disconnected: otherwise the finalizers of py4j's Java-object proxies try to reconnect to
    the dead JVM during garbage collection and log connection errors with tracebacks.
    """
    reap_jvm(sim.process, kill=True)
    client = sim.gateway._gateway_client  # py4j offers no public handle on the client
    client.is_connected = False
    client.close()


def split_action(action: str) -> tuple[str, tuple[str, ...]]:
    """``"move apple to bowl"`` -> ``("move", ("apple", "bowl"))``; unknown shapes -> (action, ())."""
    if action in _BASIC_ACTIONS:
        return action, ()
    for verb, joint in _PAIR_TEMPLATES:
        if action.startswith(verb) and joint in action[len(verb):]:
            first, _, second = action[len(verb):].partition(joint)
            return verb.strip(), (first, second)
    for verb in _SINGLE_VERBS:
        if action.startswith(verb):
            return verb.strip(), (action[len(verb):],)
    return action, ()


def _sensible(verb: str, objects: tuple[str, ...], electrical: bool) -> bool:
    if verb == "reset task" or (not electrical and verb in ("connect", "disconnect")):
        return False
    for obj in objects:
        if obj in _INERT or "agent" in obj.split():
            return False
        if obj in _LOCATIONS and verb != "go to":
            return False
        if "door" in obj.split() and verb not in ("open", "close"):
            return False
    return True


def filter_actions(valid: list[str], inventory: str, electrical: bool, limit: int | None) -> list[str]:
    """Cut the simulator's valid-action list to a usable size, without oracle knowledge.

    The simulator lists every parseable action (thousands: ``mix hallway``, ``connect air to
    orange``, ...). Rules, in order: drop ``reset task``, actions on the agent, the air or
    the inventory, every verb but ``go to`` on a location and every verb but ``open`` /
    ``close`` on a door; drop ``connect`` / ``disconnect`` unless the task is electrical.
    Then keep, up to ``limit``, tiers in this order: object-free actions; one-object
    actions; two-object actions whose first object is in the inventory; other two-object
    actions. Inside a tier the verbs take turns (round robin, each verb's actions in
    alphabetical order) so that no verb crowds the others out. The result is sorted so that
    an action's position says nothing. ``limit=None`` keeps all that pass the rules.
    """
    tiers: list[dict[str, list[str]]] = [{}, {}, {}, {}]
    for action in sorted(set(valid)):
        verb, objects = split_action(action)
        if not _sensible(verb, objects, electrical):
            continue
        tier = min(len(objects), 2) + (len(objects) == 2 and objects[0].split(" in ")[0] not in inventory)
        tiers[tier].setdefault(verb, []).append(action)
    chosen: list[str] = []
    for tier in tiers:
        queues = [collections.deque(actions) for _, actions in sorted(tier.items())]
        while queues and (limit is None or len(chosen) < limit):
            for queue in queues:
                if limit is None or len(chosen) < limit:
                    chosen.append(queue.popleft())
            queues = [q for q in queues if q]
    return sorted(chosen)


def ambiguity_choices(observation: str) -> list[str]:
    """The numbered answers of an ``Ambiguous request`` prompt (``["0", "1", ...]``), else []."""
    if not observation.startswith(_AMBIGUOUS):
        return []
    return _CHOICE.findall(observation)


def _normalise(action: str) -> str:
    return " ".join(action.lower().split())


class ScienceWorldEnv(gym.Env[str, str]):
    """The real ScienceWorld simulator as a ``gymnasium.Env[str, str]``.

    Args:
        task_name: fixed task (a name from ``task_names``, or a paper id such as ``"1-1"``);
            ``None`` draws one per reset unless ``reset`` options name it.
        split: default variation split (``train`` / ``dev`` / ``test``).
        simplifications: the simulator's simplification string (``""``, ``"easy"``,
            ``"openDoors,selfWateringFlowerPots"``, ...).
        max_steps: steps before the episode is truncated.
        max_admissible: size cap of ``info["admissible_actions"]`` (``None``: no cap; ``0``:
            leave the list empty and skip the simulator's valid-action enumeration, which is
            most of the cost of a step).
        expert: generate gold paths for ``info["expert_action"]`` (costs 0.1-12 s per new
            task variation, once per process).
        java_path: the ``java`` executable (default: ``$JAVA_HOME/bin/java``, else PATH).
        java_options: JVM options (default :data:`DEFAULT_JAVA_OPTIONS`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task_name: str | None = None,
        split: str = "train",
        simplifications: str = "",
        max_steps: int = 30,
        max_admissible: int | None = 50,
        expert: bool = True,
        java_path: str | None = None,
        java_options: tuple[str, ...] | list[str] = DEFAULT_JAVA_OPTIONS,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if max_admissible is not None and max_admissible < 0:
            raise ValueError(f"max_admissible must be >= 0 or None, got {max_admissible}")
        require_packages("ScienceWorld-v0", "sciworld", "scienceworld", "py4j")
        self.java = find_java(java_path)
        self.java_options = tuple(java_options)
        self.default_task = task_name
        self.default_split = split
        self.simplifications = simplifications
        self.max_steps = max_steps
        self.max_admissible = max_admissible
        self.expert = expert
        self.observation_space = text_space()
        self.action_space = text_space()
        self._sim: _Simulator | None = None
        self._finalizer: weakref.finalize | None = None
        self._task_names: list[str] = []
        self._splits: dict[str, dict[str, list[int]]] = {}
        self._task = ""
        self._task_name = ""
        self._variation = -1
        self._gold: list[str] = []
        self._gold_index = 0
        self._steps = 0
        self._score = 0
        self._crashed = False
        self._loaded = False

    # -- simulator process -------------------------------------------------------------

    @property
    def simulator_pid(self) -> int | None:
        """Process id of this env's JVM (``None`` before the first reset)."""
        return self._sim.process.pid if self._sim is not None else None

    def _simulator(self) -> _Simulator:
        if self._sim is None or not self._sim.alive():
            self._restart()
        assert self._sim is not None
        return self._sim

    def _restart(self) -> None:
        if self._sim is not None:
            logger.warning("restarting the ScienceWorld JVM (pid %d); its last stderr lines: %s",
                           self._sim.process.pid, list(self._sim.stderr))
            self._finalizer()
        self._sim = _launch(self.java, self.java_options)
        self._finalizer = weakref.finalize(self, _shutdown, self._sim)
        self._task_names = sorted(self._sim.server.getTaskNames())

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._sim = None
        self._finalizer = None

    # -- tasks ---------------------------------------------------------------------------

    @property
    def task_names(self) -> list[str]:
        """The simulator's 30 task names (starts the JVM if needed)."""
        self._simulator()
        return list(self._task_names)

    def variations(self, task_name: str, split: str) -> list[int]:
        """The simulator's variation indices of ``task_name`` in ``split``.

        The simulator answers this only for its loaded task, so the first call per task
        loads it: call between episodes, not in the middle of one.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        name = self._task_name_of(task_name)
        if name not in self._splits:
            server = self._simulator().server
            server.load(name, 0, "", False)
            self._loaded = False
            self._splits[name] = {
                "train": sorted(server.getVariationsTrain()),
                "dev": sorted(server.getVariationsDev()),
                "test": sorted(server.getVariationsTest()),
            }
        return list(self._splits[name][SPLITS[split]])

    def _task_name_of(self, task_name: str) -> str:
        from scienceworld.utils import infer_task

        self._simulator()
        name = infer_task(str(task_name))
        if name not in self._task_names:
            raise ValueError(f"task_name {task_name!r} is not a ScienceWorld task; known: {self._task_names}")
        return name

    def _choose(self, options: dict[str, Any]) -> tuple[str, int]:
        """Pick (task, variation) from reset options, else from the env's seeded RNG.

        ``task_id`` is either an index into the split's variations of the task, or a string
        ``"task_name"`` / ``"task_name:variation"``.
        """
        allowed = {"task_name", "variation", "split", "task_id"}
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; ScienceWorld takes {sorted(allowed)}")
        split = options.get("split", self.default_split)
        task_name = options.get("task_name", self.default_task)
        variation = options.get("variation")
        task_id = options.get("task_id")
        index = None
        if isinstance(task_id, str):
            task_name, _, number = task_id.partition(":")
            if number:
                if not number.isdigit():
                    raise ValueError(f"task_id {task_id!r} must look like 'task_name' or 'task_name:variation'")
                variation = int(number)
        elif task_id is not None:
            index = int(task_id)
        if task_name is None:
            self._simulator()
            task_name = self._task_names[int(self.np_random.integers(len(self._task_names)))]
        name = self._task_name_of(task_name)
        pool = self.variations(name, split)
        if variation is not None:
            every = set().union(*self._splits[name].values())
            if int(variation) not in every:
                raise ValueError(f"variation {variation} does not exist for task {name!r} "
                                 f"(it has {len(every)} variations)")
            return name, int(variation)
        if index is not None:
            if not 0 <= index < len(pool):
                raise ValueError(f"task_id {index} is out of range: {name!r} has {len(pool)} {split} variations")
            return name, pool[index]
        return name, pool[int(self.np_random.integers(len(pool)))]

    def _load(self, task_name: str, variation: int) -> None:
        server = self._simulator().server
        key = (task_name, variation, self.simplifications)
        if self.expert and key not in _GOLD_PATHS:
            server.load(task_name, variation, self.simplifications, True)
            _GOLD_PATHS[key] = list(server.getGoldActionSequence())
        else:
            server.load(task_name, variation, self.simplifications, False)
        self._gold = _GOLD_PATHS.get(key, []) if self.expert else []
        self._loaded = True

    # -- gymnasium API -------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        from py4j.protocol import Py4JError

        try:
            self._simulator().server.getTaskNames()  # a dead JVM shows here, before the RNG is drawn
        except (Py4JError, OSError):
            self._restart()
        task_name, variation = self._choose(dict(options or {}))
        self._load(task_name, variation)
        look = self._sim.server.freeActionLook()
        self._task = self._sim.server.getTaskDescription()
        self._task_name, self._variation = task_name, variation
        self._gold_index, self._steps, self._score, self._crashed = 0, 0, 0, False
        obs = clean_text(f"{look}\n\n{self._task}")
        return obs, self._info(obs, invalid=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._crashed:
            return self._crash_result()
        if not self._loaded:
            raise RuntimeError("call reset() before step()")
        from py4j.protocol import Py4JError, Py4JJavaError

        # clean_text: a lone surrogate or other foreign char cannot cross the JVM bridge (py4j
        # fails to encode it, and the episode would end as a simulator crash); it becomes "?".
        command = " ".join(clean_text(str(action)).split())
        self._steps += 1
        try:
            try:
                raw = self._sim.server.step(command)
                invalid = raw.startswith(UNKNOWN_ACTION)
            except Py4JJavaError:  # the simulator threw on this action; the JVM is fine
                raw, invalid = SIMULATOR_ERROR, True
            score = int(round(100 * self._sim.server.getScore()))
            completed = bool(self._sim.server.getCompleted())
            reward = (min(max(score, 0), 100) - min(max(self._score, 0), 100)) / 100.0
            self._score = score
            self._follow_gold(command)
            obs = clean_text(raw)
            info = self._info(obs, invalid)
        except (Py4JError, OSError):  # the JVM is gone or unreachable: same thing for this episode
            logger.warning("the ScienceWorld JVM (pid %d) died at step %d of %s/%d",
                           self._sim.process.pid, self._steps, self._task_name, self._variation)
            self._restart()
            self._crashed, self._loaded = True, False
            return self._crash_result()
        terminated = score >= 100 or score < 0 or completed
        truncated = not terminated and self._steps >= self.max_steps
        if truncated:
            info["truncation_reason"] = "max_steps"
        return obs, reward, terminated, truncated, info

    # -- helpers -------------------------------------------------------------------------

    def _follow_gold(self, command: str) -> None:
        on_path = self._gold_index < len(self._gold) and self._gold_index >= 0
        if on_path and _normalise(command) == _normalise(self._gold[self._gold_index]):
            self._gold_index += 1
        else:
            self._gold_index = -1

    def _expert_action(self) -> str | None:
        if 0 <= self._gold_index < len(self._gold) and 0 <= self._score < 100:
            return self._gold[self._gold_index]
        return None

    def _admissible(self, obs: str) -> list[str]:
        choices = ambiguity_choices(obs)
        if choices:
            return choices
        if self.max_admissible == 0:
            return []
        server = self._sim.server
        valid = list(server.getValidActionObjectCombinations())
        electrical = "power-component" in self._task_name or "conductivity" in self._task_name
        inventory = server.freeActionInventory()
        return [clean_text(a) for a in filter_actions(valid, inventory, electrical, self.max_admissible)]

    def _info(self, obs: str, invalid: bool) -> dict[str, Any]:
        return base_info(
            task=clean_text(self._task),
            admissible_actions=self._admissible(obs),
            won=self._score >= 100,
            expert_action=self._expert_action(),
            invalid_action=invalid,
            score=self._score,
            task_name=self._task_name,
            variation=self._variation,
        )

    def _crash_result(self) -> tuple[str, float, bool, bool, dict[str, Any]]:
        info = base_info(
            task=clean_text(self._task), won=False, score=self._score, task_name=self._task_name,
            variation=self._variation, truncation_reason="simulator_crashed",
        )
        return CRASH_OBSERVATION, 0.0, False, True, info
