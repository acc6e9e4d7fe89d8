# Copyright: llm-fleet contributors
# Apache-2.0
"""Build, publish and pull vLLM images with the Docker SDK for Python: the logic of `vllm_image`.

Pieces, each usable and testable on its own:

- the build context: a directory plus `extra_context` (name in the context -> path on the builder),
  walked once, honouring `.dockerignore`, sent to the daemon as a tar this module writes, so a
  wheelhouse or CA bundle joins the context without being copied;
- the content hash: sha256 over the context files, the Dockerfile, build args, target, platform,
  labels and the digests of the base images; stored on the image as `io.llmfleet.content-hash`.
  File digests are cached by (size, mtime, ctime, inode), so an unchanged rerun reads no file;
- the rebuild decision (`changed` / `never` / `always`);
- progress: classic-builder (`Step 3/12 : RUN ...`) and BuildKit plain (`#7 [venv 2/5] RUN ...`)
  lines parsed into steps done / total / current step / last lines, written to a JSON file
  while the build runs (what `state: progress` and operators read);
- the build itself: the classic builder through the SDK, or `docker buildx build` for
  Dockerfiles that need BuildKit (vLLM's own docker/Dockerfile uses `RUN --mount`). The image is
  built untagged and tagged only after success, so a failed build leaves the previous tag alone;
- push / pull with credentials passed per call (nothing written to ~/.docker/config.json).

The Docker SDK is imported lazily: the pure helpers work without it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

HASH_LABEL = "io.llmfleet.content-hash"
HASH_VERSION = "llmfleet-image/1"
DEFAULT_DOCKERFILE_ARCNAME = ".llmfleet.Dockerfile"
REBUILD_CHOICES = ("changed", "never", "always")
LAST_LINES = 20
PROGRESS_WRITE_INTERVAL_S = 1.0
# The classic builder colours a step's stderr (ESC[91m ... ESC[0m); logs and progress get plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ImageError(Exception):
    """A failure with a message fit for an operator (names the offending value)."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

def slug(text: str) -> str:
    """A file-name-safe form of an image reference: `127.0.0.1:5000/a/b:t` -> `127.0.0.1_5000_a_b_t`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def split_reference(ref: str) -> tuple[str, str]:
    """Split `repo[:tag]` (the repo may hold a registry port) into (repo, tag); tag defaults to latest."""
    if "@" in ref:
        raise ImageError(f"image reference {ref!r} pins a digest; give a tag instead")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def registry_of(repository: str) -> str:
    """The registry host of a repository name, as Docker reads it (`docker.io` when none)."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# --------------------------------------------------------------------------------------------
# Dockerfile: base images and BuildKit features
# --------------------------------------------------------------------------------------------

_ARG_RE = re.compile(r"^\s*ARG\s+(.+)$", re.IGNORECASE)
_FROM_RE = re.compile(r"^\s*FROM\s+(.+)$", re.IGNORECASE)
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+]([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_BUILDKIT_RE = re.compile(r"^\s*RUN\s+(--mount|--network|--security)|<<-?\s*[\"']?[A-Za-z_]+|^\s*#\s*syntax\s*=",
                          re.IGNORECASE | re.MULTILINE)


def _logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with backslash continuations joined and comments dropped."""
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield buf.strip()
        buf = ""
    if buf.strip():
        yield buf.strip()


def _substitute(value: str, env: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in env and env[name] != "":
            return env[name]
        return m.group(2) or ""

    return _VAR_RE.sub(repl, value)


def _parse_arg(spec: str, env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    out = []
    for part in spec.split():
        if "=" in part:
            k, v = part.split("=", 1)
            out.append((k, _substitute(v.strip("\"'"), env)))
        else:
            out.append((part, None))
    return out


def dockerfile_base_images(text: str, build_args: Mapping[str, str] | None = None) -> list[str]:
    """External images the Dockerfile's FROM lines name, with global ARGs and build args substituted.

    Stage names defined earlier (`FROM base AS build` ... `FROM build`) and `scratch` are skipped.
    """
    build_args = dict(build_args or {})
    env: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False
    for line in _logical_lines(text):
        m = _ARG_RE.match(line)
        if m and not seen_from:
            for name, default in _parse_arg(m.group(1), env):
                env[name] = build_args.get(name, default if default is not None else env.get(name, ""))
            continue
        m = _FROM_RE.match(line)
        if not m:
            continue
        seen_from = True
        words = [w for w in m.group(1).split() if not w.startswith("--")]
        if not words:
            continue
        image = _substitute(words[0], env)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() in stages or image == "scratch" or image in images:
            continue
        images.append(image)
    return images


def dockerfile_stages(text: str) -> list[str]:
    """The stage names (`FROM ... AS name`) in order."""
    names = []
    for line in _logical_lines(text):
        m = _FROM_RE.match(line)
        if m:
            words = [w for w in m.group(1).split() if not w.startswith("--")]
            if len(words) >= 3 and words[1].lower() == "as":
                names.append(words[2])
    return names


def needs_buildkit(text: str) -> str | None:
    """The first line that needs BuildKit (RUN --mount, heredocs, `# syntax=`), or None."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if _BUILDKIT_RE.search(line):
            return f"line {lineno}: {line.strip()[:100]}"
    return None


# --------------------------------------------------------------------------------------------
# Build context and content hash
# --------------------------------------------------------------------------------------------

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


def collect_context(context: str, dockerfile: str, extra_context: Mapping[str, str] | None = None,
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


def context_manifest(entries: Iterable[ContextEntry], cache: FileDigestCache,
                     exclude: Iterable[str] = ()) -> list[list[str]]:
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


def content_hash(manifest: list[list[str]], dockerfile_text: str, build_args: Mapping[str, str] | None,
                 target: str | None, platform: str | None, labels: Mapping[str, str] | None,
                 base_digests: Mapping[str, str] | None) -> str:
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


# --------------------------------------------------------------------------------------------
# Rebuild decision
# --------------------------------------------------------------------------------------------

@dataclass
class Decision:
    """What to do about the wanted image: `none`, `tag` (an image with the hash exists) or `build`."""

    action: str
    reason: str


def decide(rebuild: str, wanted_hash: str, tagged_hash: str | None, tagged_exists: bool,
           same_hash_image: str | None) -> Decision:
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
        return Decision("tag", f"image {same_hash_image[:19]} already has content hash {wanted_hash[:19]}...; "
                               "tagging it")
    if not tagged_exists:
        return Decision("build", "the image does not exist")
    if tagged_hash is None:
        return Decision("build", "the existing image has no content-hash label")
    return Decision("build", f"content hash changed ({tagged_hash[:19]}... -> {wanted_hash[:19]}...)")


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------

_CLASSIC_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_BUILDKIT_STEP = re.compile(r"^#(\d+) \[(?:([^\]\s]+) )?(\d+)/(\d+)\] (.*)$")
_BUILDKIT_DONE = re.compile(r"^#(\d+) (DONE|CACHED)\b")
_BUILDKIT_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")


@dataclass
class BuildProgress:
    """Progress of one build, fed line by line from the build output."""

    log_file: str = ""
    started_at: float = field(default_factory=time.time)
    state: str = "running"
    step: int = 0
    total: int = 0
    current: str = ""
    cached_steps: int = 0
    image_id: str = ""
    error: str = ""
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LAST_LINES))
    _bk_vertices: dict = field(default_factory=dict)  # vertex -> (stage, i, n, text)
    _bk_done: set = field(default_factory=set)
    _bk_stage_totals: dict = field(default_factory=dict)

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        self.lines.append(line)
        m = _CLASSIC_STEP.match(line)
        if m:
            self.step, self.total, self.current = int(m.group(1)), int(m.group(2)), m.group(3)
            return
        if line.strip() == "---> Using cache":
            self.cached_steps += 1
            return
        m = re.match(r"^Successfully built ([0-9a-f]+)$", line)
        if m:
            self.image_id = m.group(1)
            return
        m = _BUILDKIT_STEP.match(line)
        if m:
            vertex, stage, i, n, text = m.group(1), m.group(2) or "", int(m.group(3)), int(m.group(4)), m.group(5)
            self._bk_vertices[vertex] = (stage, i, n, text)
            self._bk_stage_totals[stage] = n
            self.total = sum(self._bk_stage_totals.values())
            self.current = f"[{stage} {i}/{n}] {text}" if stage else f"[{i}/{n}] {text}"
            return
        m = _BUILDKIT_DONE.match(line)
        if m and m.group(1) in self._bk_vertices:
            self._bk_done.add(m.group(1))
            if m.group(2) == "CACHED":
                self.cached_steps += 1
            self.step = len(self._bk_done)
            return
        m = _BUILDKIT_ERROR.match(line)
        if m:
            self.error = m.group(2)

    def failed_step(self) -> str:
        return self.current

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "state": self.state,
            "steps_done": max(self.step - 1, 0) if self.state == "running" and self._is_classic() else self.step,
            "steps_total": self.total,
            "current_step": self.current,
            "cached_steps": self.cached_steps,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started_at)),
            "started_epoch": round(self.started_at, 3),
            "updated_epoch": round(now, 3),
            "elapsed_s": round(now - self.started_at, 1),
            "image_id": self.image_id,
            "error": self.error,
            "log_file": self.log_file,
            "last_lines": list(self.lines),
        }

    def _is_classic(self) -> bool:
        return not self._bk_vertices


def write_json_atomic(path: str, data: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".progress.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_progress(path: str) -> dict[str, Any]:
    """The progress a build (running or finished) wrote to `path`; a running build's elapsed time is brought up to now
    (a long silent step writes no line) and `silent_s` says how long since its last output."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise ImageError(f"no build progress at {path!r}: no build has started with this progress file") from exc
    except ValueError as exc:
        raise ImageError(f"build progress file {path!r} is not JSON: {exc}") from exc
    if data.get("state") == "running" and "started_epoch" in data:
        now = time.time()
        data["elapsed_s"] = round(now - data["started_epoch"], 1)
        data["silent_s"] = round(now - data.get("updated_epoch", now), 1)
    return data


class ProgressSink:
    """Writes build output to the log file and, at most once a second, the progress JSON."""

    def __init__(self, log_file: str, progress_file: str) -> None:
        self.progress = BuildProgress(log_file=log_file)
        self.progress_file = progress_file
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        if os.path.exists(log_file):
            os.replace(log_file, log_file + ".1")
        self.log = open(log_file, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
        self._last_write = 0.0
        self._last_step = -1
        self.flush(force=True)

    def line(self, text: str) -> None:
        text = _ANSI.sub("", text)
        self.log.write(text if text.endswith("\n") else text + "\n")
        self.progress.feed(text)
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.time()
        if force or self.progress.step != self._last_step or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            write_json_atomic(self.progress_file, self.progress.as_dict())
            self._last_write, self._last_step = now, self.progress.step

    def close(self, state: str, error: str = "", image_id: str = "") -> dict[str, Any]:
        self.progress.state = state
        if error:
            self.progress.error = error
        if image_id:
            self.progress.image_id = image_id
        self.flush(force=True)
        self.log.close()
        return self.progress.as_dict()


# --------------------------------------------------------------------------------------------
# Docker: inspect, build, tag, push, pull
# --------------------------------------------------------------------------------------------

def docker_client(docker_host: str, timeout: int) -> Any:
    try:
        import docker
    except ImportError as exc:
        raise ImageError("the Docker SDK for Python is missing on the builder: install python3-docker "
                         "(Debian/Ubuntu) or `pip install docker`") from exc
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


def resolve_base_digests(client: Any, images: Iterable[str], auth: Mapping[str, str] | None = None
                         ) -> dict[str, str]:
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


def classic_build(client: Any, entries: list[ContextEntry], dockerfile_arcname: str, build_args: Mapping[str, str],
                  target: str | None, platform: str | None, labels: Mapping[str, str], pull: bool, nocache: bool,
                  sink: ProgressSink, tar_dir: str) -> str:
    """Build with the classic builder; returns the image id. Raises ImageError with the failing step."""
    os.makedirs(tar_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=tar_dir, prefix="context.", suffix=".tar") as tar:
        size = write_context_tar(entries, tar)
        tar.seek(0)
        sink.line(f"llmfleet: sending build context ({size / 1e6:.1f} MB, {len(entries)} entries)")
        image_id = ""
        for chunk in client.api.build(fileobj=tar, custom_context=True, dockerfile=dockerfile_arcname,
                                      buildargs=dict(build_args), target=target or None, platform=platform or None,
                                      labels=dict(labels), pull=pull, nocache=nocache, rm=True, forcerm=True,
                                      decode=True):
            if "stream" in chunk:
                for text in chunk["stream"].splitlines():
                    sink.line(text)
            elif "error" in chunk:
                msg = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                sink.line(f"ERROR: {msg}")
                raise ImageError(f"build failed at step {sink.progress.failed_step()!r}: {msg.strip()}",
                                 failed_step=sink.progress.failed_step())
            elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            elif "status" in chunk:
                sink.line(chunk["status"] + (" " + chunk["progress"] if chunk.get("progress") else ""))
    image_id = image_id or sink.progress.image_id
    if not image_id:
        raise ImageError("the build ended without an image id (see the build log)")
    return image_id


def buildx_build(context: str, dockerfile: str, build_args: Mapping[str, str], target: str | None,
                 platform: str | None, labels: Mapping[str, str], pull: bool, nocache: bool, sink: ProgressSink,
                 docker_host: str, tar_dir: str) -> str:
    """Build with `docker buildx build --load` (BuildKit); returns the image id."""
    docker_cli = shutil.which("docker")
    env = dict(os.environ, DOCKER_HOST=docker_host)
    if not docker_cli or subprocess.run([docker_cli, "buildx", "version"], capture_output=True, env=env,
                                        check=False).returncode != 0:
        raise ImageError("this Dockerfile needs BuildKit, but `docker buildx` is not available on the builder: "
                         "install Docker's buildx plugin (docker-buildx-plugin)")
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
        raise ImageError(f"build failed at step {sink.progress.failed_step()!r} (docker buildx exit {rc}): "
                         f"{sink.progress.error or 'see the log'}", failed_step=sink.progress.failed_step())
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
        stream = client.api.push(repository, tag=tag, stream=True, decode=True,
                                 auth_config=dict(auth) if auth else None)
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
        return client.images.pull(repository, tag=tag, auth_config=dict(auth) if auth else None,
                                  platform=platform or None)
    except Exception as exc:
        raise ImageError(f"pull of {repository}:{tag} from {registry_of(repository)!r} failed: {exc}") from exc


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
        raise ImageError(f"target {target!r} is not a stage of {params['dockerfile']!r} "
                         f"(stages: {', '.join(dockerfile_stages(df_text)) or 'none named'})")
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
        decision = Decision("build", f"base image(s) {', '.join(missing)} not on the builder: a run pulls them, "
                                     "then builds unless an image with the resulting hash exists")
    log_file, progress_file = default_paths(params)
    result.update(action={"none": "none", "tag": "tagged", "build": "built"}[decision.action],
                  reason=decision.reason, content_hash=wanted, base_images=base_ids, build_args=build_args,
                  builder=builder, log_file=log_file, progress_file=progress_file,
                  context_files=sum(1 for e in entries if e.kind == "file"),
                  digest_cache={"hits": cache.hits, "misses": cache.misses})
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
            image_id = classic_build(client, entries, df_arcname, build_args, target, params.get("platform"),
                                     all_labels, False, params["nocache"], sink, params["work_dir"])
        else:
            if params.get("extra_context"):
                raise ImageError("builder=buildx takes the context directory as it is: extra_context is not "
                                 f"supported with it (got {sorted(params['extra_context'])})")
            image_id = buildx_build(params["context"], df_path, build_args, target, params.get("platform"),
                                    all_labels, False, params["nocache"], sink, params["docker_host"],
                                    params["work_dir"])
    except ImageError as exc:
        progress = sink.close("failed", error=exc.msg)
        exc.details.update(log_file=log_file, progress_file=progress_file, log_tail=progress["last_lines"],
                           content_hash=wanted, previous_image=_image_summary(name, tag, current))
        exc.msg = f"{exc.msg} (image {ref} left as it was; full log: {log_file})"
        raise
    except Exception as exc:
        progress = sink.close("failed", error=str(exc))
        raise ImageError(f"build of {ref} failed: {exc} (image left as it was; full log: {log_file})",
                         log_tail=progress["last_lines"], log_file=log_file) from exc
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
        result["pushed"] = {"repository": repository, "tag": tag, "digest": None, "changed": True,
                            "msg": f"would push {repository}:{tag} (registry has {remote or 'no such tag'})"}
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
        return {"changed": False, "action": "none", "reason": "state=progress reads the progress file",
                "progress_file": progress_file, "progress": read_progress(progress_file),
                "duration_s": round(time.time() - started, 3)}

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
            result["pushed"] = {"repository": params["repository"], "tag": tag, "digest": None, "changed": True,
                                "msg": "would push the image once built"}
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
