"""Throughput of the ``hf`` backend against plain ``model.generate`` on the same batch.

The backend does more per step than ``generate`` (full-vocabulary log-softmax, entropy and the
sampled token's logprob, kept on device), so this measures what that bookkeeping costs. Both
sides sample at T = 1 from the same left-padded prompts and produce exactly ``--new-tokens``
tokens per row (``min_new_tokens`` for ``generate``, no EOS for the backend). Each timing is the
best of ``--repeats`` runs after a warm-up, the two alternating: on a shared machine the best
run is the one least disturbed by other work, and alternation exposes both to the same load. Last line: ``hf generate vs model.generate at batch 32: <ratio> (target >= 0.9)``.

    python benchmarks/generate_throughput.py [--model PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: build the tiny model in a temp dir)")
    parser.add_argument("--envs", nargs="+", default=["agentropy/Household-v0"], help="envs for the tiny model")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    import torch

    from agentropy.agents.backends.base import SamplingParams
    from agentropy.agents.backends.hf import HFBackend
    from agentropy.agents.tiny import build_tiny_model, load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="agentropy-tiny-") as tmp:
        path = args.model or build_tiny_model(f"{tmp}/model", env_ids=args.envs)
        model, tokenizer = load_model_and_tokenizer(path, device=args.device)
    device = next(model.parameters()).device
    backend = HFBackend(model, tokenizer, eos_token_ids=())
    pad = tokenizer.pad_token_id
    print(f"model {path}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"vocab {len(tokenizer)}, device {device}, threads {args.threads}")

    base = "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a drawer 2."
    ratios = {}
    for batch in args.batches:
        prompts = [tokenizer.encode(base * (1 + i % 3), add_special_tokens=False) for i in range(batch)]
        width = max(map(len, prompts))
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention[i, width - len(p):] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=args.new_tokens, seed=0)

        def run_backend(params=params, prompts=prompts):
            out = backend.generate(prompts, params)
            return sum(len(c.token_ids) for c in out)

        def run_generate(input_ids=input_ids, attention=attention):
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_p=1.0,
                    top_k=0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=pad,
                )
            return (out.shape[1] - input_ids.shape[1]) * out.shape[0]

        times: dict[str, list[float]] = {"hf backend": [], "model.generate": []}
        counts: dict[str, int] = {}
        for repeat in range(args.repeats + 1):
            for name, fn in (("hf backend", run_backend), ("model.generate", run_generate)):
                start = time.perf_counter()
                counts[name] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if repeat:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        if counts["hf backend"] != counts["model.generate"]:
            raise RuntimeError(f"token counts differ at batch {batch}: {counts}")
        rate = {k: counts[k] / min(v) for k, v in times.items()}
        ratios[batch] = rate["hf backend"] / rate["model.generate"]
        print(f"batch {batch:3d}: hf backend {rate['hf backend']:9.1f} tok/s   "
              f"model.generate {rate['model.generate']:9.1f} tok/s   ratio {ratios[batch]:.3f}")
    last = args.batches[-1]
    print(f"hf generate vs model.generate at batch {last}: {ratios[last]:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
