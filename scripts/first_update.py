"""One RL update of several arms on the same batch: how far each moves the policy, and what it does next.

When an arm's run falls apart early (training success to 0, entropy up), this separates the arm's
first update from everything that follows. It collects one iteration of episodes with the start
policy (the same for every arm, as in a bench), then, for each arm, from the same weights and a
fresh optimizer: applies that arm's update to the batch, measures the change of the sampled
tokens' log-probabilities, and collects the next iteration's episodes with the updated policy.

    PYTHONPATH=. python scripts/first_update.py --model <SFT start> \
        --arm grpo=configs/strategies/grpo.yaml \
        --arm clip_cov=configs/strategies/clip_cov.yaml \
        --arm wide_clip=configs/strategies/grpo.yaml,strategy.policy_loss.clip_low=1.0,strategy.policy_loss.clip_high=1.0 \
        run.seed=1 train.lr=1e-3 rollout.temperature=1.0

Each ``--arm NAME=FILE[,key=value...]`` is a strategy file plus overrides of its own; the trailing
``key=value`` overrides apply to every arm.
"""

from __future__ import annotations

import argparse
import copy

from agentropy.training.config import load_config
from agentropy.training.model_setup import build_backend, load_policy
from agentropy.training.policy_update import recompute_old
from agentropy.training.step_samples import gather_samples
from agentropy.training.trainer import collect_training_episodes, seed_everything, train_tasks, update_from


def parse_arm(text: str) -> tuple[str, str, list[str]]:
    """``NAME=FILE[,key=value...]`` -> (name, file, overrides)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME=FILE[,key=value...]")
    file, *overrides = rest.split(",")
    return name, file, overrides


def success(trajectories: list) -> float:
    return sum(t.won for t in trajectories) / max(len(trajectories), 1)


def mean_entropy(trajectories: list) -> float:
    steps = [s for t in trajectories for s in t.steps]
    return sum(s.mean_entropy for s in steps) / max(len(steps), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/household.yaml")
    parser.add_argument("--model", required=True, help="the start policy folder (e.g. a bench's init model)")
    parser.add_argument("--arm", action="append", type=parse_arm, required=True, help="NAME=FILE[,key=value...]")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    common = ["run.progress=false", "run.tensorboard=false", f"model.path={args.model}", "sft.enabled=false",
              *args.overrides]
    arms = {name: load_config([args.config, file], [*common, *extra]) for name, file, extra in args.arm}
    cfg = next(iter(arms.values()))
    seed_everything(cfg.run.seed)
    policy, tokenizer = load_policy(cfg.model, env_id=cfg.env.id)
    backend = build_backend(cfg.model, policy, tokenizer, env_id=cfg.env.id)
    batch_trajectories, _ = collect_training_episodes(backend, tokenizer, cfg, train_tasks(cfg, 0), 0)
    samples = gather_samples(batch_trajectories, tokenizer.pad_token_id, {})
    device = next(policy.parameters()).device
    temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
    before = recompute_old(policy, samples.batch, cfg.train.micro_batch_size, temperature, device)
    mask = samples.batch.response_mask.bool()
    start = copy.deepcopy(policy.state_dict())
    print(f"iteration 0: {len(batch_trajectories)} episodes, success {success(batch_trajectories):.3f}, "
          f"mean token entropy {mean_entropy(batch_trajectories):.3f} (run.seed {cfg.run.seed})")
    print("| arm | loss | grad norm | mean log-prob fall on the batch | max abs change | iteration 1 success "
          "| iteration 1 entropy |")
    print("|---|---|---|---|---|---|---|")
    for name, arm_cfg in arms.items():
        metrics = update_from(start, policy, tokenizer, batch_trajectories, arm_cfg)
        after = recompute_old(policy, samples.batch, arm_cfg.train.micro_batch_size, temperature, device)
        change = (before.logprobs - after.logprobs)[mask]
        backend.sync_weights(policy)
        following, _ = collect_training_episodes(backend, tokenizer, arm_cfg, train_tasks(arm_cfg, 1), 1)
        print(f"| {name} | {metrics['loss']:.5f} | {metrics['grad_norm']:.4f} | {float(change.mean()):.4f} | "
              f"{float(change.abs().max()):.2f} | {success(following):.3f} | {mean_entropy(following):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
