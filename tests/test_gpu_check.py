"""scripts/gpu_check.py without a GPU: it stops with one clear line, and its parts that need no
CUDA (the offline model, FLOP counting, the peak table, the RESULTS.md section) work."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
SPEC.loader.exec_module(gpu_check)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@needs_no_cuda
@pytest.mark.parametrize("command", [
    [sys.executable, "scripts/gpu_check.py"],
    ["bash", "scripts/gpu_check.sh", "/some/model"],
])
def test_without_cuda_it_stops_with_one_line(command, tmp_path):
    results = REPO / "benchmarks" / "RESULTS.md"
    before = results.read_text()
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "no CUDA device: this check needs a GPU\n")
    assert results.read_text() == before


def test_peak_table_matches_device_names():
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H100 NVL") == 835.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_bf16_tflops("NVIDIA H200 NVL") == 835.0
    assert gpu_check.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_bf16_tflops("Tesla T4") is None


def test_model_flops_count_the_old_pass_and_forward_backward():
    # forward: 2 x 100 body params x 50 tokens + 2 x 10 vocab x 4 hidden x 20 reply tokens = 11,600
    assert gpu_check.model_flops(100, 10, 4, 50, 20, ppo_epochs=1) == 4 * 11_600
    assert gpu_check.model_flops(100, 10, 4, 50, 20, ppo_epochs=2) == 7 * 11_600


def test_the_offline_model_is_a_real_qwen2_folder(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    folder = gpu_check.build_offline_model(tmp_path / "m", gpu_check.SMOKE_SHAPE, episodes_per_env=2)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    assert config.model_type == "qwen2" and isinstance(tokenizer, PreTrainedTokenizerFast)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (128, 2, 4, 2, 256)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "go to fridge 1"}], tokenize=False,
                                         add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    total = sum(p.numel() for p in model.parameters())  # tied: the embedding is counted once
    assert gpu_check.body_parameters(model) == total - config.vocab_size * 128


def _result(**changes):
    row = gpu_check.LearnerRow("fp32 weights (as the presets train)", seconds=2.0, tokens=100_000,
                               model_tflop=494.5, tokens_per_s=50_000.0, mfu=0.25)
    values = dict(
        date="2026-12-04", device="NVIDIA H200", gpu_total_gib=139.8, model="offline random-init Qwen2",
        params=360_000_000, vocab=3114, shape="24 layers, hidden 896, 14/2 heads", versions="torch 2.13.0",
        episodes=64, turns=3, max_tokens=256, prompts=192, prompt_tokens_mean=412.4, rollout_tokens=49_152,
        rollout_s=8.0, rollout_generate_s=6.5, raw_tokens=49_152, raw_s=4.0, logprob_tokens=49_152,
        logprob_mean_abs_diff=0.01234, logprob_max_abs_diff=0.5, vllm_dtype="bfloat16", learner_dtype="float32",
        weight_sync_s=0.1234, peak_torch_gib=30.26, peak_device_used_gib=61.0, peak_tflops=989.0, wall_s=301.0,
        learner=[row])
    values.update(changes)
    return gpu_check.CheckResult(**values)


def test_the_results_section_reports_each_measure():
    text = gpu_check.format_section(_result())
    lines = text.splitlines()
    assert lines[0] == "## 2026-12-04 — GPU check (`scripts/gpu_check.sh`, NVIDIA H200, 140 GiB)"
    assert ("| rollout tokens/s (multi-turn lockstep: env steps, prompts and log-probs included) | "
            "6,144 (49,152 tokens in 8.0 s, 6.5 s of it in generate) |") in lines
    assert "| raw `vllm.LLM.generate` on the same prompts in one batch, no log-probs tokens/s | " \
           "12,288 (49,152 tokens in 4.0 s) |" in lines
    assert "| rollout / raw | 0.50 |" in lines
    assert ("| log-prob agreement on sampled tokens, vLLM (bfloat16) vs learner (float32) | mean abs diff 0.0123, "
            "max 0.5000 (49,152 tokens) |") in lines
    assert "| weight sync learner -> sampler (median of 3) | 0.123 s |" in lines
    assert ("| learner tokens/s, fp32 weights (as the presets train) | 50,000 (100,000 tokens, 2.0 s, "
            "494.5 model TFLOP, MFU 25.0%) |") in lines
    assert "| peak GPU memory, torch allocator of this process (learner + in-process vLLM) | 30.3 GiB |" in lines
    assert text.endswith("Peak: 989 TFLOP/s, the bf16 dense peak assumed for `NVIDIA H200` (NVIDIA datasheet).\n")
    unknown = gpu_check.format_section(_result(device="Tesla T4", peak_tflops=None))
    assert "Peak: not reported: `Tesla T4` is not in the peak table of scripts/gpu_check.py." in unknown


def test_the_hf_backend_section_names_its_sampler_and_has_no_weight_sync():
    text = gpu_check.format_section(_result(backend="hf", weight_sync_s=None, vllm_dtype="float32"))
    lines = text.splitlines()
    assert lines[0] == "## 2026-12-04 — GPU check (`scripts/gpu_check.sh --backend hf`, NVIDIA H200, 140 GiB)"
    assert ("| one batched call of the transformers sampler on the same prompts (no env steps) tokens/s | "
            "12,288 (49,152 tokens in 4.0 s) |") in lines
    assert ("| log-prob agreement on sampled tokens, transformers sampler (`model.backend=hf`) (float32) vs learner "
            "(float32) | mean abs diff 0.0123, max 0.5000 (49,152 tokens) |") in lines
    assert "| weight sync learner -> sampler (median of 3) | none: the sampler reads the learner's weights in place |" \
        in lines
    assert "| peak GPU memory, torch allocator of this process (learner) | 30.3 GiB |" in lines
    assert "vLLM" not in text


def test_only_the_vllm_backend_needs_vllm():
    cuda = torch.cuda.is_available()
    expected_vllm = None if importlib.util.find_spec("vllm") is not None else gpu_check.NO_VLLM
    assert gpu_check.preflight(cpu_smoke=True, backend="hf") is None
    assert gpu_check.preflight(cpu_smoke=True, backend="vllm") == expected_vllm
    if not cuda:
        assert gpu_check.preflight(cpu_smoke=False, backend="hf") == gpu_check.NO_CUDA
    assert "--backend hf" in gpu_check.NO_VLLM


def test_cpu_smoke_runs_the_whole_path_with_the_transformers_sampler(tmp_path):
    """The hf path of the check on the CPU (the path that ran on the H200): offline model, rollout,
    one batched generate, log-prob agreement (the same weights on both sides: equal), learner
    updates; about 20 s."""
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    record = tmp_path / "record.json"
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--cpu-smoke", "--backend", "hf", "--json",
                           str(record), "--work", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(record.read_text())
    assert result["backend"] == "hf" and result["weight_sync_s"] is None
    assert result["episodes"] == 4 and result["prompts"] == 8 and result["rollout_tokens"] > 0
    assert result["raw_tokens"] > 0
    assert result["logprob_tokens"] == result["rollout_tokens"] and result["logprob_max_abs_diff"] < 1e-5
    assert [row["label"] for row in result["learner"]] == [gpu_check.FP32_ROW, "bf16 weights"]
    assert "appended" not in done.stdout


def test_the_section_is_appended_after_a_blank_line(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured results\n\n## earlier\n")
    gpu_check.append_section(results, "### GPU check\n")
    assert results.read_text() == "# Measured results\n\n## earlier\n\n### GPU check\n"


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs the vllm extra")
def test_cpu_smoke_runs_the_whole_path_on_vllms_cpu_build(tmp_path):
    """The path the GPU check takes, on the CPU: offline model, vLLM engine, rollout, raw generate,
    log-prob agreement (fp32 on both sides: equal), weight sync, learner updates; ~30 s."""
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    record = tmp_path / "record.json"
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--cpu-smoke", "--json", str(record),
                           "--work", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(record.read_text())
    assert result["episodes"] == 4 and result["prompts"] == 8 and result["rollout_tokens"] > 0
    assert result["logprob_tokens"] == result["rollout_tokens"] and result["logprob_max_abs_diff"] < 1e-4
    assert [row["label"] for row in result["learner"]] == [gpu_check.FP32_ROW, "bf16 weights"]
    assert "## " in done.stdout and "appended" not in done.stdout  # a smoke run writes no RESULTS.md
