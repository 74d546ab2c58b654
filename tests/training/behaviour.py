"""Record and compare the fixed-seed behaviour of every shipped strategy config.

A 2-iteration tiny CPU run (2 tasks x 2 samples, 3 turns, 12 tokens) of
``configs/strategies/all.yaml``, each single-strategy config and the top ablation rung, all
from one shared SFT'd start (the sizes and overrides of ``test_strategies_e2e.py``). For each
run it keeps every ``metrics.jsonl`` row minus its timing fields, a SHA-256 of the final
weights (state-dict tensors in sorted key order) and a few exact weight values.

``python tests/training/behaviour.py OUT.json [--names a,b] [--raw]`` records (all strategies
unless named; run it with ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 CPU); ``test_behaviour.py`` re-runs and
compares against ``behaviour_fixture.json``: a refactor that moves code must not change a bit.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

STRATEGIES = Path(__file__).resolve().parents[2] / "configs" / "strategies"
FIXTURE = Path(__file__).resolve().parent / "behaviour_fixture.json"
# torch's CPU kernels on the machine that recorded FIXTURE (torch.backends.cpu.get_cpu_capability()).
FIXTURE_CPU_CAPABILITY = "AVX2"
TOP_RUNG = "ladder/l7_aepo_rollout"

COMMON = [
    "run.progress=false", "run.tensorboard=false", "run.save_trajectories=false",
    "prompt.memory_turns=1", "prompt.max_admissible=5",
    "rollout.group_size=2", "rollout.tasks_per_batch=2", "rollout.max_turns=3", "rollout.max_tokens=12",
    "train.micro_batch_size=8", "train.mini_batches=2", "train.checkpoint_every=0", "eval.episodes=1",
]
EXTRA = {
    "spear": ["strategy.spear.buffer_size=1"],
    "arbepo": ["strategy.arbepo.adv_threshold=-1.0", "strategy.arbepo.reg_max=2",
               "strategy.arbepo.reg_token_weight=0.5"],
    "clip_b": ["strategy.clip_b.mu=1.0"],
    "clip_v": ["strategy.clip_v.mu=1.0", "strategy.clip_v.max_frac=0.05"],
    TOP_RUNG: ["strategy.spear.buffer_size=1"],
}
# Wall-clock fields, by exact name: they differ between runs of the same code.
TIMING = {"time_s", "rollout_s", "env_s", "generate_s", "prompt_s", "env_steps_per_s", "tokens_per_s",
          "learner_tokens_per_s", "overhead", "arbepo/rollout_s", "aepo/probe_generate_s"}


def strategy_names() -> list[str]:
    return [*sorted(p.stem for p in STRATEGIES.glob("*.yaml")), TOP_RUNG]


def is_timing(key: str) -> bool:
    return key in TIMING


def start_model(root: Path) -> Path:
    from agentropy.training.config import load_config
    from agentropy.training.trainer import train

    cfg = load_config(None, [*COMMON, f"run.root={root}", "run.name=init", f"model.tiny_dir={root / 'tiny'}",
                             "sft.episodes=30", "sft.epochs=3", "sft.batch_size=16", "sft.lr=2.0e-3",
                             "train.iterations=0"])
    train(cfg)
    return root / "init" / "final_model"


def weights_summary(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        state = {}
        for f in files:
            state.update(load_file(str(f)))
    else:
        state = torch.load(next(model_dir.glob("*.bin")), map_location="cpu")
    digest = hashlib.sha256()
    samples = {}
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(tensor.float().numpy().tobytes())
        flat = tensor.float().flatten()
        samples[key] = [float(flat[0]), float(flat[-1]), float(flat.sum())]
    return {"sha256": digest.hexdigest(), "values": samples}


def run_strategy(root: Path, model: Path, name: str, keep_raw: bool = False) -> dict[str, Any]:
    from agentropy.training.config import load_config
    from agentropy.training.run_log import read_metrics
    from agentropy.training.trainer import train

    torch.set_num_threads(1)
    run_name = name.replace("/", "_")
    cfg = load_config(STRATEGIES / f"{name}.yaml", [
        *COMMON, f"run.root={root}", f"run.name={run_name}", f"model.path={model}", "sft.enabled=false",
        "train.iterations=2", *EXTRA.get(name, [])])
    train(cfg)
    raw = read_metrics(root / run_name)
    rows = [{k: v for k, v in r.items() if not is_timing(k)} for r in raw]
    out = {"metrics": rows, "weights": weights_summary(root / run_name / "final_model")}
    if keep_raw:
        out["raw"] = raw
    return out


def record(names: list[str] | None = None, keep_raw: bool = False) -> dict[str, Any]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = start_model(root)
        return {name: run_strategy(root, model, name, keep_raw) for name in (names or strategy_names())}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Record fixed-seed runs of the shipped strategy configs.")
    parser.add_argument("out", nargs="?", type=Path, default=FIXTURE)
    parser.add_argument("--names", default="", help="comma-separated strategy names (default: all)")
    parser.add_argument("--raw", action="store_true", help="keep the raw metrics rows, timings included")
    args = parser.parse_args()
    names = [n for n in args.names.split(",") if n] or None
    args.out.write_text(json.dumps(record(names, keep_raw=args.raw), indent=1, sort_keys=True) + "\n")
