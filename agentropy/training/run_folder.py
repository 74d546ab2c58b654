"""One run per run folder: refuse to mix runs, and resume only the run that wrote the checkpoint.

Re-running ``train`` with the ``run.name`` of an earlier run used to append to its
``metrics.jsonl`` and let the old run's checkpoints survive pruning. Now a fresh run in a
folder that already holds a run is refused (unless ``--overwrite``), every run gets an
identity (``run.json``: a random id) that its checkpoints carry, and ``--resume`` checks that
the checkpoint was written with this config, naming the fields that differ.

``run.json`` also records what made the run (:mod:`agentropy.provenance`: code commit, library
versions, torch's CPU kernels, threads, device), and each resume appends its own record there,
warning when a fact that changes the floats differs from the start's.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

from agentropy import provenance as prov
from agentropy.errors import UsageError
from agentropy.training import checkpoint as ckpt

RUN_FILE = "run.json"

#: Fields a resumed run may change: where the folder is, how long to go on, how often to save,
#: how it is displayed, and where envs run. Anything else would silently change the experiment.
RESUME_MAY_CHANGE = frozenset({
    "run.root", "run.name", "run.progress", "run.tensorboard", "run.save_trajectories",
    "train.iterations", "train.stop_after", "train.checkpoint_every", "train.keep_checkpoints",
    "eval.every", "rollout.env_workers", "rollout.num_workers", "rollout.step_timeout_s", "model.device",
    "model.gradient_checkpointing", "model.vllm.gpu_memory_utilization", "model.vllm.enforce_eager",
    # where env workers run never changes what an episode sees: a run may resume on another cluster
    "rollout.ray_address", "rollout.ray_num_cpus", "rollout.ray_memory_mb", "rollout.ray_resources",
})


def _may_change(key: str) -> bool:
    """Whether the flattened field ``key`` (``rollout.ray_resources.env_node``: inside a mapping)
    is one :data:`RESUME_MAY_CHANGE` allows."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in RESUME_MAY_CHANGE for n in range(1, len(parts) + 1))

#: What a folder holding a run contains (any one of them is enough to refuse a fresh run).
_RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", RUN_FILE, "final_model")


class RunFolderError(UsageError):
    """A run folder that would mix two runs, or a checkpoint that belongs to another run."""


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in _RUN_MARKERS)


def check_fresh_start(run_dir: Path, overwrite: bool) -> None:
    """Refuse a fresh run in ``run_dir`` if it holds one; with ``overwrite``, delete that run."""
    if not holds_a_run(run_dir):
        return
    if not overwrite:
        raise RunFolderError(
            f"{run_dir}: run folder already holds a run; continue it with --resume {run_dir}, "
            "replace it with --overwrite, or choose another run.name"
        )
    shutil.rmtree(run_dir)


def _run_file(run_dir: Path) -> dict[str, Any]:
    """``run.json`` as a dict (empty when missing or unreadable: folders from before identities)."""
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def start_run(run_dir: Path, device: str | None = None) -> str:
    """Give a fresh run its identity and record what makes it (both in ``run.json``); return the id."""
    run_id = uuid.uuid4().hex
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run_id, "provenance": prov.provenance(device)}
    (run_dir / RUN_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
    return run_id


def record_resume(run_dir: Path, device: str | None = None) -> list[str]:
    """Append this process's provenance to ``run.json``'s ``resumed`` list; warn, and return the
    differences, when a fact that changes the floats differs from the run's start (a resumed run
    continues exactly only on the same kind of machine, kernels and thread count)."""
    record = _run_file(run_dir)
    if not record:
        return []
    current = prov.provenance(device)
    diffs = prov.numerics_mismatch(record.get("provenance"), current)
    record.setdefault("resumed", []).append(current)
    (run_dir / RUN_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
    if diffs:
        warnings.warn(f"{run_dir}: resumed on another kind of machine than it started on ("
                      + "; ".join(diffs) + "): it will not continue bit for bit", RuntimeWarning, stacklevel=2)
    return diffs


def run_provenance(run_dir: Path) -> dict[str, Any] | None:
    """The provenance recorded when the run in ``run_dir`` started (None before records existed)."""
    return _run_file(run_dir).get("provenance")


def run_identity(run_dir: Path) -> str | None:
    """The identity of the run in ``run_dir`` (``None`` for folders written before identities)."""
    return _run_file(run_dir).get("run_id")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``field: saved -> current`` for every field outside :data:`RESUME_MAY_CHANGE` that differs.

    A field the saved config lacks (added to the config after the checkpoint was written) is no
    difference while ``current`` holds its value in ``defaults``: the run used that behaviour."""
    old, new = _flatten(json.loads(json.dumps(saved, default=str))), _flatten(json.loads(json.dumps(current, default=str)))
    default = _flatten(json.loads(json.dumps(defaults, default=str))) if defaults is not None else {}
    diffs = []
    for key in sorted(set(old) | set(new)):
        if _may_change(key) or old.get(key) == new.get(key):
            continue
        if key not in old and key in default and new.get(key) == default[key]:
            continue
        diffs.append(f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
    return diffs


def check_resume(run_dir: Path, config: dict[str, Any]) -> Path:
    """The checkpoint ``--resume`` will load; refuse if there is none or it has another config."""
    if not (run_dir / "config.yaml").is_file():
        raise RunFolderError(f"{run_dir}: not a run folder (no config.yaml); --resume needs the folder of a run")
    checkpoint = ckpt.latest_checkpoint(run_dir, run_identity(run_dir))
    if checkpoint is None:
        raise RunFolderError(f"{run_dir}: --resume: no checkpoint under {run_dir / 'checkpoints'}")
    ckpt.check_format(checkpoint)
    saved = ckpt.checkpoint_meta(checkpoint).get("config")
    if saved is not None:
        from agentropy.configuration import to_dict
        from agentropy.training.config import Config

        diffs = config_differences(saved, config, to_dict(Config()))
        if diffs:
            shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
            raise RunFolderError(f"{checkpoint}: --resume: the checkpoint was written with another config: {shown}")
    return checkpoint
