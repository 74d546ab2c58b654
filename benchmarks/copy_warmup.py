"""When does the tiny model learn to copy? Copy accuracy vs steps of the synthetic copy warm-up.

Builds the config's tiny model without a warm-up (same tokenizer, sizes and init as
``agentropy train`` would), then runs :func:`agentropy.agents.copy_warmup.copy_warmup` as the
build does (same seed and data) and, every ``--every`` steps, measures greedy copy accuracy on
fresh rows.
Accuracy sits near 0 (loss near log(vocab)) until the induction circuit forms, then jumps to
~1 within a few hundred steps; ``model.tiny.copy_warmup_steps`` must be past that step.

    python benchmarks/copy_warmup.py --config configs/search.yaml --steps 2500 --every 250

The last line is the headline: ``copy accuracy: <value> (target >= 0.9)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from agentropy.agents.copy_warmup import CopyWarmupConfig, copy_accuracy, copy_warmup, ordinary_token_ids
from agentropy.agents.tiny import load_model_and_tokenizer
from agentropy.training.config import load_config
from agentropy.training.model_setup import model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/search.yaml")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--every", type=int, default=250, help="steps between accuracy checks")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, ["run.progress=false", *args.overrides])
    if cfg.model.path:
        raise SystemExit("this measures the tiny model's warm-up; unset model.path")
    cold = dataclasses.replace(cfg.model, tiny=dataclasses.replace(cfg.model.tiny, copy_warmup_steps=0))
    model, tokenizer = load_model_and_tokenizer(model_path(cold, cfg.env.id))
    tokens = ordinary_token_ids(tokenizer)
    warmup = CopyWarmupConfig(steps=args.steps)
    started = time.perf_counter()
    accuracy = [0.0]

    def on_step(step: int, loss: float) -> None:
        if step % args.every == 0 or step == args.steps:
            accuracy[0] = copy_accuracy(model, tokens, warmup, seed=10_000)
            print(json.dumps({"steps": step, "loss": round(loss, 3), "copy_accuracy": round(accuracy[0], 3),
                              "wall_s": round(time.perf_counter() - started)}), flush=True)

    # the same call, seed and data as the build's warm-up (seed = model.tiny_seed)
    copy_warmup(model, tokenizer, warmup, seed=cfg.model.tiny_seed, on_step=on_step)
    print(f"copy accuracy: {accuracy[0]:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
