"""The health gate's decisions: healthy, crash loop, failed unit, timeout, missing served name.

The HTTP side and the supervisor are driven by scripted sequences here; the real servers are
exercised by the vllm_service molecule scenarios (a broken dtype must fail in seconds and roll back).
"""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.llmfleet_wait import docker_restarts, parse_models, systemd_restarts, wait_healthy

MODELS = json.dumps({"data": [{"id": "smol", "max_model_len": 2048}]}).encode()


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


def test_healthy_once_health_and_models_answer():
    clock = Clock()
    get = scripted([(0, b""), (200, b""), (200, MODELS)])
    r = wait_healthy("http://x", ["smol"], 60, 5, get=get, clock=clock, sleep=clock.sleep)
    assert r.healthy and r.models == ["smol"] and r.max_model_len == {"smol": 2048}
    assert r.waited_s == 5


def test_missing_served_name_keeps_waiting_then_times_out():
    clock = Clock()
    get = scripted([(200, b""), (200, MODELS)] * 10)
    r = wait_healthy("http://x", ["other"], 20, 5, get=get, clock=clock, sleep=clock.sleep)
    assert not r.healthy
    assert "missing ['other']" in r.reason and "after 20 s" in r.reason


@pytest.mark.parametrize(
    ("supervisor_states", "expected"),
    [
        ([(4, "activating"), (5, "activating"), (6, "activating"), (7, "activating")], "restarted 3 times"),
        ([(0, "active"), (0, "failed")], "the service is failed"),
        ([(0, "running"), (0, "exited")], "the service is exited"),
    ],
)
def test_crash_loop_or_failed_service_gives_up_early(supervisor_states, expected):
    clock = Clock()
    states = iter(supervisor_states)
    r = wait_healthy("http://x", [], 600, 5, supervisor=lambda: next(states), max_restarts=2,
                     get=scripted([(0, b"")] * 10), clock=clock, sleep=clock.sleep)
    assert not r.healthy and expected in r.reason
    assert r.waited_s < 60


def test_401_on_models_is_reported():
    clock = Clock()
    r = wait_healthy("http://x", ["smol"], 5, 5, get=scripted([(200, b""), (401, b"")] * 3),
                     clock=clock, sleep=clock.sleep)
    assert not r.healthy and "/v1/models answered 401" in r.reason


def test_supervisor_parsers():
    assert systemd_restarts(lambda cmd: (0, "NRestarts=3\nActiveState=activating\n", ""), "u") == (3, "activating")
    assert systemd_restarts(lambda cmd: (1, "", "no such unit"), "u") == (0, "unknown")
    assert docker_restarts(lambda cmd: (0, "2 restarting\n", ""), "c") == (2, "restarting")
    assert docker_restarts(lambda cmd: (1, "", "No such object"), "c") == (0, "missing")


def test_parse_models_tolerates_garbage():
    assert parse_models(b"not json") == ([], {})
    assert parse_models(MODELS) == (["smol"], {"smol": 2048})
