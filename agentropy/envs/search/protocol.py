"""The tool-call protocol in the action text, and the fixed format of observations.

An action holds one tool call, ``<search>query</search>``, ``<open>doc id</open>`` or
``<answer>text</answer>`` (tags are case-insensitive; text around the call is ignored, so a
reply with some reasoning before the call still works; with several calls the first one
counts). Anything else is a malformed action: the env explains the protocol and flags
``info["invalid_action"]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentropy.envs.search.index import Doc, Hit

TOOLS = ("search", "open", "answer")
MAX_ARGUMENT_CHARS = 300
_CALL = re.compile(r"<(search|open|answer)>(.*?)</\1>", re.IGNORECASE | re.DOTALL)

#: shown as ``info["admissible_actions"]``: the three call shapes (the argument is free text)
ACTION_TEMPLATES = ("<search>QUERY</search>", "<open>DOC_ID</open>", "<answer>ANSWER</answer>")

PROTOCOL_HELP = (
    "Write exactly one tool call: <search>query</search> to search the encyclopedia, "
    "<open>doc id</open> to read an article, or <answer>text</answer> to give your final answer."
)


@dataclass(frozen=True)
class ToolCall:
    """A parsed action: ``tool`` is search, open or answer; ``error`` says why it is malformed."""

    tool: str = ""
    argument: str = ""
    error: str = ""

    @property
    def valid(self) -> bool:
        return not self.error


def parse_action(action: str) -> ToolCall:
    """The first well-formed tool call in ``action``; never raises."""
    if not isinstance(action, str):
        return ToolCall(error=f"the action must be text, got {type(action).__name__}")
    match = _CALL.search(action)
    if match is None:
        return ToolCall(error="no tool call found")
    tool, argument = match.group(1).lower(), " ".join(match.group(2).split())
    if not argument:
        return ToolCall(tool, error=f"the <{tool}> call is empty")
    if len(argument) > MAX_ARGUMENT_CHARS:
        return ToolCall(tool, error=f"the <{tool}> argument is longer than {MAX_ARGUMENT_CHARS} characters")
    return ToolCall(tool, argument)


def intro_observation(question: str, max_steps: int) -> str:
    return (
        f"Question: {question}\n"
        "Use <search>query</search> to search the encyclopedia, <open>doc id</open> to read an "
        f"article, and <answer>text</answer> to answer. You have {max_steps} steps."
    )


def search_observation(query: str, hits: list[Hit]) -> str:
    if not hits:
        return f'Search results for "{query}": no documents matched. Try other words.'
    lines = [f'Search results for "{query}":']
    for rank, hit in enumerate(hits, 1):
        lines.append(f"{rank}. [{hit.id}] {hit.title}")
        if hit.snippet:
            lines.append(f"   {hit.snippet}")
    return "\n".join(lines)


def document_observation(doc: Doc, max_chars: int) -> str:
    text = doc.text if len(doc.text) <= max_chars else doc.text[:max_chars] + " ... (cut)"
    return f"[{doc.id}] {doc.title}\n{text}"


def not_found_observation(doc_id: str) -> str:
    return f'No document with id "{doc_id}". Open an id shown in brackets in the search results.'


def answer_observation(answer: str, correct: bool, gold: str) -> str:
    if correct:
        return f'Your answer "{answer}" is correct.'
    return f'Your answer "{answer}" is wrong. The expected answer was "{gold}".'


def invalid_observation(reason: str) -> str:
    return f"Invalid action ({reason}). {PROTOCOL_HELP}"


def tool_error_observation(kind: str) -> str:
    what = {
        "unreachable": "the search service cannot be reached",
        "timeout": "the search service did not answer in time",
        "http_error": "the search service reported an error",
        "garbage": "the search service sent an answer that could not be read",
    }.get(kind, "the search service failed")
    return f"Tool error: {what}. The episode goes on: repeat the call later, try another call, or answer."
