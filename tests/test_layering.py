"""Dependencies point one way (envs <- agents <- training <- evals <- commands, and inside
training: base modules <- methods <- policy_update <- trainer) and no module imports itself
back through another: checked on the ``import`` statements of the source, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "agentropy"
LAYERS = ["envs", "agents", "training", "evals", "commands"]
# Inside training: a module may import only modules of its own rank or below.
TRAINING_RANK = {"methods": 1, "policy_update": 2, "trainer": 3}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _training_rank(module: str) -> int:
    parts = module.split(".")
    return TRAINING_RANK.get(parts[2], 0) if len(parts) > 2 else 0


def test_no_module_imports_upward():
    upward = []
    for module, deps in _imports().items():
        for dep in deps:
            a, b = _layer(module), _layer(dep)
            if a is not None and b is not None and b > a:
                upward.append((module, dep))
            if a == b == LAYERS.index("training") and _training_rank(dep) > _training_rank(module):
                upward.append((module, dep))
    assert not upward


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1 and not node.startswith(dep + "."):  # a package's own __init__ is not a cycle
                cycles.append([*stack[stack.index(dep):], dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles
