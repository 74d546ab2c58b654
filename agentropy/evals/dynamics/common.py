"""Small shared pieces of the dynamics analysis: the error type, file-name patterns and
readers of loosely typed values (metrics lines, nested config dicts)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: Confidence level of every interval over seeds.
CI_LEVEL = 0.95

TRAJECTORY_FILE = re.compile(r"^iter_(\d+)_rank(\d+)\.jsonl$")
BENCH_CELL = re.compile(r"^(?P<strategy>.+?)__(?P<env>.+)__s(?P<seed>-?\d+)$")


class AnalysisError(ValueError):
    """Input the analysis cannot use: the message names the run folder and what is wrong."""


def _number(value: Any) -> float | None:
    """A finite-or-not float from a metrics value (RunLog writes nan/inf as strings)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _get(data: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


