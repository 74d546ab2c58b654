"""Where one RL iteration's time goes: rollout, the pi_old pass, the update, and evaluation.

Loads a training config (default: the household config of the quickstart), a policy (the
tiny model, or ``--model`` for a saved one such as an SFT start), and times, for
``--iterations`` iterations of the real trainer pieces:

* rollout: ``trainer.collect_training_episodes`` (generation + env steps + prompt building);
* pi_old: ``policy_update.recompute_old``, the teacher-forced pass the update skips when the
  sampler's numbers are exact (``train.recompute_old: auto``), timed to show what it would cost;
* update: ``policy_update.iteration_update`` (advantages, losses, backward, optimizer steps);
* eval: one ``evaluation.evaluate_policy`` over ``eval.episodes`` held-out tasks, divided by
  ``eval.every`` if set (its share per iteration), else reported on its own.

Each part is printed with its share of the iteration; the last line is the mean wall time of
one iteration (rollout + update); the target is for the household config (16 tasks x 8) on 2
cores. Shares come from one run, since these machines are noisy.

    python benchmarks/rl_iteration.py [--config configs/household.yaml] [--model DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from run_args import add_run_arguments, load_run_config

from agentropy.training.evaluation import evaluate_policy
from agentropy.training.model_setup import build_backend, load_policy
from agentropy.training.policy_update import UpdateState, iteration_update, recompute_old
from agentropy.training.step_samples import gather_samples
from agentropy.training.trainer import _make_accelerator, collect_training_episodes, train_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    add_run_arguments(parser)
    args = parser.parse_args()
    cfg = load_run_config(args)
    accelerator = _make_accelerator(cfg)
    model, tokenizer = load_policy(cfg.model, env_id=cfg.env.id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    policy = accelerator.unwrap_model(model)
    backend = build_backend(cfg.model, policy, tokenizer, env_id=cfg.env.id)
    state = UpdateState.create(cfg)
    temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    parts: dict[str, list[float]] = {"rollout": [], "pi_old": [], "update": []}
    episodes = 0
    for iteration in range(args.iterations):
        backend.sync_weights(policy)
        t0 = time.perf_counter()
        trajectories, _ = collect_training_episodes(backend, tokenizer, cfg, train_tasks(cfg, iteration), iteration)
        t1 = time.perf_counter()
        samples = gather_samples(trajectories, pad, {})
        model.eval()
        recompute_old(policy, samples.batch, cfg.train.micro_batch_size, temperature, accelerator.device)
        t2 = time.perf_counter()
        iteration_update(model, policy, optimizer, accelerator, tokenizer, trajectories, cfg, iteration, state)
        t3 = time.perf_counter()
        parts["rollout"].append(t1 - t0)
        parts["pi_old"].append(t2 - t1)
        parts["update"].append(t3 - t2)
        episodes = len(trajectories)
    t0 = time.perf_counter()
    evaluate_policy(backend, tokenizer, cfg)
    eval_s = time.perf_counter() - t0

    mean = {k: statistics.mean(v) for k, v in parts.items()}
    iteration_s = mean["rollout"] + mean["update"]  # pi_old is skipped by the default update
    print(f"{args.iterations} iterations of {episodes} episodes ({cfg.rollout.tasks_per_batch} tasks x "
          f"{cfg.rollout.group_size}), max {cfg.rollout.max_turns} turns, on {torch.get_num_threads()} threads")
    for name in ("rollout", "update"):
        print(f"  {name:8s} {mean[name]:7.2f} s  ({mean[name] / iteration_s:5.1%} of an iteration)")
    print(f"  pi_old   {mean['pi_old']:7.2f} s  (extra, only with train.recompute_old=always or a method that "
          f"needs the full distribution)")
    share = f", {eval_s / cfg.eval.every:.2f} s per iteration at eval.every={cfg.eval.every}" if cfg.eval.every else ""
    print(f"  eval     {eval_s:7.2f} s for {cfg.eval.episodes} held-out tasks{share}")
    print(f"rl iteration s: {iteration_s:.2f} (target <= 12)")


if __name__ == "__main__":
    main()
