"""Ending a JVM that py4j started for a Java-backed env (ScienceWorld, TextWorldExpress).

py4j's ``launch_gateway(die_on_exit=True)`` gives the JVM a stdin pipe and the JVM exits when that
pipe closes. Neither package closes it, so after their ``close`` the pipe stays open until garbage
collection (a ResourceWarning) and the exited JVM stays a zombie until Python exits.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess

logger = logging.getLogger(__name__)


def reap_jvm(process: subprocess.Popen, kill: bool = False, timeout: float = 10.0) -> None:
    """Close the JVM's stdin pipe, kill it first if ``kill``, and wait for it to exit.

    A JVM that has not exited ``timeout`` seconds later is killed; one that survives that too is
    logged and left (never a hang)."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    if kill and process.poll() is None:
        process.kill()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("JVM %d did not exit after kill", process.pid)
