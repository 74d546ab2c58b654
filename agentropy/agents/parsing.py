"""Turning a model reply into an environment action.

The agent may think before it acts; the action is the content of an ``<action>...</action>``
element. When a reply holds several complete elements, the **last** one wins: a model that
drafts an action, reconsiders and writes a corrected one means the correction, and the final
element is also the one closest to the end of the reply, where chat models conclude. Tags match
case-insensitively; the content is stripped and its whitespace runs collapsed to single spaces
(text environments take one-line commands).

A reply with no complete element (or an empty one) yields ``ParsedAction(action="",
valid=False, reason=...)``: the rollout still sends the empty action, the environment answers
it as an invalid action, and the rollout adds :func:`format_reward` (``-format_penalty``) to
that turn's reward (0.1 by default, the invalid-action penalty of verl-agent's ALFWorld setup).
:func:`parse_action` never raises on any string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

#: Reward added to a turn whose reply has no parseable action (verl-agent's invalid-action penalty, 0.1).
DEFAULT_FORMAT_PENALTY = 0.1


@dataclass(frozen=True)
class ParsedAction:
    """The action found in a reply. ``reason`` says why it is invalid ("" when valid)."""

    action: str
    valid: bool
    reason: str = ""


@lru_cache(maxsize=32)
def _tag_patterns(tag: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    if not tag or any(c in tag for c in "<>/") or tag != tag.strip():
        raise ValueError(f"action tag must be a non-empty name without '<', '>', '/' or spaces, got {tag!r}")
    name = re.escape(tag)
    return re.compile(f"<\\s*{name}\\s*>", re.IGNORECASE), re.compile(f"<\\s*/\\s*{name}\\s*>", re.IGNORECASE)


def _last_match(pattern: re.Pattern[str], text: str, end: int) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text, 0, end):  # noqa: B007 - the loop keeps the last match
        pass
    return last


def parse_action(text: str, tag: str = "action") -> ParsedAction:
    """The content of the last complete ``<tag>...</tag>`` of ``text``.

    Runs in time linear in ``len(text)`` (no backtracking regex over the whole reply), so very
    long or adversarial replies are cheap. A bad ``tag`` is a programming error and raises;
    any ``text`` does not.
    """
    open_re, close_re = _tag_patterns(tag)
    if not isinstance(text, str):
        return ParsedAction("", False, f"reply is {type(text).__name__}, not str")
    last_close = _last_match(close_re, text, len(text))
    if last_close is None:
        reason = f"no <{tag}> tag" if open_re.search(text) is None else f"unclosed <{tag}> tag"
        return ParsedAction("", False, reason)
    last_open = _last_match(open_re, text, last_close.start())
    if last_open is None:
        return ParsedAction("", False, f"</{tag}> without an opening <{tag}>")
    action = " ".join(text[last_open.end() : last_close.start()].split())
    if not action:
        return ParsedAction("", False, f"empty <{tag}> element")
    return ParsedAction(action, True, "")


def format_reward(parsed: ParsedAction, penalty: float = DEFAULT_FORMAT_PENALTY) -> float:
    """The reward term the rollout adds for the reply's format: ``0`` if valid, else ``-penalty``."""
    if penalty < 0:
        raise ValueError(f"format_penalty must be >= 0, got {penalty}")
    return 0.0 if parsed.valid else -float(penalty)
