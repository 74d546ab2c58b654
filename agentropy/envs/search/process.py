"""Starting, sharing and stopping the local search service as a child process.

:class:`ServiceProcess` runs ``python -m agentropy.envs.search.server`` bound to 127.0.0.1
on a free port and waits, up to ``startup_timeout_s``, for the one JSON line it prints when
it accepts requests; an early exit or a timeout raises an error naming the command, the
wait and the end of the child's stderr. The child exits by itself if its parent dies.

A process of its own (not a thread) keeps BM25 work off the trainer's interpreter lock and
can be killed and restarted like a real remote service. Envs of one process that use the same
world share one service (:func:`acquire_service` / :func:`release_service`, reference
counted), so a rollout with 64 envs starts one service, not 64.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from agentropy.envs.search.world import WorldConfig

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


@dataclass(frozen=True)
class ServiceConfig:
    """What a local service serves and how long to wait for it."""

    world: WorldConfig = WorldConfig()
    snippet_chars: int = 160
    startup_timeout_s: float = 60.0


class ServiceProcess:
    """One search-service child process; ``endpoint`` stays the same across :meth:`restart`."""

    def __init__(self, config: ServiceConfig = ServiceConfig(), wait: bool = True) -> None:
        """Launch the child; with ``wait=False`` call :meth:`wait_ready` before using ``endpoint``
        (the caller can build its own copy of the world meanwhile)."""
        self.config = config
        self.endpoint = ""
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._pending: tuple[list[str], float] | None = None  # (command, launch time) until ready
        self._start_error = ""  # why the last launch failed, for every waiter
        self._lock = threading.RLock()  # envs stepped from several threads may restart it at once
        self._owner = os.getpid()  # a forked copy of this object must not manage our child
        _every_service.add(self)
        self.launch()
        if wait:
            self.wait_ready()

    def _command(self, port: int) -> list[str]:
        w = self.config.world
        return [
            sys.executable, "-m", "agentropy.envs.search.server",
            "--host", "127.0.0.1", "--port", str(port),
            "--world-seed", str(w.seed), "--n-docs", str(w.n_docs), "--test-fraction", str(w.test_fraction),
            "--snippet-chars", str(self.config.snippet_chars),
            "--ready-stdout", "--parent-pid", str(os.getpid()),
        ]

    def start(self) -> None:
        """Start the child (on the previous port if there was one) and wait until it is ready."""
        with self._lock:
            self.launch()
            self.wait_ready()

    def launch(self) -> None:
        """Start the child unless it runs; does not wait."""
        with self._lock:
            self._launch()

    def _launch(self) -> None:
        if self.alive():
            return
        if not self._owns():  # the parent's child is gone: this process starts its own
            self._owner, self._proc, self._stderr = os.getpid(), None, None
        self._close_stderr()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        self._stderr = tempfile.TemporaryFile()
        cmd = self._command(self.port)
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env)
        self._pending, self._start_error = (cmd, time.monotonic()), ""

    def wait_ready(self) -> None:
        """Wait, at most ``startup_timeout_s`` after the launch, for the child's ready line."""
        with self._lock:
            if self._pending is None:
                if self._start_error:
                    raise RuntimeError(self._start_error)
                return
            cmd, launched = self._pending
            try:
                ready = json.loads(self._wait_ready_line(cmd, launched))
                self.endpoint = ready["endpoint"]
            except Exception as exc:
                self._pending, self._start_error = None, str(exc)
                self.kill()
                raise
            self._pending = None
            self.port = int(self.endpoint.rsplit(":", 1)[1])

    def _wait_ready_line(self, cmd: list[str], launched: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        timeout = self.config.startup_timeout_s
        deadline = launched + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"search service did not become ready within {timeout:.0f} s "
                        f"(ServiceConfig.startup_timeout_s); command: {' '.join(cmd)}; stderr: {self.stderr_tail()}"
                    )
                if selector.select(timeout=min(remaining, 0.5)):
                    chunk = os.read(self._proc.stdout.fileno(), 4096)
                    if not chunk:
                        self._proc.wait(timeout=5)
                        raise RuntimeError(
                            f"search service exited with code {self._proc.returncode} before it was ready; "
                            f"command: {' '.join(cmd)}; stderr: {self.stderr_tail()}"
                        )
                    buffer += chunk
        return buffer.split(b"\n", 1)[0].decode()

    def stderr_tail(self, n_chars: int = 2000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - n_chars))
        return self._stderr.read().decode("utf-8", "replace").strip() or "(empty)"

    def alive(self) -> bool:
        if self._proc is None:
            return False
        if not self._owns():  # a forked copy: the parent's child may still serve us
            try:
                os.kill(self._proc.pid, 0)
            except OSError:
                return False
            return True
        return self._proc.poll() is None

    def _owns(self) -> bool:
        return self._owner == os.getpid()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """Stop the child at once (SIGKILL), as a crash would."""
        with self._lock:
            if self._owns() and self.alive():
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._close_pipe()

    def restart(self) -> None:
        """Kill the child if it still runs, then start a new one on the same port."""
        with self._lock:
            self.kill()
            self.start()

    def close(self) -> None:
        """Stop the child politely (SIGTERM), then forcibly if it lingers."""
        with self._lock:
            if self._owns() and self.alive():
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            self._close_pipe()
            self._close_stderr()

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None and not self._proc.stdout.closed:
            self._proc.stdout.close()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


_every_service: weakref.WeakSet[ServiceProcess] = weakref.WeakSet()
_lock = threading.Lock()
_shared: dict[tuple[ServiceConfig, int], tuple[ServiceProcess, int]] = {}


def acquire_service(config: ServiceConfig, wait: bool = True) -> ServiceProcess:
    """The process-wide service for ``config``, started on first use; pair with :func:`release_service`.

    Keyed by process id too: a forked worker starts its own rather than adopt its parent's.
    With ``wait=False`` the caller must :meth:`~ServiceProcess.wait_ready` before use.
    """
    key = (config, os.getpid())
    with _lock:
        service, count = _shared.get(key, (None, 0))
        if service is None:
            service = ServiceProcess(config, wait=False)
        elif not service.alive():
            service.launch()
        _shared[key] = (service, count + 1)
    if wait:
        service.wait_ready()
    return service


def release_service(service: ServiceProcess) -> None:
    """Drop one reference; the last one stops the child."""
    with _lock:
        for key, (shared, count) in list(_shared.items()):
            if shared is service:
                if count > 1:
                    _shared[key] = (shared, count - 1)
                    return
                del _shared[key]
                break
    service.close()


@atexit.register
def _close_all() -> None:
    with _lock:
        _shared.clear()
    for service in list(_every_service):
        service.close()
