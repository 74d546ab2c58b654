"""What made a run: code version, library versions, and the machine facts that change its numbers.

The same config and seed give bit-identical runs only on the same kind of machine. Measured on
2026-12-04: the quickstart's SFT start scored 0.293 on 256 held-out tasks with torch's AVX2
kernels and 0.230 on an AVX-512 CPU, where torch picks other kernels and the float sums round
differently (setting ``ATEN_CPU_CAPABILITY=avx2`` there gave 0.293 again, with the same per-task
outcomes). Thread count does the same to RL's sampled episodes. So every run records these facts
in ``run.json`` and every bench cell in ``done.json``: a reader comparing two numbers can see
whether they came from the same kind of machine, and a study spread over sessions can check that
its cells did.

:func:`numerics_mismatch` names the facts that differ between two records; ``--resume`` warns
with it, since a resumed run continues exactly only where those facts agree.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

#: Libraries whose versions can change a run's numbers or its files.
PACKAGES = ("agentropy", "torch", "transformers", "tokenizers", "accelerate", "numpy", "gymnasium", "vllm")

#: Environment variables that change which kernels torch uses or how many threads sum in parallel.
NUMERICS_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")

#: The facts whose difference makes two runs of one config and seed differ in their floats.
NUMERICS_KEYS = ("torch", "cpu_capability", "threads", "device")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(start: Path) -> str | None:
    """``<sha>`` of the checkout holding ``start`` (``<sha>+dirty`` with uncommitted changes);
    None outside a git checkout or without git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=start, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=start,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def _device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return device


def provenance(device: str | None = None) -> dict[str, Any]:
    """The code, libraries and machine facts of this process (``device``: the model's torch device)."""
    import torch

    code_dir = Path(__file__).resolve().parent
    return {
        "code": _git_commit(code_dir),
        "packages": {name: version for name in PACKAGES if (version := _package_version(name))},
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": _device(device),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "env": {name: os.environ[name] for name in NUMERICS_ENV if name in os.environ},
    }


def numerics_mismatch(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """``fact: saved -> current`` for each fact in :data:`NUMERICS_KEYS` (and each numerics
    environment variable) that differs; empty when ``saved`` is None (a run from before records)."""
    if not saved:
        return []
    diffs = [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
             for key in NUMERICS_KEYS if key in saved and saved.get(key) != current.get(key)]
    old_env, new_env = saved.get("env", {}), current.get("env", {})
    diffs += [f"${name}: {old_env.get(name)!r} -> {new_env.get(name)!r}"
              for name in NUMERICS_ENV if old_env.get(name) != new_env.get(name)]
    return diffs


def machine(record: dict[str, Any]) -> str:
    """The facts that change the floats, in words: torch, its CPU kernels, threads, device, CPU."""
    return (f"torch {record.get('torch')} ({record.get('cpu_capability')} kernels, {record.get('threads')} threads, "
            f"{record.get('device')}; {record.get('cpu')})")


def describe(record: dict[str, Any]) -> str:
    """One line for logs and reports: :func:`machine` and the code's commit."""
    return f"{machine(record)}, agentropy {record.get('code') or 'unknown code'}"
