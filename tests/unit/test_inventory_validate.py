"""fleet_validate's checks: each bad inventory is refused with host, variable, value and what is allowed.

The specs are the roles' real meta/argument_specs.yml, so a range or format written there is what
these tests exercise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.checks import (
    check_groups,
    check_models,
    is_image_reference,
    needs_gpu_count,
    secret_values,
    spec_error_messages,
    spec_format,
    spec_range,
    validate_host,
)

ROLES = Path(__file__).resolve().parent.parent.parent / "roles"
MODELS = {
    "small": {"source": {"path": "/models/small"}},
    "big": {"source": {"hf": "org/big", "revision": "0123456789abcdef0123456789abcdef01234567"}},
}


def role_spec(role):
    """The options of a role's main entry point, from its real meta/argument_specs.yml."""
    data = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    return data["argument_specs"]["main"]["options"]


SPECS = {role: role_spec(role) for role in ("vllm_service", "vllm_build")}


def inst(name="a", port=8000, model="small", **kw):
    return {"name": name, "port": port, "model": model, **kw}


def errors_for(instances, runtime="systemd", models=MODELS, groups=("inference_nodes",), gpu=None, **more):
    settings = {"vllm_service_runtime": runtime, "vllm_service_instances": instances, **more}
    return validate_host("gpu1", list(groups), {"inference_nodes": ["gpu1"]}, settings, models, SPECS, gpu)


def test_a_role_validate_checks_only_its_own_role():
    """vllm_build's own validate step on a builder that is also an inference node sees only the
    vllm_build settings: the instance checks are vllm_service's (and site.yml's) business."""
    groups = ["inference_nodes", "vllm_builders"]
    settings = {"vllm_build_image": "llmfleet/vllm", "vllm_build_tag": "1.0"}
    only_build = {"vllm_build": SPECS["vllm_build"]}
    assert validate_host("gpu1", groups, {"inference_nodes": ["gpu1"]}, settings, MODELS, only_build) == []
    every_role = validate_host("gpu1", groups, {"inference_nodes": ["gpu1"]}, settings, MODELS, SPECS)
    assert any("needs at least one instance" in e for e in every_role)


def test_consistent_host_has_no_errors():
    assert errors_for([inst("a", 8000), inst("b", 8001, "big", gpu_ids=[0, 1], tensor_parallel_size=2)]) == []


@pytest.mark.parametrize(
    ("instances", "runtime", "expected"),
    [
        ([inst("a", 8000), inst("b", 8000)], "systemd", "vllm_service_instances[1] ('b').port = 8000 is already used"),
        ([inst("a"), inst("a", 8001)], "systemd", "name = 'a' is already used by vllm_service_instances[0]"),
        ([inst()], "podman", "vllm_service_runtime = 'podman' is not a known runtime; allowed: docker, systemd"),
        ([inst(runtime="k8s")], "systemd", "[0] ('a').runtime = 'k8s' is not allowed; allowed: docker, systemd"),
        ([inst(runtime="docker")], "systemd", "runtime = 'docker' contradicts the host's vllm_service_runtime"),
        ([inst(port=70000)], "systemd", "[0] ('a').port = 70000 is out of range; allowed: int in [1, 65535]"),
        ([inst(port=0)], "systemd", "port = 0 is out of range; allowed: int in [1, 65535]"),
        ([inst(port="http")], "systemd", "port = 'http' is not a valid int"),
        ([inst(model="nope")], "systemd", "model = 'nope' is not in fleet_models; known: big, small"),
        ([inst(name="Bad Name")], "systemd", "name = 'Bad Name' must match"),
        (
            [inst(gpu_memory_utilization=0)],
            "systemd",
            "gpu_memory_utilization = 0 is out of range; allowed: float in (0, 1]",
        ),
        ([inst(gpu_memory_utilization=1.5)], "systemd", "gpu_memory_utilization = 1.5 is out of range"),
        ([inst(gpu_ids=[0], tensor_parallel_size=2)], "systemd", "tensor_parallel_size x pipeline_parallel_size = 2"),
        (
            [inst(tensor_parallel_size=0)],
            "systemd",
            "tensor_parallel_size = 0 is out of range; allowed: int in [1, inf)",
        ),
        ([inst(gpu_ids=[-1])], "systemd", "gpu_ids = [-1] is out of range; allowed: int in [0, inf)"),
        ([inst(max_num_seqs=-4)], "systemd", "max_num_seqs = -4 is out of range"),
        ([inst(kv_cache_memory_bytes=-1)], "systemd", "kv_cache_memory_bytes = -1 is out of range"),
        ([inst(max_model_len="lots")], "systemd", "('a').max_model_len = 'lots' is not a valid int"),
        ([inst(prot=8001)], "systemd", "vllm_service_instances[0] ('a') has an unknown key 'prot'; allowed: api_key"),
        (
            [{"name": "a", "model": "small"}],
            "systemd",
            "vllm_service_instances[0] ('a').port is missing; it is required",
        ),
        ([inst(api_key=1234)], "systemd", "('a').api_key is a secret given as int, not as a string"),
        (["a"], "systemd", "vllm_service_instances[0] must be a mapping, got 'a'"),
        (
            [
                inst("a", 8000, gpu_ids=[0], gpu_memory_utilization=0.6),
                inst("b", 8001, gpu_ids=[0], gpu_memory_utilization=0.5),
            ],
            "systemd",
            "share GPU 0 with gpu_memory_utilization adding up to 1.10",
        ),
        ("not-a-list", "systemd", "vllm_service_instances must be a list"),
        (
            [],
            "systemd",
            "is in group inference_nodes but vllm_service_instances = []; an inference node needs at least",
        ),
    ],
)
def test_bad_instances_are_refused_with_the_value(instances, runtime, expected):
    errors = errors_for(instances, runtime)
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("host gpu1") for e in errors), errors


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("vllm_service_log_max_bytes", -1, "vllm_service_log_max_bytes = -1 is out of range; allowed: int in [1, inf)"),
        ("vllm_service_limit_nofile", 0, "vllm_service_limit_nofile = 0 is out of range"),
        ("vllm_service_health_timeout", 0, "vllm_service_health_timeout = 0 is out of range"),
        ("vllm_service_image", "vllm/vllm-openai", "vllm_service_image = 'vllm/vllm-openai' is not an image reference"),
        ("vllm_service_image", "", "vllm_service_image = '' is not an image reference"),
        ("vllm_service_hf_token", 123, "vllm_service_hf_token is a secret given as int, not as a string"),
        ("vllm_build_pr", -3, "vllm_build_pr = -3 is out of range; allowed: int in [0, inf)"),
        ("vllm_build_max_jobs", -1, "vllm_build_max_jobs = -1 is out of range"),
        ("vllm_build_poll_interval", 0, "vllm_build_poll_interval = 0 is out of range"),
        ("vllm_build_min_free_gb", -5.0, "vllm_build_min_free_gb = -5.0 is out of range; allowed: float in [0, inf)"),
        ("vllm_build_wheel_base_image", "ubuntu", "vllm_build_wheel_base_image = 'ubuntu' is not an image reference"),
        ("vllm_build_source_final_base_image", "nvidia/cuda", "is not an image reference with a tag or digest"),
        ("vllm_build_registry_password", 424242, "vllm_build_registry_password is a secret given as int"),
    ],
)
def test_bad_role_variables_are_refused_from_the_spec(variable, value, expected):
    errors = errors_for([inst()], **{variable: value})
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("host gpu1: ") for e in errors), errors
    if "secret" in expected:
        assert not any(str(value) in e for e in errors), "a secret's value is never shown"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("vllm_service_image", "127.0.0.1:5000/llmfleet/vllm-openai-cpu:0.32.0"),
        ("vllm_service_image", "vllm/vllm-openai@sha256:" + "a" * 64),
        ("vllm_service_log_max_bytes", "1048576"),
        ("vllm_build_source_final_base_image", ""),
        ("vllm_build_pr", 0),
        ("vllm_service_hf_token", ""),
    ],
)
def test_good_role_variables_pass(variable, value):
    assert errors_for([inst()], **{variable: value}) == []


def test_tp_without_gpu_ids_needs_the_gpu_count():
    instances = [inst(tensor_parallel_size=2, pipeline_parallel_size=2)]
    assert needs_gpu_count(instances)
    assert not needs_gpu_count([inst(gpu_ids=[0, 1], tensor_parallel_size=2), inst("b", 8001)])
    assert errors_for(instances) == [], "without the count read, nothing to refuse yet"
    errors = errors_for(instances, gpu={"count": 2, "reason": None})
    assert errors == [
        "host gpu1: vllm_service_instances[0] ('a'): tensor_parallel_size x pipeline_parallel_size = 4 needs 4 GPUs, "
        "but gpu_facts found 2 on the host; allowed: at most 2, or name the GPUs in gpu_ids"
    ]
    assert errors_for(instances, gpu={"count": 4}) == []


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("vllm/vllm-openai:v0.32.0", True),
        ("ubuntu:24.04", True),
        ("nvcr.io/nvidia/cuda:13.0.1-base-ubuntu24.04", True),
        ("localhost:5000/x:1", True),
        ("x@sha256:" + "0" * 64, True),
        ("x:1@sha256:" + "0" * 64, True),
        ("ubuntu", False),
        ("registry:5000/ubuntu", False),
        ("Ubuntu:24.04", False),
        ("x@sha256:abc", False),
        ("x:", False),
        ("", False),
        (5, False),
    ],
)
def test_image_references(ref, ok):
    assert is_image_reference(ref) is ok


def test_spec_markers_are_read_from_descriptions():
    assert spec_range({"description": "TCP port. Range: [1, 65535]."}) == ("[", 1.0, 65535.0, "]")
    assert spec_range({"description": ["Share.", "Range: (0, 1]."]}) == ("(", 0.0, 1.0, "]")
    assert spec_range({"description": "No range here."}) is None
    assert spec_format({"description": "Base image. Format: image or empty."}) == ("image", True)
    assert spec_format({"description": "Format: image."}) == ("image", False)


def _entries(options):
    for entry in options.values():
        yield entry
        yield from _entries(entry.get("options") or {})


@pytest.mark.parametrize("spec_file", sorted(ROLES.glob("*/meta/argument_specs.yml")), ids=lambda p: p.parts[-3])
def test_every_range_and_format_in_the_role_specs_parses(spec_file):
    """A marker that does not parse would silently check nothing: each one written in a spec is read back."""
    text = spec_file.read_text()
    entry_points = yaml.safe_load(text)["argument_specs"].values()
    entries = [e for point in entry_points for e in _entries(point.get("options") or {})]
    assert sum(spec_range(e) is not None for e in entries) == text.count("Range:")
    assert sum(spec_format(e) is not None for e in entries) == text.count("Format:")


def test_validate_argument_spec_errors_name_host_and_role_and_defer_to_instance_messages():
    own = ["host gpu1: vllm_service_instances[0] ('a') has an unknown key 'prot'; allowed: ..."]
    results = [
        {"role": "vllm_service", "errors": ["vllm_service_instances.prot. Supported parameters include: name."]},
        {"role": "vllm_build", "errors": ["argument 'vllm_build_pr' is of type str and we were unable to convert"]},
    ]
    assert spec_error_messages("gpu1", results, own) == [
        "host gpu1: role vllm_build (roles/vllm_build/meta/argument_specs.yml): argument 'vllm_build_pr' is of "
        "type str and we were unable to convert"
    ]


def test_secret_values_are_collected_from_the_spec():
    settings = {"vllm_service_hf_token": "hf_x", "vllm_service_instances": [inst(api_key="sk-1"), inst("b", 1)]}
    assert secret_values({"vllm_service": SPECS["vllm_service"]}, settings) == {"hf_x", "sk-1"}


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


def _module_args(**kw):
    args = {
        "host": "gpu1",
        "host_groups": ["inference_nodes"],
        "groups": {"inference_nodes": ["gpu1"]},
        "settings": {"vllm_service_runtime": "systemd", "vllm_service_instances": [inst("a"), inst("b")]},
        "specs": {"vllm_service": SPECS["vllm_service"]},
        "models": MODELS,
    }
    return {**args, **kw}


def test_module_fails_with_all_errors():
    import fleet_validate
    from ansible_module import run_module

    out = run_module(fleet_validate.main, _module_args())
    assert out["failed"] is True
    assert "port = 8000 is already used by instance 'a'" in out["msg"]
    assert not out.get("changed")


def test_module_reports_spec_errors_masks_secrets_and_asks_for_gpu_facts():
    import fleet_validate
    from ansible_module import run_module

    settings = {
        "vllm_service_runtime": "systemd",
        "vllm_service_instances": [inst("a", 8000, api_key="sk-secret-value", tensor_parallel_size=2)],
    }
    ok = run_module(fleet_validate.main, _module_args(settings=settings), check_mode=True)
    assert ok["failed"] is False
    assert ok["changed"] is False
    assert ok["facts_needed"] == ["gpu"]

    spec_errors = [{"role": "vllm_service", "errors": ["value of vllm_service_runtime must be one of: docker"]}]
    bad = run_module(fleet_validate.main, _module_args(settings=settings, spec_errors=spec_errors, gpu={"count": 1}))
    assert bad["failed"] is True
    assert bad["facts_needed"] == []
    assert "host gpu1: role vllm_service (roles/vllm_service/meta/argument_specs.yml): value of" in bad["msg"]
    assert "needs 2 GPUs, but gpu_facts found 1 on the host" in bad["msg"]
