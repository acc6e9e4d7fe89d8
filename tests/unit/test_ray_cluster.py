"""ray_cluster helpers: the `ray start` command, what the head's state API says, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible_collections.llmfleet.fleet.plugins.module_utils.cluster.ray import (
    compare_nodes,
    expected_node,
    nodes_from_state_api,
    start_args,
    summary,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.checks import check_host_ports, validate_host
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.ray import (
    check_ray,
    ray_ports,
)
from llmfleet_vllm import resolve_instance
from validate_play import role_defaults

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULTS = yaml.safe_load((REPO / "roles" / "ray_cluster" / "defaults" / "main.yml").read_text())
SETTINGS = {
    "head_address": "10.0.0.1",
    "head_port": 6379,
    "dashboard_host": "0.0.0.0",
    "dashboard_port": 8265,
    "client_port": 10001,
    "metrics_export_port": 8080,
    "object_store_memory": 134217728,
    "num_cpus": None,
    "num_gpus": 4,
    "resources": {"h100": 4, "a": 1},
}


def _node(name: str, state: str = "ALIVE", **resources) -> dict:
    return {
        "node_name": name,
        "node_id": name + "-id",
        "node_ip": "10.0.0.9",
        "state": state,
        "is_head_node": name == "h",
        "resources_total": {"CPU": 2.0, "memory": 1e9, **resources},
    }


def test_head_start_args():
    args = start_args("head", "h", "10.0.0.1", SETTINGS)
    assert args[:6] == ["--block", "--disable-usage-stats", "--node-ip-address", "10.0.0.1", "--node-name", "h"]
    assert "--head" in args and "--address" not in args
    joined = " ".join(args)
    assert "--port 6379" in joined and "--dashboard-port 8265" in joined and "--ray-client-server-port 10001" in joined
    assert "--num-gpus 4" in joined and "--num-cpus" not in joined
    assert args[args.index("--resources") + 1] == '{"a":1,"h100":4}'


def test_worker_start_args_join_the_head():
    args = start_args("worker", "w1", "10.0.0.2", {**SETTINGS, "num_gpus": None, "resources": {}})
    assert args[args.index("--address") + 1] == "10.0.0.1:6379"
    assert "--head" not in args and "--dashboard-port" not in args and "--num-gpus" not in args
    assert args[args.index("--metrics-export-port") + 1] == "8080"


def test_compare_counts_only_alive_nodes_and_declared_resources():
    nodes = [_node("h"), _node("w1", GPU=2.0), _node("w2", state="DEAD"), _node("w3")]
    expect = [expected_node("h", {"num_cpus": 2}), expected_node("w1", {"num_gpus": 4}), expected_node("w2", {})]
    problems = compare_nodes(nodes, expect, absent=["w3"])
    assert problems == [
        "node w1 reports GPU = 2.0, expected 4",
        "node w2 has not joined (no ALIVE node of that name)",
        "node w3 is retired but still ALIVE",
    ]
    assert compare_nodes(nodes[:2], [expected_node("h", {}), expected_node("w1", {"num_gpus": 2})], []) == []


def test_state_api_payload_and_summary():
    payload = {"result": True, "data": {"result": {"total": 2, "result": [_node("h"), _node("w1", state="DEAD")]}}}
    nodes = nodes_from_state_api(payload)
    assert [n["node_name"] for n in nodes] == ["h", "w1"]
    assert [(s["name"], s["is_head"], s["cpu"]) for s in summary(nodes)] == [("h", True, 2.0)]
    assert nodes_from_state_api({"data": None}) == []


@pytest.mark.parametrize(
    ("groups", "settings", "expected"),
    [
        (["ray_head"], {}, []),
        (["ray_workers"], {"vllm_service_instances": [{"name": "a", "port": 8265}]}, []),  # dashboard: head only
        (
            ["ray_head", "inference_nodes"],
            {"vllm_service_instances": [{"name": "a", "port": 10001}]},
            ["host h: ray_cluster_client_port = 10001 is already used by vllm_service_instances[0] ('a').port"],
        ),
        (
            ["ray_workers"],
            {"ray_cluster_object_store_memory": 1 << 30, "ray_cluster_host_memory_mb": 1024},
            ["host h: ray_cluster_object_store_memory = 1073741824 is not less than the host's memory"],
        ),
        (
            ["inference_nodes"],
            {"vllm_service_instances": [{"name": "a", "port": 1, "distributed_executor_backend": "ray"}]},
            ["host h: vllm_service_instances[0] ('a').distributed_executor_backend = 'ray' but the host is not in"],
        ),
    ],
)
def test_refusals(groups, settings, expected):
    # Ray's ports are checked with the host's other ports (check_host_ports, as validate_host does),
    # the ones left to ray_cluster's defaults included (as the validate play hands them over).
    settings = {**role_defaults(groups, settings, ["ray_cluster"], host="h"), **settings}
    errors = check_host_ports("h", settings, ray_ports(groups, settings))
    errors += check_ray("h", groups, {"ray_head": ["x"]}, settings, {})
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), error


def test_ray_instance_is_not_held_to_the_hosts_own_gpus():
    """Pipeline parallel across nodes: the host-level GPU check leaves a Ray instance to the cluster check."""
    settings = {
        "vllm_service_instances": [
            {
                "name": "big",
                "model": "m",
                "port": 8000,
                "distributed_executor_backend": "ray",
                "tensor_parallel_size": 1,
                "pipeline_parallel_size": 3,
            }
        ],
        "ray_cluster_gpus_total": 3,
    }
    groups = {"ray_head": ["h"], "inference_nodes": ["h"]}
    errors = validate_host(
        "h", ["ray_head", "inference_nodes"], groups, settings, {"m": {"source": {"path": "/m"}}}, gpu={"count": 1}
    )
    assert errors == []


def test_ray_backed_instance_gets_the_executor_flag():
    inst = {
        "name": "big",
        "model": "m",
        "port": 8000,
        "distributed_executor_backend": "ray",
        "pipeline_parallel_size": 2,
    }
    args = resolve_instance(inst, {"m": {"source": {"path": "/srv/m"}}})["args"]
    assert args[args.index("--distributed-executor-backend") + 1] == "ray"
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
