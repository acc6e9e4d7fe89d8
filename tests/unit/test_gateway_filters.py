"""The filters that build the model gateway's LiteLLM configuration and registry rows."""

from __future__ import annotations

import base64

import pytest
from ansible.errors import AnsibleFilterError
from llmfleet_gateway import (
    gateway_backend_keys,
    gateway_clients,
    gateway_config,
    gateway_external_backends,
    gateway_kept_key_names,
    gateway_registry_backends,
    gateway_registry_rows,
    gateway_vllm_backends,
    gateway_with_keys,
)
from llmfleet_vllm import pip_missing

MODELS = {
    "smol": {"served_name": "smol-135m", "cost_per_million_input_tokens": 0.5, "cost_per_million_output_tokens": 1.5},
    "big": {"served_name": "big", "display_name": "Big model"},
}
HOSTVARS = {
    "sys-1": {
        "ansible_facts": {"default_ipv4": {"address": "172.18.0.5"}},
        "vllm_service_instances": [
            {"name": "a", "model": "smol", "port": 8000},
            {"name": "b", "model": "smol", "port": 8001, "served_model_name": "smol-b"},
        ],
    },
    "dock-1": {
        "fleet_service_address": "127.0.0.1",
        "ansible_facts": {"default_ipv4": {"address": "10.0.0.9"}},
        "vllm_service_instances": [{"name": "d", "model": "smol", "port": 8300, "api_key": "given"}],
    },
}


def _backends() -> list[dict]:
    return gateway_vllm_backends(["sys-1", "dock-1"], HOSTVARS, MODELS)


def test_every_instance_of_every_host_is_a_backend_at_its_service_address():
    backends = _backends()
    assert [(b["id"], b["api_base"], b["backend_model"]) for b in backends] == [
        ("sys-1/a", "http://172.18.0.5:8000/v1", "smol-135m"),
        ("sys-1/b", "http://172.18.0.5:8001/v1", "smol-b"),
        ("dock-1/d", "http://127.0.0.1:8300/v1", "smol-135m"),
    ]
    assert backends[0]["key_file"] == "/etc/vllm/a.apikey"
    assert backends[2]["api_key"] == "given"


def test_keys_read_from_hosts_fill_only_backends_without_one():
    reads = [
        {"item": {"id": "sys-1/a"}, "content": base64.b64encode(b"key-a\n").decode()},
        {"item": {"id": "sys-1/b"}, "failed": True, "msg": "file not found"},
    ]
    with_keys = gateway_with_keys(_backends(), reads)
    assert [b["api_key"] for b in with_keys] == ["key-a", "", "given"]
    assert gateway_backend_keys(with_keys) == {
        "sys-1/a": {"api_base": "http://172.18.0.5:8000/v1", "key": "key-a"},
        "dock-1/d": {"api_base": "http://127.0.0.1:8300/v1", "key": "given"},
    }


def test_config_has_one_deployment_per_backend_with_catalog_costs_and_no_key_in_it():
    backends = gateway_with_keys(_backends(), [])
    cfg = gateway_config(
        backends,
        MODELS,
        {
            "routing_strategy": "least-busy",
            "num_retries": "3",
            "cooldown_time": 5,
            "timeout": 60,
            "model_limits": {"smol": {"rpm": 100}},
            "fallbacks": {"smol": ["big"]},
        },
    )
    entries = cfg["model_list"]
    assert {e["model_name"] for e in entries} == {"smol-135m"}
    assert [e["litellm_params"]["model"] for e in entries] == [
        "hosted_vllm/smol-135m",
        "hosted_vllm/smol-b",
        "hosted_vllm/smol-135m",
    ]
    # A keyed backend's key comes from backend_keys.json through the callback, never from config.yaml.
    assert entries[2]["litellm_params"]["api_key"] == "llmfleet-backend-keys-file"
    assert cfg["litellm_settings"]["callbacks"] == ["llmfleet_backend_keys.backend_keys"]
    assert entries[0]["litellm_params"]["api_key"] == "none"
    assert entries[0]["litellm_params"]["rpm"] == 100
    assert entries[0]["model_info"]["input_cost_per_token"] == pytest.approx(5e-7)
    assert entries[0]["model_info"]["output_cost_per_token"] == pytest.approx(1.5e-6)
    assert "given" not in repr(cfg)
    router = cfg["router_settings"]
    assert router["routing_strategy"] == "least-busy"
    assert router["num_retries"] == 3 and router["cooldown_time"] == 5
    assert router["fallbacks"] == [{"smol-135m": ["big"]}]
    assert cfg["general_settings"]["custom_auth"] == "llmfleet_auth.user_api_key_auth"


def test_external_backends_and_unknown_models():
    ext = gateway_external_backends(
        [{"name": "llamacpp-q4", "model": "smol", "url": "http://ws-1:8080/v1/", "kind": "llamacpp"}], MODELS
    )
    assert ext[0]["api_base"] == "http://ws-1:8080/v1"
    assert ext[0]["id"] == "external/llamacpp-q4"
    with pytest.raises(AnsibleFilterError, match=r"model_gateway_external_backends\[0\] \(x\): model 'nope'"):
        gateway_external_backends([{"name": "x", "model": "nope", "url": "http://h/v1"}], MODELS)
    with pytest.raises(AnsibleFilterError, match=r"host h: vllm_service_instances\[0\] \(a\): model 'nope'"):
        gateway_vllm_backends(
            ["h"], {"h": {"vllm_service_instances": [{"name": "a", "model": "nope", "port": 1}]}}, MODELS
        )
    with pytest.raises(AnsibleFilterError, match="kind 'grpc' is unknown"):
        gateway_external_backends([{"name": "x", "model": "smol", "url": "http://h/v1", "kind": "grpc"}], MODELS)


def test_registry_rows_of_the_catalog_and_cli_rows_as_backends():
    rows = gateway_registry_rows(_backends())
    assert [(r["name"], r["backend_url"], r["input_cost"], r["output_cost"]) for r in rows] == [
        ("smol", "http://172.18.0.5:8000/v1", 0.5, 1.5),
        ("smol", "http://172.18.0.5:8001/v1", 0.5, 1.5),
        ("smol", "http://127.0.0.1:8300/v1", 0.5, 1.5),
    ]
    cli = gateway_registry_backends(
        [
            {
                "name": "extra",
                "display_name": "Extra",
                "backend_url": "http://e:1/v1",
                "backend_id": "cli/extra",
                "input_cost": 2.0,
                "output_cost": 4.0,
                "source": "cli",
            },
            {"name": "smol", "backend_url": "http://x/v1", "source": "cli"},
            {"name": "other", "backend_url": "http://x/v1", "source": "catalog"},
        ],
        MODELS,
    )
    assert [(b["id"], b["served_name"], b["input_cost"]) for b in cli] == [("cli/extra", "extra", 2.0)]
    assert gateway_registry_rows(cli) == []


def test_clients_take_given_or_kept_keys():
    clients = gateway_clients([{"name": "a", "rpm_limit": 3}, {"name": "b", "key": "kb"}], {"client-a": "ka"})
    assert clients == [
        {"name": "a", "key": "ka", "models": [], "rpm_limit": 3},
        {"name": "b", "key": "kb", "models": []},
    ]
    with pytest.raises(AnsibleFilterError, match=r"model_gateway_client_keys\[0\] \(c\): no key"):
        gateway_clients([{"name": "c"}], {})


def test_pip_missing_matches_a_requirement_with_extras_by_its_name():
    assert pip_missing(["litellm[proxy]==1.108.7"], "litellm==1.108.7\n") == []
    assert pip_missing(["litellm[proxy]==1.108.7"], "litellm==1.0\n") == ["litellm[proxy]==1.108.7"]


def test_kept_keys_always_include_litellms_internal_one():
    assert gateway_kept_key_names([{"name": "a"}, {"name": "b", "key": "kb"}], "") == ["internal", "master", "client-a"]
    assert gateway_kept_key_names([], "given") == ["internal"]
