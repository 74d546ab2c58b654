"""TextWorld's PDDL engine as ALFWorld configures it, plus shortcuts that make it fast.

Profiling ALFWorld games on TextWorld 1.7 shows where the time goes, and none of it is game
logic:

* every step renders every applicable command and its feedback through the text grammar, and
  ``ContextSensitiveGrammar.derive`` re-parses each template string with TatSu every time;
* every grammar condition (``openable(r:receptacle) & opened(r:receptacle)``) is re-parsed by
  ``Rule.parse_conjunctive_query`` every time it is tested;
* every derivation step deep-copies the variable bindings of its context (``copy_context``),
  although the bound entities and variables are never modified, only the binding dicts;
* ``PddlEnv.load`` and every ``PddlEnv.reset`` translate the PDDL problem to SAS twice with
  fast-downward's translator (about 0.1 s each for a bathroom, 0.5 s for a kitchen): once
  plain, once optimized for the planner, although the problem has not changed.

The parses and the translation are pure functions of strings, so :func:`install_speedups`
memoizes them (the grammar parse returns a deep copy, because derivation mutates the parsed
symbols) and copies binding dicts one level deep. Translations are also stored on disk
(:func:`set_translation_dir`, compressed pickles keyed by a hash of domain, problem and
translator version; about 90 KB for a kitchen game), so a game is translated once on a
machine, not once per process. Unless the planner is wanted (:func:`set_planner_translation`),
the optimized translation is replaced by the plain one, which gives the planner the same
task, only less pruned. Outputs are unchanged, which ``tests/envs/test_alfworld.py`` checks
against the unpatched engine. Measured here (CPU time, random admissible commands, facts on as
the hand-coded expert needs them) steps run about 10x faster (a kitchen: 15 -> 140 steps/s),
and loading a game translated before costs tens of milliseconds instead of a second.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import pickle
import tempfile
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import fast_downward
import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
from textworld.envs import PddlEnv
from textworld.envs.pddl import textgen
from textworld.logic import Rule

#: Translations kept in memory per process (a kitchen game's holds about 5 MB).
TRANSLATION_CACHE_SIZE = 16

_ORIGINALS: dict[str, Any] = {}
_SETTINGS: dict[str, Any] = {"translation_dir": None, "planner": False}


def set_translation_dir(path: str | Path | None) -> None:
    """Store and look up translations under ``path`` (None: memory only)."""
    _SETTINGS["translation_dir"] = Path(path) if path is not None else None


def set_planner_translation(enabled: bool) -> None:
    """Compute the planner's optimized translation too (only the planner subprocess needs it)."""
    _SETTINGS["planner"] = bool(enabled)


def _copy_context(context: dict[str, Any]) -> dict[str, Any]:
    """TextWorld's ``copy_context`` with binding dicts copied one level deep instead of deeply."""
    return {
        "state": context["state"],
        "facts": context["facts"],
        "variables": dict(context["variables"]),
        "mapping": dict(context["mapping"]),
        "entity_infos": context["entity_infos"],
    }


@functools.lru_cache(maxsize=1)
def _translator_version() -> str:
    return f"fast_downward_textworld-{version('fast_downward_textworld')}"


@functools.lru_cache(maxsize=TRANSLATION_CACHE_SIZE)
def _translate(domain: str, problem: str, optimize: bool) -> tuple[Any, str]:
    key = hashlib.sha256(f"{_translator_version()}|optimize={optimize}|".encode())
    key.update(domain.encode() + b"\0" + problem.encode())
    folder = _SETTINGS["translation_dir"]
    path = folder / key.hexdigest()[:2] / f"{key.hexdigest()}.pkl.z" if folder else None
    if path is not None and path.exists():
        try:
            return pickle.loads(zlib.decompress(path.read_bytes()))
        except Exception:  # a truncated or foreign file: translate again and overwrite it
            pass
    result = _ORIGINALS["pddl2sas"](domain, problem, False, optimize)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as tmp:
            tmp.write(zlib.compress(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), 1))
        os.replace(tmp.name, path)
    return result


def _pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> tuple[Any, str]:
    return _translate(domain, problem, optimize and _SETTINGS["planner"])


def install_speedups() -> None:
    """Memoize TextWorld's grammar/condition parsing and fast-downward's translation (idempotent)."""
    if _ORIGINALS:
        return
    _ORIGINALS.update(
        copy_context=textgen.copy_context,
        parse=textgen._parse_and_convert,
        query=Rule.__dict__["parse_conjunctive_query"],
        pddl2sas=fast_downward.pddl2sas,
    )
    parse = functools.lru_cache(maxsize=4096)(
        lambda text, rule_name, trace: _ORIGINALS["parse"](text, rule_name=rule_name, trace=trace)
    )

    def parse_and_convert(text: str, rule_name: str | None = None, trace: bool = False) -> Any:
        return copy.deepcopy(parse(text, rule_name, trace))

    query = functools.lru_cache(maxsize=4096)(lambda expr: _ORIGINALS["query"].__func__(Rule, expr))

    textgen._parse_and_convert = parse_and_convert
    textgen.copy_context = _copy_context
    Rule.parse_conjunctive_query = classmethod(lambda cls, expr: query(expr))
    fast_downward.pddl2sas = _pddl2sas


def uninstall_speedups() -> None:
    """Restore TextWorld's and fast-downward's own functions and empty the memory caches."""
    if not _ORIGINALS:
        return
    textgen._parse_and_convert = _ORIGINALS["parse"]
    textgen.copy_context = _ORIGINALS["copy_context"]
    Rule.parse_conjunctive_query = _ORIGINALS["query"]
    fast_downward.pddl2sas = _ORIGINALS["pddl2sas"]
    _ORIGINALS.clear()
    _translate.cache_clear()


def make_textworld_env(facts: bool) -> textworld.core.Wrapper:
    """TextWorld's PDDL engine with ALFWorld's name demangler (``cabinet 3``, ``sinkbasin 1``).

    ``facts`` asks for the state's facts at every step; only the hand-coded expert needs them,
    and rendering them costs time.
    """
    install_speedups()
    infos = textworld.EnvInfos(admissible_commands=True, won=True, facts=facts)
    return AlfredDemangler(PddlEnv(infos), shuffle=False)


def close_textworld_env(env: textworld.core.Wrapper) -> None:
    """Free the engine's loaded task in its private fast-downward copy.

    The library itself stays mapped: ``fast_downward.close_lib`` unloads it with ``dlclose``,
    after which the process crashes at exit (the library's exit handlers point into unmapped
    code), so make few engines per process and reuse them, as :class:`.env.ALFWorldEnv` does.
    """
    lib = getattr(env.unwrapped, "downward_lib", None)
    if lib is not None:
        lib.cleanup()
        env.unwrapped.downward_lib = None
