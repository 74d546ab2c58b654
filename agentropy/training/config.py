"""The experiment config: one dataclass tree, loaded from YAML by :mod:`agentropy.configuration`.

Every field has a default and a one-line comment; ``configs/`` holds ready-made files
(``quickstart.yaml``, per-env, per-strategy, bench). Unknown or ill-typed keys fail at load
time, naming the field and the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentropy.agents.prompts import PromptConfig
from agentropy.agents.tiny import TinyModelConfig
from agentropy.configuration import ConfigError, load
from agentropy.training.rollout import RolloutConfig
from agentropy.training.sft import SFTConfig
from agentropy.training.strategy_config import StrategyConfig


@dataclass
class RunConfig:
    """Where and how a run is recorded."""

    name: str = "run"  # run folder is <root>/<name>
    root: str = "runs"  # parent folder of run folders
    seed: int = 0  # seeds model init, task sampling, sampling and mini-batch order
    tensorboard: bool = True  # also write TensorBoard events
    save_trajectories: bool = True  # write each iteration's trajectories as JSONL
    progress: bool = True  # rich progress bars

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


@dataclass
class ModelConfig:
    """Which policy and which generation backend."""

    path: str = ""  # HF checkpoint folder (any causal LM); empty = build/reuse the tiny offline model
    tiny_dir: str = "~/.cache/agentropy/tiny-model"  # cache folder of tiny models (one subfolder per size and seed)
    tiny_seed: int = 0  # seed of the tiny model's random init
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # sizes of the tiny model
    backend: Literal["hf", "vllm", "openai"] = "hf"  # generation backend for rollouts
    openai_url: str = ""  # base URL of an OpenAI-compatible server (backend: openai)
    device: str = "auto"  # auto | cpu | cuda
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # learner dtype


@dataclass
class EnvConfig:
    """Which environment, by Gymnasium id, plugin id or ``package.module:Class``."""

    id: str = "agentropy/Household-v0"  # env to train and evaluate on
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor keyword arguments
    train_split: str = "train"  # split used for rollouts and SFT demos
    test_split: str = "test"  # held-out split used for evaluation


@dataclass
class TrainConfig:
    """The RL optimisation loop."""

    iterations: int = 10  # RL iterations (collect -> update)
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_iterations: int = 0  # linear LR warm-up over this many iterations
    ppo_epochs: int = 1  # passes over each iteration's samples
    mini_batches: int = 2  # optimizer steps per epoch (same count on every process)
    micro_batch_size: int = 16  # samples per forward pass (gradient accumulation inside a mini-batch)
    max_grad_norm: float = 1.0  # gradient clipping
    checkpoint_every: int = 1  # iterations between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    recompute_old: Literal["auto", "always"] = "auto"  # auto: reuse the sampler's exact log-probs/entropies as pi_old when they are exact
    stop_after: int | None = None  # stop (as if interrupted) after this many iterations; --resume continues


@dataclass
class EvalConfig:
    """Held-out evaluation during and after training."""

    every: int = 0  # evaluate every N iterations (0 = only before RL and at the end)
    episodes: int = 32  # test-split tasks (a fixed set: the same seeds in every run)
    temperature: float = 0.0  # 0 = greedy
    samples: int = 1  # episodes per task; pass@k uses k <= samples
    seed_offset: int = 1_000_000  # test task seeds are seed_offset + i


@dataclass
class Config:
    """A full experiment."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load and validate a config (file + ``key.sub=value`` overrides)."""
    cfg = load(Config, path, overrides)
    try:
        cfg.strategy.validate()
    except ValueError as exc:
        raise ConfigError(f"{path}: strategy: {exc}") from None
    return cfg
