"""vllm_image: content hashing, Dockerfile parsing, progress parsing, rebuild decisions, module arguments.

Pure helpers only; what needs the Docker daemon and the registry is in
tests/integration/test_vllm_image_real.py (real daemon, real registry, no mocks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ansible_module
import pytest
import vllm_image
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.build import decide
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.context import (
    FileDigestCache,
    collect_context,
    content_hash,
    context_manifest,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.dockerfile import (
    dockerfile_base_images,
    dockerfile_stages,
    needs_buildkit,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.progress import BuildProgress
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.ref import registry_of, split_reference

REPO = Path(__file__).resolve().parents[2]
H1 = "sha256:" + "1" * 64
H2 = "sha256:" + "2" * 64


# ------------------------------------------------------------------------------------ references

@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("vllm-gb10", ("vllm-gb10", "latest")),
        ("vllm-gb10:pr-31740", ("vllm-gb10", "pr-31740")),
        ("127.0.0.1:5000/llmfleet/vllm-openai-cpu", ("127.0.0.1:5000/llmfleet/vllm-openai-cpu", "latest")),
        ("127.0.0.1:5000/llmfleet/vllm-openai-cpu:0.32.0", ("127.0.0.1:5000/llmfleet/vllm-openai-cpu", "0.32.0")),
    ],
)
def test_split_reference(ref: str, expected: tuple[str, str]) -> None:
    assert split_reference(ref) == expected


@pytest.mark.parametrize(
    ("repository", "registry"),
    [("vllm/vllm-openai", "docker.io"), ("ghcr.io/acme/vllm-gb10", "ghcr.io"),
     ("127.0.0.1:5000/x", "127.0.0.1:5000"), ("localhost/x", "localhost"), ("vllm-gb10", "docker.io")],
)
def test_registry_of(repository: str, registry: str) -> None:
    assert registry_of(repository) == registry


# ------------------------------------------------------------------------------------ Dockerfile

VLLM_LIKE = """\
ARG CUDA_VERSION=12.8.1
ARG PYTHON_VERSION=3.12
ARG BUILD_BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu20.04
ARG FINAL_BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04
FROM ${BUILD_BASE_IMAGE} AS base
ARG torch_cuda_arch_list='7.0 7.5 8.0 8.9 9.0 10.0+PTX'
RUN --mount=type=cache,target=/root/.cache/uv \\
    pip install uv
FROM base AS build
FROM ${FINAL_BASE_IMAGE} AS vllm-base
FROM vllm-base AS vllm-openai
"""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, ["nvidia/cuda:12.8.1-devel-ubuntu20.04", "nvidia/cuda:12.8.1-devel-ubuntu22.04"]),
        ({"CUDA_VERSION": "12.9.1"}, ["nvidia/cuda:12.9.1-devel-ubuntu20.04", "nvidia/cuda:12.9.1-devel-ubuntu22.04"]),
        ({"FINAL_BASE_IMAGE": "registry.acme.org/cuda:13.0-runtime"},
         ["nvidia/cuda:12.8.1-devel-ubuntu20.04", "registry.acme.org/cuda:13.0-runtime"]),
    ],
    ids=["defaults", "cuda-version-arg", "final-base-override"],
)
def test_base_images_of_a_vllm_like_dockerfile(args: dict[str, str], expected: list[str]) -> None:
    assert dockerfile_base_images(VLLM_LIKE, args) == expected


def test_base_images_of_the_wheel_dockerfile() -> None:
    text = (REPO / "roles/vllm_build/files/wheel.Dockerfile").read_text()
    assert dockerfile_base_images(text, {"BASE_IMAGE": "llmfleet/debian:bookworm"}) == ["llmfleet/debian:bookworm"]
    assert dockerfile_stages(text) == ["venv", "vllm-openai"]
    assert needs_buildkit(text) is None


@pytest.mark.parametrize(
    ("text", "needs"),
    [
        ("FROM a\nRUN --mount=type=cache,target=/x true\n", True),
        ("# syntax=docker/dockerfile:1\nFROM a\n", True),
        ("FROM a\nRUN <<EOF\necho\nEOF\n", True),
        ("FROM a\nRUN echo '<<' && true\n", False),
        ("FROM --platform=linux/arm64 a AS b\nRUN make -j2\n", False),
    ],
    ids=["run-mount", "syntax", "heredoc", "quoted-angle", "plain"],
)
def test_needs_buildkit(text: str, needs: bool) -> None:
    assert (needs_buildkit(text) is not None) is needs


def test_vllm_dockerfile_needs_buildkit() -> None:
    assert "line 7" in needs_buildkit(VLLM_LIKE)


# ------------------------------------------------------------------------------------ context + hash

@pytest.fixture()
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM llmfleet/debian:bookworm\nCOPY . /x\n")
    (ctx / "a.txt").write_text("a\n")
    (ctx / "sub" / "b.txt").write_text("b\n")
    return ctx


def _hash(ctx: Path, cache: FileDigestCache, **over: Any) -> str:
    entries, df = collect_context(str(ctx), over.pop("dockerfile", "Dockerfile"), over.pop("extra", None))
    text = Path(next(e.source for e in entries if e.arcname == df)).read_text()
    kw = {"build_args": {"A": "1"}, "target": None, "platform": None, "labels": {}, "base_digests": {"b": "sha256:x"}}
    kw.update(over)
    return content_hash(context_manifest(entries, cache, kw.pop("exclude", ())), text, **kw)


def test_same_inputs_same_hash_and_cached_digests(context: Path, tmp_path: Path) -> None:
    cache = FileDigestCache(str(tmp_path / "cache.json"))
    first = _hash(context, cache)
    cache.save()
    again = FileDigestCache(str(tmp_path / "cache.json"))
    assert _hash(context, again) == first
    assert again.misses == 0 and again.hits == 3


@pytest.mark.parametrize(
    "change",
    ["file-content", "new-file", "exec-bit", "dockerfile", "build-arg", "target", "platform", "label", "base"],
)
def test_any_input_change_changes_the_hash(context: Path, change: str) -> None:
    base = _hash(context, FileDigestCache(None))
    over: dict[str, Any] = {}
    if change == "file-content":
        (context / "a.txt").write_text("A\n")
    elif change == "new-file":
        (context / "sub" / "c.txt").write_text("c\n")
    elif change == "exec-bit":
        os.chmod(context / "a.txt", 0o755)
    elif change == "dockerfile":
        (context / "Dockerfile").write_text("FROM llmfleet/debian:bookworm\nCOPY . /y\n")
    elif change == "build-arg":
        over["build_args"] = {"A": "2"}
    elif change == "target":
        over["target"] = "final"
    elif change == "platform":
        over["platform"] = "linux/arm64"
    elif change == "label":
        over["labels"] = {"org.opencontainers.image.revision": "abc"}
    elif change == "base":
        over["base_digests"] = {"b": "sha256:y"}
    assert _hash(context, FileDigestCache(None), **over) != base


def test_mtime_alone_does_not_change_the_hash(context: Path) -> None:
    base = _hash(context, FileDigestCache(None))
    os.utime(context / "a.txt", (1, 1))
    assert _hash(context, FileDigestCache(None)) == base


def test_dockerignore_and_hash_exclude(context: Path) -> None:
    base = _hash(context, FileDigestCache(None))
    (context / ".git").mkdir()
    (context / ".git" / "FETCH_HEAD").write_text("x")
    assert _hash(context, FileDigestCache(None), exclude=[".git"]) == base
    assert _hash(context, FileDigestCache(None)) != base
    (context / ".dockerignore").write_text("sub\n")
    entries, _ = collect_context(str(context), "Dockerfile")
    names = {e.arcname for e in entries}
    assert "sub/b.txt" not in names and ".dockerignore" in names and "a.txt" in names


def test_extra_context_joins_without_copying(context: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    (wheels / "x-1.0-py3-none-any.whl").write_bytes(b"w")
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    entries, _ = collect_context(str(context), "Dockerfile", {"wheels": str(wheels), "ca-bundle.crt": str(bundle)})
    by_name = {e.arcname: e for e in entries}
    assert by_name["wheels"].kind == "dir"
    assert by_name["wheels/x-1.0-py3-none-any.whl"].source == str(wheels / "x-1.0-py3-none-any.whl")
    assert by_name["ca-bundle.crt"].source == str(bundle)
    base = _hash(context, FileDigestCache(None), extra={"wheels": str(wheels)})
    (wheels / "y-1.0-py3-none-any.whl").write_bytes(b"y")
    assert _hash(context, FileDigestCache(None), extra={"wheels": str(wheels)}) != base


def test_dockerfile_outside_the_context(context: Path, tmp_path: Path) -> None:
    outside = tmp_path / "other.Dockerfile"
    outside.write_text("FROM x\n")
    entries, df = collect_context(str(context), str(outside))
    assert df == ".llmfleet.Dockerfile"
    assert next(e for e in entries if e.arcname == df).source == str(outside)


@pytest.mark.parametrize(
    ("ctx", "dockerfile", "extra", "message"),
    [
        ("missing", "Dockerfile", None, "is not a directory"),
        ("ok", "Nope.Dockerfile", None, "Dockerfile 'Nope.Dockerfile' not found"),
        ("ok", "Dockerfile", {"../escape": "/etc/hostname"}, "must be a relative path inside"),
        ("ok", "Dockerfile", {"wheels": "/no/such/wheelhouse"}, "'/no/such/wheelhouse' does not exist"),
    ],
)
def test_context_errors_name_the_value(context: Path, ctx: str, dockerfile: str, extra: dict | None,
                                       message: str) -> None:
    path = str(context) if ctx == "ok" else str(context / ctx)
    with pytest.raises(ImageError, match=message):
        collect_context(path, dockerfile, extra)


# ------------------------------------------------------------------------------------ decisions

@pytest.mark.parametrize(
    ("rebuild", "tagged_hash", "tagged_exists", "same", "action", "reason"),
    [
        ("changed", H1, True, "sha256:img", "none", "same content hash"),
        ("changed", None, False, None, "build", "does not exist"),
        ("changed", H2, True, None, "build", "content hash changed"),
        ("changed", None, True, None, "build", "no content-hash label"),
        ("changed", H2, True, "sha256:other", "tag", "already has content hash"),
        ("never", H2, True, None, "none", "rebuild=never"),
        ("never", None, False, None, "build", "does not exist"),
        ("always", H1, True, "sha256:img", "build", "rebuild=always"),
    ],
)
def test_decide(rebuild: str, tagged_hash: str | None, tagged_exists: bool, same: str | None, action: str,
                reason: str) -> None:
    d = decide(rebuild, H1, tagged_hash, tagged_exists, same)
    assert d.action == action and reason in d.reason


def test_decide_rejects_unknown_policy() -> None:
    with pytest.raises(ImageError, match="rebuild='sometimes'"):
        decide("sometimes", H1, None, False, None)


# ------------------------------------------------------------------------------------ progress

CLASSIC = """\
Step 1/9 : ARG BASE_IMAGE=debian:bookworm
Step 2/9 : FROM ${BASE_IMAGE} AS venv
 ---> 7b3f0ac88c4e
Step 3/9 : ARG VLLM_PACKAGES
 ---> Using cache
 ---> 1a2b3c4d5e6f
Step 4/9 : RUN pip install vllm
 ---> Running in 0123456789ab
Collecting vllm
"""

BUILDKIT = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#5 [base 1/4] FROM nvidia/cuda:12.9.1-devel-ubuntu22.04
#5 CACHED
#6 [base 2/4] RUN apt-get update
#6 DONE 41.2s
#7 [build 1/3] COPY . .
#7 DONE 2.0s
#8 [build 2/3] RUN python3 setup.py bdist_wheel
#8 1203.4 [1532/2210] Building CUDA object csrc/moe/marlin_moe_wna16.cu.o
"""


@pytest.mark.parametrize(
    ("text", "done", "total", "current", "cached"),
    [
        (CLASSIC, 3, 9, "RUN pip install vllm", 1),
        (BUILDKIT, 3, 7, "[build 2/3] RUN python3 setup.py bdist_wheel", 1),
        ("", 0, 0, "", 0),
    ],
    ids=["classic", "buildkit", "nothing-yet"],
)
def test_progress_parsing(text: str, done: int, total: int, current: str, cached: int) -> None:
    p = BuildProgress(log_file="/x.log")
    for line in text.splitlines():
        p.feed(line)
    d = p.as_dict()
    assert (d["steps_done"], d["steps_total"], d["current_step"], d["cached_steps"]) == (done, total, current, cached)
    assert d["last_lines"] == [line for line in text.splitlines() if line.strip()][-20:]
    assert d["state"] == "running"


def test_progress_keeps_the_last_lines_only() -> None:
    p = BuildProgress()
    for i in range(100):
        p.feed(f"line {i}")
    assert p.as_dict()["last_lines"] == [f"line {i}" for i in range(80, 100)]


def test_progress_records_buildkit_errors_and_image_id() -> None:
    p = BuildProgress()
    for line in ["#8 [build 2/3] RUN make", "#8 ERROR: process \"/bin/sh -c make\" did not complete successfully"]:
        p.feed(line)
    assert p.failed_step() == "[build 2/3] RUN make" and "did not complete" in p.error
    c = BuildProgress()
    c.feed("Successfully built 0123456789ab")
    assert c.image_id == "0123456789ab"


# ------------------------------------------------------------------------------------ module

def run_module(args: dict[str, Any]) -> dict[str, Any]:
    return ansible_module.run_module(vllm_image.main, args)


def test_state_progress_reads_a_running_build_and_changes_nothing(tmp_path: Path) -> None:
    progress = {"state": "running", "steps_done": 3, "steps_total": 9, "current_step": "RUN pip install vllm"}
    path = tmp_path / "vllm-gb10_latest.progress.json"
    path.write_text(json.dumps(progress))
    for check in (False, True):
        result = run_module({"name": "vllm-gb10", "state": "progress", "work_dir": str(tmp_path),
                             "_ansible_check_mode": check})
        assert result["failed"] is False and result["changed"] is False
        assert result["progress"] == progress and result["progress_file"] == str(path)


def test_state_progress_without_a_build_fails_naming_the_file(tmp_path: Path) -> None:
    result = run_module({"name": "vllm-gb10", "state": "progress", "work_dir": str(tmp_path)})
    assert result["failed"] is True and str(tmp_path / "vllm-gb10_latest.progress.json") in result["msg"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"name": "x"}, "needs context"),
        ({"context": "/tmp"}, "needs name"),
        ({"source": "pull"}, "repository"),
        ({"name": "x", "context": "/tmp", "push": True}, "repository"),
        ({"name": "x", "context": "/tmp", "rebuild": "sometimes"}, "rebuild"),
        ({"name": "x", "context": "/tmp", "registry_username": "u"}, "registry_password"),
        ({"name": "x", "context": "/tmp", "bogus": 1}, "bogus"),
    ],
)
def test_strict_arguments(args: dict[str, Any], message: str) -> None:
    result = run_module(args)
    assert result["failed"] is True and message in result["msg"]


def test_password_is_no_log() -> None:
    spec_text = Path(vllm_image.__file__).read_text()
    assert 'registry_password=dict(type="str", no_log=True)' in spec_text


def test_sink_writes_plain_log_and_progress_file(tmp_path: Path) -> None:
    from ansible_collections.llmfleet.fleet.plugins.module_utils.image.progress import ProgressSink, read_progress

    log = tmp_path / "b.log"
    log.write_text("previous build\n")
    sink = ProgressSink(str(log), str(tmp_path / "b.progress.json"))
    assert read_progress(str(tmp_path / "b.progress.json"))["state"] == "running"
    for line in ["Step 1/2 : FROM x", "\x1b[91mwarning on stderr\n\x1b[0m", "Step 2/2 : RUN true"]:
        sink.line(line)
    final = sink.close("succeeded", image_id="sha256:abc")
    assert (tmp_path / "b.log.1").read_text() == "previous build\n"
    assert "\x1b" not in log.read_text() and "warning on stderr" in log.read_text()
    assert final["state"] == "succeeded" and final["steps_done"] == final["steps_total"] == 2
    assert read_progress(str(tmp_path / "b.progress.json"))["image_id"] == "sha256:abc"
