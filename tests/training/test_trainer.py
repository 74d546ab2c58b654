"""End to end: SFT then GRPO iterations on a small Household config, and exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from agentropy.training.checkpoint import latest_checkpoint, load_checkpoint
from agentropy.training.config import load_config
from agentropy.training.run_log import read_metrics
from agentropy.training.trainer import train

# Wall-clock measurements, which differ between any two runs, by exact name: every other metric
# (env_steps, *_std, ...) must match.
TIMING_KEYS = frozenset({
    "time_s", "generate_s", "env_s", "prompt_s", "rollout_s", "overhead", "env_steps_per_s", "tokens_per_s",
    "learner_tokens_per_s", "arbepo/rollout_s", "aepo/probe_generate_s",
})


def small_config(tmp_path, name, tiny_dir, extra=()):
    overrides = [
        f"run.name={name}", f"run.root={tmp_path}", "run.progress=false",
        f"model.tiny_dir={tiny_dir}",
        "sft.episodes=6", "sft.epochs=1", "sft.batch_size=16",
        "rollout.group_size=2", "rollout.tasks_per_batch=2", "rollout.max_turns=3", "rollout.max_tokens=12",
        "train.iterations=4", "train.micro_batch_size=8", "train.mini_batches=2",
        "eval.episodes=2", *extra,
    ]
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def test_sft_then_grpo_writes_every_run_file(tmp_path, tiny_dir):
    torch.set_num_threads(1)
    cfg = small_config(tmp_path, "e2e", tiny_dir, ["train.iterations=2", "train.recompute_old=always"])
    result = train(cfg)
    run = tmp_path / "e2e"
    assert (run / "config.yaml").exists() and (run / "final_model" / "config.json").exists()
    assert list((run / "tensorboard").iterdir()), "TensorBoard events missing"
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == [
        "iter_000000_rank0.jsonl", "iter_000001_rank0.jsonl"]
    assert latest_checkpoint(run).name == "iter_000001"
    records = read_metrics(run)
    phases = [(r["phase"], r["iteration"]) for r in records]
    assert phases == [("sft", -1), ("eval", -1), ("train", 0), ("train", 1), ("eval", 2)]
    train_rec = records[2]
    for key in ("success_rate", "return_mean", "length_mean", "entropy_mean", "grad_norm", "loss",
                "tokens_per_s", "env_steps_per_s", "clipfrac"):
        assert key in train_rec, key
    assert train_rec["episodes"] == 4
    # The first update's old log-probs are the sampler's: the ratio starts at exactly 1.
    assert train_rec["behaviour_logprob_gap"] < 1e-4 and train_rec["old_logprobs_recomputed"] == 1.0
    assert result.sft_success == records[1]["success_rate"]
    assert result.final_success == records[-1]["success_rate"]


def test_interrupted_run_resumes_bit_for_bit(tmp_path, tiny_dir):
    torch.set_num_threads(1)
    train(small_config(tmp_path, "straight", tiny_dir))
    train(small_config(tmp_path, "cut", tiny_dir, ["train.stop_after=2"]))
    assert latest_checkpoint(tmp_path / "cut").name == "iter_000001"
    resumed_cfg = load_config(tmp_path / "cut" / "config.yaml", ["train.stop_after=null"])
    train(resumed_cfg, resume=True)

    def train_records(name):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                for r in read_metrics(tmp_path / name) if r["phase"] == "train"]

    straight, resumed = train_records("straight"), train_records("cut")
    assert [r["iteration"] for r in resumed] == [0, 1, 2, 3]
    assert all(r["old_logprobs_recomputed"] == 0.0 for r in resumed)  # hf backend: exact sampler numbers
    assert {"env_steps", "generate_calls"} <= set(resumed[2])  # counts are compared, not filtered out
    assert json.dumps(straight[2:], sort_keys=True) == json.dumps(resumed[2:], sort_keys=True)
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight"))["model"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut"))["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_nonfinite_loss_stops_and_saves_batch(tmp_path, tiny_dir, monkeypatch):
    from agentropy.nonfinite import NonFiniteError
    from agentropy.training import methods

    real = methods.policy_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(methods, "policy_loss", poisoned)
    cfg = small_config(tmp_path, "nan", tiny_dir, ["train.iterations=1", "sft.enabled=false"])
    with pytest.raises(NonFiniteError) as err:
        train(cfg)
    dump = tmp_path / "nan" / "nonfinite_batch_iter_000000.jsonl"
    assert str(err.value) == f"non-finite loss (nan) in rl mini-batch 1/2 (iteration 0); dumped to {dump}"
    assert dump.exists()
    assert latest_checkpoint(tmp_path / "nan") is None
