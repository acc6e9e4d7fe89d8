# Copyright: llm-fleet contributors
# Apache-2.0
"""Docker operations of the image modules, with the Docker SDK for Python (imported lazily).

Connect, inspect local images, build (the classic builder through the SDK, or `docker buildx build`
for Dockerfiles that need BuildKit; vLLM's own docker/Dockerfile uses `RUN --mount`), push and pull
with credentials passed per call (nothing written to ~/.docker/config.json), and ask a registry for
a tag's manifest digest. Every failure is an ImageError that names the daemon, registry or step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.image.context import (
    HASH_LABEL,
    ContextEntry,
    write_context_tar,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.progress import ProgressSink
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.ref import registry_of


def docker_client(docker_host: str, timeout: int) -> Any:
    try:
        import docker
    except ImportError as exc:
        raise ImageError(
            "the Docker SDK for Python is missing on the builder: install python3-docker "
            "(Debian/Ubuntu) or `pip install docker`"
        ) from exc
    try:
        client = docker.DockerClient(base_url=docker_host, timeout=timeout)
        client.ping()
    except Exception as exc:
        raise ImageError(f"cannot reach the Docker daemon at {docker_host!r}: {exc}") from exc
    return client


def local_image(client: Any, ref: str) -> Any | None:
    from docker.errors import ImageNotFound

    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None


def image_with_hash(client: Any, wanted_hash: str) -> str | None:
    images = client.images.list(filters={"label": f"{HASH_LABEL}={wanted_hash}"})
    return images[0].id if images else None


def resolve_base_digests(client: Any, images: Iterable[str], auth: Mapping[str, str] | None = None) -> dict[str, str]:
    """Image -> local image id, else the registry's manifest digest, else `unresolved`."""
    out = {}
    for ref in images:
        img = local_image(client, ref)
        if img is not None:
            out[ref] = img.id
            continue
        try:
            out[ref] = client.images.get_registry_data(ref, auth_config=dict(auth) if auth else None).id
        except Exception:
            out[ref] = "unresolved"
    return out


def classic_build(
    client: Any,
    entries: list[ContextEntry],
    dockerfile_arcname: str,
    build_args: Mapping[str, str],
    target: str | None,
    platform: str | None,
    labels: Mapping[str, str],
    pull: bool,
    nocache: bool,
    sink: ProgressSink,
    tar_dir: str,
) -> str:
    """Build with the classic builder; returns the image id. Raises ImageError with the failing step."""
    os.makedirs(tar_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=tar_dir, prefix="context.", suffix=".tar") as tar:
        size = write_context_tar(entries, tar)
        tar.seek(0)
        sink.line(f"llmfleet: sending build context ({size / 1e6:.1f} MB, {len(entries)} entries)")
        image_id = ""
        for chunk in client.api.build(
            fileobj=tar,
            custom_context=True,
            dockerfile=dockerfile_arcname,
            buildargs=dict(build_args),
            target=target or None,
            platform=platform or None,
            labels=dict(labels),
            pull=pull,
            nocache=nocache,
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "stream" in chunk:
                for text in chunk["stream"].splitlines():
                    sink.line(text)
            elif "error" in chunk:
                msg = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                sink.line(f"ERROR: {msg}")
                raise ImageError(
                    f"build failed at step {sink.progress.failed_step()!r}: {msg.strip()}",
                    failed_step=sink.progress.failed_step(),
                )
            elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            elif "status" in chunk:
                sink.line(chunk["status"] + (" " + chunk["progress"] if chunk.get("progress") else ""))
    image_id = image_id or sink.progress.image_id
    if not image_id:
        raise ImageError("the build ended without an image id (see the build log)")
    return image_id


def buildx_build(
    context: str,
    dockerfile: str,
    build_args: Mapping[str, str],
    target: str | None,
    platform: str | None,
    labels: Mapping[str, str],
    pull: bool,
    nocache: bool,
    sink: ProgressSink,
    docker_host: str,
    tar_dir: str,
) -> str:
    """Build with `docker buildx build --load` (BuildKit); returns the image id."""
    docker_cli = shutil.which("docker")
    env = dict(os.environ, DOCKER_HOST=docker_host)
    if (
        not docker_cli
        or subprocess.run([docker_cli, "buildx", "version"], capture_output=True, env=env, check=False).returncode != 0
    ):
        raise ImageError(
            "this Dockerfile needs BuildKit, but `docker buildx` is not available on the builder: "
            "install Docker's buildx plugin (docker-buildx-plugin)"
        )
    os.makedirs(tar_dir, exist_ok=True)
    iidfile = os.path.join(tar_dir, f"iid.{os.getpid()}")
    cmd = [docker_cli, "buildx", "build", "--progress=plain", "--load", "--iidfile", iidfile, "-f", dockerfile]
    for k, v in sorted(build_args.items()):
        cmd += ["--build-arg", f"{k}={v}"]
    for k, v in sorted(labels.items()):
        cmd += ["--label", f"{k}={v}"]
    if target:
        cmd += ["--target", target]
    if platform:
        cmd += ["--platform", platform]
    if pull:
        cmd.append("--pull")
    if nocache:
        cmd.append("--no-cache")
    cmd.append(context)
    sink.line("llmfleet: " + " ".join(cmd))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        if proc.stdout is None:  # never with stdout=PIPE; this tells the type checker so
            raise ImageError("docker buildx build: no output pipe")
        for text in proc.stdout:
            sink.line(text)
        rc = proc.wait()
    if rc != 0:
        raise ImageError(
            f"build failed at step {sink.progress.failed_step()!r} (docker buildx exit {rc}): "
            f"{sink.progress.error or 'see the log'}",
            failed_step=sink.progress.failed_step(),
        )
    with open(iidfile, encoding="utf-8") as fh:
        image_id = fh.read().strip()
    os.unlink(iidfile)
    return image_id


def registry_digest(client: Any, ref: str, auth: Mapping[str, str] | None) -> str | None:
    """The manifest digest the registry holds for `ref`, or None when it has no such tag."""
    from docker.errors import APIError, NotFound

    try:
        return client.images.get_registry_data(ref, auth_config=dict(auth) if auth else None).id
    except NotFound:
        return None
    except APIError as exc:
        raise ImageError(f"cannot ask registry {registry_of(ref)!r} about {ref!r}: {exc.explanation or exc}") from exc


def local_repo_digests(image: Any, repository: str) -> set[str]:
    return {d.split("@", 1)[1] for d in image.attrs.get("RepoDigests") or [] if d.split("@", 1)[0] == repository}


def push(client: Any, repository: str, tag: str, auth: Mapping[str, str] | None) -> str:
    """Push repository:tag; returns the manifest digest. Raises ImageError on any error line."""
    digest = ""
    try:
        stream = client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=dict(auth) if auth else None
        )
        for chunk in stream:
            if "error" in chunk:
                msg = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                raise ImageError(f"push of {repository}:{tag} to {registry_of(repository)!r} failed: {msg}")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"push of {repository}:{tag} to {registry_of(repository)!r} failed: {exc}") from exc
    return digest


def pull(client: Any, repository: str, tag: str, auth: Mapping[str, str] | None, platform: str | None) -> Any:
    try:
        return client.images.pull(
            repository, tag=tag, auth_config=dict(auth) if auth else None, platform=platform or None
        )
    except Exception as exc:
        raise ImageError(f"pull of {repository}:{tag} from {registry_of(repository)!r} failed: {exc}") from exc
