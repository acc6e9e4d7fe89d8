# Copyright: llm-fleet contributors
# Apache-2.0
"""Wait until a vLLM instance is healthy, or give up early when its service is crash-looping.

Polling ``/health`` alone waits out the whole timeout when a server cannot start (a bad flag, a
model that does not fit): systemd or Docker keeps restarting it and the port never answers.
Here every poll also asks the supervisor how often the service restarted and whether it is down
(a failed unit, a unit that hit its start rate limit, an exited container), so a broken change
fails in seconds, with the server's own last log lines.

A server that answers ``/health`` can still die on the first real request: vLLM's CPU sampler
compiles a kernel with torch inductor the first time a request asks for logprobs, and without a
C++ compiler the engine dies and the API server exits with status 0. So the gate ends with one
real chat (or text) completion asking for ``logprobs`` / ``top_logprobs``; the instance is healthy
only once that answered.

The supervisor readers are shared with ``llm_health`` (restart count, last start, last exit).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import EndpointError, request
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import (
    auth_headers,
    completion_path,
    completion_payload,
)

Runner = Callable[[list[str]], tuple[int, str, str]]

# systemd properties read about a unit. Timestamps are read on the monotonic clock, which the
# module shares with systemd on the same host (no time zone or locale in the way).
SYSTEMD_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "NRestarts",
    "MainPID",
    "ExecMainCode",
    "ExecMainStatus",
    "ExecMainStartTimestampMonotonic",
)
# ExecMainCode is a waitid() si_code.
_CLD_CODES = {"1": "exited", "2": "killed", "3": "dumped", "4": "trapped", "5": "stopped", "6": "continued"}
_DOWN_SYSTEMD = ("failed", "inactive")
_DOWN_DOCKER = ("exited", "dead", "missing", "removing")
_MAIN_EXITED = re.compile(r"Main process exited, code=(?P<code>\w+), status=(?P<status>\S+)")
# What systemd logs when the start rate limit refuses a start. When that start was an automatic
# restart, systemd 252 keeps the Result of the exit before it (exit-code, signal ...): the unit is
# failed with Result=start-limit-hit only when that exit was a success (captured:
# tests/fixtures/supervisor/systemd_start_limit.txt, journal_start_limit.txt).
_START_LIMIT_LINE = "Start request repeated too quickly."


@dataclass
class Supervised:
    """What the supervisor (systemd or Docker) says about the service of an instance."""

    kind: str  # "systemd" or "docker"
    name: str
    restarts: int = 0
    state: str = "unknown"  # systemd ActiveState, or Docker's State.Status ("missing": no such container)
    sub_state: str = ""  # systemd SubState ("auto-restart" between two starts)
    result: str = ""  # systemd Result (success, exit-code, signal, start-limit-hit ...)
    main_pid: int = 0
    started_ago_s: float | None = None  # seconds since the current main process started
    exit_code: int | None = None  # last exit, when the supervisor still knows it
    exit_detail: str = ""
    error: str = ""  # the supervisor could not be asked
    start_limit_hit: bool = False  # systemd: the start rate limit refused its last start

    @property
    def down(self) -> bool:
        """The service is not running and will not come back by itself."""
        if self.kind == "systemd":
            return self.state in _DOWN_SYSTEMD or self.result == "start-limit-hit"
        return self.state in _DOWN_DOCKER

    def describe(self) -> str:
        if self.error:
            return self.error
        what = f"{self.kind} {'unit' if self.kind == 'systemd' else 'container'} {self.name}"
        if self.kind == "systemd" and (self.start_limit_hit or self.result == "start-limit-hit"):
            last_exit = f"; last exit: {self.exit_detail}" if self.exit_detail else ""
            return (
                f"{what} hit its start rate limit (StartLimitBurst starts within StartLimitIntervalSec) after "
                f"{self.restarts} restart(s) and is failed (Result={self.result}); systemd will not start it "
                f"again until `systemctl reset-failed {self.name}` (or StartLimitIntervalSec has passed){last_exit}"
            )
        state = self.state + (f"/{self.sub_state}" if self.sub_state else "")
        parts = [f"{what} is {state}"]
        if self.kind == "systemd" and self.result and self.result != "success":
            parts.append(f"Result={self.result}")
        if self.kind == "systemd" and self.state == "inactive" and self.result == "success":
            parts.append("its server exited with status 0 or was stopped, and was not restarted")
        if self.exit_detail:
            parts.append(f"last exit: {self.exit_detail}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "restarts": self.restarts,
            "state": self.state,
            "sub_state": self.sub_state,
            "result": self.result,
            "main_pid": self.main_pid,
            "started_ago_s": None if self.started_ago_s is None else round(self.started_ago_s, 1),
            "exit_code": self.exit_code,
            "exit_detail": self.exit_detail,
            "start_limit_hit": self.start_limit_hit or (self.kind == "systemd" and self.result == "start-limit-hit"),
        }


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def parse_systemctl_show(out: str) -> dict[str, str]:
    """``systemctl show`` output (``Key=value`` lines) as a dict."""
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def last_main_exit(journal: str) -> str:
    """The last exit of a unit's main process that systemd logged, as "code=..., status=...", or "".

    systemd 252 logs "Main process exited, code=..., status=..." (at its default log level) only
    for an exit that failed or a signal; an exit with status 0 it logs as "Deactivated
    successfully." alone (captured: tests/fixtures/supervisor/journal_restarts.txt). The same line
    after "Stopping ..." is an operator's stop (or restart), not the server's own exit.
    """
    last = ""
    stopping = False
    for line in (journal or "").splitlines():
        match = _MAIN_EXITED.search(line)
        if match:
            last = f"code={match['code']}, status={match['status']}"
        elif line.startswith("Stopping "):
            stopping = True
        elif line.startswith("Started "):
            stopping = False
        elif line.endswith(": Deactivated successfully."):
            last = "stopped by systemd (systemctl stop or restart)" if stopping else "code=exited, status=0/SUCCESS"
    return last


def start_limit_refused(journal: str) -> bool:
    """Whether systemd's journal about a unit says the start rate limit refused its latest start."""
    lines = (journal or "").splitlines()
    refused = [i for i, line in enumerate(lines) if _START_LIMIT_LINE in line]
    started = [i for i, line in enumerate(lines) if line.startswith(("Started ", "Starting "))]
    return bool(refused) and (not started or refused[-1] > started[-1])


def systemd_state(
    run: Runner, unit: str, monotonic: Callable[[], float] = time.monotonic, journal: bool = False
) -> Supervised:
    """Read a unit's state with ``systemctl show`` (and, with ``journal``, its last exit from the journal).

    A failed unit's journal is always read: only there does systemd say that the start rate limit
    stopped a crash loop of exits with an error (``Result`` then stays ``exit-code`` or ``signal``).
    """
    cmd = ["systemctl", "show", *[arg for prop in SYSTEMD_PROPERTIES for arg in ("-p", prop)], unit]
    rc, out, err = run(cmd)
    if rc != 0:
        return Supervised("systemd", unit, error=f"systemctl show {unit} failed (rc={rc}): {(err or out).strip()}")
    props = parse_systemctl_show(out)
    if props.get("LoadState") == "not-found":
        return Supervised("systemd", unit, state="not-found", error=f"systemd unit {unit} does not exist (not-found)")
    sup = Supervised(
        "systemd",
        unit,
        restarts=_int(props.get("NRestarts")),
        state=props.get("ActiveState", "unknown"),
        sub_state=props.get("SubState", ""),
        result=props.get("Result", ""),
        main_pid=_int(props.get("MainPID")),
    )
    started_us = _int(props.get("ExecMainStartTimestampMonotonic"))
    if started_us > 0 and sup.main_pid:
        sup.started_ago_s = max(0.0, monotonic() - started_us / 1e6)
    code = _CLD_CODES.get(props.get("ExecMainCode", "0"))
    if code and not sup.main_pid:  # the main process is gone: systemd still holds how it ended
        sup.exit_code = _int(props.get("ExecMainStatus"))
        sup.exit_detail = f"code={code}, status={sup.exit_code}"
    failed = sup.state == "failed" and sup.result != "start-limit-hit"
    if failed or (journal and not sup.exit_detail):
        jrc, jout, _ = run(["journalctl", "--no-pager", "-o", "cat", "-n", "50", f"UNIT={unit}", "_PID=1"])
        if jrc == 0 and failed:
            sup.start_limit_hit = start_limit_refused(jout)
        if jrc == 0 and not sup.exit_detail:
            sup.exit_detail = last_main_exit(jout)
            status = sup.exit_detail.rpartition("status=")[2].split("/")[0]
            sup.exit_code = int(status) if status.isdigit() else None
    return sup


def _docker_time(value: str) -> float | None:
    """Docker's RFC 3339 timestamp (nanoseconds, UTC) -> epoch seconds; None for the zero time."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", value.strip())
    if not match or value.startswith("0001-"):
        return None
    base, frac, zone = match.groups()
    offset = 0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    stamp = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return stamp + (float(f"0.{frac}") if frac else 0.0) - offset


def docker_state(run: Runner, container: str, now: Callable[[], float] = time.time) -> Supervised:
    """Read a container's restart count and state with ``docker inspect``."""
    rc, out, err = run(["docker", "inspect", "-f", "{{.RestartCount}} {{json .State}}", container])
    if rc != 0:
        return Supervised(
            "docker",
            container,
            state="missing",
            error=f"docker container {container} is missing ({(err or out).strip()})",
        )
    count, _, state_json = out.strip().partition(" ")
    try:
        state = json.loads(state_json)
    except ValueError:
        state = {}
    if not isinstance(state, dict):
        state = {}
    sup = Supervised(
        "docker",
        container,
        restarts=_int(count),
        state=str(state.get("Status") or "unknown"),
        main_pid=_int(state.get("Pid")),
    )
    started = _docker_time(str(state.get("StartedAt") or ""))
    if started is not None and state.get("Running"):
        sup.started_ago_s = max(0.0, now() - started)
    if not state.get("Running") or state.get("Restarting"):
        sup.exit_code = _int(state.get("ExitCode"))
        detail = f"exit code {sup.exit_code}"
        if state.get("OOMKilled"):
            detail += " (OOM-killed)"
        if state.get("Error"):
            detail += f": {state['Error']}"
        sup.exit_detail = detail
    return sup


@dataclass
class WaitResult:
    healthy: bool
    waited_s: float
    restarts: int = 0
    reason: str = ""
    models: list[str] = field(default_factory=list)
    max_model_len: dict[str, int] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)


# The server's supervisor (the llmfleet.fleet.endpoint doc fragment's SUPERVISOR): what llm_health and
# vllm_wait read restarts and state from. Pass SUPERVISOR_EXCLUSIVE as mutually_exclusive.
SUPERVISOR_ARGS: dict[str, dict[str, Any]] = {"systemd_unit": {"type": "str"}, "container": {"type": "str"}}
SUPERVISOR_EXCLUSIVE = [("systemd_unit", "container")]


def http_get(url: str, api_key: str | None, timeout: float, validate_certs: bool = True) -> tuple[int, bytes]:
    """GET; (status, body), or (0, b"") when nothing answered."""
    try:
        resp = request("GET", url, headers=auth_headers(api_key), timeout=timeout, validate_certs=validate_certs)
    except EndpointError:
        return 0, b""
    return resp.status, resp.body


def http_post(
    url: str, payload: dict[str, Any], api_key: str | None, timeout: float, validate_certs: bool = True
) -> tuple[int, bytes, str]:
    """POST JSON; (status, body, error): status 0 and the transport error when nothing answered."""
    try:
        resp = request("POST", url, payload, auth_headers(api_key), timeout, validate_certs)
    except EndpointError as exc:
        return 0, b"", str(exc)
    return resp.status, resp.body, ""


def parse_models(body: bytes) -> tuple[list[str], dict[str, int]]:
    try:
        data = json.loads(body.decode() or "{}").get("data") or []
    except (ValueError, AttributeError):
        return [], {}
    names = [str(m.get("id")) for m in data if isinstance(m, dict)]
    lens = {str(m.get("id")): int(m["max_model_len"]) for m in data if isinstance(m, dict) and m.get("max_model_len")}
    return names, lens


PROBE_PROMPT = "Say OK."
# A 4xx that means "these parameters are refused", not "the request never got in".
PROBE_REFUSED_OK = (400, 422)


def probe_payload(model: str, api: str = "chat", max_tokens: int = 4) -> dict[str, Any]:
    """A small greedy completion asking for logprobs, the way evaluation tools and SDKs ask."""
    extra: dict[str, Any] = {"logprobs": True, "top_logprobs": 3} if api == "chat" else {"logprobs": 3}
    return completion_payload(model, PROBE_PROMPT, max_tokens, api, 0.0, extra=extra)


def _summary(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
        if isinstance(payload, dict):
            err = payload.get("error", payload.get("detail", payload.get("message")))
            if isinstance(err, dict):
                err = err.get("message", err)
            if err:
                text = str(err)
    except ValueError:
        pass
    return text[:300]


def run_probe(
    base_url: str,
    model: str,
    api_key: str | None,
    api: str,
    timeout: float,
    post: Callable[[str, dict[str, Any], str | None, float], tuple[int, bytes, str]] = http_post,
) -> tuple[bool, dict[str, Any]]:
    """Send the probe; (answered, facts). A clean 400/422 (parameters refused) counts as answered."""
    url = base_url.rstrip("/") + completion_path(api)
    status, body, error = post(url, probe_payload(model, api), api_key, timeout)
    facts: dict[str, Any] = {"api": api, "model": model, "http_status": status}
    if status == 200:
        try:
            choice = (json.loads(body.decode()).get("choices") or [{}])[0]
        except (ValueError, AttributeError, UnicodeDecodeError):
            facts["detail"] = f"{completion_path(api)} answered 200 with a body that is not a completion"
            return False, facts
        facts["logprobs"] = bool(choice.get("logprobs")) if isinstance(choice, dict) else False
        facts["detail"] = "answered 200" + ("" if facts["logprobs"] else " (without logprobs)")
        return True, facts
    if status in PROBE_REFUSED_OK:
        facts["detail"] = f"refused the parameters cleanly: HTTP {status}: {_summary(body)}"
        return True, facts
    if status == 0:
        facts["detail"] = f"no answer: {error} (the server may have died on it)"
    else:
        facts["detail"] = f"HTTP {status}: {_summary(body)}"
    return False, facts


def wait_healthy(
    base_url: str,
    expect_models: list[str],
    timeout: float,
    interval: float,
    api_key: str | None = None,
    supervisor: Callable[[], Supervised] | None = None,
    max_restarts: int = 2,
    get: Callable[[str, str | None, float], tuple[int, bytes]] = http_get,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    probe: bool = True,
    probe_api: str = "chat",
    probe_timeout: float = 180.0,
    post: Callable[[str, dict[str, Any], str | None, float], tuple[int, bytes, str]] = http_post,
) -> WaitResult:
    """Poll until /health is 200, /v1/models lists every expected name and the probe answered.

    Gives up when ``timeout`` passes, or as soon as the supervisor reports more than
    ``max_restarts`` restarts since the wait began, or a service that is down for good (a failed
    unit, one that hit its start rate limit, an inactive unit, an exited container).
    """
    start = clock()
    base = supervisor() if supervisor else None
    base_restarts = base.restarts if base else 0
    restarts = 0
    reason = "timed out"
    probe_facts: dict[str, Any] = {}
    while True:
        status, _ = get(base_url.rstrip("/") + "/health", None, min(10.0, max(interval, 1.0)))
        if status != 200:
            reason = "nothing answers on /health" if status == 0 else f"/health answered {status}"
        else:
            mstatus, body = get(base_url.rstrip("/") + "/v1/models", api_key, 10.0)
            names, lens = parse_models(body) if mstatus == 200 else ([], {})
            missing = [m for m in expect_models if m not in names]
            if mstatus == 200 and not missing:
                model = (expect_models or names or [""])[0]
                if not probe or not model:
                    return WaitResult(True, clock() - start, restarts, "", names, lens)
                left = max(1.0, timeout - (clock() - start))
                answered, probe_facts = run_probe(base_url, model, api_key, probe_api, min(probe_timeout, left), post)
                if answered:
                    return WaitResult(True, clock() - start, restarts, "", names, lens, probe_facts)
                reason = f"the probe request ({probe_api} completion with logprobs) failed: {probe_facts['detail']}"
            else:
                reason = (
                    f"/v1/models answered {mstatus}"
                    if mstatus != 200
                    else f"/v1/models lists {names}, missing {missing}"
                )
        if supervisor:
            sup = supervisor()
            restarts = max(0, sup.restarts - base_restarts)
            if restarts > max_restarts:
                return WaitResult(
                    False,
                    clock() - start,
                    restarts,
                    f"the service restarted {restarts} times while starting (crash loop); "
                    f"{sup.describe()}; last: {reason}",
                    probe=probe_facts,
                )
            if sup.down or sup.error:
                return WaitResult(
                    False, clock() - start, restarts, f"{sup.describe()}; last: {reason}", probe=probe_facts
                )
        if clock() - start >= timeout:
            return WaitResult(False, clock() - start, restarts, f"{reason} after {timeout:.0f} s", probe=probe_facts)
        sleep(interval)
