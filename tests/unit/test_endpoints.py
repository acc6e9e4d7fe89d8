"""The endpoint registry: one record per endpoint, each kind from its own producer."""

from __future__ import annotations

import base64
import json

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.endpoint import FIELDS
from llmfleet_endpoints import fleet_endpoints, fleet_host_defaults
from llmfleet_slurm_job import slurm_job_endpoints_with_info

MODELS = {
    "smol": {"served_name": "smol-135m", "cost_per_million_input_tokens": 0.5, "cost_per_million_output_tokens": 1.5},
    "tuned-q8_0": {"display_name": "Tuned, Q8", "cost_per_million_output_tokens": 0.1},
}
HOSTVARS = {
    "sys-1": {
        "ansible_facts": {"default_ipv4": {"address": "10.0.0.5"}},
        "vllm_service_instances": [
            {"name": "a", "model": "smol", "port": 8000},
            {"name": "b", "model": "smol", "port": 8001, "served_model_name": ["b1", "b2"], "api_key": "inline"},
        ],
    },
    "dock-1": {
        "fleet_service_address": "127.0.0.1",
        "vllm_service_runtime": "docker",
        "vllm_service_config_dir": "/srv/vllm",
        "vllm_service_instances": [{"name": "d", "model": "smol", "port": 8300}],
    },
    "login-1": {"ansible_user": "alice", "slurm_job_instance": {"name": "s", "model": "smol", "port": 8000}},
    "ws-1": {
        "fleet_service_address": "10.0.0.20",
        "model_pipeline_serve_formats": ["Q8_0", "F16"],
        "model_pipeline_models": [{"name": "tuned", "port": 5000}],
    },
    "ws-2": {"model_pipeline_server_host": "10.9.9.9", "model_pipeline_models": [{"name": "t2", "port": 6000}]},
    "k8s": {
        "vllm_kubernetes_apply": False,
        "vllm_kubernetes_instances": [{"name": "a_b", "model": "smol", "port": 80}],
    },
    "gw-1": {"fleet_service_address": "10.0.0.1", "model_gateway_tls_cert": "/etc/gw.crt", "model_gateway_port": 4100},
    "gw-2": {"model_gateway_listen": "10.0.0.2", "model_gateway_master_key": "vaulted"},
}
GROUPS = {
    "inference_nodes": ["sys-1", "dock-1"],
    "slurm_login": ["login-1"],
    "model_workstations": ["ws-1", "ws-2"],
    "kubernetes_clusters": ["k8s"],
    "gateway": ["gw-1", "gw-2"],
}


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    return {r["id"]: r for r in fleet_endpoints(HOSTVARS, GROUPS, MODELS)}


def test_every_record_has_every_field_in_order(records):
    assert all(tuple(r) == FIELDS for r in records.values())


def test_vllm_instances_under_systemd_and_docker(records):
    a, b, d = records["sys-1/a"], records["sys-1/b"], records["dock-1/d"]
    assert (a["base_url"], a["served_names"], a["key_file"], a["systemd_unit"], a["container"]) == (
        "http://10.0.0.5:8000/v1",
        ["smol-135m"],
        "/etc/vllm/a.apikey",
        "vllm-a.service",
        "",
    )
    assert (a["health_path"], a["metrics_path"], a["scrape_auth"], a["input_cost"]) == (
        "/health",
        "/metrics",
        "bearer",
        0.5,
    )
    assert (b["served_names"], b["api_key"]) == (["b1", "b2"], "inline")
    assert (d["runtime"], d["base_url"], d["key_file"], d["container"], d["systemd_unit"]) == (
        "docker",
        "http://127.0.0.1:8300/v1",
        "/srv/vllm/d.apikey",
        "vllm-d",
        "",
    )


def test_a_slurm_job_is_completed_from_its_connection_info(records):
    job = records["login-1/vllm-s"]
    assert (job["runtime"], job["base_url"], job["info_file"]) == (
        "slurm",
        "",
        "/projects/alice/llmfleet/jobs/vllm-s/connection.json",
    )
    info = {
        "node": "c-7",
        "address": "10.3.0.7",
        "port": 8123,
        "url": "http://c-7:8123/v1",
        "api_key_file": "/projects/alice/llmfleet/jobs/vllm-s/api-key",
        "served_model_names": ["smol-135m"],
    }
    read = {"item": job, "content": base64.b64encode(json.dumps(info).encode()).decode()}
    others = [records["sys-1/a"]]
    (done, a) = slurm_job_endpoints_with_info([job, *others], [read])
    assert (done["base_url"], done["key_file"], done["key_on"]) == (
        "http://10.3.0.7:8123/v1",
        info["api_key_file"],
        "host",
    )
    assert a == records["sys-1/a"], "other runtimes pass as they are"
    assert slurm_job_endpoints_with_info([job], [{"item": job, "failed": True}]) == [], "not running: no endpoint"


def test_pipeline_servers_one_per_model_and_format_at_consecutive_ports(records):
    q8, f16 = records["ws-1/llamacpp-tuned-q8_0"], records["ws-1/llamacpp-tuned-f16"]
    assert (q8["kind"], q8["base_url"], q8["health_path"], q8["metrics_path"]) == (
        "llamacpp",
        "http://10.0.0.20:5000/v1",
        "/v1/models",
        "",
    )
    assert (q8["display_name"], q8["output_cost"]) == ("Tuned, Q8", 0.1)
    assert (f16["base_url"], f16["display_name"], f16["systemd_unit"]) == (
        "http://10.0.0.20:5001/v1",
        "tuned (F16)",
        "llmfleet-llamacpp-tuned-f16.service",
    )
    # ws-2 takes model_pipeline's default formats (four servers) and its bind address.
    ws2 = [r for r in records.values() if r["host"] == "ws-2"]
    assert [r["base_url"] for r in ws2] == [f"http://10.9.9.9:{p}/v1" for p in (6000, 6001, 6002, 6003)]


def test_kubernetes_instances_are_their_services_marked_when_only_rendered(records):
    k = records["k8s/a_b"]
    assert (k["base_url"], k["applied"], k["key_on"], k["runtime"]) == (
        "http://vllm-a-b.llm.svc.cluster.local:80/v1",
        False,
        "controller",
        "kubernetes",
    )
    assert k["key_file"].endswith("/kubernetes/k8s/a_b.apikey"), "vllm_kubernetes' default key directory"


def test_the_gateway_takes_its_scheme_port_and_key_from_its_role(records):
    one, two = records["gw-1/gateway"], records["gw-2/gateway"]
    assert (one["base_url"], one["key_file"], one["health_path"]) == (
        "https://10.0.0.1:4100/v1",
        "/etc/llmfleet-gateway/keys/master.key",
        "/health/liveliness",
    )
    assert (two["base_url"], two["key_file"], two["api_key"]) == ("http://10.0.0.2:4000/v1", "", "vaulted")
    assert one["served_names"] == ["smol-135m", "tuned-q8_0"]


def test_consumers_narrow_the_hosts_and_health_takes_one_host():
    only_ws = fleet_endpoints(HOSTVARS, GROUPS, MODELS, {"inference_nodes": [], "gateway": [], "slurm_login": []})
    assert {r["host"] for r in only_ws} == {"ws-1", "ws-2", "k8s"}
    assert {r["id"] for r in fleet_endpoints(HOSTVARS, GROUPS, MODELS, only="dock-1")} == {"dock-1/d"}


def test_an_unknown_model_is_refused_naming_host_and_instance():
    hostvars = {"h": {"vllm_service_instances": [{"name": "x", "model": "ghost", "port": 1}]}}
    with pytest.raises(AnsibleFilterError, match=r"host h: vllm_service_instances\[0\] \(x\): model 'ghost'"):
        fleet_endpoints(hostvars, {"inference_nodes": ["h"]}, MODELS)


def test_host_defaults_are_the_roles_unless_the_host_sets_one():
    hostvars = {"o-1": {}, "o-2": {"observability_stack_node_exporter_port": 9200}}
    keys = ["observability_stack_node_exporter_port"]
    assert fleet_host_defaults(hostvars, {}, "o-1", "observability_stack", keys) == {keys[0]: 9100}
    assert fleet_host_defaults(hostvars, {}, "o-2", "observability_stack", keys) == {keys[0]: 9200}
