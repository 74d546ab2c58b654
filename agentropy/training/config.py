"""The experiment config: one dataclass tree, loaded from YAML by :mod:`agentropy.configuration`.

Every field has a default and a one-line comment; ``configs/`` holds ready-made files
(``quickstart.yaml``, per-env, per-strategy, bench). Unknown or ill-typed keys, numbers out of
range and unknown env ids fail at load time, naming the file and the field, so that nothing
heavy (tiny-model build, SFT, env start) runs on a config that cannot work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentropy.agents.prompts import PromptConfig
from agentropy.agents.tiny import TinyModelConfig
from agentropy.configuration import (
    Bound,
    ConfigError,
    ConfigIssue,
    ConfigPaths,
    above,
    at_least,
    between,
    check_bounds,
    load,
)
from agentropy.training.env_check import env_id_problem
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

    def __post_init__(self) -> None:
        extra = []
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            extra.append(ConfigIssue("name", f"must be a plain folder name, got {self.name!r}"))
        if not self.root:
            extra.append(ConfigIssue("root", "must not be empty"))
        check_bounds(self, {"seed": between(0, 2**31 - 1)}, extra)

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


#: The tiny model's sizes (its dataclass lives with the model; the checks live with the config).
TINY_BOUNDS: dict[str, Bound] = {
    "tiny.vocab_size": at_least(64),
    "tiny.hidden_size": at_least(1),
    "tiny.intermediate_size": at_least(1),
    "tiny.num_hidden_layers": at_least(1),
    "tiny.num_attention_heads": at_least(1),
    "tiny.num_key_value_heads": at_least(1),
    "tiny.max_position_embeddings": at_least(16),
    "tiny.episodes_per_env": at_least(1),
    "tiny.max_episode_steps": at_least(1),
    "tiny.copy_warmup_steps": at_least(0),
}


@dataclass
class VLLMConfig:
    """The vLLM engine of ``model.backend: vllm`` (colocated with the learner on the same GPU)."""

    gpu_memory_utilization: float = 0.5  # share of GPU memory vLLM takes (weights + KV cache); the learner needs the rest
    max_model_len: int = 0  # longest prompt + reply the engine serves (0 = the checkpoint's maximum; smaller saves KV cache)
    enforce_eager: bool = False  # skip CUDA graph capture: slower decoding, faster start, less memory
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # engine dtype (auto = the checkpoint's)
    top_logprobs: int = 20  # log-probs returned per generated token (the entropy is estimated from them)

    def __post_init__(self) -> None:
        check_bounds(self, {"gpu_memory_utilization": between(0, 1, low_open=True), "max_model_len": at_least(0),
                            "top_logprobs": at_least(1)})


@dataclass
class ModelConfig:
    """Which policy and which generation backend."""

    path: str = ""  # HF checkpoint folder (any causal LM); empty = build/reuse the tiny offline model
    tiny_dir: str = "~/.cache/agentropy/tiny-model"  # cache folder of tiny models (one subfolder per size, seed and tokenizer envs)
    tiny_seed: int = 0  # seed of the tiny model's random init
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # sizes of the tiny model
    tiny_envs: list[str] | None = None  # envs (default options) whose text trains the tiny tokenizer; null = env.id
    backend: Literal["hf", "vllm", "openai"] = "hf"  # generation backend: hf or vllm to train; openai only for eval
    openai_url: str = ""  # base URL of an OpenAI-compatible server (backend: openai)
    served_model: str = ""  # name that server serves the model under (--served-model-name); empty = model.path, the name servers give a model started without one
    device: str = "auto"  # auto | cpu | cuda
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # learner dtype
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % more compute
    tf32: bool = False  # on CUDA, float32 matmuls use TF32 tensor cores (10-bit mantissa products): 2.6x faster fp32 learner on an H200
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # engine settings of backend: vllm

    def __post_init__(self) -> None:
        extra = []
        if self.backend == "openai" and not self.openai_url:
            extra.append(ConfigIssue("openai_url", "must be set when model.backend is 'openai'"))
        if self.openai_url and not self.openai_url.startswith(("http://", "https://")):
            extra.append(ConfigIssue("openai_url", f"must start with http:// or https://, got {self.openai_url!r}"))
        if self.tiny_envs is not None:
            if not self.tiny_envs:
                extra.append(ConfigIssue("tiny_envs", "must name at least one env, or be null (the env being trained)"))
            for i, env_id in enumerate(self.tiny_envs):
                problem = env_id_problem(env_id)
                if problem:
                    extra.append(ConfigIssue(f"tiny_envs[{i}]", problem))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            extra.append(ConfigIssue("device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"))
        tiny = self.tiny
        if tiny.num_attention_heads >= 1 and tiny.hidden_size % tiny.num_attention_heads:
            extra.append(ConfigIssue("tiny.hidden_size", f"must be a multiple of num_attention_heads "
                                     f"({tiny.num_attention_heads}), got {tiny.hidden_size}"))
        if tiny.num_key_value_heads >= 1 and tiny.num_attention_heads % tiny.num_key_value_heads:
            extra.append(ConfigIssue("tiny.num_attention_heads", f"must be a multiple of num_key_value_heads "
                                     f"({tiny.num_key_value_heads}), got {tiny.num_attention_heads}"))
        check_bounds(self, {"tiny_seed": between(0, 2**31 - 1), **TINY_BOUNDS}, extra)


@dataclass
class EnvConfig:
    """Which environment, by Gymnasium id, plugin id or ``package.module:Class``."""

    id: str = "agentropy/Household-v0"  # env to train and evaluate on
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor keyword arguments
    train_split: str = "train"  # split used for rollouts and SFT demos
    test_split: str = "test"  # held-out split used for evaluation

    def __post_init__(self) -> None:
        problem = env_id_problem(self.id)
        if problem:
            raise ConfigError(problem, field="id")


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
    micro_batch_order: Literal["shuffled", "by_length", "grouped"] = "shuffled"  # by_length: rows of similar length share a forward pass (less padding; same summed gradient up to float order, but per-micro-batch statistics such as Clip-Cov's change); grouped: by_length with identical samples side by side, each distinct one forwarded once
    max_grad_norm: float = 1.0  # gradient clipping
    checkpoint_every: int = 1  # iterations between checkpoints (0 = only at the end)
    keep_checkpoints: int = 1  # newest resumable checkpoints kept (each holds weights + AdamW state: ~12 B/param in fp32)
    recompute_old: Literal["auto", "always"] = "auto"  # auto: reuse the sampler's exact log-probs/entropies as pi_old when they are exact
    stop_after: int | None = None  # stop (as if interrupted) after this many iterations; --resume continues

    def __post_init__(self) -> None:
        check_bounds(self, {
            "iterations": at_least(0), "lr": above(0), "weight_decay": at_least(0),
            "warmup_iterations": at_least(0), "ppo_epochs": at_least(1), "mini_batches": at_least(1),
            "micro_batch_size": at_least(1), "max_grad_norm": above(0), "checkpoint_every": at_least(0),
            "keep_checkpoints": at_least(1), "stop_after": at_least(1, optional=True),
        })


@dataclass
class EvalConfig:
    """Held-out evaluation during and after training."""

    every: int = 0  # evaluate every N iterations (0 = only before RL and at the end)
    episodes: int = 32  # test-split tasks (a fixed set: the same seeds in every run)
    temperature: float = 0.0  # 0 = greedy
    samples: int = 1  # episodes per task; pass@k uses k <= samples
    seed_offset: int = 1_000_000  # test task seeds are seed_offset + i

    def __post_init__(self) -> None:
        check_bounds(self, {"every": at_least(0), "episodes": at_least(1), "temperature": at_least(0),
                            "samples": at_least(1), "seed_offset": at_least(0)})


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

    def __post_init__(self) -> None:
        """Checks that span sections (each section checks its own fields)."""
        issues = []
        tiny = self.model.tiny
        needed = self.prompt.max_prompt_tokens + self.rollout.max_tokens
        if not self.model.path and tiny.max_position_embeddings < needed:
            issues.append(ConfigIssue("model.tiny.max_position_embeddings", (
                f"must cover prompt.max_prompt_tokens + rollout.max_tokens ({needed}), "
                f"got {tiny.max_position_embeddings}")))
        engine_len = self.model.vllm.max_model_len
        if self.model.backend == "vllm" and engine_len and engine_len < needed:
            issues.append(ConfigIssue("model.vllm.max_model_len", (
                f"must cover prompt.max_prompt_tokens + rollout.max_tokens ({needed}), got {engine_len}")))
        try:
            self.strategy.validate()
        except ConfigError as exc:
            issues.extend(exc.within("strategy").issues)
        except ValueError as exc:  # "invalid strategy config:\n  problem\n  problem": one issue each
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            problems = lines[1:] if len(lines) > 1 and lines[0].endswith(":") else [" ".join(lines)]
            issues.extend(ConfigIssue("strategy", problem) for problem in problems)
        if issues:
            raise ConfigError(issues)


def check_trainable(cfg: Config, source: str = "") -> None:
    """Refuse settings that load fine for ``agentropy eval`` but cannot train, before anything
    heavy starts: the ``openai`` backend samples from a remote server whose weights the learner
    cannot update, so RL would otherwise stop at its first weight sync."""
    if cfg.model.backend == "openai":
        raise ConfigError(
            "'openai' is for evaluation (`agentropy eval`): it samples from a remote server that cannot "
            "take the learner's weights; train with 'hf' or 'vllm'", field="model.backend", source=source)


def load_config(path: ConfigPaths = None, overrides: list[str] | None = None) -> Config:
    """Load and validate a config (one file or several composed in order, then ``key.sub=value``
    overrides); raises one :class:`ConfigError` listing every problem found."""
    return load(Config, path, overrides)
