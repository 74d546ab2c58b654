"""Building the policy and its generation backend from a :class:`ModelConfig`.

The rest of the suite never knows whether it holds the tiny offline model or a real
checkpoint: both load with ``AutoModelForCausalLM`` / ``AutoTokenizer`` from a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agentropy.agents.backends.base import GenerationBackend

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device is 'cuda' but no CUDA device is available")
    return device


def tokenizer_env_ids(cfg: Any, env_id: str) -> tuple[str, ...]:
    """The envs whose text trains the tiny model's tokenizer: ``cfg.tiny_envs`` if set, else
    the env being trained (``env_id``), so its vocabulary (entity names, tool tags) is covered."""
    return tuple(cfg.tiny_envs) if cfg.tiny_envs else (env_id,)


def tiny_model_folder(cfg: Any, env_id: str) -> Path:
    """The cache folder of the tiny model for these sizes, seed and tokenizer envs.

    The key is a hash of the seed and sizes, plus the tokenizer's env ids when they are not the
    default set (Household): Household's folder, and so its cached model, stays where it was."""
    import hashlib
    import json

    from agentropy.agents.tiny import DEFAULT_ENV_IDS, config_key

    key_data: dict[str, Any] = {"seed": cfg.tiny_seed, **config_key(cfg.tiny)}
    env_ids = tokenizer_env_ids(cfg, env_id)
    if env_ids != DEFAULT_ENV_IDS:
        key_data["env_ids"] = list(env_ids)
    key = json.dumps(key_data, sort_keys=True)
    return Path(cfg.tiny_dir).expanduser() / hashlib.sha256(key.encode()).hexdigest()[:12]


def model_path(cfg: Any, env_id: str) -> Path:
    """The checkpoint folder: ``cfg.path`` if set, else the tiny model whose tokenizer was
    trained on :func:`tokenizer_env_ids` (built on first use)."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model.path {str(path)!r} does not exist")
        return path
    from agentropy.agents.tiny import build_tiny_model

    folder = tiny_model_folder(cfg, env_id)
    return build_tiny_model(folder, env_ids=tokenizer_env_ids(cfg, env_id), seed=cfg.tiny_seed, cfg=cfg.tiny)


def set_matmul_precision(tf32: bool, device: torch.device | str) -> None:
    """Let float32 matmuls on a CUDA ``device`` run on TF32 tensor cores (``model.tf32``).

    TF32 rounds the inputs of each product to a 10-bit mantissa and accumulates in fp32. The
    weights, gradients and optimizer state stay fp32, so small AdamW steps are kept (unlike bf16
    weights), while the learner's matmuls run about 2.6 times faster on an H200
    (``scripts/gpu_check.sh``). PyTorch's setting is process-wide; on a CPU device nothing is
    changed, so CPU runs stay bit-identical whatever the flag says.
    """
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")


def load_policy(cfg: Any, device: torch.device | None = None, *, env_id: str) -> tuple[torch.nn.Module, Any]:
    """Load ``(model, tokenizer)`` for training on ``env_id``, in ``cfg.dtype`` on ``device``."""
    from agentropy.agents.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path(cfg, env_id))
    device = device or resolve_device(cfg.device)
    set_matmul_precision(getattr(cfg, "tf32", False), device)
    model = model.to(device=device, dtype=_DTYPES[cfg.dtype])
    if getattr(cfg, "gradient_checkpointing", False):
        # Active only in train mode (the update); generation in eval mode keeps its KV cache.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.eval()
    return model, tokenizer


def load_tokenizer(cfg: Any, *, env_id: str) -> Any:
    """Only the tokenizer of the checkpoint: all a remote (``openai``) backend needs locally."""
    from agentropy.agents.tiny import load_tokenizer as load

    return load(model_path(cfg, env_id))


def served_model_name(cfg: Any, *, env_id: str) -> str:
    """The ``model`` an OpenAI-compatible server is asked for: ``cfg.served_model`` if set, else
    the checkpoint path, which is the name vLLM and ``agentropy serve-model`` give a model
    started without ``--served-model-name``."""
    return cfg.served_model or str(model_path(cfg, env_id))


def vllm_engine_kwargs(vllm_cfg: Any) -> dict[str, Any]:
    """``VLLMBackend`` keyword arguments of a ``model.vllm`` config (defaults left to vLLM)."""
    kwargs: dict[str, Any] = {
        "gpu_memory_utilization": vllm_cfg.gpu_memory_utilization,
        "top_logprobs": vllm_cfg.top_logprobs,
        "enforce_eager": vllm_cfg.enforce_eager,
        "dtype": vllm_cfg.dtype,
    }
    if vllm_cfg.max_model_len:
        kwargs["max_model_len"] = vllm_cfg.max_model_len
    return kwargs


def build_backend(cfg: Any, model: torch.nn.Module | None, tokenizer: Any, *, env_id: str) -> GenerationBackend:
    """The rollout backend named by ``cfg.backend``, sampling from ``model``'s weights (the
    ``openai`` backend samples from its server's and takes ``model=None``; ``env_id`` locates
    the tiny model's folder for the backends that load it by path)."""
    if cfg.backend == "hf":
        from agentropy.agents.backends.hf import HFBackend

        return HFBackend(model, tokenizer)
    if cfg.backend == "vllm":
        from agentropy.agents.backends.vllm import VLLMBackend

        backend = VLLMBackend(str(model_path(cfg, env_id)), tokenizer=tokenizer, **vllm_engine_kwargs(cfg.vllm))
        backend.sync_weights(model)
        return backend
    if cfg.backend == "openai":
        if not cfg.openai_url:
            raise ValueError("model.backend is 'openai' but model.openai_url is empty")
        from agentropy.agents.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg.openai_url, model=served_model_name(cfg, env_id=env_id), tokenizer=tokenizer)
    raise ValueError(f"model.backend must be hf, vllm or openai, got {cfg.backend!r}")
