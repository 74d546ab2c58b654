"""The agent side: prompts and memory, action parsing, generation backends, the tiny model.

Importing this package stays light (no torch, no transformers): ``agentropy.agents.tiny`` and
``agentropy.agents.backends.hf`` import them when used.
"""

from agentropy.agents.parsing import DEFAULT_FORMAT_PENALTY, ParsedAction, format_reward, parse_action
from agentropy.agents.prompts import PromptConfig, Turn, build_messages, build_prompt_ids

__all__ = [
    "DEFAULT_FORMAT_PENALTY",
    "ParsedAction",
    "PromptConfig",
    "Turn",
    "build_messages",
    "build_prompt_ids",
    "format_reward",
    "parse_action",
]
