"""What sorting rows by length, and forwarding identical rows once, saves in the RL update (``train.micro_batch_order``).

Collects one iteration of the household config's episodes (default: 16 tasks x 8, up to 10
turns) with a policy (``--model``, e.g. an SFT start; default the config's tiny model), then runs
the same update on them from the same weights with ``shuffled``, ``by_length`` and ``grouped``
micro-batches (``grouped``: sorted by length, identical rows side by side and forwarded once),
alternating them ``--repeats`` times, since these machines are noisy. Prints, per order, the
token positions the forward passes process (distinct rows x widest row, summed), the median
update time, and the loss and gradient norm (equal up to float rounding: the micro-batch weights
sum the loss of the mini-batch either way). The last line is the time ratio of ``grouped`` to
``shuffled`` in one run; a late-training policy (``--model`` of a run's final model) repeats
itself more, so ``grouped`` saves more there.

    python benchmarks/micro_batch_order.py [--model DIR] [--repeats 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from run_args import add_run_arguments, load_run_config

from agentropy.training.minibatch import micro_batches, mini_batches
from agentropy.training.model_setup import build_backend, load_policy
from agentropy.training.policy import row_keys
from agentropy.training.step_samples import gather_samples
from agentropy.training.trainer import collect_training_episodes, train_tasks, update_from

ORDERS = ("shuffled", "by_length", "grouped")


def padded_positions(cfg, batch, order: str, iteration: int = 0) -> int:
    """Token positions of the update's forward passes: each micro-batch is trimmed to its widest
    prompt plus its widest reply (as ``PackedBatch.select`` does), times its rows."""
    generator = torch.Generator().manual_seed(cfg.run.seed * 7919 + iteration)  # the update's own draw
    prompt_len = batch.attention_mask[:, : -batch.reply_width].sum(1)
    reply_len = batch.response_mask.sum(1)
    lengths = batch.attention_mask.sum(1) if order in ("by_length", "grouped") else None
    contents = row_keys(batch) if order == "grouped" else None
    total = 0
    for _ in range(cfg.train.ppo_epochs):
        for rows in mini_batches(len(prompt_len), cfg.train.mini_batches, generator):
            for idx in micro_batches(rows, cfg.train.micro_batch_size, lengths, contents):
                width = int(prompt_len[idx].max()) + max(int(reply_len[idx].max()), 1)
                forwarded = len({contents[i] for i in idx}) if contents is not None else len(idx)
                total += forwarded * width
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_run_arguments(parser)
    args = parser.parse_args()
    cfg = load_run_config(args)
    policy, tokenizer = load_policy(cfg.model, env_id=cfg.env.id)
    backend = build_backend(cfg.model, policy, tokenizer, env_id=cfg.env.id)
    trajectories, _ = collect_training_episodes(backend, tokenizer, cfg, train_tasks(cfg, 0), 0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = gather_samples(trajectories, pad, {}).batch
    useful = int(batch.attention_mask.sum())
    start = copy.deepcopy(policy.state_dict())

    seconds: dict[str, list[float]] = {o: [] for o in ORDERS}
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for order in ORDERS:
            run_cfg = load_run_config(args, f"train.micro_batch_order={order}")
            t0 = time.perf_counter()  # includes loading the start weights and a fresh optimizer (~ms)
            metrics = update_from(start, policy, tokenizer, trajectories, run_cfg)
            seconds[order].append(time.perf_counter() - t0)
            results[order] = {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}

    print(f"{len(trajectories)} episodes, {batch.attention_mask.shape[0]} turn rows, {useful:,} tokens; "
          f"micro-batch {cfg.train.micro_batch_size}, {cfg.train.mini_batches} mini-batches, "
          f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats")
    for order in ORDERS:
        positions = padded_positions(cfg, batch, order)
        print(f"  {order:9s} positions {positions:9,} ({positions / useful:.2f}x the tokens)  update "
              f"{statistics.median(seconds[order]):6.2f} s (runs {', '.join(f'{s:.2f}' for s in seconds[order])})  "
              f"loss {results[order]['loss']:.6f}  grad norm {results[order]['grad_norm']:.6f}")
    distinct = len(set(row_keys(batch)))
    print(f"  distinct (prompt, reply) rows: {distinct:,} of {batch.attention_mask.shape[0]:,}")
    ratio = statistics.median(seconds["grouped"]) / statistics.median(seconds["shuffled"])
    print(f"update s, grouped / shuffled: {ratio:.3f} (target <= 0.85)")


if __name__ == "__main__":
    main()
