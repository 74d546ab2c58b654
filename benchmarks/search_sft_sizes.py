"""Where does SFT on Search-v0 start copying? Held-out success and copy rates vs SFT steps.

Runs the config's SFT once (``agentropy train``'s own SFT loop: same demonstrations, order,
batch size, learning-rate schedule and loss) and, every ``--every`` optimizer
steps, evaluates the policy greedily on the first ``--episodes`` fixed held-out tasks with the
copy checks of :mod:`search_copy`. A tiny from-scratch model emits well-formed tool calls long
before it can copy an unseen name, so success sits at 0 and then jumps; this finds the SFT
size the config needs, at the cost of one SFT run plus the evaluations.

    python benchmarks/search_sft_sizes.py --config configs/search.yaml --every 375 [key=value ...]
"""

from __future__ import annotations

import argparse
import json
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
from agentropy.training.sft import collect_demonstrations, lr_factor, train_sft  # noqa: E402


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
    steps_per_epoch = (len(pairs) + cfg.sft.batch_size - 1) // cfg.sft.batch_size
    total_steps = cfg.sft.epochs * steps_per_epoch
    env = SearchEnv(**cfg.env.kwargs)
    losses: list[float] = []

    def evaluate_every(step: int, loss: float) -> None:
        losses.append(loss)
        if step % args.every and step < total_steps:
            return
        report = copy_report(model, tokenizer, cfg, env)
        recent = losses[-args.every:]
        seen = step * cfg.sft.batch_size
        episodes = round(min(seen, cfg.sft.epochs * len(pairs)) * cfg.sft.episodes / len(pairs))
        print(json.dumps({"sft_steps": step, "demo_episodes": episodes, "lr": round(cfg.sft.lr * lr_factor(
            step - 1, total_steps, cfg.sft), 6), "loss": round(sum(recent) / len(recent), 3), **report,
            "wall_s": round(time.time() - started)}), flush=True)

    try:
        train_sft(model, tokenizer, pairs, cfg.sft, on_step=evaluate_every)
    finally:
        env.close()
    if args.save:
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)


if __name__ == "__main__":
    main()
