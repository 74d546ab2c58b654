"""YAML as users write it: ``1e-5`` is a float and a key given twice is an error.

PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-5``) and ``1e-5`` is the *string*
``'1e-5'``; users write floats the YAML 1.2 / Python way. PyYAML also keeps the last of two
equal keys in a mapping without a word, so a forgotten old value silently wins or loses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus YAML 1.2 floats (``1e-5``, ``-3E4``)."""


_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Ints still resolve first (PyYAML tries resolvers in order and the int one was added earlier).
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


@dataclass(frozen=True)
class DuplicateKey:
    """A key given twice in one mapping: its dotted path and the lines of both occurrences."""

    path: str
    first_line: int
    second_line: int


def duplicate_keys(node: yaml.Node | None, path: str = "") -> list[DuplicateKey]:
    """Every repeated key in the composed document ``node`` (1-based line numbers)."""
    found: list[DuplicateKey] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                found.append(DuplicateKey(child, seen[key], line))
            elif key is not None:
                seen[key] = line
            found.extend(duplicate_keys(value_node, child))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found.extend(duplicate_keys(item, f"{path}[{i}]"))
    return found


def load_text(text: str) -> tuple[Any, list[DuplicateKey]]:
    """Parse one YAML document; return its data and its duplicate keys (raises ``yaml.YAMLError``)."""
    node = yaml.compose(text, Loader=ConfigLoader)
    data = yaml.load(text, Loader=ConfigLoader) if node is not None else None
    return data, duplicate_keys(node)
