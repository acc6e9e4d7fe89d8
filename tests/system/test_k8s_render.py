"""playbooks/vllm_kubernetes.yml on a cluster entry that is rendered, never applied (no Kubernetes API
server can run here): the real role, through the real runner, writes every manifest; each one is
checked against the OpenAPI schemas of a real Kubernetes release (kubernetes-validate, 1.37), the
Secrets' values stay out of the files. (That a re-run and check mode change nothing is checked on
the lab's own cluster entry, test-k8s-1, by make test's second converge and check stages.) Applying
(kubernetes.core.k8s, server-side dry run in check mode) was not run anywhere: docs/kubernetes.md."""

from __future__ import annotations

import stat
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from llmfleet import runner

REPO = Path(__file__).resolve().parent.parent.parent
INVENTORY = REPO / "tests" / "fixtures" / "k8s" / "hosts.yml"
SECRET = "hf_not_a_real_token_12345678"


def _run(tmp_path: Path, out: Path, check: bool = False, **extra):
    req = runner.RunRequest(
        playbook="playbooks/vllm_kubernetes.yml",
        inventory=str(INVENTORY),
        check=check,
        extravars={"vllm_kubernetes_render_dir": str(out / "manifests"), "vllm_kubernetes_key_dir": str(out / "keys"),
                   **extra},
        summary_dir=tmp_path / ("check" if check else "run"),
        quiet=True,
    )
    return runner.run(req)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8s")
    rc, summary, _ = _run(tmp, tmp)
    assert rc == 0, summary["failed_tasks"]
    return tmp, summary


def test_every_manifest_is_valid_for_kubernetes(rendered):
    tmp, _ = rendered
    files = sorted((tmp / "manifests").glob("*.yaml"))
    kinds = [yaml.safe_load(f.read_text())["kind"] for f in files]
    assert kinds.count("Deployment") == kinds.count("Service") == kinds.count("PodDisruptionBudget") == 2
    assert kinds.count("NetworkPolicy") == 2 and kinds.count("Namespace") == kinds.count("PersistentVolumeClaim") == 1
    for f in files:
        kubernetes_validate.validate(yaml.safe_load(f.read_text()), "1.37.0", strict=True)
    qwen = yaml.safe_load((tmp / "manifests" / "deployment-vllm-qwen.yaml").read_text())
    container = qwen["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["args"][:4] == ["--model", "Qwen/Qwen2.5-7B-Instruct", "--revision",
                                     "a09a35458c702b33eeacc393d103063234e8bc28"]


def test_secrets_stay_out_of_the_files_and_the_log(rendered):
    tmp, summary = rendered
    keys = sorted((tmp / "keys").glob("*.apikey"))
    assert [k.name for k in keys] == ["qwen.apikey", "smollm2.apikey"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    written = "".join(f.read_text() for f in (tmp / "manifests").glob("*.yaml"))
    for secret in [SECRET, *(k.read_text().strip() for k in keys)]:
        assert secret not in written
        assert secret not in str(summary)


def test_a_manifest_the_schema_refuses_is_refused_before_anything_is_applied(tmp_path):
    instance = {"name": "bad", "model": "smollm2-135m", "port": 8000, "gpus": 0,
                "tolerations": [{"key": "gpu", "operator": "Exists", "tolerationSeconds": "soon"}]}
    rc, summary, _ = _run(tmp_path, tmp_path, vllm_kubernetes_instances=[instance])
    assert rc != 0
    failed = summary["failed_tasks"]
    assert [t["task"] for t in failed] == [
        "Check every manifest against the OpenAPI schemas of Kubernetes 1.37.0"
    ], failed
    assert "Deployment/vllm-bad: 'soon' is not of type 'integer'" in failed[0]["message"]
    assert not (tmp_path / "manifests").exists()
