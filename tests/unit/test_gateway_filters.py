"""The filters that build the model gateway's LiteLLM configuration and registry rows."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from llmfleet_endpoints import fleet_endpoints
from llmfleet_gateway import (
    gateway_backend_keys,
    gateway_backends,
    gateway_clients,
    gateway_config,
    gateway_external_backends,
    gateway_health_url,
    gateway_kept_key_names,
    gateway_registry_backends,
    gateway_registry_rows,
    gateway_with_keys,
)
from llmfleet_slurm_job import slurm_job_endpoints_with_info
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


def _records(group: str, hosts: list[str], hostvars: dict, models: dict) -> list[dict]:
    """The registry's records of ``hosts`` in ``group`` (each host's variables over its role's defaults)."""
    return fleet_endpoints(hostvars, {group: hosts}, models)


def gateway_vllm_backends(hosts: list[str], hostvars: dict, models: dict) -> list[dict]:
    return gateway_backends(_records("inference_nodes", hosts, hostvars, models), models)


def gateway_slurm_jobs(hosts: list[str], hostvars: dict, models: dict) -> list[dict]:
    return _records("slurm_login", hosts, hostvars, models)


def gateway_slurm_backends(reads: list[dict], models: dict) -> list[dict]:
    return gateway_backends(slurm_job_endpoints_with_info([r["item"] for r in reads], reads), models)


def gateway_pipeline_backends(hosts: list[str], hostvars: dict, models: dict) -> list[dict]:
    return gateway_backends(_records("model_workstations", hosts, hostvars, models), models)


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


# ------------------------------------------------------------------------------ Slurm jobs, pipelines
ROLES = Path(__file__).resolve().parents[2] / "roles"
SLURM_HOSTVARS = {
    "login-1": {"ansible_user": "alice", "slurm_job_instance": {"name": "s", "model": "smol", "port": 8000}},
    "login-2": {
        "slurm_job_shared_dir": "/scratch/llm/",
        "slurm_job_name": "serve-big",
        "slurm_job_gateway_url": "http://hpc-gw:18000/v1/",
        "slurm_job_api_key": "from-vault",
        "slurm_job_instance": {"name": "b", "model": "big", "port": 8100},
    },
    "login-3": {"slurm_job_state": "absent", "slurm_job_instance": {"name": "x", "model": "smol", "port": 8000}},
    "login-4": {"slurm_job_serve": "false", "slurm_job_instance": {"name": "y", "model": "smol", "port": 8000}},
    "login-5": {},
}


def _read(job: dict, info: dict | None) -> dict:
    if info is None:
        return {"item": job, "failed": True, "msg": "file not found"}
    return {"item": job, "content": base64.b64encode(json.dumps(info).encode()).decode()}


def test_the_slurm_job_of_each_serving_login_host_is_found_where_slurm_job_writes_it():
    jobs = gateway_slurm_jobs(list(SLURM_HOSTVARS), SLURM_HOSTVARS, MODELS)
    assert [(j["host"], j["instance"], j["info_file"], j["model"]) for j in jobs] == [
        ("login-1", "vllm-s", "/projects/alice/llmfleet/jobs/vllm-s/connection.json", "smol"),
        ("login-2", "serve-big", "/scratch/llm/jobs/serve-big/connection.json", "big"),
    ]
    assert jobs[1]["api_key"] == "from-vault" and jobs[1]["base_url"] == "http://hpc-gw:18000/v1"


def test_the_slurm_job_role_defaults_are_read_from_the_role_and_rendered_for_the_host():
    # slurm_job_shared_dir and slurm_job_name are Jinja in roles/slurm_job/defaults/main.yml: the
    # registry renders the role's own text against the host's variables (nothing retyped here).
    defaults = yaml.safe_load((ROLES / "slurm_job" / "defaults" / "main.yml").read_text())
    assert "{{" in defaults["slurm_job_shared_dir"] and "{{" in defaults["slurm_job_name"]
    hostvars = {"login-6": {"slurm_job_instance": {"name": "z", "model": "smol"}}}
    (job,) = gateway_slurm_jobs(["login-6"], hostvars, MODELS)
    assert job["info_file"] == "/projects/llm/llmfleet/jobs/vllm-z/connection.json"


def test_a_slurm_job_with_connection_info_is_a_backend_at_its_node_with_its_key():
    jobs = gateway_slurm_jobs(list(SLURM_HOSTVARS), SLURM_HOSTVARS, MODELS)
    info = {
        "node": "c-7",
        "address": "10.3.0.7",
        "port": 8000,
        "url": "http://c-7:8000/v1",
        "api_key_file": "/projects/alice/llmfleet/jobs/vllm-s/api-key",
        "served_model_names": ["smol-135m"],
    }
    backends = gateway_slurm_backends([_read(jobs[0], info), _read(jobs[1], {**info, "address": None})], MODELS)
    assert len(backends) == 2
    first, second = backends
    assert (first["id"], first["api_base"], first["backend_model"], first["host"]) == (
        "login-1/vllm-s",
        "http://10.3.0.7:8000/v1",
        "smol-135m",
        "login-1",
    )
    assert (first["key_file"], first["api_key"]) == ("/projects/alice/llmfleet/jobs/vllm-s/api-key", "")
    assert (first["input_cost"], first["output_cost"], first["source"]) == (0.5, 1.5, "catalog")
    # slurm_job_gateway_url wins over the node; a key from the vault is not read from the host.
    assert (second["api_base"], second["api_key"], second["key_file"]) == ("http://hpc-gw:18000/v1", "from-vault", "")
    # Without an address, the node's name.
    assert gateway_slurm_backends([_read(jobs[0], {**info, "address": None})], MODELS)[0]["api_base"] == (
        "http://c-7:8000/v1"
    )


def test_a_slurm_job_without_connection_info_or_not_serving_gives_no_backend():
    job = gateway_slurm_jobs(["login-1"], SLURM_HOSTVARS, MODELS)[0]
    ray_only = {"node": "c-1", "port": 8000, "url": None, "served_model_names": ["smol-135m"]}
    assert gateway_slurm_backends([_read(job, None), _read(job, ray_only)], MODELS) == []


def test_a_slurm_job_of_a_model_outside_the_catalog_is_refused_naming_the_host():
    hostvars = {"login-9": {"slurm_job_instance": {"name": "g", "model": "ghost", "port": 8000}}}
    with pytest.raises(AnsibleFilterError, match="host login-9: slurm_job_instance \\(g\\): model 'ghost'"):
        gateway_slurm_jobs(["login-9"], hostvars, MODELS)


PIPELINE_HOSTVARS = {
    "ws-1": {
        "ansible_facts": {"default_ipv4": {"address": "10.0.0.20"}},
        "model_pipeline_models": [{"name": "tuned", "base_model": "smol", "port": 5000}],
    },
    "ws-2": {
        "fleet_service_address": "192.168.1.2",
        "model_pipeline_serve_formats": ["Q8_0"],
        "model_pipeline_models": [{"name": "smol-135m-q8_0-src", "base_model": "smol", "port": 6000}],
    },
}


def test_each_pipeline_llama_cpp_server_is_a_backend_of_its_own_model():
    backends = gateway_pipeline_backends(
        ["ws-1", "ws-2"],
        PIPELINE_HOSTVARS,
        {
            **MODELS,
            "tuned-q4_k_m": {
                "cost_per_million_input_tokens": 0.1,
                "cost_per_million_output_tokens": 0.2,
                "display_name": "Tuned Q4",
            },
        },
    )
    assert [(b["id"], b["model"], b["api_base"], b["kind"]) for b in backends] == [
        ("ws-1/llamacpp-tuned-q4_k_m", "tuned-q4_k_m", "http://10.0.0.20:5000/v1", "llamacpp"),
        ("ws-1/llamacpp-tuned-q5_k_m", "tuned-q5_k_m", "http://10.0.0.20:5001/v1", "llamacpp"),
        ("ws-1/llamacpp-tuned-q8_0", "tuned-q8_0", "http://10.0.0.20:5002/v1", "llamacpp"),
        ("ws-1/llamacpp-tuned-f16", "tuned-f16", "http://10.0.0.20:5003/v1", "llamacpp"),
        ("ws-2/llamacpp-smol-135m-q8_0-src-q8_0", "smol-135m-q8_0-src-q8_0", "http://192.168.1.2:6000/v1", "llamacpp"),
    ]
    first, second = backends[0], backends[1]
    assert (first["input_cost"], first["output_cost"], first["display_name"]) == (0.1, 0.2, "Tuned Q4")
    assert (second["input_cost"], second["display_name"], second["api_key"], second["key_file"]) == (
        0.0,
        "tuned (Q5_K_M)",
        "",
        "",
    )
    cfg = gateway_config(backends, MODELS, {})
    assert cfg["model_list"][0]["model_name"] == "tuned-q4_k_m"
    assert cfg["model_list"][0]["litellm_params"]["model"] == "openai/tuned-q4_k_m"
    assert cfg["model_list"][0]["litellm_params"]["api_key"] == "none"
    assert [r["backend_id"] for r in gateway_registry_rows(backends)][:1] == ["ws-1/llamacpp-tuned-q4_k_m"]


def test_pipeline_servers_on_loopback_only_are_refused():
    hostvars = {"ws-3": {**PIPELINE_HOSTVARS["ws-1"], "model_pipeline_server_host": "127.0.0.1"}}
    with pytest.raises(AnsibleFilterError, match=r"host ws-3: model_pipeline_server_host is 127\.0\.0\.1"):
        gateway_pipeline_backends(["ws-3"], hostvars, MODELS)
    # A specific address is where the gateway reaches them.
    hostvars = {"ws-4": {**PIPELINE_HOSTVARS["ws-1"], "model_pipeline_server_host": "10.9.9.9"}}
    assert gateway_pipeline_backends(["ws-4"], hostvars, MODELS)[0]["api_base"] == "http://10.9.9.9:5000/v1"


def test_health_url_is_v1_models_for_llama_cpp_servers_and_health_for_the_rest():
    # llama-cpp-python's server has no /health route (a 404 would mark a serving backend unhealthy).
    assert gateway_health_url("http://10.0.0.5:5000/v1", "llamacpp") == "http://10.0.0.5:5000/v1/models"
    assert gateway_health_url("http://10.0.0.5:8000/v1/", "vllm") == "http://10.0.0.5:8000/health"
    assert gateway_health_url("https://api.example.com/v1", "openai") == "https://api.example.com/health"
