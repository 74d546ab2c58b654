"""scripts/first_update.py: every arm starts from the same weights and batch, so two arms with the
same config print the same row, and an arm whose update differs prints a different one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 30 s: builds a tiny model and collects episodes
def test_identical_arms_give_identical_rows_and_a_different_update_does_not(tmp_path):
    from agentropy.agents.tiny import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=2048, episodes_per_env=2)
    model = build_tiny_model(tmp_path / "model", cfg=cfg)
    small = ["rollout.tasks_per_batch=2", "rollout.group_size=2", "rollout.max_turns=2", "rollout.max_tokens=8",
             "train.micro_batch_size=4", "rollout.env_workers=inline"]
    command = [sys.executable, "scripts/first_update.py", "--model", str(model),
               "--arm", "a=configs/strategies/grpo.yaml", "--arm", "b=configs/strategies/grpo.yaml",
               "--arm", "c=configs/strategies/epo.yaml,strategy.epo.entropy_coef=1.0,train.lr=0.05", *small]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in done.stdout.splitlines()
            if line.startswith(("| a ", "| b ", "| c "))}
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"] == rows["b"]  # same start, same batch, fresh optimizer: the same update
    # the untrained model wins nothing, so GRPO's advantages are 0 and its update moves nothing;
    # EPO's entropy term has a gradient of its own
    assert float(rows["a"][2]) == 0.0 and float(rows["c"][2]) != 0.0
    assert done.stdout.startswith("iteration 0: 4 episodes")
