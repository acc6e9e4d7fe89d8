"""A local image registry for the lab and the vllm_build tests: Debian's ``docker-registry`` on 127.0.0.1:5000.

``ensure`` uses a registry that already answers there; otherwise it installs Debian's
``docker-registry`` if the binary is missing (as root), writes its own minimal config (the packaged
one enables htpasswd with a path that does not exist), and starts ``docker-registry serve`` in its
own session with filesystem storage under the llm-fleet cache. A marker records that llm-fleet
started it, so ``stop_if_started`` never stops a registry somebody else runs. The Docker daemon
treats 127.0.0.0/8 as an insecure registry by default, so push and pull over http work as is.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from llmfleet.paths import cache_dir

from llmfleet_lab import procs

ADDRESS = "127.0.0.1:5000"
BINARY = "docker-registry"

Log = Callable[[str], None]


class RegistryError(RuntimeError):
    """No registry could be reached or started; the message says why and what to do."""


def _dir() -> Path:
    return cache_dir() / "registry"


def _marker() -> Path:
    return _dir() / "started-by-llmfleet.pid"


def url(address: str = ADDRESS) -> str:
    return f"http://{address}"


def answers(address: str = ADDRESS, timeout: float = 2.0) -> bool:
    """True when a Docker registry (API v2) answers on ``address``."""
    try:
        with urllib.request.urlopen(f"{url(address)}/v2/", timeout=timeout) as resp:
            return resp.status == 200 and "registry/2.0" in resp.headers.get("Docker-Distribution-Api-Version", "")
    except urllib.error.HTTPError as exc:  # 401: a registry that wants credentials still answers
        return exc.code == 401
    except (OSError, ValueError):
        return False


def config_text(address: str, storage: Path) -> str:
    """The registry's minimal configuration: filesystem storage, deletes allowed, no auth, http only."""
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  fields:\n    service: registry\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: {address}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
    )


def _install(log: Log) -> None:
    log("registry: installing Debian docker-registry")
    try:
        procs.apt_install(["docker-registry"], f"no registry answers on {ADDRESS} and {BINARY} is not installed")
    except RuntimeError as exc:
        raise RegistryError(str(exc)) from exc


def ensure(log: Log = print, address: str = ADDRESS, wait_s: float = 30.0) -> bool:
    """Return True when this call started the registry, False when one already answered on ``address``."""
    if answers(address):
        return False
    binary = shutil.which(BINARY)
    if not binary:
        _install(log)
        binary = shutil.which(BINARY)
        if not binary:
            raise RegistryError(f"Debian docker-registry is installed but {BINARY} is not on PATH")
    root = _dir()
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(config_text(address, storage))
    logfile = root / "registry.log"
    log(f"registry: none answers on {address}; starting {BINARY} (storage {storage}, log {logfile})")
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if answers(address):
            _marker().write_text(str(proc.pid))
            log(f"registry: up on {address}")
            return True
        time.sleep(0.5)
    tail = logfile.read_text(errors="replace").splitlines()[-15:]
    if proc.poll() is None:
        proc.terminate()
    raise RegistryError(
        f"{BINARY} did not answer on {address} within {wait_s:.0f} s; last log lines:\n" + "\n".join(tail)
    )


def started_by_llmfleet() -> int | None:
    """The pid of the registry llm-fleet started, if it still runs."""
    marker = _marker()
    if not marker.exists():
        return None
    text = marker.read_text().strip()
    return int(text) if text.isdigit() and procs.alive(int(text)) else None


def stop_if_started(log: Log = print, wait_s: float = 15.0) -> bool:
    """Stop the registry only if llm-fleet started it (its storage stays). Returns True when it stopped one."""
    pid = started_by_llmfleet()
    _marker().unlink(missing_ok=True)
    if pid is None:
        return False
    if procs.terminate(pid, wait_s):
        log("registry: stopped the registry llm-fleet had started")
        return True
    log(f"registry: {BINARY} (pid {pid}) still running after {wait_s:.0f} s")
    return False
