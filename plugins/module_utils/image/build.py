# Copyright: llm-fleet contributors
# Apache-2.0
"""Build, publish and pull vLLM images: the logic of `vllm_image` (the rebuild decision and the run).

The pieces live in their own files, each usable and testable on its own:

- `image.ref`: image references (`repo[:tag]`, registry, file-name slug);
- `image.dockerfile`: base images, stages and BuildKit features of a Dockerfile;
- `image.context`: the build context (with `.dockerignore` and `extra_context`), its tar,
  and the content hash stored on the image as `io.llmfleet.content-hash`;
- `image.progress`: build progress parsed from the build output and written to a JSON file while
  the build runs (what `state: progress` and operators read);
- `image.docker_ops`: the Docker SDK calls (inspect, classic or buildx build, tag, push, pull).

Here: the rebuild decision (`changed` / `never` / `always`) and the module's run. The image is built
untagged and tagged only after success, so a failed build leaves the previous tag alone. The Docker
SDK is imported lazily: the pure helpers work without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.image.context import (
    HASH_LABEL,
    FileDigestCache,
    collect_context,
    content_hash,
    context_manifest,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.docker_ops import (
    buildx_build,
    classic_build,
    docker_client,
    image_with_hash,
    local_image,
    local_repo_digests,
    pull,
    push,
    registry_digest,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.dockerfile import (
    dockerfile_base_images,
    dockerfile_stages,
    needs_buildkit,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.progress import ProgressSink, read_progress
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.ref import (
    registry_of,
    slug,
    split_reference,
)

REBUILD_CHOICES = ("changed", "never", "always")


# --------------------------------------------------------------------------------------------
# Rebuild decision
# --------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """What to do about the wanted image: `none`, `tag` (an image with the hash exists) or `build`."""

    action: str
    reason: str


def decide(
    rebuild: str, wanted_hash: str, tagged_hash: str | None, tagged_exists: bool, same_hash_image: str | None
) -> Decision:
    """Decide whether to build.

    tagged_exists / tagged_hash: the image now under name:tag and its hash label (None: no label).
    same_hash_image: the id of any local image that carries wanted_hash (None: none).
    """
    if rebuild not in REBUILD_CHOICES:
        raise ImageError(f"rebuild={rebuild!r} is not one of {', '.join(REBUILD_CHOICES)}")
    if rebuild == "always":
        return Decision("build", "rebuild=always")
    if rebuild == "never":
        if tagged_exists:
            return Decision("none", "the image exists and rebuild=never")
        return Decision("build", "the image does not exist (rebuild=never builds only a missing image)")
    if tagged_exists and tagged_hash == wanted_hash:
        return Decision("none", "an image with the same content hash exists")
    if same_hash_image:
        return Decision(
            "tag", f"image {same_hash_image[:19]} already has content hash {wanted_hash[:19]}...; tagging it"
        )
    if not tagged_exists:
        return Decision("build", "the image does not exist")
    if tagged_hash is None:
        return Decision("build", "the existing image has no content-hash label")
    return Decision("build", f"content hash changed ({tagged_hash[:19]}... -> {wanted_hash[:19]}...)")


# --------------------------------------------------------------------------------------------
# The module's run: state=present / state=progress
# --------------------------------------------------------------------------------------------


def default_paths(params: Mapping[str, Any]) -> tuple[str, str]:
    """The log and progress files for these module parameters."""
    stem = slug(f"{params.get('name') or params.get('repository') or 'image'}_{params.get('tag') or 'latest'}")
    log_file = params.get("log_file") or os.path.join(params["work_dir"], f"{stem}.log")
    base = log_file[:-4] if log_file.endswith(".log") else log_file
    return log_file, params.get("progress_file") or f"{base}.progress.json"


def _auth(params: Mapping[str, Any]) -> dict[str, str] | None:
    if params.get("registry_username"):
        return {"username": params["registry_username"], "password": params["registry_password"]}
    return None


def _image_summary(name: str, tag: str, image: Any | None) -> dict[str, Any]:
    if image is None:
        return {"name": name, "tag": tag, "id": None, "content_hash": None}
    return {"name": name, "tag": tag, "id": image.id, "content_hash": (image.labels or {}).get(HASH_LABEL)}


def _ensure_bases(client: Any, bases: list[str], pull_base: bool, check_mode: bool, platform: str | None) -> None:
    for ref in bases:
        if check_mode or (local_image(client, ref) is not None and not pull_base):
            continue
        repo, tag = split_reference(ref)
        try:
            client.images.pull(repo, tag=tag, platform=platform or None)
        except Exception as exc:
            if local_image(client, ref) is None:
                raise ImageError(f"base image {ref!r} is not on the builder and cannot be pulled: {exc}") from exc


def _choose_builder(requested: str, dockerfile_text: str, dockerfile: str) -> str:
    why = needs_buildkit(dockerfile_text)
    if requested == "classic" and why:
        raise ImageError(f"builder=classic cannot build {dockerfile!r}: it needs BuildKit ({why})")
    if requested == "auto":
        return "buildx" if why else "classic"
    return requested


def _build_present(client: Any, params: Mapping[str, Any], check_mode: bool, result: dict[str, Any]) -> Any | None:
    """Hash, decide and build/tag. Returns the image under name:tag afterwards (or now, in check mode)."""
    name, tag = params["name"], params["tag"]
    ref = f"{name}:{tag}"
    build_args = {str(k): str(v) for k, v in (params.get("build_args") or {}).items()}
    labels = {str(k): str(v) for k, v in (params.get("labels") or {}).items()}
    entries, df_arcname = collect_context(params["context"], params["dockerfile"], params.get("extra_context"))
    df_path = next(e.source for e in entries if e.arcname == df_arcname)
    with open(df_path, encoding="utf-8") as fh:
        df_text = fh.read()
    target = params.get("target")
    if target and target not in dockerfile_stages(df_text):
        raise ImageError(
            f"target {target!r} is not a stage of {params['dockerfile']!r} "
            f"(stages: {', '.join(dockerfile_stages(df_text)) or 'none named'})"
        )
    builder = _choose_builder(params["builder"], df_text, params["dockerfile"])
    bases = dockerfile_base_images(df_text, build_args)
    _ensure_bases(client, bases, params["pull_base"], check_mode, params.get("platform"))
    base_ids = {ref_: (img.id if (img := local_image(client, ref_)) is not None else "missing") for ref_ in bases}

    cache = FileDigestCache(os.path.join(params["work_dir"], "digest-cache.json"))
    manifest = context_manifest(entries, cache, params.get("hash_exclude") or ())
    wanted = content_hash(manifest, df_text, build_args, target, params.get("platform"), labels, base_ids)
    if not check_mode:
        cache.save()

    current = local_image(client, ref)
    current_hash = (current.labels or {}).get(HASH_LABEL) if current is not None else None
    decision = decide(params["rebuild"], wanted, current_hash, current is not None, image_with_hash(client, wanted))
    if check_mode and "missing" in base_ids.values():
        missing = [r for r, i in base_ids.items() if i == "missing"]
        decision = Decision(
            "build",
            f"base image(s) {', '.join(missing)} not on the builder: a run pulls them, "
            "then builds unless an image with the resulting hash exists",
        )
    log_file, progress_file = default_paths(params)
    result.update(
        action={"none": "none", "tag": "tagged", "build": "built"}[decision.action],
        reason=decision.reason,
        content_hash=wanted,
        base_images=base_ids,
        build_args=build_args,
        builder=builder,
        log_file=log_file,
        progress_file=progress_file,
        context_files=sum(1 for e in entries if e.kind == "file"),
        digest_cache={"hits": cache.hits, "misses": cache.misses},
    )
    result["diff"]["after"]["content_hash"] = wanted
    if decision.action == "none":
        return current
    result["changed"] = True
    if check_mode:
        result["action"] = f"would {decision.action}"
        result["msg"] = f"would {decision.action} {ref}: {decision.reason}"
        result["diff"]["after"]["id"] = "(new image)" if decision.action == "build" else image_with_hash(client, wanted)
        return current
    if decision.action == "tag":
        client.api.tag(image_with_hash(client, wanted), name, tag=tag)
        return local_image(client, ref)

    sink = ProgressSink(log_file, progress_file)
    all_labels = {**labels, HASH_LABEL: wanted}
    try:
        if builder == "classic":
            image_id = classic_build(
                client,
                entries,
                df_arcname,
                build_args,
                target,
                params.get("platform"),
                all_labels,
                False,
                params["nocache"],
                sink,
                params["work_dir"],
            )
        else:
            if params.get("extra_context"):
                raise ImageError(
                    "builder=buildx takes the context directory as it is: extra_context is not "
                    f"supported with it (got {sorted(params['extra_context'])})"
                )
            image_id = buildx_build(
                params["context"],
                df_path,
                build_args,
                target,
                params.get("platform"),
                all_labels,
                False,
                params["nocache"],
                sink,
                params["docker_host"],
                params["work_dir"],
            )
    except ImageError as exc:
        progress = sink.close("failed", error=exc.msg)
        exc.details.update(
            log_file=log_file,
            progress_file=progress_file,
            log_tail=progress["last_lines"],
            content_hash=wanted,
            previous_image=_image_summary(name, tag, current),
        )
        exc.msg = f"{exc.msg} (image {ref} left as it was; full log: {log_file})"
        raise
    except Exception as exc:
        progress = sink.close("failed", error=str(exc))
        raise ImageError(
            f"build of {ref} failed: {exc} (image left as it was; full log: {log_file})",
            log_tail=progress["last_lines"],
            log_file=log_file,
        ) from exc
    client.api.tag(image_id, name, tag=tag)
    result["progress"] = sink.close("succeeded", image_id=image_id)
    return local_image(client, ref)


def _push(client: Any, params: Mapping[str, Any], image: Any, check_mode: bool, result: dict[str, Any]) -> None:
    repository, tag = params["repository"], params["tag"]
    auth = _auth(params)
    remote = registry_digest(client, f"{repository}:{tag}", auth)
    tagged = local_image(client, f"{repository}:{tag}")
    local = local_repo_digests(image, repository)
    result["diff"]["before"]["registry_digest"] = remote
    if remote is not None and remote in local and tagged is not None and tagged.id == image.id:
        result["pushed"] = {"repository": repository, "tag": tag, "digest": remote, "changed": False}
        result["diff"]["after"]["registry_digest"] = remote
        return
    result["changed"] = True
    if check_mode:
        result["pushed"] = {
            "repository": repository,
            "tag": tag,
            "digest": None,
            "changed": True,
            "msg": f"would push {repository}:{tag} (registry has {remote or 'no such tag'})",
        }
        result["diff"]["after"]["registry_digest"] = "(new digest)"
        return
    if tagged is None or tagged.id != image.id:
        client.api.tag(image.id, repository, tag=tag)
    digest = push(client, repository, tag, auth)
    result["pushed"] = {"repository": repository, "tag": tag, "digest": digest, "changed": True}
    result["diff"]["after"]["registry_digest"] = digest


def _pull_present(client: Any, params: Mapping[str, Any], check_mode: bool, result: dict[str, Any]) -> Any | None:
    repository, tag = params["repository"], params["tag"]
    name = params.get("name") or repository
    remote_ref = f"{repository}:{tag}"
    current = local_image(client, remote_ref)
    need = current is None
    reason = f"{remote_ref} is not on this host"
    if current is not None and params["force_pull"]:
        remote = registry_digest(client, remote_ref, _auth(params))
        if remote is None:
            raise ImageError(f"registry {registry_of(repository)!r} has no tag {remote_ref!r}")
        need = remote not in local_repo_digests(current, repository)
        reason = f"the registry holds {remote}, not the local image" if need else "the local image is current"
    elif current is not None:
        reason = f"{remote_ref} is present (force_pull=false)"
    result.update(action="pulled" if need else "none", reason=reason)
    if need:
        result["changed"] = True
        if check_mode:
            result["action"] = "would pull"
            return local_image(client, f"{name}:{tag}")
        current = pull(client, repository, tag, _auth(params), params.get("platform"))
    if name != repository and current is not None:
        named = local_image(client, f"{name}:{tag}")
        if named is None or named.id != current.id:
            result["changed"] = True
            if not check_mode:
                client.api.tag(current.id, name, tag=tag)
    return local_image(client, f"{name}:{tag}") or current


def run_vllm_image(params: Mapping[str, Any], check_mode: bool = False, diff_mode: bool = False) -> dict[str, Any]:
    """The whole module run; returns the exit payload or raises ImageError."""
    started = time.time()
    if params["state"] == "progress":
        _, progress_file = default_paths(params)
        return {
            "changed": False,
            "action": "none",
            "reason": "state=progress reads the progress file",
            "progress_file": progress_file,
            "progress": read_progress(progress_file),
            "duration_s": round(time.time() - started, 3),
        }

    client = docker_client(params["docker_host"], params["timeout"])
    name = params.get("name") or params.get("repository")
    tag = params["tag"]
    before = local_image(client, f"{name}:{tag}")
    result: dict[str, Any] = {
        "changed": False,
        "diff": {"before": _image_summary(name, tag, before), "after": _image_summary(name, tag, before)},
    }
    if params["source"] == "build":
        image = _build_present(client, params, check_mode, result)
    else:
        image = _pull_present(client, params, check_mode, result)
    if params["push"]:
        if image is None:
            result["pushed"] = {
                "repository": params["repository"],
                "tag": tag,
                "digest": None,
                "changed": True,
                "msg": "would push the image once built",
            }
            # Still ask the registry, so check mode reports an unreachable one.
            registry_digest(client, f"{params['repository']}:{tag}", _auth(params))
        else:
            _push(client, params, image, check_mode, result)
    if image is not None and not (check_mode and result["changed"]):
        result["diff"]["after"].update(_image_summary(name, tag, image))
    result["image"] = _image_summary(name, tag, image)
    result["duration_s"] = round(time.time() - started, 3)
    if not diff_mode:
        result.pop("diff")
    if "msg" not in result:
        result["msg"] = f"{name}:{tag}: {result.get('action', 'none')} ({result.get('reason', '')})"
    return result
