"""Wait until a vLLM instance is healthy, or give up early when its service is crash-looping.

Polling ``/health`` alone waits out the whole timeout when a server cannot start (a bad flag, a
model that does not fit): systemd or Docker keeps restarting it and the port never answers.
Here every poll also asks the supervisor how often the service restarted, so a broken change
fails in seconds, with the server's own last log lines.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

Runner = Callable[[list[str]], tuple[int, str, str]]


@dataclass
class WaitResult:
    healthy: bool
    waited_s: float
    restarts: int = 0
    reason: str = ""
    models: list[str] = field(default_factory=list)
    max_model_len: dict[str, int] = field(default_factory=dict)


def http_get(url: str, api_key: str | None, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


def systemd_restarts(run: Runner, unit: str) -> tuple[int, str]:
    """(NRestarts, ActiveState) of a systemd unit."""
    rc, out, _ = run(["systemctl", "show", "-p", "NRestarts", "-p", "ActiveState", unit])
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line) if rc == 0 else {}
    try:
        restarts = int(props.get("NRestarts", "0"))
    except ValueError:
        restarts = 0
    return restarts, props.get("ActiveState", "unknown")


def docker_restarts(run: Runner, container: str) -> tuple[int, str]:
    """(RestartCount, State.Status) of a container."""
    rc, out, _ = run(["docker", "inspect", "-f", "{{.RestartCount}} {{.State.Status}}", container])
    if rc != 0:
        return 0, "missing"
    count, _, state = out.strip().partition(" ")
    return (int(count) if count.isdigit() else 0), state or "unknown"


def parse_models(body: bytes) -> tuple[list[str], dict[str, int]]:
    try:
        data = json.loads(body.decode() or "{}").get("data") or []
    except (ValueError, AttributeError):
        return [], {}
    names = [str(m.get("id")) for m in data if isinstance(m, dict)]
    lens = {str(m.get("id")): int(m["max_model_len"]) for m in data if isinstance(m, dict) and m.get("max_model_len")}
    return names, lens


def wait_healthy(
    base_url: str,
    expect_models: list[str],
    timeout: float,
    interval: float,
    api_key: str | None = None,
    supervisor: Callable[[], tuple[int, str]] | None = None,
    max_restarts: int = 2,
    get: Callable[[str, str | None, float], tuple[int, bytes]] = http_get,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitResult:
    """Poll until /health is 200 and /v1/models lists every expected name.

    Gives up when ``timeout`` passes, or as soon as the supervisor reports more than
    ``max_restarts`` restarts since the wait began, or a failed state.
    """
    start = clock()
    base_restarts = supervisor()[0] if supervisor else 0
    restarts = 0
    reason = "timed out"
    while True:
        status, _ = get(base_url.rstrip("/") + "/health", None, min(10.0, max(interval, 1.0)))
        if status == 200:
            mstatus, body = get(base_url.rstrip("/") + "/v1/models", api_key, 10.0)
            names, lens = parse_models(body) if mstatus == 200 else ([], {})
            missing = [m for m in expect_models if m not in names]
            if mstatus == 200 and not missing:
                return WaitResult(True, clock() - start, restarts, "", names, lens)
            reason = (
                f"/v1/models answered {mstatus}" if mstatus != 200 else
                f"/v1/models lists {names}, missing {missing}"
            )
        if supervisor:
            count, state = supervisor()
            restarts = max(0, count - base_restarts)
            if restarts > max_restarts:
                return WaitResult(False, clock() - start, restarts,
                                  f"the service restarted {restarts} times while starting (crash loop)")
            if state in ("failed", "exited", "dead", "missing"):
                return WaitResult(False, clock() - start, restarts, f"the service is {state}")
        if clock() - start >= timeout:
            return WaitResult(False, clock() - start, restarts, f"{reason} after {timeout:.0f} s")
        sleep(interval)
