"""vllm_image and vllm_build against the real Docker daemon and a real registry (no mocks).

Needs what `llmfleet lab images` makes (a daemon, llmfleet/debian:bookworm) and Debian's
docker-registry (started here on 127.0.0.1:5000 when none answers, and stopped again if this
module started it). Images are tiny (a few KB on the base image) and removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker
import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.build import run_vllm_image
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.context import HASH_LABEL
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.progress import read_progress

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
BASE = "llmfleet/debian:bookworm"
NAME = "llmfleet-test/vllm-image"
REGISTRY = "127.0.0.1:5000"
# In build args, so images of an earlier (interrupted) run never share this run's content hashes.
NONCE = str(time.time_ns())
DOCKERFILE = """\
ARG BASE=llmfleet/debian:bookworm
FROM ${BASE} AS final
ARG MSG=hello
ARG SLEEP=0
RUN sleep "$SLEEP" && echo "$MSG" > /msg
COPY data.txt /data.txt
"""


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    c = docker.from_env(timeout=600)
    try:
        c.images.get(BASE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE} is missing: run `llmfleet lab images` first")
    yield c
    for image in c.images.list(filters={"label": "io.llmfleet.test=vllm_image"}):
        with contextlib.suppress(docker.errors.ImageNotFound):  # went with an image removed before it
            c.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def registry():
    from llmfleet_lab import registry as reg

    started = reg.ensure(log=lambda m: None)
    yield REGISTRY
    if started:
        reg.stop_if_started(log=lambda m: None)


@pytest.fixture()
def ctx(tmp_path: Path) -> Path:
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "Dockerfile").write_text(DOCKERFILE)
    (d / "data.txt").write_text("data\n")
    return d


def params(ctx: Path, work: Path, **over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": NAME, "tag": "t", "state": "present", "source": "build", "context": str(ctx),
        "dockerfile": "Dockerfile", "extra_context": {}, "hash_exclude": [], "build_args": {"MSG": f"a-{NONCE}"},
        "target": "final", "platform": None, "labels": {"io.llmfleet.test": "vllm_image"}, "pull_base": False,
        "nocache": False, "builder": "auto", "rebuild": "changed", "work_dir": str(work), "log_file": None,
        "progress_file": None, "push": False, "repository": None, "force_pull": False,
        "registry_username": None, "registry_password": None, "docker_host": "unix:///var/run/docker.sock",
        "timeout": 600,
    }
    p.update(over)
    return p


def test_build_skip_rebuild_and_retag(client: docker.DockerClient, ctx: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = run_vllm_image(params(ctx, work), diff_mode=True)
    assert first["changed"] is True and first["action"] == "built"
    image = client.images.get(f"{NAME}:t")
    assert image.id == first["image"]["id"] and image.labels[HASH_LABEL] == first["content_hash"]
    progress = read_progress(first["progress_file"])
    assert progress["state"] == "succeeded" and progress["steps_done"] == progress["steps_total"] > 0
    assert Path(first["log_file"]).read_text().count("Step ") == progress["steps_total"]

    again = run_vllm_image(params(ctx, work))
    assert again["changed"] is False and again["action"] == "none" and again["digest_cache"]["misses"] == 0

    check = run_vllm_image(params(ctx, work, build_args={"MSG": f"b-{NONCE}"}), check_mode=True, diff_mode=True)
    assert check["changed"] is True and check["action"] == "would build"
    assert check["reason"].startswith("content hash changed")
    assert client.images.get(f"{NAME}:t").id == image.id

    second = run_vllm_image(params(ctx, work, build_args={"MSG": f"b-{NONCE}"}))
    assert second["action"] == "built" and second["image"]["id"] != image.id
    back = run_vllm_image(params(ctx, work))
    assert back["action"] == "tagged" and back["image"]["id"] == image.id

    (ctx / "data.txt").write_text("changed\n")
    assert run_vllm_image(params(ctx, work), check_mode=True)["action"] == "would build"
    assert run_vllm_image(params(ctx, work, rebuild="never"))["changed"] is False


def test_failed_build_names_the_step_and_keeps_the_tag(
    client: docker.DockerClient, ctx: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    before = run_vllm_image(params(ctx, work, tag="fail"))["image"]["id"]
    (ctx / "Dockerfile").write_text(DOCKERFILE + "RUN echo about to fail && exit 3\n")
    with pytest.raises(ImageError) as err:
        run_vllm_image(params(ctx, work, tag="fail"))
    assert "RUN echo about to fail && exit 3" in err.value.msg and "left as it was" in err.value.msg
    assert any("about to fail" in line for line in err.value.details["log_tail"])
    assert client.images.get(f"{NAME}:fail").id == before
    assert read_progress(err.value.details["progress_file"])["state"] == "failed"


def test_progress_is_readable_while_building(ctx: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    p = params(ctx, work, tag="slow", build_args={"MSG": str(time.time()), "SLEEP": "6"})
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(run_vllm_image(p)))
    thread.start()
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and thread.is_alive():
        try:
            state = run_vllm_image({**p, "state": "progress"})["progress"]
        except ImageError:
            state = None
        if state and state["state"] == "running" and "sleep" in state["current_step"]:
            seen = state
            break
        time.sleep(0.3)
    thread.join()
    assert seen is not None, "no running progress with the current step was readable"
    assert 0 < seen["steps_done"] < seen["steps_total"] and seen["last_lines"]
    assert out["action"] == "built"


def test_push_pull_and_unreachable_registry(client: docker.DockerClient, registry: str, ctx: Path,
                                            tmp_path: Path) -> None:
    work = tmp_path / "work"
    repo = f"{registry}/{NAME}"
    first = run_vllm_image(params(ctx, work, tag="pushed", push=True, repository=repo))
    assert first["pushed"]["changed"] is True and first["pushed"]["digest"].startswith("sha256:")
    with urllib.request.urlopen(f"http://{registry}/v2/{NAME}/tags/list", timeout=10) as resp:
        assert "pushed" in json.loads(resp.read())["tags"]
    again = run_vllm_image(params(ctx, work, tag="pushed", push=True, repository=repo))
    assert again["changed"] is False and again["pushed"]["changed"] is False

    built_id = first["image"]["id"]
    for ref in (f"{NAME}:pushed", f"{repo}:pushed"):
        client.images.remove(ref)
    pull_args = params(ctx, work, tag="pushed", source="pull", repository=repo)
    assert run_vllm_image(pull_args, check_mode=True)["action"] == "would pull"
    pulled = run_vllm_image(pull_args)
    assert pulled["changed"] is True and pulled["image"]["id"] == built_id
    assert run_vllm_image(pull_args)["changed"] is False

    with pytest.raises(ImageError, match=r"127\.0\.0\.1:5999.*connection refused"):
        run_vllm_image(params(ctx, work, tag="pushed", push=True, repository=f"127.0.0.1:5999/{NAME}"))
    assert client.images.get(f"{NAME}:pushed").id == built_id


# ------------------------------------------------------------------------------------ role, source mode

STAND_IN = """\
# Stand-in for vLLM's docker/Dockerfile: same build args and target name, builds in a second.
ARG CUDA_VERSION=12.8.1
FROM llmfleet/debian:bookworm AS base
ARG torch_cuda_arch_list='7.0 7.5 8.0 8.9 9.0 10.0+PTX'
ARG max_jobs=2
ARG nvcc_threads=8
ARG CUDA_VERSION
RUN echo "torch_cuda_arch_list=${torch_cuda_arch_list} max_jobs=${max_jobs} nvcc_threads=${nvcc_threads} \
cuda=${CUDA_VERSION}" > /build-args
FROM base AS vllm-openai
COPY README /README
"""


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def play(tmp_path: Path, extra: dict[str, Any], check: bool = False) -> subprocess.CompletedProcess:
    playbook = tmp_path / "source.yml"
    playbook.write_text("- hosts: localhost\n  connection: local\n  gather_facts: true\n"
                        "  roles: [{role: vllm_build}]\n")
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra))
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
    cmd = [str(venv_bin / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", f"@{vars_file}",
           "-e", f"ansible_python_interpreter={venv_bin / 'python'}"]
    if check:
        cmd.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_LIBRARY=str(REPO / "plugins/modules"),
               ANSIBLE_MODULE_UTILS=str(REPO / "plugins/module_utils"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)


def test_role_source_build_from_a_pr_ref_and_a_bad_ref(client: docker.DockerClient, tmp_path: Path) -> None:
    upstream = tmp_path / "vllm"
    (upstream / "docker").mkdir(parents=True)
    (upstream / "docker" / "Dockerfile").write_text(STAND_IN)
    (upstream / "README").write_text("main\n")
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "main")
    (upstream / "README").write_text("pr 31740\n")
    git(upstream, "commit", "-q", "-am", "pr")
    pr_commit = git(upstream, "rev-parse", "HEAD")
    git(upstream, "update-ref", "refs/pull/31740/head", pr_commit)
    git(upstream, "reset", "-q", "--hard", "HEAD~1")

    work = tmp_path / "work"
    settings = {
        "vllm_build_mode": "source", "vllm_build_git_url": str(upstream), "vllm_build_pr": 31740,
        "vllm_build_image": "llmfleet-test/vllm-source", "vllm_build_tag": "pr-31740",
        "vllm_build_torch_cuda_arch_list": "12.1", "vllm_build_cuda_version": "12.9.1",
        "vllm_build_work_dir": str(work), "vllm_build_install_packages": False,
        "vllm_build_min_free_gb": 1, "vllm_build_disk_paths": [str(tmp_path)],
        "vllm_build_labels": {"io.llmfleet.test": "vllm_image"},
    }
    checked = play(tmp_path, settings, check=True)
    assert checked.returncode == 0, checked.stdout[-3000:]
    flat = " ".join(checked.stdout.split())  # the callback wraps long messages
    assert "would check out refs/pull/31740/head" in flat
    assert '"torch_cuda_arch_list": "12.1"' in flat and '"nvcc_threads": "2"' in flat

    built = play(tmp_path, settings)
    assert built.returncode == 0, built.stdout[-3000:]
    image = client.images.get("llmfleet-test/vllm-source:pr-31740")
    assert image.labels["org.opencontainers.image.revision"] == pr_commit
    assert image.labels["io.llmfleet.vllm-build.ref"] == "refs/pull/31740/head"
    args = client.containers.run(image.id, ["cat", "/build-args", "/README"], remove=True).decode()
    assert "torch_cuda_arch_list=12.1 " in args and "nvcc_threads=2 " in args and "cuda=12.9.1" in args
    assert "pr 31740" in args
    cores, mem_gb = os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert f"max_jobs={max(1, min(cores // 2, int(mem_gb - 8) // 10))} " in args

    rerun = play(tmp_path, settings)
    assert rerun.returncode == 0 and "changed=0" in rerun.stdout, rerun.stdout[-3000:]

    bad = play(tmp_path, {**settings, "vllm_build_pr": 0, "vllm_build_git_ref": "no-such-branch"})
    assert bad.returncode != 0
    flat = " ".join(bad.stdout.split())
    assert 'vllm_build_git_ref="no-such-branch"' in flat and "is not a branch, tag or pull request" in flat
    assert client.images.get("llmfleet-test/vllm-source:pr-31740").id == image.id
