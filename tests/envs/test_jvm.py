"""reap_jvm: a py4j-style child (a process that exits when its stdin closes) is released."""

from __future__ import annotations

import subprocess
import sys

from agentropy.envs.jvm import reap_jvm

WAITS_FOR_EOF = [sys.executable, "-c", "import sys; sys.stdin.read()"]


def test_closing_stdin_ends_the_child_and_reaps_it():
    child = subprocess.Popen(WAITS_FOR_EOF, stdin=subprocess.PIPE)
    assert child.poll() is None
    reap_jvm(child)
    assert child.stdin.closed and child.returncode == 0


def test_kill_ends_a_child_that_ignores_its_pipe():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE)
    reap_jvm(child, kill=True)
    assert child.stdin.closed and child.returncode is not None and child.returncode != 0


def test_a_child_that_does_not_exit_in_time_is_killed():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdin=subprocess.PIPE)
    reap_jvm(child, timeout=0.5)
    assert child.returncode is not None and child.returncode != 0


def test_an_already_reaped_child_is_fine():
    child = subprocess.Popen(WAITS_FOR_EOF, stdin=subprocess.PIPE)
    reap_jvm(child)
    reap_jvm(child, kill=True)  # twice: nothing left to close or wait for
    assert child.returncode == 0
