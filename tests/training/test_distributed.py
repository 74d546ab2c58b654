"""Two learner processes on CPU under ``accelerate launch`` (torchrun underneath, gloo backend)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agentropy.training.run_log import read_metrics

pytestmark = pytest.mark.slow


def test_accelerate_launch_two_cpu_processes(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(
        f"run: {{name: ddp, root: {tmp_path}, tensorboard: false, progress: false}}\n"
        f"model: {{tiny_dir: {tmp_path / 'tiny'}}}\n"
        "sft: {episodes: 4, epochs: 1, batch_size: 16}\n"
        "rollout: {group_size: 2, tasks_per_batch: 2, max_turns: 3, max_tokens: 12}\n"
        "train: {iterations: 2, micro_batch_size: 8}\n"
        "eval: {episodes: 2}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # On a machine without GPUs accelerate's --multi_gpu launcher starts torchrun and the
    # trainer's Accelerator(cpu=True) joins a gloo process group (accelerate's --cpu flag
    # instead selects its MPI launcher, which needs mpirun).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "agentropy.cli", "train", str(config)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("held-out success:") == 1, done.stdout  # only the main process reports
    run = tmp_path / "ddp"
    names = sorted(p.name for p in (run / "trajectories").iterdir())
    assert names == ["iter_000000_rank0.jsonl", "iter_000000_rank1.jsonl",
                     "iter_000001_rank0.jsonl", "iter_000001_rank1.jsonl"]
    train = [r for r in read_metrics(run) if r["phase"] == "train"]
    assert [r["iteration"] for r in train] == [0, 1]
    evals = [r for r in read_metrics(run) if r["phase"] == "eval"]
    assert evals[0]["episodes"] == 2  # the evaluation set is split across ranks and re-combined
    assert (run / "final_model" / "config.json").exists()
