"""The model gateway on the shared test lab: LiteLLM's proxy on the gateway host in front of the lab's
vLLM instances (both runtimes), its Slurm job and its model pipeline's llama.cpp servers, the
model_mappings registry in PostgreSQL, the admin CLI.

Everything here talks to what the lab converge already runs: the gateway (its port is the
inventory's model_gateway_port, on this machine's host network) and the vLLM instances behind it.
The key rotations and the kill -9 test are marked ``disruptive`` (make test runs them after the
read-only tests).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
import testinfra
from llmfleet import models as registry_cli
from llmfleet import runner
from llmfleet.paths import cache_dir, lab_name
from llmfleet_lab import containers as lab

pytestmark = [pytest.mark.lab]

ASK = "What is the capital of France? Answer in one sentence."
CONFIG_DIR = "/etc/llmfleet-gateway"
# The lab CA the role made on this machine (group_vars/gateway: model_gateway_tls_ca_dir).
LAB_CA = cache_dir() / "lab-ca" / lab_name() / "ca.crt"
TRUSTED = ssl.create_default_context(cafile=str(LAB_CA)) if LAB_CA.exists() else None
# The formats model_pipeline serves (roles/model_pipeline/defaults: model_pipeline_serve_formats),
# one llama.cpp server each on the model's port and the next ones.
PIPELINE_FORMATS = ["Q4_K_M", "Q5_K_M", "Q8_0", "F16"]


def _hosts(group: str) -> list[lab.LabHost]:
    return [h for h in lab.read_inventory() if group in h.groups]


@pytest.fixture(scope="module")
def inventory() -> dict[str, list[lab.LabHost]]:
    found = {g: _hosts(g) for g in ("gateway", "inference_nodes", "slurm_login", "model_workstations")}
    if not found["gateway"]:
        pytest.fail(f"the lab inventory {lab.lab_inventory_path()} has no host in group gateway")
    return found


@pytest.fixture(scope="module")
def gateway(inventory) -> dict:
    host = inventory["gateway"][0]
    ti = testinfra.get_host(f"docker://{host.name}")

    def read(name: str) -> str:
        return ti.file(f"{CONFIG_DIR}/keys/{name}.key").content_string.strip()

    return {
        "lab": host,
        "host": ti,
        "url": f"https://127.0.0.1:{host.hostvars['model_gateway_port']}",
        "master": read("master"),
        "client": read("client-lab-client"),
        "limited": read("client-lab-limited"),
        "pg_port": host.hostvars["model_gateway_registry_port"],
    }


def _backend_address(host: lab.LabHost) -> str:
    return host.hostvars.get("fleet_service_address") or lab.container_address(host.name)


@pytest.fixture(scope="module")
def backends(inventory) -> list[dict]:
    """Every backend of the lab, as the gateway should see it: id, base URL, key, catalog name. The
    Slurm job's (runtime "slurm") from its connection info on the login host, at its node's lab
    address; each pipeline llama.cpp server (runtime "llamacpp": a model of its own, no key)."""
    out = []
    for login in inventory["slurm_login"]:
        ti = testinfra.get_host(f"docker://{login.name}")
        job = f"vllm-{login.hostvars['slurm_job_instance']['name']}"
        info_file = f"{login.hostvars['slurm_job_shared_dir']}/jobs/{job}/connection.json"
        info = json.loads(ti.file(info_file).content_string)
        out.append(
            {
                "id": f"{login.name}/{job}",
                "url": f"http://{info['address']}:{info['port']}/v1",
                "served": info["served_model_names"][0],
                "key": ti.file(info["api_key_file"]).content_string.strip(),
                "host": info["node"],
                "instance": job,
                "runtime": "slurm",
                "name": "smollm2-135m",
            }
        )
    for host in inventory["inference_nodes"]:
        ti = testinfra.get_host(f"docker://{host.name}")
        for inst in host.hostvars.get("vllm_service_instances", []):
            out.append(
                {
                    "id": f"{host.name}/{inst['name']}",
                    "url": f"http://{_backend_address(host)}:{inst['port']}/v1",
                    "served": inst.get("served_model_name") or "smollm2-135m",
                    "key": ti.file(f"/etc/vllm/{inst['name']}.apikey").content_string.strip(),
                    "host": host.name,
                    "instance": inst["name"],
                    "runtime": host.hostvars.get("vllm_service_runtime"),
                    "name": "smollm2-135m",
                }
            )
    for host in inventory["model_workstations"]:
        for model in host.hostvars.get("model_pipeline_models", []):
            for offset, fmt in enumerate(PIPELINE_FORMATS):
                served = f"{model['name']}-{fmt.lower()}"
                out.append(
                    {
                        "id": f"{host.name}/llamacpp-{served}",
                        "url": f"http://{_backend_address(host)}:{int(model['port']) + offset}/v1",
                        "served": served,
                        "key": "",
                        "host": host.name,
                        "instance": served,
                        "runtime": "llamacpp",
                        "name": served,
                    }
                )
    return out


def chat(
    url: str, key: str | None, model: str = "smollm2-135m", max_tokens: int = 24, timeout: float = 120, context=None
):
    """One chat completion: (HTTP status, headers, parsed body or error text). HTTPS trusts the lab CA."""
    body = {"model": model, "messages": [{"role": "user", "content": ASK}], "temperature": 0, "max_tokens": max_tokens}
    req = urllib.request.Request(
        f"{url.rstrip('/')}/chat/completions" if url.endswith("/v1") else f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    try:
        ctx = context or (TRUSTED if url.startswith("https:") else None)
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode(errors="replace")


def _answer(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


def _rows(gateway) -> list[dict]:
    sql = (
        "SELECT json_agg(t ORDER BY backend_id) FROM (SELECT name, display_name, backend_url, backend_id, "
        "input_cost, output_cost, state, source FROM model_mappings) t"
    )
    out = gateway["host"].check_output(f"su postgres -c \"psql -p {gateway['pg_port']} -d llmfleet -At -c '{sql}'\"")
    return json.loads(out or "[]") or []


def test_every_lab_backend_is_in_the_generated_config(gateway, backends, inventory):
    import yaml

    config = yaml.safe_load(gateway["host"].file(f"{CONFIG_DIR}/config.yaml").content_string)
    deployed = {e["model_info"]["id"]: e for e in config["model_list"]}
    assert {b["id"] for b in backends} <= set(deployed), deployed.keys()
    runtimes = {b["runtime"] for b in backends}
    expected = {"systemd", "docker", "slurm"} | ({"llamacpp"} if inventory["model_workstations"] else set())
    assert runtimes == expected, "both runtimes, the Slurm job and the pipeline's servers must be behind the gateway"
    keyed = [b for b in backends if b["key"]]
    assert {b["runtime"] for b in keyed} == {"systemd", "docker", "slurm"}, "every vLLM backend has a key"
    for b in backends:
        params = deployed[b["id"]]["litellm_params"]
        assert params["api_base"] == b["url"]
        if b["runtime"] == "llamacpp":  # a model of its own, by its served name
            assert deployed[b["id"]]["model_name"] == b["served"]
        # Keys are never written into config.yaml (nor into the environment): the proxy's callback
        # reads them from backend_keys.json, which it re-reads when it changes. A backend served
        # without a key (the llama.cpp servers) gets LiteLLM's "none".
        assert params["api_key"] == ("llmfleet-backend-keys-file" if b["key"] else "none")
        assert not b["key"] or b["key"] not in json.dumps(config)
    env = gateway["host"].file(f"{CONFIG_DIR}/gateway.env")
    assert env.mode == 0o600 and env.user == "root"
    assert not any(b["key"] in env.content_string for b in keyed)
    keys = gateway["host"].file(f"{CONFIG_DIR}/backend_keys.json")
    assert keys.mode == 0o600 and keys.user == gateway["lab"].hostvars.get("model_gateway_user", "llmfleet-gateway")
    assert {b["id"]: b["key"] for b in keyed} == {
        i: e["key"] for i, e in json.loads(keys.content_string).items() if i in {b["id"] for b in backends}
    }


def test_same_greedy_answer_through_the_gateway_as_from_a_backend(gateway, backends):
    direct = next(b for b in backends if b["runtime"] == "docker")
    status, _, body = chat(direct["url"], direct["key"], model=direct["served"])
    assert status == 200, body
    status, _, via = chat(gateway["url"], gateway["client"])
    assert status == 200, via
    # float32 greedy decoding of the same weights: the same words from every backend.
    assert _answer(via).split() == _answer(body).split()
    assert "Paris" in _answer(via)


def test_tls_a_client_trusting_the_lab_ca_gets_the_answer_one_that_does_not_is_refused(gateway, backends):
    assert LAB_CA.exists(), f"the lab CA {LAB_CA} was not made by the converge"
    direct = next(b for b in backends if b["runtime"] == "docker")
    _, _, body = chat(direct["url"], direct["key"], model=direct["served"])
    status, _, via = chat(gateway["url"], gateway["client"], context=TRUSTED)
    assert status == 200 and _answer(via).split() == _answer(body).split()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        chat(gateway["url"], gateway["client"], context=ssl.create_default_context())
    # Plain HTTP on the TLS port gets no answer.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        chat(gateway["url"].replace("https:", "http:"), gateway["client"], timeout=10)


def test_requests_without_a_valid_key_get_401(gateway):
    assert chat(gateway["url"], None)[0] == 401
    assert chat(gateway["url"], "sk-not-a-key")[0] == 401


def test_a_caller_over_its_rpm_limit_gets_429(gateway):
    # lab-limited may call 3 times a minute (group_vars/gateway); the 4th and 5th are refused.
    statuses = [chat(gateway["url"], gateway["limited"], max_tokens=1)[0] for _ in range(5)]
    assert set(statuses) <= {200, 429} and statuses[-2:] == [429, 429], statuses


def test_the_slurm_job_is_a_backend_and_answers_through_the_gateway(gateway, backends):
    """The job the converge submitted (its connection info read on the login host by the gateway's
    converge) gets requests through the gateway and answers them."""
    job = next((b for b in backends if b["runtime"] == "slurm"), None)
    assert job, "the lab has a Slurm login host: its job must be a backend"
    assert chat(job["url"], job["key"], model=job["served"], max_tokens=1)[0] == 200, "the job does not answer directly"
    keys = json.loads(gateway["host"].file(f"{CONFIG_DIR}/backend_keys.json").content_string)
    assert keys[job["id"]] == {"api_base": job["url"], "key": job["key"]}
    assert "Paris" in _answer(_assert_gets_traffic_again(gateway, job["id"], max_tokens=24))


def test_reported_cost_is_tokens_times_catalog_prices(gateway, inventory):
    prices = inventory["gateway"][0].hostvars["fleet_models"]["smollm2-135m"]
    status, headers, body = chat(gateway["url"], gateway["client"])
    assert status == 200, body
    usage = body["usage"]
    expected = (
        usage["prompt_tokens"] * prices["cost_per_million_input_tokens"]
        + usage["completion_tokens"] * prices["cost_per_million_output_tokens"]
    ) / 1e6
    headers = {k.lower(): v for k, v in headers.items()}
    assert expected > 0
    assert float(headers["x-litellm-response-cost"]) == pytest.approx(expected, rel=1e-6)


def test_registry_rows_match_the_catalog_and_the_inventory(gateway, backends, inventory):
    catalog = inventory["gateway"][0].hostvars["fleet_models"]
    rows = {r["backend_id"]: r for r in _rows(gateway) if r["source"] == "catalog"}
    assert set(rows) == {b["id"] for b in backends}
    for b in backends:
        row = rows[b["id"]]
        assert row["name"] == b["name"] and row["backend_url"] == b["url"]
        # A model the catalog does not price (the pipeline's servers, unless given an entry) costs 0.
        prices = catalog.get(b["name"], {})
        assert row["input_cost"] == prices.get("cost_per_million_input_tokens", 0)
        assert row["output_cost"] == prices.get("cost_per_million_output_tokens", 0)
        # llama.cpp servers have no /health: the gateway probes their /v1/models (gateway_health_url).
        assert row["state"] == "healthy", row


def test_models_add_list_remove_through_the_cli(gateway, backends, capsys):
    direct = next(b for b in backends if b["runtime"] == "docker")
    inv = str(lab.lab_inventory_path())
    try:
        rc = registry_cli.run(
            "add",
            inventory=inv,
            name="lab-extra",
            display_name="Lab extra",
            backend_url=direct["url"],
            backend_model=direct["served"],
            kind="vllm",
            input_cost=1.0,
            output_cost=2.0,
            apply=False,
        )
        assert rc == 0
        added = {r["backend_id"]: r for r in _rows(gateway)}["cli/lab-extra"]
        assert (added["source"], added["backend_url"], added["input_cost"], added["output_cost"]) == (
            "cli",
            direct["url"],
            1.0,
            2.0,
        )
        # The catalog's rows are untouched by the CLI.
        assert {r["backend_id"] for r in _rows(gateway) if r["source"] == "catalog"} == {b["id"] for b in backends}
        capsys.readouterr()
        assert registry_cli.run("list", inventory=inv, as_json=True) == 0
        listed = {r["backend_id"]: r for r in json.loads(capsys.readouterr().out)}
        assert listed["cli/lab-extra"]["health"] == "healthy"
        assert all(listed[b["id"]]["health"] == "healthy" for b in backends)
        # A catalog model cannot be added from the CLI: git owns it.
        assert registry_cli.run("add", inventory=inv, name="smollm2-135m", backend_url=direct["url"], apply=False) != 0
    finally:
        assert registry_cli.run("remove", inventory=inv, name="lab-extra", apply=False) == 0
    assert "cli/lab-extra" not in {r["backend_id"] for r in _rows(gateway)}


class Load:
    """Steady load through the gateway at a fixed concurrency; counts failures and backends used."""

    def __init__(self, url: str, key: str, concurrency: int = 8):
        self.url, self.key, self.concurrency = url, key, concurrency
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: list[str] = []
        self.used: Counter = Counter()
        self.latencies: list[float] = []
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)]

    def _worker(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                status, headers, body = chat(self.url, self.key, max_tokens=8, timeout=120)
            except Exception as exc:  # a refused connection, a timeout: a failed request
                status, headers, body = -1, {}, repr(exc)
            with self.lock:
                if status == 200:
                    self.ok += 1
                    self.used[{k.lower(): v for k, v in headers.items()}.get("x-litellm-model-id", "?")] += 1
                    self.latencies.append(time.monotonic() - t0)
                else:
                    self.failed.append(f"{status}: {str(body)[:200]}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)


def _wait_healthy(url: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    raise AssertionError(f"{url} did not become healthy again within {timeout_s:.0f} s")


def _rotate_keys(extravars: dict | None = None) -> None:
    """The key rotation runbook (playbooks/runbooks/gateway_keys.yml): writes keys.json only."""
    rc, summary, path = runner.run(
        runner.RunRequest(
            playbook="playbooks/runbooks/gateway_keys.yml",
            inventory=str(lab.lab_inventory_path()),
            quiet=True,
            extravars=extravars or {},
        )
    )
    assert rc == 0, f"the key rotation runbook failed: {summary.get('failed_tasks')} ({path})"


@pytest.mark.disruptive
def test_client_key_rotation_under_load_loses_no_request(gateway):
    """A caller moves from its key to a new one as docs/model_gateway.md says, under load the whole
    time: add the new key, move the caller, retire the old key. Only keys.json changes; the proxy is
    not restarted; not one request fails. The inventory's keys are put back at the end."""
    old_key, new_key = gateway["client"], "sk-rotation-" + "".join(f"{b:02x}" for b in os.urandom(16))
    given = gateway["lab"].hostvars["model_gateway_client_keys"]
    others = [c for c in given if c["name"] != "lab-client"]
    pid_before = gateway["host"].check_output("systemctl show -p MainPID --value llmfleet-gateway.service")
    try:
        # Concurrency 2: requests in flight the whole time while the runbook runs on the lab's 2 cores
        # (at 4 each of its two runs took about 100 s in make test).
        with Load(gateway["url"], old_key, concurrency=2) as on_old:
            time.sleep(2)
            _rotate_keys({"model_gateway_client_keys": [*given, {"name": "lab-client-next", "key": new_key}]})
            assert chat(gateway["url"], new_key, max_tokens=1)[0] == 200
        with Load(gateway["url"], new_key, concurrency=2) as on_new:
            time.sleep(2)
            # The old key retired: the caller is on the new one.
            _rotate_keys({"model_gateway_client_keys": [*others, {"name": "lab-client-next", "key": new_key}]})
            assert chat(gateway["url"], old_key, max_tokens=1)[0] == 401
        assert on_old.failed == [] and on_new.failed == [], (on_old.failed[:3], on_new.failed[:3])
        assert on_old.ok > 0 and on_new.ok > 0
    finally:
        _rotate_keys()  # the inventory's keys again: lab-client's kept key back, the test's key gone
    assert chat(gateway["url"], new_key, max_tokens=1)[0] == 401
    assert chat(gateway["url"], old_key, max_tokens=1)[0] == 200
    pid_after = gateway["host"].check_output("systemctl show -p MainPID --value llmfleet-gateway.service")
    assert pid_after == pid_before, "a key rotation must not restart the proxy"


@pytest.mark.disruptive
def test_kill_9_of_a_backend_under_load_loses_no_request_and_traffic_returns(gateway, backends):
    """Also vllm_service's systemd supervision test (it was a second kill -9 of the same instance in
    test_lab_vllm_service.py, 95 s of make test): the unit comes back by itself under a new PID and
    answers with its key."""
    victim = next(b for b in backends if b["runtime"] == "systemd")
    ti = testinfra.get_host(f"docker://{victim['host']}")
    unit = f"vllm-{victim['instance']}.service"
    with Load(gateway["url"], gateway["client"], concurrency=8) as load:
        time.sleep(8)
        pid = ti.check_output(f"systemctl show -p MainPID --value {unit}").strip()
        assert pid not in ("", "0"), f"{unit} has no main process"
        ti.run_expect([0], f"kill -9 {pid}")
        time.sleep(20)
    assert load.failed == [], f"{len(load.failed)} failed of {load.ok + len(load.failed)}: {load.failed[:3]}"
    assert load.ok > 0
    # systemd brings it back (Restart=always); once healthy and out of cooldown it gets traffic again.
    _wait_healthy(victim["url"])
    after = ti.check_output(f"systemctl show -p MainPID --value {unit}").strip()
    assert after not in ("", "0", pid), f"{unit}: main PID {after!r} after kill -9 of {pid}"
    assert chat(victim["url"], victim["key"], max_tokens=1)[0] == 200, f"{unit} does not answer with its key"
    _assert_gets_traffic_again(gateway, victim["id"])


def _assert_gets_traffic_again(gateway, backend_id: str, max_tokens: int = 1) -> dict:
    """Once out of its cooldown, the backend answers one of at most 60 requests through the gateway
    (the lab's 4 backends of the model, shuffled: missed 60 times with odds 0.75^60, about 3e-8).
    Returns the body of its answer."""
    time.sleep(int(gateway["lab"].hostvars.get("model_gateway_cooldown_time", 5)) + 1)
    used: Counter = Counter()
    for _ in range(60):
        status, headers, body = chat(gateway["url"], gateway["client"], max_tokens=max_tokens)
        assert status == 200, body
        served_by = {k.lower(): v for k, v in headers.items()}.get("x-litellm-model-id")
        used[served_by] += 1
        if served_by == backend_id:
            return body
    raise AssertionError(f"no request went (back) to {backend_id}: {dict(used)}")


def _gateway_pid(gateway) -> str:
    return gateway["host"].check_output("systemctl show -p MainPID --value llmfleet-gateway.service").strip()


@pytest.mark.disruptive
def test_backend_key_rotation_under_load_loses_no_request_and_traffic_returns(gateway, backends):
    """playbooks/runbooks/backend_key.yml on the systemd host's instance under steady load: the
    instance restarts on a new key, the gateway's backend_keys.json follows (the proxy re-reads it,
    no restart), not one request fails, the old key is refused by the backend and the rotated
    backend gets traffic through the gateway again."""
    victim = next(b for b in backends if b["runtime"] == "systemd" and b["served"] == "smollm2-135m")
    peers = [b for b in backends if b["served"] == victim["served"] and b["id"] != victim["id"]]
    assert peers, f"the lab needs a second backend of {victim['served']} for a loss-free rotation"
    ti = testinfra.get_host(f"docker://{victim['host']}")
    pid_before = _gateway_pid(gateway)
    # Concurrency 2: requests in flight the whole time, while leaving the restarting instance some of
    # the lab's 2 cores (at 4 the runbook took 287 s in make test, the slowest test there).
    with Load(gateway["url"], gateway["client"], concurrency=2) as load:
        time.sleep(2)
        rc, summary, path = runner.run(
            runner.RunRequest(
                playbook="playbooks/runbooks/backend_key.yml",
                inventory=str(lab.lab_inventory_path()),
                quiet=True,
                extravars={"backend_key_host": victim["host"], "backend_key_instance": victim["instance"]},
            )
        )
        time.sleep(2)
    assert rc == 0, f"the backend key runbook failed: {summary.get('failed_tasks')} ({path})"
    old_key, new_key = victim["key"], ti.file(f"/etc/vllm/{victim['instance']}.apikey").content_string.strip()
    victim["key"] = new_key  # for the tests after this one
    assert new_key and new_key != old_key
    assert load.failed == [], f"{len(load.failed)} failed of {load.ok + len(load.failed)}: {load.failed[:3]}"
    assert load.ok > 0
    assert chat(victim["url"], old_key, max_tokens=1)[0] == 401, "the backend must refuse its old key"
    assert chat(victim["url"], new_key, max_tokens=1)[0] == 200
    keys = json.loads(gateway["host"].file(f"{CONFIG_DIR}/backend_keys.json").content_string)
    assert keys[victim["id"]]["key"] == new_key
    assert _gateway_pid(gateway) == pid_before, "a backend key rotation must not restart the proxy"
    # Out of its cooldown, the rotated backend answers through the gateway with the new key.
    _assert_gets_traffic_again(gateway, victim["id"])


# A client of the lab that is not on the backends' network: a throwaway container on a network of
# its own. It reaches this machine (where the gateway listens, on the host network) through its
# network's bridge address, and nothing else of the lab: Docker isolates user-defined networks.
_CLIENT_SCRIPT = r"""
import http.client, json, socket, ssl, sys
spec = json.loads(sys.argv[1])
out = {}
body = json.dumps({"model": spec["model"], "messages": [{"role": "user", "content": spec["ask"]}],
                   "temperature": 0, "max_tokens": 24})
for b in spec["direct"]:
    try:
        c = http.client.HTTPConnection(b["host"], b["port"], timeout=5)
        c.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer " + b["key"],
                                                           "Content-Type": "application/json"})
        out[b["id"]] = "answered %d" % c.getresponse().status
    except OSError as exc:
        out[b["id"]] = "unreachable: %r" % exc
ctx = ssl.create_default_context(cafile="/lab-ca.crt")
sock = socket.create_connection((spec["gateway_host"], spec["gateway_port"]), timeout=120)
c = http.client.HTTPSConnection(spec["gateway_host"], spec["gateway_port"], timeout=120)
c.sock = ctx.wrap_socket(sock, server_hostname="localhost")
c.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer " + spec["client"],
                                                   "Content-Type": "application/json"})
r = c.getresponse()
out["gateway"] = {"status": r.status, "body": json.loads(r.read())}
print(json.dumps(out))
"""


def test_only_ingress_a_client_off_the_backend_network_gets_answers_only_through_the_gateway(gateway, backends):
    import subprocess
    from urllib.parse import urlsplit

    assert gateway["lab"].hostvars.get("fleet_only_ingress") is True, "the lab runs with fleet_only_ingress: true"
    # The systemd instances listen on their host's backend address only, not on every interface.
    for b in backends:
        if b["runtime"] == "systemd":
            ti = testinfra.get_host(f"docker://{b['host']}")
            unit = ti.file(f"/etc/systemd/system/vllm-{b['instance']}.service").content_string
            assert f"--host {urlsplit(b['url']).hostname} " in unit, unit
    net = f"llmfleet-{lab_name()}-clients"
    docker = ["docker"]
    subprocess.run([*docker, "network", "rm", net], capture_output=True)
    subprocess.run(
        [*docker, "network", "create", "--label", f"io.llmfleet.lab={lab_name()}", net], check=True, capture_output=True
    )
    try:
        bridge = subprocess.run(
            [*docker, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", net],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        direct = []
        for b in backends:
            parts = urlsplit(b["url"])
            # A backend published on this machine's loopback is tried where a client would: at the
            # machine's address on the client's network.
            host = bridge if parts.hostname in ("127.0.0.1", "localhost") else parts.hostname
            direct.append({"id": b["id"], "host": host, "port": parts.port, "key": b["key"]})
        spec = {
            "model": "smollm2-135m",
            "ask": ASK,
            "direct": direct,
            "gateway_host": bridge,
            "gateway_port": int(gateway["lab"].hostvars["model_gateway_port"]),
            "client": gateway["client"],
        }
        run = subprocess.run(
            [
                *docker,
                "run",
                "--rm",
                "--network",
                net,
                "--label",
                f"io.llmfleet.lab={lab_name()}",
                "-v",
                f"{LAB_CA}:/lab-ca.crt:ro",
                lab.BASE_IMAGE,
                "python3",
                "-c",
                _CLIENT_SCRIPT,
                json.dumps(spec),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        seen = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([*docker, "network", "rm", net], capture_output=True)
    for b in backends:
        assert seen[b["id"]].startswith("unreachable"), f"{b['id']} answered a client off the backend network: {seen}"
    assert seen["gateway"]["status"] == 200, seen["gateway"]
    assert "Paris" in seen["gateway"]["body"]["choices"][0]["message"]["content"]
