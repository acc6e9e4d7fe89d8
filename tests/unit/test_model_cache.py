"""The model_cache role's plan (plugins/filter/llmfleet_model_cache.py), the vLLM filter's use of
its paths, and the catalog checks of ssh sources (inventory.checks.check_models)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_model_cache import (
    model_cache_jobs,
    model_cache_known_host,
    model_cache_paths,
    model_cache_wanted,
)
from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_vllm import vllm_instances
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.checks import check_models

REV = "12fd25f77366fa6b3b4b768ec3050bf629380bac"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
CATALOG = {
    "by-ssh": {"source": {"ssh": {"host": "models-1", "path": "/srv/models/a"}}},
    "by-url": {"source": {"url": "https://m.lan/x/model.Q4_K_M.gguf", "sha256": SHA}},
    "by-hf": {"source": {"hf": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": REV}},
    "by-path": {"source": {"path": "/data/models/p"}},
}
GROUPS = {"all": ["inf-1", "models-1"], "inference_nodes": ["inf-1"], "model_sources": ["models-1"]}


def test_wanted_is_the_instances_models_once_unless_listed():
    instances = [{"model": "by-ssh"}, {"model": "by-hf"}, {"model": "by-ssh"}]
    assert model_cache_wanted([], instances) == ["by-ssh", "by-hf"]
    assert model_cache_wanted(["by-url"], instances) == ["by-url"]


def test_sync_plans_each_source_kind():
    jobs = {j["name"]: j for j in model_cache_jobs(list(CATALOG), CATALOG, "inf-1", "sync", "/c", "", {}, {})}
    assert jobs["by-ssh"]["sync"] == {
        "source": "ssh", "remote_host": "models-1", "remote_port": 22, "remote_user": None,
        "src": "/srv/models/a", "dest": "/c/by-ssh",
    }  # fmt: skip
    assert jobs["by-ssh"]["source_host"] == "models-1"
    assert jobs["by-url"]["local_path"] == "/c/by-url/model.Q4_K_M.gguf"
    assert jobs["by-url"]["sync"]["sha256"] == SHA
    assert jobs["by-hf"]["sync"] == {"source": "hf", "repo_id": CATALOG["by-hf"]["source"]["hf"], "revision": REV,
                                     "dest": "/c/hf/hub"}  # fmt: skip
    assert jobs["by-hf"]["local_path"] == f"/c/hf/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/{REV}"
    assert jobs["by-path"] == {"name": "by-path", "kind": "path", "local_path": "/data/models/p", "sync": None}
    assert model_cache_paths(jobs.values())["by-ssh"] == "/c/by-ssh"


def test_ssh_source_uses_the_inventory_address_and_local_copy_on_itself():
    job = model_cache_jobs(["by-ssh"], CATALOG, "inf-1", "sync", "/c", "", {}, {"models-1": "10.0.0.5"})[0]
    assert job["sync"]["remote_host"] == "10.0.0.5"
    own = model_cache_jobs(["by-ssh"], CATALOG, "models-1", "sync", "/c", "", {}, {})[0]
    assert own["kind"] == "local" and own["sync"] == {"source": "local", "src": "/srv/models/a", "dest": "/c/by-ssh"}


def test_none_and_mount_modes_fetch_nothing():
    none = model_cache_jobs(["by-ssh", "by-hf"], CATALOG, "d-1", "none", "/c", "", {"by-ssh": "/ctl/a"}, {})
    assert [(j["kind"], j["local_path"], j["sync"]) for j in none] == [("given", "/ctl/a", None), ("hf", None, None)]
    mount = model_cache_jobs(["by-ssh"], CATALOG, "d-1", "mount", "/nfs", "", {}, {})[0]
    assert (mount["kind"], mount["local_path"], mount["sync"]) == ("mount", "/nfs/by-ssh", None)


@pytest.mark.parametrize(
    ("wanted", "mode", "expected"),
    [
        (["by-ssh"], "none", "model_cache_mode = 'none' but fleet_models['by-ssh'].source is ssh"),
        (["ghost"], "sync", "host d-1: model 'ghost' (model_cache_models or a vllm_service instance) is not in"),
        (["by-ssh"], "copy", "model_cache_mode = 'copy' is not allowed; allowed: sync, mount, none"),
    ],
)
def test_plan_refusals_name_host_variable_and_value(wanted, mode, expected):
    with pytest.raises(AnsibleFilterError, match=r"^host d-1: ") as exc:
        model_cache_jobs(wanted, CATALOG, "d-1", mode, "/c", "", {}, {})
    assert expected in str(exc.value)


def test_known_host_line():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc root@models-1\n"
    assert model_cache_known_host("models-1", 22, key) == "models-1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"
    assert model_cache_known_host("m", 2222, key).startswith("[m]:2222 ssh-ed25519 ")


def test_vllm_serves_a_cached_model_from_its_path():
    inst = [{"name": "a", "model": "by-hf", "port": 8000}, {"name": "b", "model": "by-path", "port": 8001}]
    resolved = vllm_instances(inst, CATALOG, {}, {"by-hf": "/c/hf/snap"})
    assert resolved[0]["args"][:2] == ["--model", "/c/hf/snap"] and "--revision" not in resolved[0]["args"]
    assert resolved[0]["model_is_path"] is True
    assert resolved[1]["args"][:2] == ["--model", "/data/models/p"], "path sources keep their path"
    expected = ["--model", CATALOG["by-hf"]["source"]["hf"], "--revision", REV]
    assert vllm_instances(inst[:1], CATALOG)[0]["args"][:4] == expected
    with pytest.raises(AnsibleFilterError, match="model_cache_paths"):
        vllm_instances([{"name": "c", "model": "by-ssh", "port": 8002}], CATALOG)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"ssh": {"host": "nowhere", "path": "/m"}}, "source.ssh.host = 'nowhere' is not a host of this inventory"),
        ({"ssh": {"host": "models-1", "path": "rel"}}, "source.ssh.path = 'rel' must be an absolute directory path"),
        ({"ssh": {"host": "models-1", "path": "/m", "port": 0}}, "source.ssh.port = 0 is not a TCP port"),
        ({"hf": "org/m", "revision": "main"}, "source.revision = 'main' is not pinned; allowed: a 40-hex commit"),
        ({"hf": "org/m", "revision": "v1.0"}, "source.revision = 'v1.0' is not pinned"),
        ({"s3": "bucket/m"}, "source has unknown key(s) 's3'; allowed source kinds: hf, path, ssh, url"),
    ],
)
def test_catalog_refuses_bad_sources(source, expected):
    errors = check_models({"m": {"source": source}}, GROUPS)
    assert any(expected in e for e in errors), errors


def test_catalog_accepts_every_kind():
    assert check_models(CATALOG, GROUPS) == []
