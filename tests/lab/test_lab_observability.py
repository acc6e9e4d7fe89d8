"""The lab's Prometheus scrapes the lab's real vLLM instances; dashboards, rules and alert delivery.

After some traffic to the lab's vLLM, every PromQL expression of every panel of the provisioned
vLLM, node and Ray dashboards, every recording rule, and every series an alert reads, return data
through Prometheus' HTTP API: this proves the dashboards without a Grafana. The Ray panels need a
job to have run (``ray_tasks`` and ``ray_actors`` exist only after the first task and actor), so the
traffic includes one Ray job with tasks and an actor, submitted to the head's job API. The GPU (DCGM)
dashboard and rules have no exporter in the lab (no ``gpu_nodes``; the test checks that), and the Ray
nodes have no GPU, so those are checked here only for being evaluated without error; their PromQL is
parsed by promtool in tests/system/test_observability_files.py.

The disruptive test stops the second vLLM instance of the lab's systemd inference host: the
instance-down alert fires, Alertmanager delivers it to a webhook receiver this test runs on the
address the lab inventory gives (lab_alert_webhook_port: the observability host is on this
machine's host network), and starting the instance again resolves it.

The backup test (disruptive: it restores the database) writes rows into the langfuse database of the
observability host's PostgreSQL (Debian's, datastores host mode), runs the backup service for real,
changes and deletes rows, restores with playbooks/runbooks/observability_restore.yml through
llmfleet.runner and reads back exactly the rows it wrote.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from dashboards import VARIABLES, dashboard_exprs, substitute
from endpoint_registry import inventory_list
from llmfleet import runner
from llmfleet_lab import containers as lab_containers

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent.parent
LAB = os.environ.get("LLMFLEET_LAB", "lab")
INVENTORY = REPO / "inventories" / LAB / "hosts.yml"
# Dashboards and rule groups whose exporters the lab has no host for.
NO_EXPORTER_IN_LAB = {"gpu.json": "gpu_nodes", "llmfleet-gpu": "gpu_nodes"}
# Panels of a dashboard the lab runs whose metric needs a GPU (the lab's Ray nodes have none).
NO_GPU_IN_LAB = {("ray.json", "Node GPU utilization")}
# One Ray job with tasks and an actor: the Ray dashboard's task and actor panels have series only after one.
RAY_JOB = """
import ray
ray.init()
@ray.remote(num_cpus=0.1)
def square(x):
    return x * x
@ray.remote(num_cpus=0.1)
class Counter:
    def __init__(self):
        self.n = 0
    def add(self, k):
        self.n += k
        return self.n
counter = Counter.remote()
print("TOTAL", ray.get(counter.add.remote(sum(ray.get([square.remote(i) for i in range(8)])))))
"""
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _inventory() -> dict:
    return inventory_list(INVENTORY)


@pytest.fixture(scope="module")
def lab() -> dict:
    inventory = _inventory()
    hosts = inventory.get("observability", {}).get("hosts", [])
    if not hosts:
        pytest.fail(f"{INVENTORY} has no observability host")
    hostvars = inventory["_meta"]["hostvars"]
    obs = hostvars[hosts[0]]
    return {
        "inventory": inventory,
        "hostvars": hostvars,
        "prometheus": f"http://127.0.0.1:{obs.get('observability_stack_prometheus_port', 9090)}",
        "webhook_port": int(obs["lab_alert_webhook_port"]),
        "host": hosts[0],
        "postgres_port": int(obs.get("observability_stack_postgres_port", 5432)),
        "backup_dir": obs.get("observability_stack_backup_dir", "/var/backups/llmfleet"),
    }


def _get(url: str, timeout: float = 10.0) -> dict:
    request = urllib.request.Request(url)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def query(prometheus: str, expr: str) -> list:
    body = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _chat(url: str, model: str, key: str, prompt: str) -> None:
    payload = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=payload, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def traffic(lab, vllm_url, vllm_model, vllm_api_key) -> None:
    """A few real chat completions, then wait until the recording rules have seen them."""
    threads = [
        threading.Thread(target=_chat, args=(vllm_url, vllm_model, vllm_api_key, f"Count to {n}.")) for n in range(3, 9)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _ray_job(lab)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if query(lab["prometheus"], "llmfleet:vllm_generation_tokens:rate > 0"):
            return
        time.sleep(2)
    pytest.fail("Prometheus recorded no generation tokens 90 s after the traffic")


def _post(url: str, body: dict, timeout: float = 10.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def _ray_job(lab: dict) -> None:
    """Run RAY_JOB through the head's job API and wait until Prometheus has the task and actor series."""
    heads = lab["inventory"].get("ray_head", {}).get("hosts", [])
    if not heads:
        return
    port = lab["hostvars"][heads[0]].get("ray_cluster_dashboard_port", 8265)
    dashboard = f"http://{lab_containers.container_address(heads[0])}:{port}"
    job_id = f"test-observability-{int(time.time())}"
    _post(f"{dashboard}/api/jobs/", {"entrypoint": "python -c " + shlex.quote(RAY_JOB), "submission_id": job_id})
    deadline = time.monotonic() + 120
    status = "PENDING"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline and status in ("PENDING", "RUNNING"):
        time.sleep(2)
        with opener.open(f"{dashboard}/api/jobs/{job_id}", timeout=10) as response:
            status = json.loads(response.read())["status"]
    assert status == "SUCCEEDED", f"Ray job {job_id} on {heads[0]}: {status}"
    while time.monotonic() < deadline:
        if query(lab["prometheus"], "ray_tasks") and query(lab["prometheus"], "ray_actors"):
            return
        time.sleep(3)
    pytest.fail(f"Prometheus has no ray_tasks / ray_actors series 120 s after Ray job {job_id} was submitted")


def _has_data(result: list) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


# That every endpoint of the registry (vLLM instances, the Slurm job) is a target and up:
# tests/lab/test_lab_endpoints.py.


def test_every_dashboard_panel_returns_data(lab, traffic):
    assert not lab["inventory"].get("gpu_nodes", {}).get("hosts"), "the lab has gpu_nodes: check those dashboards too"
    missing = []
    for name, title, expr in dashboard_exprs():
        result = query(lab["prometheus"], substitute(expr))
        if name in NO_EXPORTER_IN_LAB or (name, title) in NO_GPU_IN_LAB:
            continue
        if not _has_data(result):
            missing.append(f"{name} / {title}: {expr}")
    assert not missing, "panels without data:\n" + "\n".join(missing)
    assert set(VARIABLES) >= {"$host", "$instance", "$model_name"}


def _metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (not functions, keywords, labels or numbers)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def test_every_rule_returns_data(lab, traffic):
    body = _get(f"{lab['prometheus']}/api/v1/rules")
    groups = body["data"]["groups"]
    assert {g["name"] for g in groups} >= {"llmfleet-vllm", "llmfleet-node", "llmfleet-gpu", "llmfleet-alerts"}
    problems = []
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("name")
            if rule["health"] != "ok":
                problems.append(f"{name}: {rule['health']} {rule.get('lastError', '')}")
                continue
            if group["name"] in NO_EXPORTER_IN_LAB:
                continue
            if rule["type"] == "recording":
                if not _has_data(query(lab["prometheus"], name)):
                    problems.append(f"recording rule {name} has no data")
                continue
            for series in _metric_names(rule["query"]):
                if series.startswith("DCGM_") or series.startswith("llmfleet:gpu_"):
                    continue
                if not query(lab["prometheus"], series):
                    problems.append(f"alert {name} reads {series}, which has no data")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------- alert delivery
class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _wait_for(receiver: type[_Receiver], status: str, instance: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in list(receiver.received):
            for alert in message.get("alerts", []):
                labels = alert["labels"]
                if (
                    labels.get("alertname") == "VLLMInstanceDown"
                    and labels.get("instance") == instance
                    and alert["status"] == status
                ):
                    return alert
        time.sleep(1)
    seen = [(a["labels"].get("alertname"), a["status"]) for m in receiver.received for a in m.get("alerts", [])]
    pytest.fail(f"no {status} VLLMInstanceDown for {instance} within {timeout:.0f} s; the webhook got {seen}")


@pytest.mark.disruptive
def test_stopped_instance_fires_and_resolves_through_alertmanager(lab):
    container = os.environ.get("LLMFLEET_TEST_VLLM_CONTAINER", "")
    main_unit = os.environ.get("LLMFLEET_TEST_VLLM_UNIT", "")
    if not container or not main_unit:
        pytest.fail("LLMFLEET_TEST_VLLM_CONTAINER / LLMFLEET_TEST_VLLM_UNIT are not set (run through `make test`)")
    # The host's other instance: the main one keeps serving the other tests.
    others = [
        i["name"]
        for i in lab["hostvars"][container]["vllm_service_instances"]
        if f"vllm-{i['name']}.service" != main_unit
    ]
    assert others, f"{container} runs one instance only; the test needs a second"
    instance = others[0]
    unit = f"vllm-{instance}.service"

    class Receiver(_Receiver):
        received: list = []

    server = ThreadingHTTPServer(("127.0.0.1", lab["webhook_port"]), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    started = False
    try:
        subprocess.run(["docker", "exec", container, "systemctl", "stop", unit], check=True, timeout=60)
        fired = _wait_for(Receiver, "firing", instance, timeout=60)
        assert fired["labels"]["host"] == container and fired["labels"]["severity"] == "critical"
        assert instance in fired["annotations"]["summary"]
        subprocess.run(["docker", "exec", container, "systemctl", "start", unit], check=True, timeout=60)
        started = True
        resolved = _wait_for(Receiver, "resolved", instance, timeout=150)
        assert resolved["labels"]["host"] == container
    finally:
        if not started:
            subprocess.run(["docker", "exec", container, "systemctl", "start", unit], check=False, timeout=60)
        server.shutdown()
        server.server_close()


def test_rules_file_in_the_lab_uses_the_lab_windows(lab):
    """The lab's short windows (group_vars/observability) are what its Prometheus evaluates."""
    lab_vars = yaml.safe_load(
        (REPO / "inventories" / "lab" / "group_vars" / "observability" / "observability.yml").read_text()
    )
    body = _get(f"{lab['prometheus']}/api/v1/rules?type=record")
    queries = [r["query"] for g in body["data"]["groups"] for r in g["rules"] if "rate(" in r["query"]]
    assert queries and all(f"[{lab_vars['observability_stack_rate_window']}]" in q for q in queries)


# ------------------------------------------------------------------------------- backup and restore
RESTORE_TABLE = "llmfleet_restore_check"


def _on_host(container: str, *cmd: str, timeout: float = 120) -> str:
    result = subprocess.run(["docker", "exec", container, *cmd], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} on {container} failed ({result.returncode}): {result.stderr[-2000:]}"
    )
    return result.stdout


def _psql(lab: dict, sql: str) -> str:
    return _on_host(
        lab["host"],
        *("runuser", "-u", "postgres", "--", "psql", "--host", "/var/run/postgresql"),
        *("--port", str(lab["postgres_port"]), "-d", "langfuse", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql),
    )


def _rows(lab: dict) -> list[tuple[int, str]]:
    out = _psql(lab, f"SELECT id, note FROM {RESTORE_TABLE} ORDER BY id")
    return [(int(i), note) for i, note in (line.split("|", 1) for line in out.splitlines() if line)]


def _dumps(lab: dict) -> set[str]:
    out = _on_host(lab["host"], "find", f"{lab['backup_dir']}/postgres", "-name", "langfuse-*.dump", "-printf", "%f\\n")
    return set(out.split())


def _restore(lab: dict, extravars: dict | None = None) -> tuple[int, dict]:
    rc, summary, _ = runner.run(
        runner.RunRequest(
            playbook="playbooks/runbooks/observability_restore.yml",
            inventory=str(INVENTORY),
            limit=lab["host"],
            quiet=True,
            extravars=extravars or {},
        )
    )
    return rc, summary


@pytest.mark.disruptive
def test_postgres_restore_from_the_backup_gives_back_the_same_rows(lab):
    token = os.urandom(6).hex()
    written = [(i, f"row {i} of {token}") for i in range(1, 6)]
    values = ", ".join(f"({i}, '{note}')" for i, note in written)
    _psql(
        lab,
        f"DROP TABLE IF EXISTS {RESTORE_TABLE};"
        f" CREATE TABLE {RESTORE_TABLE} (id integer PRIMARY KEY, note text NOT NULL);"
        f" INSERT INTO {RESTORE_TABLE} VALUES {values};",
    )
    try:
        assert _rows(lab) == written
        before = _dumps(lab)
        _on_host(lab["host"], "systemctl", "start", "llmfleet-observability-backup.service", timeout=300)
        new = _dumps(lab) - before
        assert len(new) == 1, f"the backup service wrote {sorted(new)} (before: {sorted(before)})"
        unit = "llmfleet-observability-backup.service"
        journal = _on_host(lab["host"], "journalctl", "-u", unit, "-n", "20", "--no-pager", "-o", "cat")
        assert f"PostgreSQL: {lab['backup_dir']}/postgres/{next(iter(new))}" in journal, journal
        assert "no ClickHouse backup taken" in journal, "the lab runs no ClickHouse: the script must say so"

        _psql(
            lab,
            f"UPDATE {RESTORE_TABLE} SET note = 'changed' WHERE id = 1; DELETE FROM {RESTORE_TABLE} WHERE id IN (2, 3);"
            f" INSERT INTO {RESTORE_TABLE} VALUES (99, 'added after the backup');",
        )
        assert _rows(lab) != written

        rc, summary = _restore(lab, {"observability_stack_restore_dump": "langfuse-19700101T000000Z.dump"})
        assert rc != 0, "restoring a dump that does not exist must fail"
        messages = " ".join(t["message"] for t in summary["failed_tasks"])
        assert "langfuse-19700101T000000Z.dump" in messages and "observability_stack_restore_dump" in messages, messages
        assert (1, "changed") in _rows(lab), "a refused restore must leave the database as it was"

        rc, summary = _restore(lab)
        assert rc == 0, f"the restore runbook failed: {summary.get('failed_tasks')}"
        assert summary["totals"]["failed"] == 0
        assert _rows(lab) == written
    finally:
        _psql(lab, f"DROP TABLE IF EXISTS {RESTORE_TABLE}")
