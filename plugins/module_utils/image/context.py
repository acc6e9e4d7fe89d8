# Copyright: llm-fleet contributors
# Apache-2.0
"""The build context and the content hash of an image.

- the context: a directory plus `extra_context` (name in the context -> path on the builder),
  walked once, honouring `.dockerignore` (with the Docker SDK's own semantics), written as the tar
  the daemon expects, so a wheelhouse or CA bundle joins the context without being copied;
- the content hash: sha256 over the context files, the Dockerfile, build args, target, platform,
  labels and the digests of the base images; stored on the image as `io.llmfleet.content-hash`.
  File digests are cached by (size, mtime, ctime, inode), so an unchanged rerun reads no file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError

HASH_LABEL = "io.llmfleet.content-hash"
HASH_VERSION = "llmfleet-image/1"
DEFAULT_DOCKERFILE_ARCNAME = ".llmfleet.Dockerfile"


@dataclass(frozen=True)
class ContextEntry:
    """One member of the build context: its name in the context, where it is on the builder, its kind."""

    arcname: str
    source: str
    kind: str  # "file", "dir", "symlink"
    mode: int


def _walk(root: str, prefix: str, include: set[str] | None) -> Iterator[ContextEntry]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(dirnames) + sorted(filenames):
            rel = os.path.join(rel_dir, name) if rel_dir else name
            if include is not None and rel not in include:
                continue
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                kind = "symlink"
            elif stat.S_ISDIR(st.st_mode):
                kind = "dir"
            elif stat.S_ISREG(st.st_mode):
                kind = "file"
            else:
                continue
            yield ContextEntry(f"{prefix}{rel}", path, kind, stat.S_IMODE(st.st_mode))


def _dockerignore_include(context: str, dockerfile_arcname: str | None) -> set[str] | None:
    ignore = os.path.join(context, ".dockerignore")
    if not os.path.isfile(ignore):
        return None
    from docker.utils.build import exclude_paths  # the Docker SDK's own .dockerignore semantics

    with open(ignore, encoding="utf-8") as fh:
        patterns = [p.strip() for p in fh if p.strip() and not p.lstrip().startswith("#")]
    return set(exclude_paths(context, patterns, dockerfile=dockerfile_arcname))


def collect_context(
    context: str,
    dockerfile: str,
    extra_context: Mapping[str, str] | None = None,
) -> tuple[list[ContextEntry], str]:
    """The context's entries and the Dockerfile's name inside it.

    `dockerfile` is a path relative to `context` or absolute; one outside the context is added
    under `.llmfleet.Dockerfile`. `extra_context` maps names in the context to files or
    directories on the builder (a wheelhouse, a CA bundle); they override same-named entries.
    """
    context = os.path.abspath(context)
    if not os.path.isdir(context):
        raise ImageError(f"build context {context!r} is not a directory on the builder")
    df_path = dockerfile if os.path.isabs(dockerfile) else os.path.join(context, dockerfile)
    df_path = os.path.abspath(df_path)
    if not os.path.isfile(df_path):
        raise ImageError(f"Dockerfile {dockerfile!r} not found (looked for {df_path!r})")
    inside = os.path.commonpath([context, df_path]) == context
    df_arcname = os.path.relpath(df_path, context) if inside else DEFAULT_DOCKERFILE_ARCNAME

    include = _dockerignore_include(context, df_arcname if inside else None)
    entries: dict[str, ContextEntry] = {e.arcname: e for e in _walk(context, "", include)}
    for arcname, src in sorted((extra_context or {}).items()):
        arcname = arcname.strip("/")
        if not arcname or arcname.startswith("..") or "/../" in f"/{arcname}/":
            raise ImageError(f"extra_context name {arcname!r} must be a relative path inside the context")
        if not os.path.exists(src):
            raise ImageError(f"extra_context {arcname!r}: {src!r} does not exist on the builder")
        for key in [k for k in entries if k == arcname or k.startswith(arcname + "/")]:
            del entries[key]
        st = os.stat(src)
        if stat.S_ISDIR(st.st_mode):
            entries[arcname] = ContextEntry(arcname, src, "dir", stat.S_IMODE(st.st_mode))
            for e in _walk(src, arcname + "/", None):
                entries[e.arcname] = e
        else:
            entries[arcname] = ContextEntry(arcname, src, "file", stat.S_IMODE(st.st_mode))
    if not inside:
        st = os.stat(df_path)
        entries[df_arcname] = ContextEntry(df_arcname, df_path, "file", stat.S_IMODE(st.st_mode))
    # Parent directories of extra entries (e.g. "a/b" given alone) are implied by the tar.
    return [entries[k] for k in sorted(entries)], df_arcname


class FileDigestCache:
    """sha256 of files, remembered by (size, mtime_ns, ctime_ns, inode) in a JSON file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.data: dict[str, list[Any]] = {}
        self.hits = 0
        self.misses = 0
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    self.data = json.load(fh)
            except (OSError, ValueError):
                self.data = {}

    def digest(self, path: str) -> str:
        st = os.stat(path)
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        cached = self.data.get(path)
        if cached and cached[:4] == key:
            self.hits += 1
            return str(cached[4])
        self.misses += 1
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        self.data[path] = [*key, h.hexdigest()]
        return h.hexdigest()

    def save(self) -> None:
        if not self.path or self.misses == 0:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh)
        os.replace(tmp, self.path)


def hash_excluded(arcname: str, patterns: Iterable[str]) -> bool:
    """Whether `arcname` is left out of the hash: it equals or lies under a pattern, or fnmatches one."""
    import fnmatch

    for pat in patterns:
        pat = pat.strip("/")
        if arcname == pat or arcname.startswith(pat + "/") or fnmatch.fnmatch(arcname, pat):
            return True
    return False


def context_manifest(
    entries: Iterable[ContextEntry], cache: FileDigestCache, exclude: Iterable[str] = ()
) -> list[list[str]]:
    """[arcname, kind, exec-bit, digest-or-link-target] per entry: what the hash covers.

    `exclude` leaves volatile paths out of the hash (not out of the context): a git checkout's
    `.git`, whose files change on every fetch; the role labels the image with the commit instead.
    """
    exclude = list(exclude)
    rows = []
    for e in entries:
        if exclude and hash_excluded(e.arcname, exclude):
            continue
        if e.kind == "file":
            content = cache.digest(e.source)
        elif e.kind == "symlink":
            content = os.readlink(e.source)
        else:
            content = ""
        rows.append([e.arcname, e.kind, "x" if e.mode & 0o111 else "-", content])
    return rows


def content_hash(
    manifest: list[list[str]],
    dockerfile_text: str,
    build_args: Mapping[str, str] | None,
    target: str | None,
    platform: str | None,
    labels: Mapping[str, str] | None,
    base_digests: Mapping[str, str] | None,
) -> str:
    """The image's content hash: `sha256:<hex>` over everything that makes the image what it is."""
    doc = {
        "version": HASH_VERSION,
        "context": manifest,
        "dockerfile": hashlib.sha256(dockerfile_text.encode()).hexdigest(),
        "build_args": {k: str(v) for k, v in sorted((build_args or {}).items())},
        "target": target or "",
        "platform": platform or "",
        "labels": {k: str(v) for k, v in sorted((labels or {}).items()) if k != HASH_LABEL},
        "base_images": dict(sorted((base_digests or {}).items())),
    }
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_context_tar(entries: Iterable[ContextEntry], fileobj: Any) -> int:
    """Write the context as an uncompressed tar (what the daemon expects); returns bytes of file data."""
    total = 0
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        for e in entries:
            info = tar.gettarinfo(e.source, arcname=e.arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.kind == "file":
                with open(e.source, "rb") as fh:
                    tar.addfile(info, fh)
                total += info.size
            else:
                tar.addfile(info)
    return total
