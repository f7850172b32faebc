"""Killing a test's subprocess driver at a chosen moment, as a lost machine would: SIGKILL, no cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 400, poll_s: float = 0.1) -> None:
    """Wait until `ready()` (or the process ends, or `timeout`), then SIGKILL the process group of `proc`
    (started with start_new_session=True) and reap it."""
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(poll_s)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
