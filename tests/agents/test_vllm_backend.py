"""The ``vllm`` backend. The engine tests need the ``vllm`` extra (``scripts/ci_vllm.sh`` runs them in
their own venv) and run the engine in a subprocess script under a ``__main__`` guard, as vLLM
requires; the rest checks what works without vLLM."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from agentropy.agents.backends.vllm import WeightSyncExtension, named_weights, pack_weights

REPO = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None

from tiny_lm import tiny_model_and_tokenizer  # noqa: E402


def save_tiny_model(path: Path) -> Path:
    """A ~0.1M-parameter Qwen2 with head_dim 32 (vLLM's CPU attention has no kernel for 16);
    embeddings scaled by 5 so entropies span ~1.5-4.5 nats."""
    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


ENGINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    import torch

    from agentropy.agents.backends.base import SamplingParams
    from agentropy.agents.backends.hf import HFBackend, token_logprobs_and_entropy
    from agentropy.agents.backends.vllm import VLLMBackend
    from agentropy.agents.tiny import load_model_and_tokenizer


    def teacher_forced(model, prompt, completion, temperature):
        ids = torch.tensor([prompt + completion.token_ids[:-1]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 :]
        return token_logprobs_and_entropy(logits, torch.tensor(completion.token_ids), temperature)


    def agreement(model, prompts, completions, n, temperature):
        diffs, gaps = [], []
        for i, completion in enumerate(completions):
            logprobs, entropy = teacher_forced(model, prompts[i // n], completion, temperature)
            diffs += (torch.tensor(completion.logprobs) - logprobs).abs().tolist()
            gaps += (torch.tensor(completion.entropy) - entropy).tolist()
        return max(diffs), max(gaps)


    def main():
        path, out, in_process = sys.argv[1], sys.argv[2], sys.argv[3] == "in-process"
        model, tokenizer = load_model_and_tokenizer(path)
        prompts = [tokenizer(t)["input_ids"] for t in ("Your task is to: put a clean apple in fridge.", "open fridge 1")]
        params = SamplingParams(n=2, temperature=0.9, max_tokens=12, seed=5)
        start = time.perf_counter()
        backend = VLLMBackend(
            path, dtype="float32", max_model_len=256, enforce_eager=True, top_logprobs=20, in_process=in_process
        )
        startup_s = time.perf_counter() - start

        start = time.perf_counter()
        completions = backend.generate(prompts, params)
        generate_s = time.perf_counter() - start
        again = backend.generate(prompts, params)
        max_diff, max_entropy_gap = agreement(model, prompts, completions, params.n, params.temperature)
        greedy = backend.generate(prompts, SamplingParams(temperature=0.0, max_tokens=6))
        hf_greedy = HFBackend(model, tokenizer).generate(prompts, SamplingParams(temperature=0.0, max_tokens=6))

        trained, _ = load_model_and_tokenizer(path)  # stands in for the learner after an update
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        stale_diff, _ = agreement(trained, prompts, completions, params.n, params.temperature)
        start = time.perf_counter()
        backend.sync_weights(trained)
        sync_s = time.perf_counter() - start
        synced = backend.generate(prompts, params)
        synced_diff, _ = agreement(trained, prompts, synced, params.n, params.temperature)

        json.dump(
            {
                "n_completions": len(completions),
                "lengths": [len(c.token_ids) for c in completions],
                "top_sizes": sorted({len(t) for c in completions for t in c.extra["top_logprobs"]}),
                "estimate_flags": [c.entropy_is_estimate for c in completions],
                "finish": [c.finish_reason for c in completions],
                "reproducible": [c.token_ids for c in again] == [c.token_ids for c in completions],
                "distinct_samples": len({tuple(c.token_ids) for c in completions}),
                "max_abs_logprob_diff": max_diff,
                "max_entropy_estimate_minus_exact": max_entropy_gap,
                "greedy_matches_hf": [c.token_ids for c in greedy] == [c.token_ids for c in hf_greedy],
                "stale_diff": stale_diff,
                "synced_max_abs_logprob_diff": synced_diff,
                "startup_s": startup_s,
                "generate_s": generate_s,
                "sync_s": sync_s,
            },
            open(out, "w"),
        )


    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.vllm
@pytest.mark.parametrize("mode", ["in-process", "multiprocess"])
def test_vllm_engine_agrees_with_hf_teacher_forcing_and_syncs_weights(tmp_path, mode):
    """``in-process`` hands the learner's tensors over by reference; ``multiprocess`` (the
    tensor-parallel path) packs them through ``WeightSyncExtension``."""
    pytest.importorskip("vllm", reason="needs the vllm extra (scripts/ci_vllm.sh)")
    torch.set_num_threads(1)
    model_dir = save_tiny_model(tmp_path / "tiny")
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(out), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(out.read_text())
    print(json.dumps(result, indent=2))  # measured numbers, for the CI log
    assert result["n_completions"] == 4
    assert all(0 < n <= 12 for n in result["lengths"])
    assert set(result["top_sizes"]) <= {20, 21}  # top-20, plus the sampled token when outside it
    assert all(result["estimate_flags"])
    assert set(result["finish"]) <= {"stop", "length"}
    assert result["reproducible"] and result["distinct_samples"] > 1
    # vLLM (logprobs_mode=processed_logprobs) vs the hf formula on a teacher-forced pass, float32
    assert result["max_abs_logprob_diff"] < 1e-4
    # the top-k entropy estimate never exceeds the exact full-vocabulary entropy
    assert result["max_entropy_estimate_minus_exact"] < 1e-4
    assert result["greedy_matches_hf"]
    # before the sync the engine's numbers belong to the old weights; after it, to the new ones
    assert result["stale_diff"] > 1e-2
    assert result["synced_max_abs_logprob_diff"] < 1e-4


@pytest.mark.vllm
def test_openai_backend_against_vllm_serve(tmp_path):
    """The ``openai`` backend against vLLM's own OpenAI server: token ids, top-20 log-probs, and
    (with ``--logprobs-mode processed_logprobs``) the hf formula's numbers."""
    pytest.importorskip("vllm", reason="needs the vllm extra (scripts/ci_vllm.sh)")
    import socket
    import time

    import httpx

    from agentropy.agents.backends.base import SamplingParams
    from agentropy.agents.backends.hf import token_logprobs_and_entropy
    from agentropy.agents.backends.openai import OpenAIBackend
    from agentropy.agents.tiny import load_model_and_tokenizer

    torch.set_num_threads(1)
    model_dir = save_tiny_model(tmp_path / "tiny")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--enforce-eager",
        "--logprobs-mode",
        "processed_logprobs",
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            pytest.fail("vllm serve did not come up: " + (tmp_path / "serve.log").read_text()[-3000:])
        model, tokenizer = load_model_and_tokenizer(model_dir)
        prompts = [
            tokenizer(t)["input_ids"]
            for t in ("Your task is to: put a clean apple in fridge.", "open fridge 1")
        ]
        params = SamplingParams(n=2, temperature=0.9, max_tokens=12, seed=5)
        with OpenAIBackend(f"http://127.0.0.1:{port}", "tiny", top_logprobs=20) as backend:
            completions = backend.generate(prompts, params)
            again = backend.generate(prompts, params)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    assert len(completions) == 4
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]
    max_diff = 0.0
    for i, completion in enumerate(completions):
        prompt = prompts[i // 2]
        assert completion.extra["token_ids_source"] == "server" and completion.entropy_is_estimate
        assert {len(t) for t in completion.extra["top_logprobs"]} <= {20, 21}
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion.token_ids[:-1]])).logits[0, len(prompt) - 1 :]
        logprobs, entropy = token_logprobs_and_entropy(logits, torch.tensor(completion.token_ids), 0.9)
        max_diff = max(max_diff, (torch.tensor(completion.logprobs) - logprobs).abs().max().item())
        assert all(e <= h + 1e-4 for e, h in zip(completion.entropy, entropy.tolist(), strict=True))
    print(f"openai backend vs vllm serve: max |logprob - teacher-forced| = {max_diff:.3g}")
    assert max_diff < 1e-4


@pytest.mark.skipif(HAS_VLLM, reason="checks the error shown when the vllm extra is missing")
def test_missing_vllm_gives_an_error_naming_the_extra():
    from agentropy.agents.backends.vllm import VLLMBackend

    with pytest.raises(ImportError, match=r"agentropy\[vllm\]"):
        VLLMBackend("/nonexistent")


def test_importing_agentropy_does_not_import_vllm():
    code = (
        "import sys, agentropy.agents.backends.vllm, agentropy.agents.backends; print('vllm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_named_weights_strip_wrapper_prefixes():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3))
    wrapped = {"module.0.weight": module[0].weight, "_orig_mod.0.bias": module[0].bias}
    assert [name for name, _ in named_weights(wrapped)] == ["0.weight", "0.bias"]
    names = [name for name, _ in named_weights(module)]
    assert names == ["0.weight", "0.bias"]
    assert all(not t.requires_grad for _, t in named_weights(module))


def test_packed_weights_round_trip_through_the_worker_extension():
    weights = [
        ("a", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
        ("b", torch.tensor([1.5, -2.0], dtype=torch.bfloat16)),
        ("c", torch.tensor(7, dtype=torch.int64)),
        ("d", torch.zeros(0, 4)),
    ]
    received = {}

    class Worker(WeightSyncExtension):
        def reload_weights(self, weights_iterator, is_checkpoint_format):
            assert is_checkpoint_format
            received.update(dict(weights_iterator))

    assert Worker().agentropy_load_packed_weights(pack_weights(weights)) == 4
    for name, tensor in weights:
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor)
