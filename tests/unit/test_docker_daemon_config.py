"""docker_daemon_config: merge into daemon.json, keep unknown keys, honest check mode and diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ansible_module
import docker_daemon_config
import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.json_merge import (
    ConfigFileError,
    deep_merge,
    plan_merge,
)

NVIDIA = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}


@pytest.mark.parametrize(
    ("current", "settings", "expected"),
    [
        ({}, NVIDIA, NVIDIA),
        (
            {"log-driver": "local", "runtimes": {"runsc": {"path": "/usr/bin/runsc"}}},
            NVIDIA,
            {
                "log-driver": "local",
                "runtimes": {"runsc": {"path": "/usr/bin/runsc"}, "nvidia": NVIDIA["runtimes"]["nvidia"]},
            },
        ),
        ({"default-runtime": "nvidia", "debug": True}, {"default-runtime": None}, {"debug": True}),
        ({"insecure-registries": ["a"]}, {"insecure-registries": ["b"]}, {"insecure-registries": ["b"]}),
    ],
    ids=["empty", "keeps-other-keys-and-runtimes", "null-removes", "lists-replace"],
)
def test_deep_merge(current: dict[str, Any], settings: dict[str, Any], expected: dict[str, Any]) -> None:
    assert deep_merge(current, settings) == expected


def test_same_content_other_formatting_is_unchanged() -> None:
    text = '{"runtimes":{"nvidia":{"args":[],"path":"nvidia-container-runtime"}},"log-driver":"local"}'
    changed, _, _ = plan_merge(text, NVIDIA, "/etc/docker/daemon.json")
    assert changed is False


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "is not valid JSON"), ('["a"]', "holds a JSON list")],
)
def test_unreadable_file_is_an_error(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message):
        plan_merge(text, NVIDIA, "/etc/docker/daemon.json")


def run_module(args: dict[str, Any]) -> dict[str, Any]:
    return ansible_module.run_module(docker_daemon_config.main, args)


def test_check_mode_reports_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text('{"log-driver": "local"}\n')
    result = run_module({"path": str(path), "settings": NVIDIA, "_ansible_check_mode": True, "_ansible_diff": True})
    assert result["changed"] is True
    assert "nvidia-container-runtime" in result["diff"]["after"]
    assert result["config"]["log-driver"] == "local"
    assert path.read_text() == '{"log-driver": "local"}\n'


def test_writes_then_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "daemon.json"
    first = run_module({"path": str(path), "settings": NVIDIA})
    assert first["changed"] is True
    assert json.loads(path.read_text()) == NVIDIA
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    second = run_module({"path": str(path), "settings": NVIDIA})
    assert second["changed"] is False and "diff" not in second


def test_keeps_existing_keys_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"data-root": "/srv/docker", "log-opts": {"max-size": "10m"}}))
    run_module({"path": str(path), "settings": {**NVIDIA, "default-runtime": "nvidia"}})
    on_disk = json.loads(path.read_text())
    assert on_disk["data-root"] == "/srv/docker" and on_disk["log-opts"] == {"max-size": "10m"}
    assert on_disk["default-runtime"] == "nvidia"


def test_invalid_existing_file_fails_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text("{broken")
    result = run_module({"path": str(path), "settings": NVIDIA})
    assert result["failed"] is True and str(path) in result["msg"]
    assert path.read_text() == "{broken"


def test_strict_arguments() -> None:
    result = run_module({"settings": NVIDIA, "restart": True})
    assert result["failed"] is True and "restart" in result["msg"]
