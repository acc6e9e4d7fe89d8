"""Daemons llm-fleet starts itself (dockerd, the lab registry): installing and stopping them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
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


def apt_install(packages: list[str], why: str) -> None:
    """Install Debian packages as root (these machines may lack what the lab needs).

    ``why`` says what is missing, for the error when this cannot be done; raises RuntimeError.
    """
    wanted = " ".join(packages)
    if os.geteuid() != 0:
        raise RuntimeError(f"{why}; as root, llm-fleet would install Debian's {wanted}. Run as root, or install it.")
    if not shutil.which("apt-get"):
        raise RuntimeError(f"{why}, and there is no apt-get to install {wanted}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (rc={result.returncode}): {result.stderr.strip()[-600:]}")
