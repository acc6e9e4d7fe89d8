"""fleet_validate's checks that need a fact of the host (architecture, free disk), and ports given as
strings: the probe is the real shell script run on this machine, the specs and defaults the roles' own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.checks import (
    GIB,
    NVIDIA_RUNTIME_ARCHES,
    build_target,
    check_build_platform,
    check_host_facts,
    check_host_ports,
    check_models,
    parse_platform,
    parse_probe,
    probe_argv,
    probe_items,
    validate_host,
)
from validate_play import role_defaults

ROLES = Path(__file__).resolve().parent.parent.parent / "roles"
URL_SOURCE = {"url": "https://models.example.invalid/m.gguf", "sha256": "0" * 64}
X86 = "arch x86_64\n"


def _defaults(role):
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


def d(groups, settings, *roles):
    """A host's settings as the validate play hands them over: the roles' own defaults under them."""
    return {**role_defaults(groups, settings, list(roles)), **settings}


def run_probe(items):
    """The real probe, as the validate play runs it (ansible.builtin.command with this argv)."""
    return subprocess.run(probe_argv(items), capture_output=True, text=True, check=True).stdout


def free_line(path, gb, dev="64769"):
    return f"free {int(gb * GIB / 1024)} {dev} {path}\n"


# --- the defaults the checks use are the roles', read as the validate play reads them ------------


def test_defaults_rendered_from_the_roles_files():
    source = role_defaults(["vllm_builders"], {"vllm_build_mode": "source"}, ["vllm_build"])
    # vllm_build_min_free_gb's default is written with Jinja over the mode the inventory gives.
    assert source["vllm_build_min_free_gb"] == 100 and source["vllm_build_mode"] == "source"
    assert source["vllm_build_work_dir"] == _defaults("vllm_build")["vllm_build_work_dir"]
    cache = role_defaults(["inference_nodes"], {}, ["model_cache"])
    assert cache["model_cache_mode"] == "sync" and cache["model_cache_free_space_reserve_mb"] == 1024
    arch_map = yaml.safe_load((ROLES / "nvidia_runtime" / "vars" / "main.yml").read_text())
    assert tuple(arch_map["nvidia_runtime_deb_arch_map"]) == NVIDIA_RUNTIME_ARCHES


def test_a_port_left_to_its_roles_default_clashes_too():
    """The gateway on 9090 on a host that also runs Prometheus, whose port the inventory leaves to
    observability_stack's default (9090): refused, naming the default."""
    settings = {"model_gateway_port": 9090}
    groups = ["gateway", "observability"]
    defaults = role_defaults(groups, settings, ["model_gateway", "observability_stack"])
    assert defaults["observability_stack_prometheus_port"] == 9090
    errors = validate_host("h1", groups, {g: ["h1"] for g in groups}, settings, {}, defaults=defaults)
    assert (
        "host h1: observability_stack_prometheus_port = 9090 is already used by model_gateway_port on this host; "
        "allowed: a port no other service of the host uses"
    ) in errors, errors


# --- ports given as strings ----------------------------------------------------------------------


def test_ports_given_as_strings_are_duplicates():
    settings = {
        "vllm_service_instances": [
            {"name": "a", "model": "m", "port": 8000},
            {"name": "b", "model": "m", "port": "8000"},
        ]
    }
    errors = validate_host("h1", ["inference_nodes"], {}, settings, {"m": {"source": {"path": "/m"}}})
    assert "host h1: vllm_service_instances[1] ('b').port = '8000' is already used by instance 'a' on this host" in (
        errors
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"vllm_service_instances": [{"name": "a", "port": "4000"}], "model_gateway_port": 4000},
            "host h1: model_gateway_port = 4000 is already used by vllm_service_instances[0] ('a').port on this host",
        ),
        (
            {"model_gateway_port": "9090", "observability_stack_prometheus_port": 9090},
            "host h1: observability_stack_prometheus_port = 9090 is already used by model_gateway_port on this host",
        ),
    ],
)
def test_service_ports_of_one_host_are_distinct(settings, expected):
    assert check_host_ports("h1", settings) == [expected + "; allowed: a port no other service of the host uses"]


def test_distinct_ports_pass():
    settings = {"vllm_service_instances": [{"name": "a", "port": 8000}], "model_gateway_port": "4000"}
    assert check_host_ports("h1", settings) == []


# --- platforms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "arch"),
    [
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("arm64", "arm64"),
        ("linux/amd64", "amd64"),
        ("linux/arm/v7", "arm"),
        ("linux/x86_64", "amd64"),
        ("windows/amd64", None),
        ("linux/sparc", None),
        ("", None),
    ],
)
def test_platforms(value, arch):
    assert parse_platform(value) == arch


def test_bad_platforms_are_refused_without_facts():
    assert (
        "is not a Linux platform; allowed: '' (the builder's) or linux/<arch>"
        in check_build_platform("b1", {"vllm_build_platform": "arm64x"})[0]
    )
    source = check_build_platform("b1", {"vllm_build_platform": "linux/ppc64le", "vllm_build_mode": "source"})
    assert "vLLM's CUDA Dockerfile builds for linux/amd64 or linux/arm64 only" in source[0]
    assert check_build_platform("b1", {"vllm_build_platform": "linux/ppc64le"}) == []


# --- the probe -----------------------------------------------------------------------------------


def test_the_real_probe_reads_arch_free_space_of_the_nearest_parent_and_usage(tmp_path):
    model = tmp_path / "cache" / "m"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"\0" * (2 << 20))
    missing = tmp_path / "not" / "yet" / "there"
    out = run_probe(["arch", "binfmt", f"free={missing}", f"used={model}", f"used={tmp_path / 'gone'}"])
    facts = parse_probe(out)
    assert facts["arch"] == os.uname().machine
    free, dev = facts["free"][str(missing)]
    assert dev == str(os.stat(tmp_path).st_dev)
    statvfs = os.statvfs(tmp_path)
    assert abs(free - statvfs.f_bavail * statvfs.f_frsize) < 256 << 20
    assert facts["used"][str(model)] >= 2 << 20
    assert facts["used"][str(tmp_path / "gone")] == 0
    readable = Path("/proc/sys/fs/binfmt_misc/status").exists()
    assert (facts["binfmt"] is not None) == readable
    assert not missing.exists() and not (tmp_path / "not").exists(), "the probe creates nothing"


def test_only_hosts_whose_checks_need_facts_are_probed():
    models = {"m": {"source": URL_SOURCE, "size_gb": 5}, "p": {"source": {"path": "/m"}, "size_gb": 5}}
    plain = {"vllm_service_instances": [{"name": "a", "model": "p", "port": 8000}]}
    assert probe_items("h", ["inference_nodes"], {}, plain, models) == []
    assert probe_items("h", ["inference_nodes"], {}, plain, {"p": {"source": URL_SOURCE}}) == []
    sized = {"vllm_service_instances": [{"name": "a", "model": "m", "port": 8000}]}
    assert probe_items("h", ["inference_nodes"], {}, d(["inference_nodes"], sized, "model_cache"), models) == [
        "free=/var/cache/llmfleet/models/m",
        "used=/var/cache/llmfleet/models/m",
        "used=/var/cache/llmfleet/models/.m.llmfleet",
    ]
    mounted = d(["inference_nodes"], {**sized, "model_cache_mode": "mount"}, "model_cache")
    assert probe_items("h", ["inference_nodes"], {}, mounted, models) == []
    assert probe_items("h", ["gpu_nodes"], {}, {}, {}) == ["arch"]
    arm = d(["vllm_builders"], {"vllm_build_platform": "linux/arm64"}, "vllm_build")
    assert probe_items("b", ["vllm_builders"], {}, arm, {}) == [
        "arch",
        "binfmt",
        "free=/var/lib/llmfleet/vllm_build",
        "free=/var/lib/docker",
    ]
    docker = {"vllm_service_runtime": "docker", "vllm_service_image": "r:5000/x:1"}
    assert probe_items("h", ["inference_nodes"], {"vllm_builders": ["b"]}, docker, {}) == ["arch"]
    assert probe_items("h", ["inference_nodes"], {"vllm_builders": []}, docker, {}) == []


# --- what the facts rule out ---------------------------------------------------------------------


def test_nvidia_runtime_needs_x86_64_or_aarch64():
    assert check_host_facts("g1", ["gpu_nodes"], {}, {}, "arch aarch64\n") == []
    assert check_host_facts("g1", ["gpu_nodes"], {}, {}, "arch ppc64le\n") == [
        "host g1 is in group gpu_nodes (nvidia_runtime) but its architecture is 'ppc64le'; "
        "allowed: x86_64, aarch64 (NVIDIA's repositories have no other)"
    ]


@pytest.mark.parametrize(
    ("probe", "refused"),
    [
        (X86 + "binfmt-read\n", True),  # binfmt_misc readable, no QEMU for arm64
        (X86 + "binfmt aarch64\nbinfmt-read\n", False),
        (X86, False),  # binfmt_misc not readable here (a container): not known, not refused
        ("arch aarch64\nbinfmt-read\n", False),  # the builder's own architecture
    ],
)
def test_a_foreign_platform_needs_qemu_on_a_local_daemon(probe, refused):
    settings = d(["vllm_builders"], {"vllm_build_platform": "linux/arm64", "vllm_build_min_free_gb": 0}, "vllm_build")
    errors = check_host_facts("b1", ["vllm_builders"], settings, {}, probe)
    assert bool(errors) == refused, errors
    if refused:
        assert errors[0].startswith(
            "host b1: vllm_build_platform = 'linux/arm64' is not the builder's architecture (x86_64) and the "
            "builder's kernel has no binfmt handler qemu-aarch64"
        )
    remote = {**settings, "vllm_build_docker_host": "tcp://10.0.0.5:2376"}
    assert check_host_facts("b1", ["vllm_builders"], remote, {}, probe) == []


def test_a_source_build_needs_a_cuda_architecture():
    settings = {"vllm_build_mode": "source", "vllm_build_min_free_gb": 0}
    assert check_host_facts("b1", ["vllm_builders"], settings, {}, X86) == []
    errors = check_host_facts("b1", ["vllm_builders"], settings, {}, "arch riscv64\n")
    assert "builds vLLM's CUDA Dockerfile for the builder's architecture 'riscv64'" in errors[0]


def test_a_build_needs_its_free_disk():
    probe = X86 + free_line("/var/lib/llmfleet/vllm_build", 10) + free_line("/var/lib/docker", 200)
    errors = check_host_facts("b1", ["vllm_builders"], d(["vllm_builders"], {}, "vllm_build"), {}, probe)
    assert errors == [
        "host b1: vllm_build_disk_paths entry '/var/lib/llmfleet/vllm_build' (or the nearest existing parent) has "
        "10.0 GB free, but a wheel build needs vllm_build_min_free_gb = 15 GB; allowed: at least that much free "
        "(docker system prune, docker builder prune), or a lower vllm_build_min_free_gb"
    ]
    source_settings = d(["vllm_builders"], {"vllm_build_mode": "source"}, "vllm_build")
    source = check_host_facts("b1", ["vllm_builders"], source_settings, {}, probe)
    assert len(source) == 1 and "a source build needs vllm_build_min_free_gb = 100 GB" in source[0]
    lower = d(["vllm_builders"], {"vllm_build_min_free_gb": "8"}, "vllm_build")
    assert check_host_facts("b1", ["vllm_builders"], lower, {}, probe) == []


def _cache_settings(*names, **more):
    given = {"vllm_service_instances": [{"name": n, "model": n, "port": 8000 + i} for i, n in enumerate(names)], **more}
    return d(["inference_nodes"], given, "model_cache")


def test_models_to_fetch_need_room_on_the_cache_filesystem():
    models = {
        "a": {"source": URL_SOURCE, "size_gb": 30},
        "b": {"source": {"hf": "org/b", "revision": "1" * 40}, "size_gb": 30},
    }
    root = "/var/cache/llmfleet/models"
    probe = free_line(f"{root}/a", 50) + free_line(f"{root}/hf/hub", 50)
    errors = check_host_facts("i1", ["inference_nodes"], _cache_settings("a", "b"), models, probe)
    assert errors == [
        f"host i1: model_cache_root = '{root}': the filesystem of '{root}/a' (or its nearest existing parent) has "
        "50.0 GB free, but fleet_models['a'] (size_gb 30, 0.0 GB there), fleet_models['b'] (size_gb 30, 0.0 GB there) "
        "need 60.0 GB more plus model_cache_free_space_reserve_mb = 1024; allowed: at most 49.0 GB to fetch there "
        "(free space, point model_cache_root elsewhere, or model_cache_mode mount / none)"
    ]
    # What is already in the cache (a finished or a resumable sync) is not fetched again.
    there = probe + f"used {25 * GIB // 1024} {root}/a\nused {5 * GIB // 1024} {root}/.a.llmfleet\n"
    assert check_host_facts("i1", ["inference_nodes"], _cache_settings("a", "b"), models, there) == []
    # Two filesystems: each holds its own.
    split = free_line(f"{root}/a", 40, dev="1") + free_line(f"{root}/hf/hub", 40, dev="2")
    assert check_host_facts("i1", ["inference_nodes"], _cache_settings("a", "b"), models, split) == []
    no_reserve = _cache_settings("a", "b", model_cache_free_space_reserve_mb=0)
    assert check_host_facts("i1", ["inference_nodes"], no_reserve, models, free_line(f"{root}/a", 60)) == []


def test_catalog_size_is_a_positive_number():
    assert check_models({"m": {"source": URL_SOURCE, "size_gb": 16.5}}) == []
    errors = check_models({"m": {"source": URL_SOURCE, "size_gb": "16G"}})
    assert errors == [
        "fleet_models['m'].size_gb = '16G' is not a size; allowed: a number of GB (2^30 bytes) > 0, or leave it out"
    ]


def test_a_docker_node_refuses_an_image_built_for_another_architecture():
    docker = {"vllm_service_runtime": "docker", "vllm_service_image": "127.0.0.1:5000/x:1"}
    arm = build_target(
        "b1",
        ["vllm_builders"],
        {
            "vllm_build_registry": "127.0.0.1:5000",
            "vllm_build_image": "x",
            "vllm_build_tag": "1",
            "vllm_build_platform": "linux/arm64",
        },
    )
    assert arm == {"host": "b1", "refs": ["127.0.0.1:5000/x:1"], "local": False, "platform": "linux/arm64"}
    errors = check_host_facts("i1", ["inference_nodes"], docker, {}, X86, [arm])
    assert errors == [
        "host i1: vllm_service_image = '127.0.0.1:5000/x:1' is built by vllm_builders host b1 for linux/arm64 "
        "(vllm_build_platform = 'linux/arm64'), but this host is x86_64; allowed: an image for linux/amd64 "
        "(set that builder's vllm_build_platform to linux/amd64, or use another image)"
    ]
    native = {**arm, "platform": ""}
    # No platform: the builder's own architecture, from its probe.
    assert check_host_facts("i1", ["inference_nodes"], docker, {}, X86, [native], {"b1": "arch aarch64\n"})
    assert check_host_facts("i1", ["inference_nodes"], docker, {}, X86, [native], {"b1": X86}) == []
    assert check_host_facts("i1", ["inference_nodes"], docker, {}, X86, [native], {}) == []
    other = {**docker, "vllm_service_image": "vllm/vllm-openai:v0.32.0"}
    assert check_host_facts("i1", ["inference_nodes"], other, {}, X86, [arm]) == []


def test_module_hands_back_the_probe_then_refuses_from_its_output():
    import fleet_validate
    from ansible_module import run_module

    args = {
        "host": "b1",
        "host_groups": ["vllm_builders"],
        "groups": {"vllm_builders": ["b1"]},
        "settings": {"vllm_build_image": "x", "vllm_build_tag": "1"},
        # As the validate play hands them over (fleet_role_defaults over the role's defaults file).
        "defaults": role_defaults(["vllm_builders"], {"vllm_build_image": "x", "vllm_build_tag": "1"}, ["vllm_build"]),
        "specs": {},
    }
    first = run_module(fleet_validate.main, args, check_mode=True)
    assert first["failed"] is False and first["changed"] is False
    assert first["facts_needed"] == ["arch", "disk"]
    assert first["probe_argv"][-3:] == ["arch", "free=/var/lib/llmfleet/vllm_build", "free=/var/lib/docker"]
    assert first["build"] == {"host": "b1", "refs": ["x:1"], "local": True, "platform": ""}
    probe = X86 + free_line("/var/lib/llmfleet/vllm_build", 2) + free_line("/var/lib/docker", 2)
    second = run_module(fleet_validate.main, {**args, "probe": probe}, check_mode=True)
    assert second["failed"] is True
    assert second["probe_argv"] == [] and second["facts_needed"] == []
    assert "has 2.0 GB free, but a wheel build needs vllm_build_min_free_gb = 15 GB" in second["msg"]
