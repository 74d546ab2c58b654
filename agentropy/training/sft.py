"""SFT warm start: imitate an env's expert so a tiny model starts RL with non-zero success.

Demonstrations come from any env that reports ``info["expert_action"]``. With
``action_noise > 0`` the *executed* action is sometimes a random admissible one while the
*label* stays the expert's action for the state reached, so the model also learns to
recover from states the expert alone would never visit (DAgger-style states, expert labels).
Each turn becomes one sample exactly as in RL: the rendered prompt, then the reply
``<action>expert action</action>`` followed by EOS; the loss covers the reply tokens only.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from agentropy.agents.prompts import PromptConfig, Turn, build_prompt_ids
from agentropy.configuration import above, at_least, between, check_bounds
from agentropy.envs.registry import make_env
from agentropy.nonfinite import NonFiniteError, require_finite


@dataclass
class SFTConfig:
    """SFT warm start on expert demonstrations."""

    enabled: bool = True  # run SFT before RL (skipped on resume)
    episodes: int = 200  # expert episodes collected from the train split
    epochs: int = 2  # passes over the collected turns
    lr: float = 1e-3  # AdamW learning rate for SFT (the peak, with a schedule)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 0 over all SFT steps after the warm-up
    warmup_steps: int = 0  # linear LR warm-up over this many optimizer steps
    batch_size: int = 32  # turns per optimizer step
    action_noise: float = 0.1  # probability of executing a random admissible action instead of the expert's
    max_turns: int = 50  # cap on demonstration length
    seed: int = 0  # seeds task sampling and noise
    weight_decay: float = 0.0  # AdamW weight decay
    prompt_loss_weight: float = 0.0  # weight of next-token loss on prompt tokens (0 = replies only, as TRL's completion-only loss)

    def __post_init__(self) -> None:
        check_bounds(self, {
            "episodes": at_least(1), "epochs": at_least(1), "lr": above(0), "batch_size": at_least(1),
            "warmup_steps": at_least(0), "action_noise": between(0, 1), "max_turns": at_least(1), "seed": between(0, 2**31 - 1),
            "weight_decay": at_least(0), "prompt_loss_weight": at_least(0),
        })


def format_reply(action: str, tag: str = "action") -> str:
    """The reply text the agent is trained to produce for ``action``."""
    return f"<{tag}>{action}</{tag}>"


def reply_ids(tokenizer: Any, action: str, tag: str = "action") -> list[int]:
    """Token ids of the reply for ``action``, ending with EOS (what generation stops on)."""
    ids = tokenizer.encode(format_reply(action, tag), add_special_tokens=False)
    return [*ids, tokenizer.eos_token_id]


def collect_demonstrations(
    env_id: str,
    env_kwargs: dict[str, Any],
    tokenizer: Any,
    prompt_cfg: PromptConfig,
    cfg: SFTConfig,
    split: str = "train",
) -> tuple[list[tuple[list[int], list[int]]], dict[str, float]]:
    """Play the expert (with action noise) and return ``(prompt_ids, reply_ids)`` pairs."""
    rng = random.Random(cfg.seed)
    env = make_env(env_id, **env_kwargs)
    pairs: list[tuple[list[int], list[int]]] = []
    wins = 0
    try:
        for episode in range(cfg.episodes):
            obs, info = env.reset(seed=cfg.seed * 100_003 + episode, options={"split": split})
            task = info.get("task", "")
            history: list[Turn] = []
            for _ in range(cfg.max_turns):
                expert = info.get("expert_action")
                if not expert:
                    break
                admissible = info.get("admissible_actions") or []
                prompt = build_prompt_ids(tokenizer, prompt_cfg, task, history, obs, admissible)
                pairs.append((prompt, reply_ids(tokenizer, expert, prompt_cfg.action_tag)))
                action = expert
                if admissible and rng.random() < cfg.action_noise:
                    action = rng.choice(admissible)
                history.append(Turn(observation=obs, action=action))
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    wins += int(bool(info.get("won")))
                    break
    finally:
        env.close()
    return pairs, {"sft/demo_turns": float(len(pairs)), "sft/demo_success": wins / max(1, cfg.episodes)}


def _pad_batch(
    pairs: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding) and
    ``is_reply`` (1 on reply tokens, 0 on prompt tokens)."""
    length = max(len(p) + len(r) for p, r in pairs)
    input_ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), length), dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    is_reply = torch.zeros((len(pairs), length), dtype=torch.float32)
    for i, (prompt, reply) in enumerate(pairs):
        seq = prompt + reply
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        labels[i, : len(seq)] = torch.tensor(seq)
        is_reply[i, len(prompt) : len(seq)] = 1.0
    return input_ids.to(device), attention.to(device), labels.to(device), is_reply.to(device)


def sft_loss(
    model: torch.nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor,
    is_reply: torch.Tensor, prompt_loss_weight: float = 0.0,
) -> torch.Tensor:
    """Next-token cross entropy: mean over reply tokens, plus ``prompt_loss_weight`` times the
    mean over prompt tokens. The prompt term teaches a tiny from-scratch model the language of
    the env (entity names recur across observations and actions), the part of pretraining a
    real checkpoint already has; keep it 0 for pretrained models."""
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets, reply = labels[:, 1:], is_reply[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(reply)
    valid = (targets != -100).float()
    loss = (per_token * reply).sum() / reply.sum().clamp(min=1.0)
    if prompt_loss_weight > 0:
        prompt = valid * (1.0 - reply)
        loss = loss + prompt_loss_weight * (per_token * prompt).sum() / prompt.sum().clamp(min=1.0)
    return loss


def _dump_sft_batch(folder: Path, step: int, batch: list[tuple[list[int], list[int]]]) -> Path:
    """Save the token ids of the batch SFT refused, to replay it by hand."""
    path = folder / f"nonfinite_sft_step_{step:06d}.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"prompt_ids": p, "reply_ids": r} for p, r in batch]) + "\n", encoding="utf-8")
    return path


def lr_factor(step: int, total_steps: int, cfg: SFTConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based) of ``total_steps``.

    Linear warm-up from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps, then
    constant or a half cosine from 1 down to 0 at the last step. A decay lets a from-scratch
    model settle at the end of SFT on the sharp, exact behaviour (copying a name it has not
    seen) that large constant steps keep perturbing."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(total_steps - cfg.warmup_steps - 1, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_sft(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: list[tuple[list[int], list[int]]],
    cfg: SFTConfig,
    accelerator: Any = None,
    progress: Any = None,
    dump_dir: str | Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Fit ``model`` to the demonstration pairs; returns the final mean loss and step count.

    A non-finite loss or gradient norm stops SFT *before* that step changes the weights, with a
    :class:`NonFiniteError` naming the step (and, with ``dump_dir``, the file holding the batch).
    ``on_step(steps_done, loss)`` runs after every optimizer step (a benchmark evaluates the
    weights there; it must leave the model in train mode)."""
    if not pairs:
        raise ValueError("SFT got no demonstrations: does the env report info['expert_action']?")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    steps_per_epoch = (len(pairs) + cfg.batch_size - 1) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    scheduled = cfg.lr_schedule != "constant" or cfg.warmup_steps > 0
    task = progress.add_task("SFT", total=total_steps) if progress is not None else None
    losses: list[float] = []
    for _ in range(cfg.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            batch = [pairs[i] for i in order[start : start + cfg.batch_size]]
            if scheduled:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(len(losses), total_steps, cfg)
            loss = sft_loss(model, *_pad_batch(batch, pad_id, device), cfg.prompt_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            try:
                require_finite(loss, "loss", where="sft", step=len(losses))
                if accelerator is not None:
                    accelerator.backward(loss)
                else:
                    loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                require_finite(norm, "gradient norm", where="sft", step=len(losses))
            except NonFiniteError as exc:
                optimizer.zero_grad(set_to_none=True)
                if dump_dir is not None:
                    exc.dump = _dump_sft_batch(Path(dump_dir), len(losses), batch)
                raise
            optimizer.step()
            losses.append(loss.item())
            if task is not None:
                progress.update(task, advance=1, description=f"SFT loss {loss.item():.3f}")
            if on_step is not None:
                on_step(len(losses), losses[-1])
    model.eval()
    tail = losses[-steps_per_epoch:]
    return {"sft/loss": sum(tail) / len(tail), "sft/steps": float(len(losses))}
