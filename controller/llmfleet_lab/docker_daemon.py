"""Make sure a Docker daemon answers; start one (and only then stop it) when none does.

These machines have no systemd as PID 1, so ``systemctl start docker`` is not an option: when no
daemon answers, Debian's ``docker.io`` is installed if ``dockerd`` is missing, and ``dockerd`` is
started in its own session with its own pidfile. A marker file records that llm-fleet started it,
so ``stop_if_started`` never stops a daemon somebody else runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker
from docker.errors import DockerException
from llmfleet.paths import cache_dir

from llmfleet_lab import procs

SOCKET = "unix:///var/run/docker.sock"
PIDFILE = Path("/var/run/llmfleet-dockerd.pid")


class DaemonError(RuntimeError):
    """No Docker daemon could be reached or started; the message says why and what to do."""


def client(timeout: int = 600) -> docker.DockerClient:
    """A Docker SDK client negotiating the API version with whatever daemon answers."""
    return docker.from_env(version="auto", timeout=timeout)


def answers() -> bool:
    try:
        return bool(client(timeout=5).ping())
    except (DockerException, OSError):
        return False


def _marker() -> Path:
    return cache_dir() / "dockerd.started-by-llmfleet"


def _install_docker_io(log: Callable[[str], None]) -> None:
    log("docker: dockerd missing, installing Debian docker.io (about 20 s)")
    try:
        procs.apt_install(["docker.io"], "no Docker daemon answers and dockerd is not installed")
    except RuntimeError as exc:
        raise DaemonError(str(exc)) from exc


def ensure(log: Callable[[str], None] = print, wait_s: float = 60.0) -> bool:
    """Return True when this call started the daemon, False when one already answered."""
    if answers():
        return False
    if not shutil.which("dockerd"):
        _install_docker_io(log)
    if os.geteuid() != 0:
        raise DaemonError("no Docker daemon answers and starting dockerd needs root; start Docker and retry")
    logfile = cache_dir() / "dockerd.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"docker: no daemon answers; starting dockerd (log: {logfile})")
    with logfile.open("ab") as out:
        subprocess.Popen(
            ["dockerd", "--host", SOCKET, "--pidfile", str(PIDFILE)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if answers():
            _marker().write_text(PIDFILE.read_text().strip() if PIDFILE.exists() else "")
            log("docker: dockerd is up")
            return True
        time.sleep(1)
    tail = logfile.read_text(errors="replace").splitlines()[-15:]
    raise DaemonError(f"dockerd did not answer within {wait_s:.0f} s; last log lines:\n" + "\n".join(tail))


def stop_if_started(log: Callable[[str], None] = print, wait_s: float = 30.0) -> bool:
    """Stop dockerd only if llm-fleet started it. Returns True when it stopped one."""
    marker = _marker()
    if not marker.exists():
        return False
    pid_text = PIDFILE.read_text().strip() if PIDFILE.exists() else marker.read_text().strip()
    marker.unlink()
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if not procs.alive(pid):
        return False
    if procs.terminate(pid, wait_s):
        log("docker: stopped the dockerd llm-fleet had started")
        return True
    log(f"docker: dockerd (pid {pid}) still running after {wait_s:.0f} s")
    return False
