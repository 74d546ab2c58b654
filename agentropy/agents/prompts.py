"""The per-turn context: system prompt, a memory of recent turns, the current observation.

Each turn of an episode is one training sample, which keeps a long episode's cost linear: its
prompt is built here from the task, the last ``memory_turns`` (observation, action) pairs and
the current observation, then rendered with the tokenizer's own chat template, so a real chat checkpoint
(Qwen2.5-Instruct, Llama-3-Instruct, ...) sees the format it was tuned on and the tiny model
sees its ChatML template. Layout (verl-agent's step-wise samples: observations live in the
prompt and are never trained, the reply is the only trained part):

* system: the task, the action format ``<action>...</action>``, the admissible actions;
* user: ``(N earlier turns omitted)``, then ``[Step i] Observation: ...`` / ``[Step i] Action:
  ...`` for the remembered turns, then ``[Step t] Current observation: ...`` and, with
  ``restate_task``, ``Your task is: ...`` once more.

The prompt is kept under ``max_prompt_tokens``: the oldest remembered turns go first, then the
tail of the admissible list. The task and the current observation are never cut; if they alone
exceed the budget the prompt is returned over budget with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SYSTEM_TEMPLATE = (
    "You are an agent in a text environment. Reach the goal in as few steps as you can.\n"
    "Your task is: {task}\n"
    "Each reply may think briefly, then must end with exactly one action written as "
    "<{tag}>your action</{tag}>.{admissible}"
)


@dataclass(frozen=True)
class PromptConfig:
    """How the per-turn prompt is built."""

    memory_turns: int = 4
    """K: how many of the most recent (observation, action) turns the prompt shows."""
    max_prompt_tokens: int = 1024
    """Token budget of the rendered prompt, chat-template tokens included."""
    show_admissible: bool = True
    """Whether the system prompt lists the admissible actions the env reports."""
    max_admissible: int = 50
    """At most this many admissible actions are listed (the rest are counted)."""
    action_tag: str = "action"
    """The reply's action goes in ``<action_tag>...</action_tag>``."""
    system_template: str = DEFAULT_SYSTEM_TEMPLATE
    """``str.format`` template with fields ``{task}``, ``{tag}`` and ``{admissible}``."""
    use_system_role: bool = True
    """False for chat templates without a system role: the system text opens the user message."""
    restate_task: bool = True
    """End the user message with ``Your task is: ...`` again: the task then sits at a nearly fixed
    distance from the reply, which small models (and long contexts) pick up far more easily."""

    def __post_init__(self) -> None:
        if self.memory_turns < 0:
            raise ValueError(f"PromptConfig.memory_turns must be >= 0, got {self.memory_turns}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"PromptConfig.max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if self.max_admissible < 0:
            raise ValueError(f"PromptConfig.max_admissible must be >= 0, got {self.max_admissible}")
        if not self.action_tag or any(c in self.action_tag for c in "<>/ "):
            raise ValueError(f"PromptConfig.action_tag must be a plain name, got {self.action_tag!r}")
        if "{task}" not in self.system_template:
            raise ValueError("PromptConfig.system_template must contain the field {task}")
        try:
            self.system_template.format(task="", tag="", admissible="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"PromptConfig.system_template is not a valid template with fields "
                f"{{task}}, {{tag}}, {{admissible}}: {exc!r}"
            ) from exc


@dataclass(frozen=True)
class Turn:
    """One past turn: the observation the agent saw and the action it took in reply."""

    observation: str
    action: str


def _admissible_block(admissible: Sequence[str], shown: int) -> str:
    if shown <= 0 and not admissible:
        return ""
    lines = list(admissible[:shown])
    if len(admissible) > shown:
        lines.append(f"... ({len(admissible) - shown} more)")
    return "\nAdmissible actions:\n" + "\n".join(lines)


def _turn_text(step: int, turn: Turn) -> str:
    return f"[Step {step}] Observation: {turn.observation}\n[Step {step}] Action: {turn.action}\n"


def build_messages(
    cfg: PromptConfig,
    task: str,
    history: Sequence[Turn],
    observation: str,
    admissible: Sequence[str] = (),
    *,
    n_turns: int | None = None,
    n_admissible: int | None = None,
) -> list[dict[str, str]]:
    """Chat messages for one turn, remembering ``n_turns`` turns and listing ``n_admissible``.

    Defaults: ``min(memory_turns, len(history))`` turns and ``min(max_admissible,
    len(admissible))`` actions (none if ``show_admissible`` is off).
    """
    if n_turns is None:
        n_turns = min(cfg.memory_turns, len(history))
    if n_admissible is None:
        n_admissible = min(cfg.max_admissible, len(admissible))
    admissible_text = _admissible_block(admissible, n_admissible) if cfg.show_admissible else ""
    system = cfg.system_template.format(task=task, tag=cfg.action_tag, admissible=admissible_text)
    first = len(history) - n_turns
    parts = []
    if first > 0:
        parts.append(f"({first} earlier turn{'s' if first != 1 else ''} omitted)\n")
    parts.extend(_turn_text(first + i + 1, turn) for i, turn in enumerate(history[first:]))
    parts.append(f"[Step {len(history) + 1}] Current observation: {observation}")
    if cfg.restate_task:
        parts.append(f"\nYour task is: {task}")
    user = "".join(parts)
    if cfg.use_system_role:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return [{"role": "user", "content": system + "\n\n" + user}]


def render_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template, ready for the reply.

    The template writes its own special tokens (BOS, ``<|im_start|>``), so the text is encoded
    without adding more: the same ids ``apply_chat_template(tokenize=True)`` gives.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def build_prompt_ids(
    tokenizer: Any,
    cfg: PromptConfig,
    task: str,
    history: Sequence[Turn],
    observation: str,
    admissible: Sequence[str] = (),
) -> list[int]:
    """Prompt token ids for the current turn, under ``cfg.max_prompt_tokens`` where possible.

    Cost: one render and encode when the prompt fits (the usual case). Otherwise the remembered
    turns and admissible actions are encoded once as a batch to estimate what each one costs,
    the oldest turns and then the last admissible actions are dropped by that estimate, and
    the prompt is re-rendered; the loop repeats only when the estimate fell short (token
    merges across piece boundaries), so it typically renders twice.
    """
    n_turns = min(cfg.memory_turns, len(history))
    n_adm = min(cfg.max_admissible, len(admissible)) if cfg.show_admissible else 0
    ids = render_ids(tokenizer, build_messages(cfg, task, history, observation, admissible,
                                               n_turns=n_turns, n_admissible=n_adm))
    if len(ids) <= cfg.max_prompt_tokens:
        return ids
    first = len(history) - n_turns
    pieces = [_turn_text(first + i + 1, t) for i, t in enumerate(history[first:])] + list(admissible[:n_adm])
    lengths = [len(x) + 1 for x in tokenizer(pieces, add_special_tokens=False)["input_ids"]] if pieces else []
    turn_cost, adm_cost = lengths[:n_turns], lengths[n_turns:]
    while len(ids) > cfg.max_prompt_tokens:
        if n_turns == 0 and n_adm == 0:
            warnings.warn(
                f"prompt has {len(ids)} tokens > max_prompt_tokens={cfg.max_prompt_tokens} with no "
                "memory and no admissible actions left; the task and current observation are kept whole",
                stacklevel=2,
            )
            return ids
        over = len(ids) - cfg.max_prompt_tokens
        while over > 0 and n_turns > 0:
            over -= turn_cost[len(turn_cost) - n_turns]
            n_turns -= 1
        while over > 0 and n_adm > 0:
            n_adm -= 1
            over -= adm_cost[n_adm]
        ids = render_ids(tokenizer, build_messages(cfg, task, history, observation, admissible,
                                                   n_turns=n_turns, n_admissible=n_adm))
    return ids
