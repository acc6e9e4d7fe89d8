"""What nvidia_runtime leaves on hosts without a GPU.

nvidia-runtime-nogpu: nvidia_runtime_configure_without_gpu=true, nvidia_runtime_packages_install=false.
nvidia-runtime-defaults: the role's defaults, so every GPU-only step is skipped.
"""

from __future__ import annotations

import json

import pytest

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
EXISTING_DAEMON_JSON = {"log-driver": "local", "log-opts": {"max-size": "10m"}}


@pytest.fixture
def configured(host):
    if host.backend.get_hostname() != "nvidia-runtime-nogpu":
        pytest.skip("only nvidia-runtime-nogpu is configured without a GPU")
    return host


@pytest.fixture
def defaults(host):
    if host.backend.get_hostname() != "nvidia-runtime-defaults":
        pytest.skip("only nvidia-runtime-defaults runs with the role's defaults")
    return host


def test_defaults_skip_gpu_only_steps_and_change_nothing(defaults):
    config = json.loads(defaults.file("/etc/docker/daemon.json").content_string)
    assert config == EXISTING_DAEMON_JSON
    assert not defaults.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources").exists
    facts = json.loads(defaults.file("/var/tmp/llmfleet-gpu-facts.json").content_string)
    assert facts["count"] == 0 and "nvidia-smi is not installed" in facts["reason"]


def test_daemon_json_keeps_existing_keys_and_has_the_nvidia_runtime(configured):
    daemon = configured.file("/etc/docker/daemon.json")
    assert daemon.mode == 0o644
    config = json.loads(daemon.content_string)
    assert config["log-driver"] == "local"
    assert config["log-opts"] == {"max-size": "10m"}
    assert config["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "args": []}
    assert "default-runtime" not in config


def test_toolkit_source_is_rendered_for_this_arch_and_disabled(configured):
    source = configured.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources")
    assert source.exists and source.mode == 0o644
    arch = DEB_ARCH[configured.system_info.arch]
    lines = source.content_string.splitlines()
    assert f"URIs: https://nvidia.github.io/libnvidia-container/stable/deb/{arch}" in lines
    assert "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc" in lines
    assert "Enabled: no" in lines


def test_no_key_fetched_and_apt_still_reads_its_sources(configured):
    assert not configured.file("/etc/apt/keyrings/nvidia-container-toolkit.asc").exists
    policy = configured.run("apt-cache policy")
    assert policy.rc == 0, policy.stderr
    assert "E:" not in policy.stderr
    assert "nvidia" not in policy.stdout


def test_no_driver_repository_without_driver_install(configured):
    assert not configured.file("/etc/apt/sources.list.d/nvidia-cuda.sources").exists


def test_gpu_facts_report_no_gpu_with_a_reason(configured):
    facts = json.loads(configured.file("/var/tmp/llmfleet-gpu-facts.json").content_string)
    assert facts["count"] == 0
    assert facts["gpus"] == []
    assert facts["vendor"] is None
    assert "nvidia-smi is not installed" in facts["reason"]
    assert facts["driver_loaded"] is False
    assert facts["cpu_arch"] == configured.system_info.arch
    assert facts["cuda_arch_list"] == ""
    assert facts["docker"]["runtime_configured"] is True
    assert facts["docker"]["usable"] is False


def test_nothing_gpu_only_was_done(configured):
    assert not configured.file("/etc/cdi/nvidia.yaml").exists
    assert not configured.exists("nvidia-ctk")
