# Copyright: llm-fleet contributors
# Apache-2.0
"""model_sync's manifest: what a synced model directory holds, parallel sha256 hashing, verification.

The manifest (``.llmfleet-manifest.json`` in a plain destination, ``.llmfleet/<revision>.manifest.json`` in a
Hugging Face cache repository) lists every file with its size, sha256, the destination file's mtime and the
source's size and mtime, plus the source, the revision and the time. It is written last, after the files are in
place, so its presence means the files it names were verified.

Standard library only: this file travels to target hosts with the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MANIFEST_NAME = ".llmfleet-manifest.json"
MANIFEST_VERSION = 1
# hashlib releases the GIL while it hashes a buffer over 2 KiB, so threads hash on several cores at once. 1 MiB reads
# keep the buffer in a core's L2 cache between the read and the hash (4 MiB ones spill to memory, and two threads
# then contend for it: measured on the dev machine, bench/model_sync.md) while keeping syscalls few.
READ_SIZE = 1024 * 1024
VERIFY_MODES = ("fast", "full")


def sha256_file(path: str, read_size: int = READ_SIZE, on_bytes: Callable[[int], None] | None = None) -> str:
    """The sha256 hex digest of the file at ``path``; ``on_bytes`` is told how many bytes each read returned."""
    digest = hashlib.sha256()
    buffer = bytearray(read_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
            if on_bytes is not None:
                on_bytes(count)
    return digest.hexdigest()


def git_blob_sha1(path: str, read_size: int = READ_SIZE) -> str:
    """The git object id of the file's content (what the Hugging Face hub names a non-LFS blob by)."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode(), usedforsecurity=False)
    with open(path, "rb", buffering=0) as handle:
        for chunk in iter(lambda: handle.read(read_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_workers(workers: int | None) -> int:
    """``workers`` when positive, else one hashing thread per core."""
    if workers and workers > 0:
        return workers
    return os.cpu_count() or 1


def hash_files(
    paths: dict[str, str], workers: int | None = None, on_bytes: Callable[[int], None] | None = None
) -> dict[str, str]:
    """sha256 of each file in ``paths`` (name -> absolute path), hashed by ``workers`` threads at once."""
    if not paths:
        return {}
    sizes = {name: _size(path) for name, path in paths.items()}
    order = sorted(paths, key=lambda name: (-sizes[name], name))  # largest first: the threads finish together
    with ThreadPoolExecutor(max_workers=min(default_workers(workers), len(paths))) as pool:
        futures = {name: pool.submit(sha256_file, paths[name], READ_SIZE, on_bytes) for name in order}
        return {name: futures[name].result() for name in paths}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # hashed anyway, so that the missing file is reported by the hashing thread


def scan_tree(root: str, skip_dirs: Iterable[str] = (".llmfleet",)) -> dict[str, dict[str, int]]:
    """Regular files under ``root`` (relative POSIX names) with size and mtime_ns, following no symlinked dirs.

    Symlinked files are followed (a Hugging Face snapshot is symlinks to blobs); the manifest is left out.
    """
    skip = set(skip_dirs)
    found: dict[str, dict[str, int]] = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if name not in skip)
        for filename in filenames:
            full = os.path.join(directory, filename)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel == MANIFEST_NAME:
                continue
            try:
                info = os.stat(full)
            except FileNotFoundError:
                continue
            found[rel] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    return found


def new_manifest(
    files: dict[str, dict[str, Any]], source: dict[str, Any], revision: str | None, now: float | None = None
) -> dict[str, Any]:
    """A manifest document; ``files`` maps name -> {size, sha256, mtime_ns, src_size, src_mtime}."""
    stamp = time.time() if now is None else now
    return {
        "version": MANIFEST_VERSION,
        "source": source,
        "revision": revision,
        "synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp)),
        "total_bytes": sum(entry["size"] for entry in files.values()),
        "files": {name: files[name] for name in sorted(files)},
    }


def read_manifest(path: str) -> dict[str, Any] | None:
    """The manifest at ``path``, or None when there is none or it is not a manifest this code wrote."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    return data


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (readers never see half a file)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def diff_files(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Names added, changed (size or known sha256 differ) and removed between two name -> {size, sha256} maps."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = []
    for name in sorted(set(before) & set(after)):
        old, new = before[name], after[name]
        old_sum, new_sum = old.get("sha256"), new.get("sha256")
        if old.get("size") != new.get("size") or (old_sum and new_sum and old_sum != new_sum):
            changed.append(name)
    return {"added": added, "changed": changed, "removed": removed}


def render_listing(files: dict[str, dict[str, Any]]) -> str:
    """One line a file (name, size, short sha256), the text a diff shows."""
    lines = []
    for name in sorted(files):
        entry = files[name]
        digest = (entry.get("sha256") or "?")[:16]
        lines.append(f"{name}  {entry.get('size', '?')}  {digest}")
    return "\n".join(lines) + ("\n" if lines else "")


def verify_tree(
    root: str, manifest: dict[str, Any], mode: str, workers: int | None = None
) -> tuple[list[dict[str, str]], int]:
    """Check the files of ``root`` against ``manifest``; return (problems, bytes hashed).

    ``fast`` compares sizes and mtimes (reads no file); ``full`` also re-hashes every file. Each problem names the
    file and says what is wrong (missing, size, mtime, sha256).
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    problems: list[dict[str, str]] = []
    to_hash: dict[str, str] = {}
    for name, entry in sorted(manifest["files"].items()):
        path = os.path.join(root, name)
        try:
            info = os.stat(path)
        except OSError:
            problems.append({"file": name, "problem": "missing"})
            continue
        if info.st_size != entry["size"]:
            problems.append({"file": name, "problem": f"size {info.st_size}, manifest says {entry['size']}"})
            continue
        if mode == "full":
            to_hash[name] = path
        elif entry.get("mtime_ns") is not None and info.st_mtime_ns != entry["mtime_ns"]:
            problems.append({"file": name, "problem": "mtime differs from the manifest (modified since the sync)"})
    hashed = sum(manifest["files"][name]["size"] for name in to_hash)
    for name, digest in sorted(hash_files(to_hash, workers).items()):
        if digest != manifest["files"][name]["sha256"]:
            problems.append(
                {"file": name, "problem": f"sha256 {digest}, manifest says {manifest['files'][name]['sha256']}"}
            )
    return problems, hashed
