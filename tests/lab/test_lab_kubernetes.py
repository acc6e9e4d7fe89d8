"""The lab's Kubernetes entry (group kubernetes_clusters, vllm_kubernetes_apply false: no API server
can run here) renders the lab's own vLLM instances as Deployments during the converge of site.yml.
Each pod would run exactly the arguments of the instance that really runs in the lab, under systemd
and under Docker Compose, only the model's location differing (the models volume in the pod); and
every manifest the converge wrote is valid for Kubernetes 1.37 (kubernetes-validate)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from llmfleet.paths import lab_name
from llmfleet_lab import containers as lab

pytestmark = pytest.mark.lab


def _render_dir() -> Path:
    cache = Path(os.environ.get("LLMFLEET_CACHE", Path.home() / ".cache" / "llmfleet"))
    return cache / "kubernetes" / lab_name() / "manifests"


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    files = sorted(_render_dir().glob("*.yaml"))
    if not files:
        pytest.fail(f"no manifests in {_render_dir()}: the converge of site.yml renders them (kubernetes_clusters)")
    manifests = [yaml.safe_load(f.read_text()) for f in files]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, "1.37.0", strict=True)
    return {
        m["metadata"]["labels"]["app.kubernetes.io/instance"].removeprefix("vllm-"): m
        for m in manifests
        if m["kind"] == "Deployment"
    }


def _without_model(args: list[str]) -> list[str]:
    at = args.index("--model") + 1
    return args[:at] + args[at + 1:]


def _no_host(args: list[str]) -> list[str]:
    at = args.index("--host")
    return args[:at] + args[at + 2:]


def _systemd_args(host: str, instance: str) -> list[str]:
    unit = subprocess.run(
        ["docker", "exec", host, "cat", f"/etc/systemd/system/vllm-{instance}.service"],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    return argv[argv.index("vllm.entrypoints.openai.api_server") + 1:]


def _docker_args(instance: str) -> list[str]:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{json .Args}}", f"vllm-{instance}"], capture_output=True, text=True, check=True
    ).stdout
    args = yaml.safe_load(out)
    # The image's entrypoint is the interpreter: its arguments start with the module.
    module = "vllm.entrypoints.openai.api_server"
    return args[args.index(module) + 1:] if module in args else args


def test_pods_run_the_arguments_the_lab_instances_run(deployments):
    compared = []
    for host in lab.read_inventory():
        if "inference_nodes" not in host.groups:
            continue
        runtime = host.hostvars.get("vllm_service_runtime", "systemd")
        for inst in host.hostvars.get("vllm_service_instances") or []:
            name = inst["name"]
            assert name in deployments, f"instance {name} of {host.name} has no Deployment"
            pod = deployments[name]["spec"]["template"]["spec"]["containers"][0]["args"]
            running = _systemd_args(host.name, name) if runtime == "systemd" else _docker_args(name)
            # The host flag: a pod listens on 0.0.0.0; the lab's systemd host under only ingress on its
            # backend address.
            assert _no_host(_without_model(pod)) == _no_host(_without_model(running)), (host.name, name)
            assert pod[pod.index("--model") + 1] == f"/models/{inst['model']}"
            compared.append((runtime, name))
    assert {r for r, _ in compared} == {"systemd", "docker"}, compared
