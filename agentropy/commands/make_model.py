"""Build the tiny offline model: a BPE tokenizer trained on env text and a random Qwen2 LM.

    agentropy make-model models/tiny
    agentropy make-model models/tiny-search --envs agentropy/Household-v0 agentropy/Search-v0

``agentropy make-model OUT_DIR`` collects expert and random episodes of the given envs
(default: agentropy/Household-v0), trains the tokenizer, initialises the model and saves both
with ``save_pretrained``; any command that takes a model path can then load OUT_DIR. Running
it again with the same options reuses the folder.
"""

from __future__ import annotations

import argparse
import json

from agentropy.agents.tiny import DEFAULT_ENV_IDS, MANIFEST, TinyModelConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TinyModelConfig()
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the model and tokenizer to")
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENV_IDS), metavar="ID",
                        help="env ids whose text trains the tokenizer (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes and of the model init")
    parser.add_argument("--episodes", type=int, default=defaults.episodes_per_env,
                        help="episodes per env, half expert and half random (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size,
                        help="target vocabulary size (default: %(default)s)")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="default: %(default)s")
    parser.add_argument("--layers", type=int, default=defaults.num_hidden_layers, help="default: %(default)s")
    parser.add_argument("--copy-warmup-steps", type=int, default=defaults.copy_warmup_steps,
                        help="steps of the synthetic copy task before saving (0 = none; default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR holds the same build")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console

    from agentropy.agents.tiny import build_tiny_model, is_built

    cfg = replace(
        TinyModelConfig(),
        episodes_per_env=args.episodes,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        copy_warmup_steps=args.copy_warmup_steps,
    )
    console = Console()
    reused = not args.force and is_built(args.out_dir, args.envs, args.seed, cfg)
    path = build_tiny_model(args.out_dir, env_ids=args.envs, seed=args.seed, cfg=cfg, force=args.force,
                            progress=console.is_terminal)
    manifest = json.loads((path / MANIFEST).read_text())
    console.print(
        f"{'reused' if reused else 'built'} {path}: vocab {manifest['vocab_size']}, "
        f"{manifest['n_params'] / 1e6:.2f}M parameters, envs {', '.join(manifest['env_ids'])}"
        + ("" if reused else f", {manifest['build_seconds']} s")
        + (f", copy accuracy {manifest['copy_warmup']['copy_accuracy']:.3f} after the warm-up"
           if "copy_warmup" in manifest else "")
    )
    return 0
