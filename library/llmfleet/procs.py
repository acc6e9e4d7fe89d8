"""Stopping a daemon llm-fleet started itself (dockerd, the lab registry)."""

from __future__ import annotations

import os
import signal
import time


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def terminate(pid: int, wait_s: float) -> bool:
    """SIGTERM ``pid`` and wait up to ``wait_s`` for it to exit. True when it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.2)
    return False
