"""fleet_validate's checks: each bad inventory is refused with host, variable, value and what is allowed."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.llmfleet_inventory import check_groups, check_models, validate_host

MODELS = {"small": {"source": {"path": "/models/small"}}, "big": {"source": {"hf": "org/big", "revision": "abc"}}}


def inst(name="a", port=8000, model="small", **kw):
    return {"name": name, "port": port, "model": model, **kw}


def errors_for(instances, runtime="systemd", models=MODELS, groups=("inference_nodes",)):
    settings = {"vllm_service_runtime": runtime, "vllm_service_instances": instances}
    return validate_host("gpu1", list(groups), {"inference_nodes": ["gpu1"]}, settings, models)


def test_consistent_host_has_no_errors():
    assert errors_for([inst("a", 8000), inst("b", 8001, "big", gpu_ids=[0, 1], tensor_parallel_size=2)]) == []


@pytest.mark.parametrize(
    ("instances", "runtime", "expected"),
    [
        ([inst("a", 8000), inst("b", 8000)], "systemd", "vllm_service_instances[1] ('b').port = 8000 is already used"),
        ([inst("a"), inst("a", 8001)], "systemd", "name = 'a' is already used by vllm_service_instances[0]"),
        ([inst()], "podman", "vllm_service_runtime = 'podman' is not a known runtime; allowed: docker, systemd"),
        ([inst(runtime="k8s")], "systemd", ".runtime = 'k8s' is not a known runtime"),
        ([inst(port=70000)], "systemd", "port = 70000 must be an integer from 1 to 65535"),
        ([inst(port="8000")], "systemd", "port = '8000' must be an integer"),
        ([inst(model="nope")], "systemd", "model = 'nope' is not in fleet_models; known: big, small"),
        ([inst(name="Bad Name")], "systemd", "name = 'Bad Name' must match"),
        ([inst(gpu_memory_utilization=0)], "systemd", "gpu_memory_utilization = 0 must be a number in (0, 1]"),
        ([inst(gpu_memory_utilization=1.5)], "systemd", "gpu_memory_utilization = 1.5 must be a number in (0, 1]"),
        ([inst(gpu_ids=[0], tensor_parallel_size=2)], "systemd", "tensor_parallel_size x pipeline_parallel_size = 2"),
        ([inst(tensor_parallel_size=0)], "systemd", "tensor_parallel_size = 0 must be an integer >= 1"),
        (
            [inst("a", 8000, gpu_ids=[0], gpu_memory_utilization=0.6),
             inst("b", 8001, gpu_ids=[0], gpu_memory_utilization=0.5)],
            "systemd",
            "share GPU 0 with gpu_memory_utilization adding up to 1.10",
        ),
        ("not-a-list", "systemd", "vllm_service_instances must be a list"),
    ],
)
def test_bad_instances_are_refused_with_the_value(instances, runtime, expected):
    errors = errors_for(instances, runtime)
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("host gpu1") for e in errors), errors


def test_ray_worker_without_head_is_refused():
    errors = check_groups("w1", ["ray_workers"], {"ray_workers": ["w1"], "ray_head": []})
    assert errors == [
        "host w1 is in group ray_workers but group ray_head has no host; "
        "a Ray worker needs exactly one host in ray_head"
    ]


def test_two_ray_heads_are_refused():
    errors = check_groups("h1", ["ray_head"], {"ray_head": ["h1", "h2"]})
    assert "group ray_head has 2 hosts (h1, h2); exactly one is allowed" in errors[0]


def test_worker_with_one_head_is_fine():
    assert check_groups("w1", ["ray_workers"], {"ray_head": ["h1"], "ray_workers": ["w1"]}) == []


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ({"m": {"source": {"hf": "org/m"}}}, "needs a pinned source.revision"),
        ({"m": {"source": {"hf": "org/m", "revision": "r", "path": "/x"}}}, "exactly one is allowed"),
        ({"m": {"source": {"url": "https://x/m.gguf", "sha256": "abc"}}}, "needs source.sha256 (64 hex digits)"),
        ({"m": {"source": {"path": "relative/dir"}}}, "must be an absolute path"),
        ({"m": {}}, "source must be a mapping"),
    ],
)
def test_bad_catalog_entries(models, expected):
    errors = check_models(models)
    assert any(expected in e for e in errors), errors


def test_module_fails_with_all_errors(monkeypatch, capsys):
    import fleet_validate
    from ansible.module_utils import basic
    from ansible.module_utils.common.text.converters import to_bytes

    args = {
        "host": "gpu1",
        "host_groups": ["inference_nodes"],
        "groups": {"inference_nodes": ["gpu1"]},
        "settings": {"vllm_service_runtime": "systemd", "vllm_service_instances": [inst("a"), inst("b")]},
        "models": MODELS,
    }
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args})))
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    with pytest.raises(SystemExit) as exc:
        fleet_validate.main()
    assert exc.value.code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] is True
    assert "port = 8000 is already used by instance 'a'" in out["msg"]
    assert not out.get("changed")
