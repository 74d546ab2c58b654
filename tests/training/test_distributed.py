"""Two learner processes on CPU under ``accelerate launch`` (torchrun underneath, gloo backend)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from agentropy.training.run_log import read_metrics

pytestmark = pytest.mark.slow

# Runs `agentropy train` and records, on every rank, a digest of the weights the final evaluation
# samples from (the policy after the last update): sha256 over the tensors' names and raw bytes.
LAUNCHED = textwrap.dedent(
    """
    import hashlib, os, sys

    import agentropy.training.trainer as trainer
    from agentropy.cli import main


    def digest(model):
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.removeprefix("module.").encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(-1).numpy().tobytes())
        return h.hexdigest()


    evaluate = trainer.evaluate_policy


    def evaluate_and_record(backend, *args, **kwargs):
        out = os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.sha256")
        with open(out, "w") as f:  # the last call (the final evaluation) wins
            f.write(digest(backend.model))
        return evaluate(backend, *args, **kwargs)


    trainer.evaluate_policy = evaluate_and_record
    sys.exit(main(["train", sys.argv[1]]))
    """
)


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.removeprefix("module.").encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(-1).numpy().tobytes())
    return h.hexdigest()


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
    launched = tmp_path / "launched.py"
    launched.write_text(LAUNCHED)
    # On a machine without GPUs accelerate's --multi_gpu launcher starts torchrun and the
    # trainer's Accelerator(cpu=True) joins a gloo process group (accelerate's --cpu flag
    # instead selects its MPI launcher, which needs mpirun).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(launched), str(config), str(tmp_path)]
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
    # Data parallelism keeps one model: both ranks end with bit-identical weights, and they are the
    # weights the main process saved.
    from agentropy.agents.tiny import load_model_and_tokenizer

    rank0, rank1 = ((tmp_path / f"rank{r}.sha256").read_text() for r in (0, 1))
    assert rank0 == rank1
    final, _ = load_model_and_tokenizer(run / "final_model")
    assert _digest(final) == rank0
