"""One GPU check of the real-model path: vLLM rollouts and the learner on Household, offline.

    scripts/gpu_check.sh [MODEL_DIR]          # or: python scripts/gpu_check.py [--model MODEL_DIR]

Without ``MODEL_DIR`` it builds a real-architecture model on the spot, nothing downloaded: a
randomly initialised Qwen2 with Qwen2.5-0.5B's body (24 layers, hidden 896, 14 query / 2 KV heads,
MLP 4864) over a byte-level BPE tokenizer trained on Household text (a vocabulary of a few
thousand words instead of Qwen's 151,936, so the output layer costs less than in the real model).
With ``MODEL_DIR`` (any Hugging Face causal-LM folder with its tokenizer) it uses that model.

The run uses the trainer's own pieces with ``configs/household.yaml`` +
``configs/models/qwen2.5-0.5b.yaml``: the vLLM backend colocated with the learner on one GPU,
a lockstep multi-turn rollout, the RL update. It measures

- rollout tokens/s against raw ``vllm.LLM.generate`` on the same prompts (one batch, no log-probs);
- vLLM-vs-learner log-prob agreement on the sampled tokens (mean and max absolute difference);
- the learner->vLLM weight-sync time (median of 3);
- learner tokens/s and MFU (model FLOPs over the bf16 dense peak of the device, from a table of
  NVIDIA datasheet numbers keyed by ``torch.cuda.get_device_name``), for fp32 weights with fp32
  matmuls, fp32 weights with TF32 matmuls (``model.tf32``, as the GPU presets train), and bf16 weights;
- peak GPU memory,

and appends a dated section to ``benchmarks/RESULTS.md`` (``--json`` also writes the raw record).
It needs a CUDA device and the CUDA build of vLLM (``pip install vllm``; the repo's ``vllm`` extra
is the CPU build) and stops at once, with exit code 2, without them. ``--backend hf`` runs the same
check with the transformers sampler (``model.backend=hf``) where vLLM cannot be installed: the
rollout is then compared with one batched call of that sampler, the log-prob agreement is between
the sampler's and the learner's passes over the same weights, and there is no weight sync to time
(the sampler reads the learner's weights in place). ``--cpu-smoke`` runs the same path on the CPU
with a tiny model, to check the script itself; it writes nothing to RESULTS.md unless ``--results``
names a file.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = "no CUDA device: this check needs a GPU"
NO_VLLM = ("vLLM is not installed: this check needs the CUDA build (pip install vllm; the repo's `vllm` extra "
           "is the CPU build), or run it with --backend hf to sample with transformers instead")
BACKENDS = ("vllm", "hf")
FP32_ROW = "fp32 weights, fp32 matmuls (model.tf32=false)"
TF32_ROW = "fp32 weights, TF32 matmuls (model.tf32=true, as the GPU presets train)"

#: Qwen2.5-0.5B's transformer body (its vocabulary is not reproduced offline).
QWEN05_SHAPE: dict[str, int] = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                                "num_attention_heads": 14, "num_key_value_heads": 2}
#: A small shape for --cpu-smoke (head size 32: vLLM's CPU attention has no kernel for 16).
SMOKE_SHAPE: dict[str, int] = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "num_key_value_heads": 2}

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s by device-name substring, first match wins,
#: from NVIDIA's datasheets (SXM parts at boost clock unless named): H100/H200 SXM 989, H100 PCIe
#: 756, H100/H200 NVL 835 (half of the 1,671 quoted with sparsity), A100 312.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0),
    ("A100", 312.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of a device by its ``torch.cuda.get_device_name`` (None if not in the table)."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


@dataclass
class LearnerRow:
    """One timed RL update (old-log-prob pass + PPO epochs) in one weight precision."""

    label: str
    seconds: float
    tokens: int  # non-padding tokens of the batch, trained ppo_epochs times
    model_tflop: float
    tokens_per_s: float
    mfu: float | None


@dataclass
class CheckResult:
    """Everything the check measured; :func:`format_section` turns it into RESULTS.md text."""

    date: str
    device: str
    gpu_total_gib: float
    model: str
    params: int
    vocab: int
    shape: str
    versions: str
    episodes: int
    turns: int
    max_tokens: int
    prompts: int
    prompt_tokens_mean: float
    rollout_tokens: int
    rollout_s: float
    rollout_generate_s: float
    raw_tokens: int
    raw_s: float
    logprob_tokens: int
    logprob_mean_abs_diff: float
    logprob_max_abs_diff: float
    vllm_dtype: str
    learner_dtype: str
    weight_sync_s: float | None
    peak_torch_gib: float
    peak_device_used_gib: float
    peak_tflops: float | None
    wall_s: float
    learner: list[LearnerRow] = field(default_factory=list)
    backend: str = "vllm"


# ---- model -----------------------------------------------------------------------------------


def build_offline_model(out_dir: str | Path, shape: dict[str, int] | None = None, episodes_per_env: int = 40) -> Path:
    """A randomly initialised Qwen2 of ``shape`` (default: Qwen2.5-0.5B's body) and a byte-level BPE
    fast tokenizer with a ChatML template, trained on Household text, saved with ``save_pretrained``."""
    from agentropy.agents.tiny import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(**{**QWEN05_SHAPE, **(shape or {})}, max_position_embeddings=4096,
                          episodes_per_env=episodes_per_env)
    return build_tiny_model(Path(out_dir), cfg=cfg)


def model_flops(body_params: int, vocab: int, hidden: int, tokens: int, reply_tokens: int, ppo_epochs: int) -> float:
    """Model FLOPs of one RL update: the old-log-prob forward plus ``ppo_epochs`` forward+backward
    passes (3 forwards each), a forward being 2 FLOPs per body parameter per token plus the output
    layer on the reply positions only (the trainer keeps only their logits). Gradient-checkpoint
    recompute, attention scores and padding are not counted."""
    forward = 2.0 * body_params * tokens + 2.0 * vocab * hidden * reply_tokens
    return (1 + 3 * ppo_epochs) * forward


def body_parameters(model: Any) -> int:
    """Parameters outside the embedding and the output layer (tied weights counted once)."""
    seen = {p.data_ptr(): p.numel() for p in model.parameters()}
    total = sum(seen.values())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total -= embed.numel()
    if head.data_ptr() != embed.data_ptr():
        total -= head.numel()
    return total


# ---- report ----------------------------------------------------------------------------------


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def format_section(r: CheckResult) -> str:
    """The dated RESULTS.md section of one check."""
    rollout_rate, raw_rate = _rate(r.rollout_tokens, r.rollout_s), _rate(r.raw_tokens, r.raw_s)
    ratio = rollout_rate / raw_rate if raw_rate else 0.0
    peak = (f"{r.peak_tflops:.0f} TFLOP/s, the bf16 dense peak assumed for `{r.device}` (NVIDIA datasheet)"
            if r.peak_tflops else f"not reported: `{r.device}` is not in the peak table of scripts/gpu_check.py")
    hf = r.backend == "hf"
    sampler = "transformers sampler (`model.backend=hf`)" if hf else "vLLM"
    raw_label = ("one batched call of the transformers sampler on the same prompts (no env steps)" if hf
                 else "raw `vllm.LLM.generate` on the same prompts in one batch, no log-probs")
    sync = ("none: the sampler reads the learner's weights in place" if r.weight_sync_s is None
            else f"{r.weight_sync_s:.3f} s")
    lines = [
        f"## {r.date} — GPU check (`scripts/gpu_check.sh{' --backend hf' if hf else ''}`, {r.device}, "
        f"{r.gpu_total_gib:.0f} GiB)",
        "",
        f"Model: {r.model} ({r.shape}, vocabulary {r.vocab:,}, {r.params / 1e6:.1f}M parameters); {r.versions}. "
        f"Household-v0 with `configs/household.yaml` + `configs/models/qwen2.5-0.5b.yaml`: {r.episodes} episodes "
        f"x {r.turns} turns = {r.prompts} prompts of {r.prompt_tokens_mean:.0f} tokens on average, replies of at most "
        f"{r.max_tokens} tokens. Wall time of the whole check {r.wall_s:.0f} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rollout tokens/s (multi-turn lockstep: env steps, prompts and log-probs included) | "
        f"{rollout_rate:,.0f} ({r.rollout_tokens:,} tokens in {r.rollout_s:.1f} s, {r.rollout_generate_s:.1f} s "
        "of it in generate) |",
        f"| {raw_label} tokens/s | {raw_rate:,.0f} ({r.raw_tokens:,} tokens in {r.raw_s:.1f} s) |",
        f"| rollout / raw | {ratio:.2f} |",
        f"| log-prob agreement on sampled tokens, {sampler} ({r.vllm_dtype}) vs learner ({r.learner_dtype}) | "
        f"mean abs diff {r.logprob_mean_abs_diff:.4f}, max {r.logprob_max_abs_diff:.4f} "
        f"({r.logprob_tokens:,} tokens) |",
        f"| weight sync learner -> sampler (median of 3) | {sync} |",
    ]
    for row in r.learner:
        mfu = f"MFU {row.mfu:.1%}" if row.mfu is not None else "MFU n/a"
        lines.append(f"| learner tokens/s, {row.label} | {row.tokens_per_s:,.0f} ({row.tokens:,} tokens, "
                     f"{row.seconds:.1f} s, {row.model_tflop:.1f} model TFLOP, {mfu}) |")
    lines += [
        f"| peak GPU memory, torch allocator of this process (learner{'' if hf else ' + in-process vLLM'}) | "
        f"{r.peak_torch_gib:.1f} GiB |",
        f"| peak device memory in use (all processes) | {r.peak_device_used_gib:.1f} GiB |",
        "",
        "MFU = model FLOPs / time / peak. Model FLOPs of an update = (1 + 3 x PPO epochs) x (2 x non-embedding "
        "parameters x tokens + 2 x vocabulary x hidden x reply tokens): the old-log-prob pass and forward+backward; "
        "gradient-checkpoint recompute, attention scores and padding are not counted. Peak: " + peak + ".",
        "",
    ]
    return "\n".join(lines)


def append_section(results_md: str | Path, section: str) -> None:
    path = Path(results_md)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Measured results\n"
    path.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")


# ---- the check -------------------------------------------------------------------------------


def preflight(cpu_smoke: bool, backend: str = "vllm") -> str | None:
    """The reason the check cannot run here (None when it can); cheap, before anything is built."""
    import torch

    if not cpu_smoke and not torch.cuda.is_available():
        return NO_CUDA
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        return NO_VLLM
    return None


def check_config(model_dir: Path, run_root: Path, cpu_smoke: bool, backend: str = "vllm") -> Any:
    from agentropy.training.config import load_config

    files = [REPO / "configs" / "household.yaml", REPO / "configs" / "models" / "qwen2.5-0.5b.yaml"]
    overrides = [f"model.path={model_dir}", f"model.backend={backend}", f"run.root={run_root}", "run.name=gpu_check",
                 "run.progress=false", "run.tensorboard=false", "model.tf32=false", "rollout.tasks_per_batch=8", "rollout.group_size=8",
                 "rollout.max_turns=3", "rollout.max_tokens=256", "train.micro_batch_size=16"]
    if cpu_smoke:
        overrides += ["model.device=cpu", "model.vllm.dtype=float32", "model.vllm.enforce_eager=true",
                      "model.vllm.max_model_len=2048", "prompt.max_prompt_tokens=1024", "rollout.tasks_per_batch=2",
                      "rollout.group_size=2", "rollout.max_turns=2", "rollout.max_tokens=16", "train.micro_batch_size=4"]
    return load_config(files, overrides)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_used_gib(device: Any) -> float:
    import torch

    if device.type != "cuda":
        return 0.0
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / 2**30


def time_update(cfg: Any, accelerator: Any, model: Any, tokenizer: Any, trajectories: list, label: str, body: int,
                peak: float | None) -> LearnerRow:
    """One RL update of ``model`` on ``trajectories`` through the trainer's ``iteration_update``."""
    import torch

    from agentropy.training.policy_update import UpdateState, iteration_update
    from agentropy.training.step_samples import gather_samples

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    batch = gather_samples(trajectories, tokenizer.pad_token_id, {}).batch
    tokens, reply = int(batch.attention_mask.sum()), int(batch.response_mask.sum())
    _sync(device)
    start = time.perf_counter()
    iteration_update(prepared, model, optimizer, accelerator, tokenizer, trajectories, cfg, 0, UpdateState.create(cfg))
    _sync(device)
    seconds = time.perf_counter() - start
    hidden = model.get_input_embeddings().weight.shape[1]
    vocab = model.get_output_embeddings().weight.shape[0]
    flop = model_flops(body, vocab, hidden, tokens, reply, cfg.train.ppo_epochs)
    del optimizer, prepared
    accelerator.free_memory()  # drop the accelerator's references: the next row starts without this optimizer
    return LearnerRow(label, seconds, tokens * cfg.train.ppo_epochs, flop / 1e12,
                      _rate(tokens * cfg.train.ppo_epochs, seconds),
                      flop / seconds / (peak * 1e12) if peak and device.type == "cuda" else None)


def raw_generate(backend: Any, cfg: Any, steps: list, device: Any) -> tuple[int, float]:
    """Tokens and seconds of one batched generate call on the rollout's prompts (no env steps):
    ``vllm.LLM.generate`` without log-probs for vLLM, the sampler's own ``generate`` for hf."""
    params_kwargs = dict(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                         max_tokens=cfg.rollout.max_tokens, stop=list(cfg.rollout.stop), seed=0)
    if cfg.model.backend == "hf":
        from agentropy.agents.backends.base import SamplingParams as HFParams

        params = HFParams(n=1, **{**params_kwargs, "stop": tuple(cfg.rollout.stop)})
        _sync(device)
        start = time.perf_counter()
        completions = backend.generate([list(s.prompt_ids) for s in steps], params)
        _sync(device)
        return sum(len(c.token_ids) for c in completions), time.perf_counter() - start
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=list(s.prompt_ids)) for s in steps]
    _sync(device)
    start = time.perf_counter()
    outputs = backend.llm.generate(prompts, SamplingParams(n=1, **params_kwargs), use_tqdm=False)
    _sync(device)
    return sum(len(o.outputs[0].token_ids) for o in outputs), time.perf_counter() - start


def run_check(model_dir: Path | None, work: Path, cpu_smoke: bool, backend_kind: str = "vllm") -> CheckResult:
    import torch

    from agentropy.training.model_setup import build_backend, load_policy, set_matmul_precision
    from agentropy.training.policy_update import recompute_old
    from agentropy.training.rollout import collect
    from agentropy.training.step_samples import gather_samples
    from agentropy.training.trainer import _make_accelerator, seed_everything, train_tasks

    t_start = time.perf_counter()
    built = model_dir is None
    if built:
        print("gpu_check: building the offline model ...", flush=True)
        model_dir = build_offline_model(work / "model", SMOKE_SHAPE if cpu_smoke else None,
                                        episodes_per_env=4 if cpu_smoke else 40)
    cfg = check_config(model_dir, work / "runs", cpu_smoke, backend_kind)
    seed_everything(cfg.run.seed)
    policy, tokenizer = load_policy(cfg.model, env_id=cfg.env.id)
    device = next(policy.parameters()).device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    peak_used = _device_used_gib(device)

    print(f"gpu_check: starting the {backend_kind} sampler ...", flush=True)
    backend = build_backend(cfg.model, policy, tokenizer, env_id=cfg.env.id)
    peak_used = max(peak_used, _device_used_gib(device))

    print("gpu_check: rollout ...", flush=True)
    tasks = train_tasks(cfg, 0)
    collect(backend, tokenizer, cfg, tasks[:1], 0)  # warm-up: first-call compilation and env start
    trajectories, stats = collect(backend, tokenizer, cfg, tasks, 1)
    steps = [s for t in trajectories for s in t.steps]
    rollout_tokens = sum(len(s.response_ids) for s in steps)
    peak_used = max(peak_used, _device_used_gib(device))

    print("gpu_check: one batched generate on the same prompts ...", flush=True)
    raw_tokens, raw_s = raw_generate(backend, cfg, steps, device)

    print("gpu_check: log-prob agreement ...", flush=True)
    samples = gather_samples(trajectories, tokenizer.pad_token_id, {})
    with torch.no_grad():
        learner = recompute_old(policy, samples.batch, cfg.train.micro_batch_size, cfg.rollout.temperature, device)
    mask = samples.batch.response_mask.bool()
    diff = (learner.logprobs - samples.behaviour_logprobs).abs()[mask]

    print("gpu_check: weight sync ...", flush=True)
    sync_times = []
    for _ in range(3 if backend_kind == "vllm" else 0):
        _sync(device)
        start = time.perf_counter()
        backend.sync_weights(policy)
        _sync(device)
        sync_times.append(time.perf_counter() - start)

    print("gpu_check: learner ...", flush=True)
    peak = peak_bf16_tflops(device_name) if device.type == "cuda" else None
    body = body_parameters(policy)
    accelerator = _make_accelerator(cfg)
    warm = trajectories[: cfg.rollout.group_size]  # one group: the first backward's kernel set-up, untimed
    time_update(cfg, accelerator, policy, tokenizer, warm, "warm-up", body, peak)
    rows = [time_update(cfg, accelerator, policy, tokenizer, trajectories, FP32_ROW, body, peak)]
    if device.type == "cuda":
        set_matmul_precision(True, device)
        rows.append(time_update(cfg, accelerator, policy, tokenizer, trajectories, TF32_ROW, body, peak))
        set_matmul_precision(False, device)
    peak_used = max(peak_used, _device_used_gib(device))
    policy.to(torch.bfloat16)
    rows.append(time_update(cfg, accelerator, policy, tokenizer, trajectories, "bf16 weights", body, peak))
    peak_used = max(peak_used, _device_used_gib(device))

    import transformers

    config = policy.config
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if backend_kind == "vllm":
        import vllm

        versions += f", vLLM {vllm.__version__}"
    return CheckResult(
        date=datetime.date.today().isoformat(),
        device=device_name,
        gpu_total_gib=total_gib,
        model=(f"`{model_dir}`" if not built else "offline random-init Qwen2, Household BPE tokenizer"
               + ("" if cpu_smoke else " (Qwen2.5-0.5B's body)")),
        params=sum({p.data_ptr(): p.numel() for p in policy.parameters()}.values()),
        vocab=int(config.vocab_size),
        shape=(f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, "
               f"{config.num_attention_heads}/{config.num_key_value_heads} heads"),
        versions=versions,
        episodes=len(trajectories),
        turns=cfg.rollout.max_turns,
        max_tokens=cfg.rollout.max_tokens,
        prompts=len(steps),
        prompt_tokens_mean=statistics.fmean(len(s.prompt_ids) for s in steps),
        rollout_tokens=rollout_tokens,
        rollout_s=float(stats["rollout_s"]),
        rollout_generate_s=float(stats["generate_s"]),
        raw_tokens=raw_tokens,
        raw_s=raw_s,
        logprob_tokens=int(mask.sum()),
        logprob_mean_abs_diff=float(diff.mean()),
        logprob_max_abs_diff=float(diff.max()),
        vllm_dtype=cfg.model.vllm.dtype if backend_kind == "vllm" else cfg.model.dtype,
        learner_dtype=cfg.model.dtype,
        weight_sync_s=statistics.median(sync_times) if sync_times else None,
        peak_torch_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0,
        peak_device_used_gib=peak_used,
        peak_tflops=peak,
        wall_s=time.perf_counter() - t_start,
        learner=rows,
        backend=backend_kind,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hugging Face model folder (default: build the offline model)")
    parser.add_argument("--results", default=None,
                        help="RESULTS.md to append to (default: benchmarks/RESULTS.md; none with --cpu-smoke)")
    parser.add_argument("--json", help="also write the raw record here")
    parser.add_argument("--work", help="folder for the built model and the run (default: a temporary folder)")
    parser.add_argument("--backend", choices=BACKENDS, default="vllm",
                        help="sampler of the rollout: vllm (default) or hf (transformers, where vLLM is not installed)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the same path on the CPU with a tiny model and vLLM's CPU build (checks the script)")
    args = parser.parse_args(argv)

    problem = preflight(args.cpu_smoke, args.backend)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    model_dir = Path(args.model).expanduser() if args.model else None
    if model_dir is not None and not (model_dir / "config.json").is_file():
        print(f"--model {model_dir}: not a Hugging Face model folder (no config.json)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="agentropy-gpu-check-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        result = run_check(model_dir, work, args.cpu_smoke, args.backend)
    section = format_section(result)
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1) + "\n", encoding="utf-8")
    results = args.results or (None if args.cpu_smoke else str(REPO / "benchmarks" / "RESULTS.md"))
    if results:
        append_section(results, section)
        print(f"gpu_check: appended to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
