"""Where does SFT on Search-v0 start copying? Held-out success and copy rates vs SFT steps.

Runs the config's SFT once (same demonstrations, batch size, learning rate and loss as
``agentropy train``, one pass in a fixed shuffled order) and, every ``--every`` optimizer
steps, evaluates the policy greedily on the first ``--episodes`` fixed held-out tasks with the
copy checks of :mod:`search_copy`. A tiny from-scratch model emits well-formed tool calls long
before it can copy an unseen name, so success sits at 0 and then jumps; this finds the SFT
size the config needs, at the cost of one SFT run plus the evaluations.

    python benchmarks/search_sft_sizes.py --config configs/search.yaml --every 375 [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_copy import episode_copy_record  # noqa: E402

from agentropy.envs.search.env import SearchEnv  # noqa: E402
from agentropy.training.config import load_config  # noqa: E402
from agentropy.training.evaluation import evaluate_policy  # noqa: E402
from agentropy.training.model_setup import build_backend, load_policy  # noqa: E402
from agentropy.training.sft import _pad_batch, collect_demonstrations, sft_loss  # noqa: E402


def copy_report(model: torch.nn.Module, tokenizer: object, cfg: object, env: SearchEnv) -> dict[str, float]:
    """Greedy held-out success and the mean copy checks of the current weights."""
    model.eval()
    backend = build_backend(cfg.model, model, tokenizer, env_id=cfg.env.id)
    _, trajectories = evaluate_policy(backend, tokenizer, cfg, return_trajectories=True)
    records = [episode_copy_record(t, env) for t in trajectories]
    model.train()
    return {k: round(sum(r[k] for r in records) / len(records), 3) for k in records[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/search.yaml")
    parser.add_argument("--every", type=int, default=375, help="optimizer steps between evaluations")
    parser.add_argument("--episodes", type=int, default=64, help="held-out tasks per evaluation")
    parser.add_argument("--save", default="", help="save the final weights and tokenizer here (an SFT start)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, ["run.progress=false", "run.tensorboard=false", f"eval.episodes={args.episodes}",
                                    *args.overrides])
    torch.manual_seed(cfg.run.seed)
    model, tokenizer = load_policy(cfg.model, env_id=cfg.env.id)
    started = time.time()
    pairs, _ = collect_demonstrations(cfg.env.id, cfg.env.kwargs, tokenizer, cfg.prompt, cfg.sft, cfg.env.train_split)
    order = list(range(len(pairs)))
    random.Random(cfg.sft.seed).shuffle(order)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft.lr, weight_decay=cfg.sft.weight_decay)
    env = SearchEnv(**cfg.env.kwargs)
    model.train()
    losses: list[float] = []
    try:
        for step, first in enumerate(range(0, len(order), cfg.sft.batch_size), 1):
            batch = [pairs[i] for i in order[first : first + cfg.sft.batch_size]]
            loss = sft_loss(model, *_pad_batch(batch, pad, next(model.parameters()).device),
                            cfg.sft.prompt_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            if step % args.every == 0 or first + cfg.sft.batch_size >= len(order):
                report = copy_report(model, tokenizer, cfg, env)
                recent = losses[-args.every:]
                episodes = round(min(step * cfg.sft.batch_size, len(pairs)) * cfg.sft.episodes / len(pairs))
                print(json.dumps({"sft_steps": step, "demo_episodes": episodes,
                                  "loss": round(sum(recent) / len(recent), 3), **report,
                                  "wall_s": round(time.time() - started)}), flush=True)
    finally:
        env.close()
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)


if __name__ == "__main__":
    main()
