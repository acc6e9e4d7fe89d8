# Copyright: llm-fleet contributors
# Apache-2.0
"""model_sync's engine: where a model lives (plain directory or Hugging Face cache layout), the plan (what to
fetch, keep, remove), the free-space check, the staging directory, verification of what arrived, the atomic
swap into place, the manifest, and the progress file an ``_info`` call reads while a sync runs.

A sync never writes into the model directory a reader uses: unchanged files are hard-linked into a staging
directory beside it (same filesystem), missing ones are fetched there and verified, and only then is the staging
directory exchanged with the model directory in one ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel
lacks it). The manifest is written last. Standard library only, plus the sources' own needs.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.manifest import (
    MANIFEST_NAME,
    git_blob_sha1,
    hash_files,
    new_manifest,
    read_manifest,
    render_listing,
    scan_tree,
    sha256_file,
    verify_tree,
    write_json_atomic,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.sources import (
    SHA256_HEX,
    FetchState,
    SourceFile,
    SyncError,
    blob_digest_problem,
    filter_names,
    hub_cached_files,
    is_pinned_revision,
)

PROGRESS_INTERVAL_S = 1.0
RENAME_EXCHANGE = 2
AT_FDCWD = -100


@dataclass
class Layout:
    """Where a destination's model, manifest and work directory (staging + progress) are."""

    model_dir: str
    manifest_path: str
    work_dir: str
    hub_repo_dir: str | None = None

    @property
    def staging(self) -> str:
        return os.path.join(self.work_dir, "staging")

    @property
    def progress_path(self) -> str:
        return os.path.join(self.work_dir, "progress.json")


def hub_repo_folder(repo_id: str) -> str:
    """The cache folder name huggingface_hub uses for a model repository."""
    return "models--" + repo_id.replace("/", "--")


def plain_layout(dest: str) -> Layout:
    dest = os.path.abspath(dest).rstrip("/")
    parent, name = os.path.split(dest)
    return Layout(dest, os.path.join(dest, MANIFEST_NAME), os.path.join(parent, f".{name}.llmfleet"))


def hub_layout(cache_dir: str, repo_id: str, revision: str) -> Layout:
    repo_dir = os.path.join(os.path.abspath(cache_dir), hub_repo_folder(repo_id))
    meta = os.path.join(repo_dir, ".llmfleet")
    return Layout(
        os.path.join(repo_dir, "snapshots", revision),
        os.path.join(meta, f"{revision}.manifest.json"),
        os.path.join(meta, f"work-{revision}"),
        repo_dir,
    )


def layout_for(params: dict[str, Any]) -> Layout:
    if params.get("source") == "hf" or (params.get("repo_id") and params.get("revision")):
        return hub_layout(params["dest"], params["repo_id"], params["revision"])
    return plain_layout(params["dest"])


@dataclass
class Plan:
    """What a sync has to do: names to fetch and to keep, and how they differ from what is there."""

    fetch: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    corrupted: list[dict[str, str]] = field(default_factory=list)
    bytes_to_fetch: int = 0
    hashed_bytes: int = 0
    rewrite_manifest: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.fetch or self.removed or self.rewrite_manifest)


def file_is_current(src: SourceFile, entry: dict[str, Any] | None, stat: os.stat_result | None) -> bool:
    """Whether a destination file recorded as ``entry`` (now ``stat``) still is the source's file, without reading it:
    same size, same source mtime where the source has one, same sha256 where the source knows it, and the
    destination file unchanged since the manifest was written."""
    if entry is None or stat is None:
        return False
    if src.size is not None and entry.get("size") != src.size:
        return False
    if src.mtime_ns is not None and entry.get("src_mtime_ns") != src.mtime_ns:
        return False
    if src.sha256 and entry.get("sha256") != src.sha256:
        return False
    return stat.st_size == entry.get("size") and stat.st_mtime_ns == entry.get("mtime_ns")


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def make_plan(
    source_files: dict[str, SourceFile],
    manifest: dict[str, Any] | None,
    model_dir: str,
    verify: str,
    workers: int | None,
    source_desc: dict[str, Any],
) -> Plan:
    """Compare the source's listing with the destination's manifest (and, for ``verify: full``, its content)."""
    plan = Plan()
    entries = (manifest or {}).get("files", {})
    before = entries if manifest else {name: {"size": info["size"]} for name, info in _scan_if_dir(model_dir).items()}
    current = {
        name: src
        for name, src in source_files.items()
        if file_is_current(src, entries.get(name), _stat(os.path.join(model_dir, name)))
    }
    if verify == "full" and current:
        digests = hash_files({name: os.path.join(model_dir, name) for name in current}, workers)
        plan.hashed_bytes = sum(entries[name]["size"] for name in current)
        for name, digest in sorted(digests.items()):
            if digest != entries[name]["sha256"]:
                plan.corrupted.append(
                    {"file": name, "problem": f"sha256 {digest}, manifest says {entries[name]['sha256']}"}
                )
                del current[name]
    for name in sorted(source_files):
        if name in current:
            plan.keep.append(name)
            continue
        plan.fetch.append(name)
        plan.bytes_to_fetch += source_files[name].size or 0
        (plan.updated if name in before else plan.added).append(name)
    plan.removed = sorted(set(before) - set(source_files))
    plan.rewrite_manifest = manifest is None or manifest.get("source") != source_desc
    return plan


def _scan_if_dir(path: str) -> dict[str, dict[str, int]]:
    return scan_tree(path) if os.path.isdir(path) else {}


def existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(path: str) -> int:
    info = os.statvfs(existing_ancestor(path))
    return info.f_bavail * info.f_frsize


def space_needed(plan: Plan, source_files: dict[str, SourceFile], staged: dict[str, int], reserve: int) -> int:
    """Bytes the staging directory still needs: every file to fetch, less what a resumable part already holds, plus
    the reserve. Kept files are hard links and the old copies are freed only after the swap, so they count nothing
    and the old model's space is not counted as available."""
    need = 0
    for name in plan.fetch:
        size = source_files[name].size or 0
        need += max(0, size - min(staged.get(name, 0), size))
    return need + reserve


def check_free_space(dest: str, work_dir: str, needed: int) -> None:
    available = free_bytes(work_dir)
    if needed > available:
        raise SyncError(
            f"dest {dest!r}: the filesystem has {available} bytes free, the sync needs {needed}"
            " (files to fetch, less resumable parts, plus free_space_reserve_mb); nothing was transferred",
            bytes_needed=needed,
            bytes_free=available,
        )


class Progress:
    """Writes ``progress.json`` (bytes_done, bytes_total, rate, current_file, updated) at most once a second, from
    a thread that sums the sizes of the staged files while a fetch runs."""

    def __init__(self, path: str, staging: str, names: list[str], sizes: dict[str, int], state: FetchState) -> None:
        self.path, self.staging, self.names, self.sizes, self.state = path, staging, names, sizes, state
        self.total = sum(sizes.values())
        self.started = time.time()
        self.start_bytes = self._done()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _done(self) -> int:
        done = 0
        for name in self.names:
            try:
                done += min(os.path.getsize(os.path.join(self.staging, name)), self.sizes[name] or 0)
            except OSError:
                continue
        return done

    def snapshot(self, status: str, error: str = "") -> dict[str, Any]:
        done = self.total if status == "done" else self._done()
        elapsed = max(time.time() - self.started, 1e-6)
        data = {
            "status": status,
            "bytes_done": done,
            "bytes_total": self.total,
            "files_total": len(self.names),
            "rate": int((done - self.start_bytes) / elapsed),
            "current_file": self.state.current_file,
            "started": self.started,
            "updated": time.time(),
            "pid": os.getpid(),
        }
        if error:
            data["error"] = error
        return data

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            write_json_atomic(self.path, self.snapshot("running"))

    def __enter__(self) -> Progress:
        write_json_atomic(self.path, self.snapshot("running"))
        self._thread.start()
        return self

    def finish(self, status: str, error: str = "") -> None:
        self._stop.set()
        self._thread.join()
        write_json_atomic(self.path, self.snapshot(status, error))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._stop.is_set():
            self.finish("failed" if exc else "done", str(exc) if exc else "")


def prepare_staging(layout: Layout, plan: Plan) -> dict[str, int]:
    """Make the staging directory hold hard links of the kept files and only resumable parts of the fetched ones;
    return the staged size of each file to fetch."""
    staging = layout.staging
    os.makedirs(staging, exist_ok=True)
    wanted = set(plan.fetch) | set(plan.keep)
    for name, _info in scan_tree(staging, skip_dirs=(".cache",)).items():
        if name not in wanted:
            os.unlink(os.path.join(staging, name))
    staged = {}
    for name in plan.fetch:
        path = os.path.join(staging, name)
        info = _stat(path)
        if info is not None and info.st_nlink > 1:  # a link to a kept file of an earlier plan: never write through it
            os.unlink(path)
            info = None
        staged[name] = info.st_size if info else 0
    for name in plan.keep:
        target = os.path.join(staging, name)
        source = os.path.realpath(os.path.join(layout.model_dir, name))
        if _stat(target) is not None and os.path.samefile(target, source):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            os.unlink(target)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return staged


def _resumable_size(path: str) -> int:
    info = _stat(path)
    return info.st_size if info is not None and info.st_nlink == 1 else 0


def drop_oversized(staging: str, names: list[str], source_files: dict[str, SourceFile]) -> None:
    """A staged part longer than the source file cannot be a prefix of it: start that file again."""
    for name in names:
        size = source_files[name].size
        info = _stat(os.path.join(staging, name))
        if info is not None and size is not None and info.st_size > size:
            os.unlink(os.path.join(staging, name))


def verify_fetched(
    staging: str, names: list[str], source_files: dict[str, SourceFile], known: dict[str, str], workers: int | None
) -> tuple[dict[str, str], int]:
    """sha256 of every fetched file (hashing in parallel those the fetch did not hash), checked against what the
    source said; a mismatching file is removed from staging and named in the error."""
    paths = {name: os.path.join(staging, name) for name in names}
    missing = [name for name in names if not os.path.isfile(paths[name])]
    if missing:
        raise SyncError(f"the transfer did not deliver {missing}; rerun to resume", missing=missing)
    todo = {name: path for name, path in paths.items() if name not in known}
    digests = {**{name: known[name] for name in names if name in known}, **hash_files(todo, workers)}
    hashed = sum(os.path.getsize(path) for path in paths.values())
    bad = []
    for name in names:
        src = source_files[name]
        if src.sha256 and digests[name] != src.sha256:
            bad.append(f"{name} (sha256 {digests[name]}, expected {src.sha256})")
        elif src.git_sha1 and git_blob_sha1(paths[name]) != src.git_sha1:
            bad.append(f"{name} (git blob id differs from the hub's {src.git_sha1})")
        elif src.size is not None and os.path.getsize(paths[name]) != src.size:
            bad.append(f"{name} (size {os.path.getsize(paths[name])}, expected {src.size})")
    if bad:
        for name in names:
            if any(item.startswith(name + " (") for item in bad):
                os.unlink(paths[name])
        raise SyncError(f"verification failed, nothing was put in place: {'; '.join(bad)}", corrupted=bad)
    return digests, hashed


def exchange_paths(first: str, second: str) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the kernel or libc lacks it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0


def swap_into_place(new_dir: str, target: str, work_dir: str) -> None:
    """Put ``new_dir`` at ``target``; a reader of ``target`` sees the old tree or the new one, never a mix."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.lexists(target):
        os.rename(new_dir, target)
        return
    if exchange_paths(new_dir, target):
        shutil.rmtree(new_dir)
        return
    old = os.path.join(work_dir, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new_dir, target)
    shutil.rmtree(old)


def blob_name(src: SourceFile, digest: str) -> str:
    """The name huggingface_hub gives a blob: the LFS sha256, else the git blob id (sha256 when unknown)."""
    return src.git_sha1 if (src.git_sha1 and not src.sha256) else digest


def commit_hub(
    layout: Layout, names: list[str], files: dict[str, SourceFile], digests: dict[str, str], ref: str
) -> None:
    """Move staged files into ``blobs/``, build the snapshot of symlinks beside it and swap it in, then the ref."""
    if layout.hub_repo_dir is None:
        raise SyncError("internal: commit_hub needs a hub layout (source hf)")
    blobs = os.path.join(layout.hub_repo_dir, "blobs")
    os.makedirs(blobs, exist_ok=True)
    snapshot = os.path.join(layout.work_dir, "snapshot")
    shutil.rmtree(snapshot, ignore_errors=True)
    for name in names:
        blob = os.path.join(blobs, blob_name(files[name], digests[name]))
        staged = os.path.join(layout.staging, name)
        if not os.path.exists(blob):
            os.rename(staged, blob)
        link = os.path.join(snapshot, name)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(os.path.join(layout.model_dir, name))), link)
    swap_into_place(snapshot, layout.model_dir, layout.work_dir)
    shutil.rmtree(layout.staging, ignore_errors=True)
    if ref:
        refs = os.path.join(layout.hub_repo_dir, "refs")
        os.makedirs(refs, exist_ok=True)
        with open(os.path.join(refs, ref), "w", encoding="utf-8") as handle:
            handle.write(os.path.basename(layout.model_dir))


def manifest_entries(
    layout: Layout, names: list[str], files: dict[str, SourceFile], digests: dict[str, str], old: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    entries = {}
    for name in names:
        info = os.stat(os.path.join(layout.model_dir, name))
        digest = digests.get(name) or old[name]["sha256"]
        entries[name] = {
            "size": info.st_size,
            "sha256": digest,
            "mtime_ns": info.st_mtime_ns,
            "src_mtime_ns": files[name].mtime_ns,
        }
    return entries


def diff_result(plan: Plan, before: dict[str, Any], after: dict[str, Any], dest: str) -> dict[str, Any]:
    return {
        "before": render_listing(before),
        "after": render_listing(after),
        "before_header": f"{dest} (manifest)",
        "after_header": f"{dest} (after sync)",
    }


def run_sync(
    params: dict[str, Any], source: Any, check_mode: bool, want_diff: bool, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """List the source, plan, check space, stage, fetch, verify, swap in, write the manifest; return the result."""
    started = time.time()
    layout = layout_for(params)
    workers = params.get("workers")
    listing = source.list_files()  # refuses unreachable hosts, missing paths, bad revisions before any byte moves
    manifest = read_manifest(layout.manifest_path)
    desc = source.describe()
    plan = make_plan(listing, manifest, layout.model_dir, params["verify"], workers, desc)
    before = (manifest or {}).get("files", {})
    after_preview = {
        name: {"size": src.size, "sha256": src.sha256 or before.get(name, {}).get("sha256")}
        for name, src in listing.items()
    }
    result: dict[str, Any] = {
        "changed": plan.changed,
        "dest": layout.model_dir,
        "manifest_path": layout.manifest_path,
        "progress_path": layout.progress_path,
        "transfer": source.method if plan.fetch else "none",
        "files": len(listing),
        "bytes_total": sum(src.size or 0 for src in listing.values()),
        "files_to_transfer": list(plan.fetch),
        "bytes_to_transfer": plan.bytes_to_fetch,
        "bytes_transferred": 0,
        "hashed_bytes": plan.hashed_bytes,
        "added": plan.added,
        "updated": plan.updated,
        "removed": plan.removed,
        "corrupted": plan.corrupted,
        "revision": params.get("revision"),
    }
    if want_diff and plan.changed:
        result["diff"] = diff_result(plan, before, after_preview, layout.model_dir)
    if check_mode or not plan.changed:
        verb = "would transfer" if check_mode else "transferred"
        result["msg"] = (
            f"{verb} {len(plan.fetch)} files ({plan.bytes_to_fetch} bytes), removing {len(plan.removed)}"
            if plan.changed
            else f"{layout.model_dir} is up to date ({len(listing)} files, verify {params['verify']})"
        )
        return result

    resumable = {name: _resumable_size(os.path.join(layout.staging, name)) for name in plan.fetch}
    reserve = params["free_space_reserve_mb"] << 20
    check_free_space(params["dest"], layout.work_dir, space_needed(plan, listing, resumable, reserve))
    os.makedirs(layout.work_dir, exist_ok=True)
    staged = prepare_staging(layout, plan)
    drop_oversized(layout.staging, plan.fetch, listing)
    state = FetchState()
    sizes = {name: listing[name].size or 0 for name in plan.fetch}
    with Progress(layout.progress_path, layout.staging, plan.fetch, sizes, state) as progress:
        try:
            source.fetch(plan.fetch, layout.staging, state, workers)
            result["bytes_transferred"] = state.bytes_transferred or sum(
                max(0, os.path.getsize(os.path.join(layout.staging, n)) - staged[n]) for n in plan.fetch
            )
            digests, hashed = verify_fetched(layout.staging, plan.fetch, listing, state.digests, workers)
        except SyncError as exc:
            result["bytes_transferred"] = state.bytes_transferred
            progress.finish("failed", str(exc))
            exc.details.setdefault("bytes_transferred", state.bytes_transferred)
            raise
        result["hashed_bytes"] += hashed
        names = sorted(listing)
        if layout.hub_repo_dir:
            for name in plan.keep:
                digests[name] = before[name]["sha256"]
            commit_hub(layout, names, listing, digests, params.get("hf_ref") or "")
        else:
            swap_into_place(layout.staging, layout.model_dir, layout.work_dir)
        entries = manifest_entries(layout, names, listing, digests, before)
        write_json_atomic(layout.manifest_path, new_manifest(entries, desc, params.get("revision")))
        progress.finish("done")
    elapsed = time.time() - started
    result["elapsed_s"] = round(elapsed, 3)
    result["rate"] = int(result["bytes_transferred"] / max(elapsed, 1e-6))
    result["msg"] = (
        f"transferred {len(plan.fetch)} files ({result['bytes_transferred']} bytes), removed {len(plan.removed)}"
    )
    return result


def verify_hub_offline(params: dict[str, Any]) -> dict[str, Any]:
    """With HF_HUB_OFFLINE: check that the cache holds the revision and every wanted file, verify, change nothing."""
    layout = layout_for(params)
    repo_id, revision = params["repo_id"], params["revision"]
    if layout.hub_repo_dir is None:
        raise SyncError("internal: verify_hub_offline needs a hub layout (source hf)")
    if not os.path.isdir(layout.model_dir):
        raise SyncError(
            f"offline (HF_HUB_OFFLINE): revision {revision!r} of repo_id {repo_id!r} is not in the cache at"
            f" {layout.hub_repo_dir}/snapshots; sync it online first",
            revision=revision,
        )
    present, missing = hub_cached_files(layout.model_dir, os.path.join(layout.hub_repo_dir, "blobs"))
    manifest = read_manifest(layout.manifest_path)
    allow, ignore = params.get("allow_patterns") or None, params.get("ignore_patterns") or None
    wanted = set(filter_names(sorted(set(present) | set(missing)), allow, ignore))
    if manifest:
        wanted |= set(filter_names(sorted(manifest["files"]), allow, ignore))
    missing = sorted(name for name in wanted if name not in present)
    for pattern in allow or []:
        if not any(filter_names([name], [pattern], None) for name in wanted):
            missing.append(f"(no file matches allow pattern {pattern!r})")
    if missing:
        raise SyncError(
            f"offline (HF_HUB_OFFLINE): the cached revision {revision!r} of repo_id {repo_id!r} is incomplete;"
            f" missing: {', '.join(missing)}",
            missing=missing,
            revision=revision,
        )
    hashed = 0
    problems: list[dict[str, str]] = []
    if manifest:
        sub = {"files": {name: entry for name, entry in manifest["files"].items() if name in wanted}}
        problems, hashed = verify_tree(layout.model_dir, sub, params["verify"], params.get("workers"))
    elif params["verify"] == "full":
        for name in sorted(wanted):
            problem = blob_digest_problem(name, present[name], sha256_file, git_blob_sha1)
            hashed += os.path.getsize(present[name])
            if problem:
                problems.append({"file": name, "problem": problem})
    if problems:
        raise SyncError(
            f"offline (HF_HUB_OFFLINE): cached revision {revision!r} of repo_id {repo_id!r} failed verify"
            f" {params['verify']}: {', '.join(p['file'] + ' (' + p['problem'] + ')' for p in problems)}",
            corrupted=problems,
        )
    return {
        "changed": False,
        "dest": layout.model_dir,
        "manifest_path": layout.manifest_path,
        "progress_path": layout.progress_path,
        "transfer": "none",
        "files": len(wanted),
        "bytes_total": sum(os.path.getsize(present[name]) for name in wanted),
        "files_to_transfer": [],
        "bytes_to_transfer": 0,
        "bytes_transferred": 0,
        "hashed_bytes": hashed,
        "added": [],
        "updated": [],
        "removed": [],
        "corrupted": [],
        "revision": revision,
        "msg": f"offline: cached revision {revision} of {repo_id} is complete"
        f" ({len(wanted)} files, verify {params['verify']})",
    }


def read_info(params: dict[str, Any]) -> dict[str, Any]:
    """What model_sync_info returns: the manifest, the progress of a running or finished sync, and a verification."""
    layout = layout_for(params)
    manifest = read_manifest(layout.manifest_path)
    progress = read_json(layout.progress_path)
    result: dict[str, Any] = {
        "changed": False,
        "dest": layout.model_dir,
        "exists": os.path.isdir(layout.model_dir),
        "manifest_path": layout.manifest_path,
        "manifest": manifest,
        "progress_path": layout.progress_path,
        "progress": progress,
        "problems": [],
        "hashed_bytes": 0,
    }
    if params.get("verify") in ("fast", "full"):
        if manifest is None:
            result["problems"] = [{"file": "", "problem": f"no manifest at {layout.manifest_path}"}]
        else:
            result["problems"], result["hashed_bytes"] = verify_tree(
                layout.model_dir, manifest, params["verify"], params.get("workers")
            )
        result["verified"] = not result["problems"]
    return result


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def validate_params(params: dict[str, Any]) -> str:
    """Why the options cannot be used (naming the option, its value and what is allowed), or ``""``."""
    source = params.get("source")
    if source == "hf":
        revision = params.get("revision")
        if not is_pinned_revision(revision):
            return (
                f"revision {revision!r} for repo_id {params.get('repo_id')!r} is not pinned: give the 40-hex commit sha"
                " (branch names and tags can be moved on the hub; see the revision's commit on the hub's 'Files' page)"
            )
        if "/" not in (params.get("repo_id") or "").strip("/"):
            return f"repo_id {params.get('repo_id')!r} is not of the form 'org/name'"
    if source == "url":
        url = params.get("url") or ""
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            return f"url {url!r} is not an http:// or https:// URL"
        digest = (params.get("sha256") or "").lower()
        if not SHA256_HEX.fullmatch(digest):
            return f"sha256 {params.get('sha256')!r} for url {url!r} is not 64 hexadecimal digits"
        if params.get("filename") and ("/" in params["filename"] or params["filename"] in (".", "..")):
            return f"filename {params['filename']!r} must be a plain file name (no '/')"
    if source in ("ssh", "local") and not params.get("src"):
        return f"src {params.get('src')!r} must be a directory path for source {source}"
    port = params.get("remote_port")
    if port is not None and not 0 < port < 65536:
        return f"remote_port {port} is not a TCP port (1-65535)"
    if (params.get("workers") or 0) < 0:
        return f"workers {params['workers']} must be 0 (one per core) or a positive number of threads"
    if (params.get("free_space_reserve_mb") or 0) < 0:
        return f"free_space_reserve_mb {params['free_space_reserve_mb']} must not be negative"
    if (params.get("bwlimit_kbps") or 0) < 0:
        return f"bwlimit_kbps {params['bwlimit_kbps']} must be 0 (no limit) or a positive number of KiB/s"
    return ""
