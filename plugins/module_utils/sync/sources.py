# Copyright: llm-fleet contributors
# Apache-2.0
"""model_sync's source kinds: a local path, another host over SSH (rsync, SFTP fallback), an http(s) URL with
its sha256 (Range resume), and a Hugging Face hub repository (through huggingface_hub, imported lazily).

Each source lists its files (name, size, mtime, known digest) before any byte moves, so bad input is refused
first, and fetches a list of names into a staging directory. Standard library and ansible.module_utils only,
except huggingface_hub for the hub source.
"""

from __future__ import annotations

import decimal
import errno
import fnmatch
import functools
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import open_http
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.manifest import (
    MANIFEST_NAME,
    READ_SIZE,
    default_workers,
    read_manifest,
    scan_tree,
)

PINNED_REVISION = re.compile(r"[0-9a-f]{40}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SSH_UNREACHABLE_RC = 255
REMOTE_NO_PATH_RC = 41
# Pieces a local copy hands the kernel at a time: big enough that syscalls are few, small enough that the
# hashing thread reading the destination back stays close behind the copy (the data is still in the page cache).
COPY_CHUNK = 16 * 1024 * 1024


class SyncError(Exception):
    """A refusal or failure, with the message the module fails with and details for its result."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.details = details


@dataclass
class SourceFile:
    """One file a source holds: size (None when the source cannot say), mtime in ns, the digests it knows."""

    name: str
    size: int | None
    mtime_ns: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None


@dataclass
class FetchState:
    """What a fetch tells the caller while it runs and when it is done (updated from several threads)."""

    current_file: str = ""
    bytes_transferred: int = 0
    digests: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_bytes(self, count: int) -> None:
        with self.lock:
            self.bytes_transferred += count


def is_pinned_revision(revision: str | None) -> bool:
    """A 40-hex commit sha is pinned. Branch names and tags are not: both can be moved on the hub."""
    return bool(revision) and PINNED_REVISION.fullmatch(revision) is not None


def hub_pattern_matches(name: str, patterns: list[str]) -> bool:
    """huggingface_hub's pattern rule: fnmatch, and a pattern ending in ``/`` matches everything below it."""
    return any(fnmatch.fnmatch(name, pattern + "*" if pattern.endswith("/") else pattern) for pattern in patterns)


def filter_names(names: list[str], allow: list[str] | None, ignore: list[str] | None) -> list[str]:
    """The names kept by allow patterns (all when none) minus those matched by ignore patterns."""
    kept = [name for name in names if not allow or hub_pattern_matches(name, allow)]
    return [name for name in kept if not ignore or not hub_pattern_matches(name, ignore)]


COPY_METHODS = ("copy_file_range", "sendfile", "readwrite")
# Errors after which a copy syscall is not usable for this pair of files (another filesystem, an old kernel, a
# filesystem without the operation); the copy goes on with the next method from the same offset.
COPY_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF}


class RangeCopier:
    """Copies ``size`` bytes from one file to another in COPY_CHUNK pieces, in the kernel where it can:
    ``os.copy_file_range`` (a reflink or server-side copy where the filesystem offers one), else ``os.sendfile``,
    else ``pread``/``pwrite``. ``copied`` grows as pieces land, so another thread can hash behind it."""

    def __init__(self, src_fd: int, dst_fd: int, size: int, state: FetchState, first: str = "copy_file_range") -> None:
        self.src_fd, self.dst_fd, self.size, self.state = src_fd, dst_fd, size, state
        methods = [name for name in COPY_METHODS if name == "readwrite" or hasattr(os, name)]
        self.methods = methods[methods.index(first) :] if first in methods else methods[-1:]
        self.copied = 0
        self.error: BaseException | None = None
        self.stop = False
        self.cond = threading.Condition()

    def _piece(self, offset: int, count: int) -> int:
        method = self.methods[0]
        if method == "copy_file_range":
            return os.copy_file_range(self.src_fd, self.dst_fd, count, offset, offset)
        if method == "sendfile":
            os.lseek(self.dst_fd, offset, os.SEEK_SET)  # sendfile writes at the destination's file position
            return os.sendfile(self.dst_fd, self.src_fd, offset, count)
        data = os.pread(self.src_fd, count, offset)
        view, written = memoryview(data), 0
        while written < len(data):
            written += os.pwrite(self.dst_fd, view[written:], offset + written)
        return len(data)

    def run(self) -> None:
        try:
            while self.copied < self.size and not self.stop:
                count = min(COPY_CHUNK, self.size - self.copied)
                try:
                    done = self._piece(self.copied, count)
                except OSError as exc:
                    if exc.errno not in COPY_FALLBACK_ERRNOS or len(self.methods) == 1:
                        raise
                    self.methods.pop(0)
                    continue
                if done == 0:
                    if len(self.methods) == 1:
                        break  # the source is shorter than it was: the size check after the fetch names it
                    self.methods.pop(0)  # some filesystems answer 0 to copy_file_range: use the next method
                    continue
                self.state.add_bytes(done)
                with self.cond:
                    self.copied += done
                    self.cond.notify_all()
        except BaseException as exc:  # handed to the hashing thread, which raises it
            self.error = exc
        finally:
            with self.cond:
                self.stop = True
                self.cond.notify_all()

    def wait_past(self, offset: int) -> int:
        """Block until more than ``offset`` bytes are copied or the copy ended; return the bytes copied."""
        with self.cond:
            while self.copied <= offset and not self.stop:
                self.cond.wait()
            if self.error is not None:
                raise self.error
            return self.copied


def _hash_behind(copier: RangeCopier, path: str) -> str:
    """sha256 of ``path`` read back (from the page cache) as far as ``copier`` has written it, until the copy ends."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    hashed = 0
    with open(path, "rb", buffering=0) as readback:
        while True:
            copied = copier.wait_past(hashed)
            if copied <= hashed:
                return digest.hexdigest()
            while hashed < copied:
                count = readback.readinto(view[: min(READ_SIZE, copied - hashed)])
                if not count:
                    raise SyncError(f"{path} ended at {hashed} bytes while {copied} were copied into it")
                digest.update(view[:count])
                hashed += count


def _copy_and_hash(src: str, dst: str, state: FetchState, first: str = "copy_file_range") -> str:
    """Copy ``src`` to ``dst`` and return the sha256 of what landed in ``dst``. A file over COPY_CHUNK is copied by
    another thread while this one hashes the destination behind it, so hashing overlaps copying. ``first`` is the
    copy method tried first (later ones in COPY_METHODS are the fallbacks)."""
    with open(src, "rb", buffering=0) as reader, open(dst, "wb", buffering=0) as writer:
        info = os.fstat(reader.fileno())
        copier = RangeCopier(reader.fileno(), writer.fileno(), info.st_size, state, first)
        thread = None
        if info.st_size > COPY_CHUNK:
            thread = threading.Thread(target=copier.run, daemon=True)
            thread.start()
        else:
            copier.run()
        try:
            digest = _hash_behind(copier, dst)
        finally:
            copier.stop = True
            if thread is not None:
                thread.join()
    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
    return digest


def largest_first(names: list[str], size_of: Callable[[str], int]) -> list[str]:
    """Names ordered by size, largest first, so the long files start at once and the workers finish together."""
    return sorted(names, key=lambda name: (-size_of(name), name))


class LocalSource:
    """A directory on the target itself (a shared NFS mount, a training output directory)."""

    kind = "local"

    def __init__(self, path: str) -> None:
        self.path = path
        self.method = "copy"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}

    def list_files(self) -> dict[str, SourceFile]:
        if not os.path.isdir(self.path):
            raise SyncError(f"src {self.path!r} (source local) is not a directory on this host", src=self.path)
        known = read_manifest(os.path.join(self.path, MANIFEST_NAME)) or {"files": {}}
        files = {}
        for name, info in scan_tree(self.path).items():
            entry = known["files"].get(name, {})
            # The source's own manifest counts only for files unchanged since it was written.
            trusted = entry.get("size") == info["size"] and entry.get("mtime_ns") == info["mtime_ns"]
            files[name] = SourceFile(name, info["size"], info["mtime_ns"], entry.get("sha256") if trusted else None)
        return files

    def fetch(self, names: list[str], staging: str, state: FetchState, workers: int | None) -> None:
        def one(name: str) -> None:
            target = os.path.join(staging, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            state.current_file = name
            state.digests[name] = _copy_and_hash(os.path.join(self.path, name), target, state)

        def size_of(name: str) -> int:
            return os.path.getsize(os.path.join(self.path, name))

        with ThreadPoolExecutor(max_workers=max(1, min(default_workers(workers), len(names) or 1))) as pool:
            for future in [pool.submit(one, name) for name in largest_first(names, size_of)]:
                future.result()


class UrlSource:
    """One file at an http(s) URL with its expected sha256, resumed with Range requests."""

    kind = "url"

    def __init__(self, url: str, sha256: str, filename: str | None, timeout: int, validate_certs: bool) -> None:
        self.url = url
        self.sha256 = sha256.lower()
        self.filename = filename or os.path.basename(urllib.parse.urlparse(url).path)
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.method = "http"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "sha256": self.sha256}

    def _open(self, method: str, headers: dict[str, str] | None = None) -> Any:
        """The project's one HTTP path (clients.http): proxies from the environment, loopback direct."""
        return open_http(
            method,
            self.url,
            headers={"User-Agent": "llmfleet-model_sync", **(headers or {})},
            timeout=self.timeout,
            validate_certs=self.validate_certs,
        )

    def list_files(self) -> dict[str, SourceFile]:
        if not self.filename:
            raise SyncError(f"url {self.url!r} has no file name in its path; set filename", url=self.url)
        try:
            response = self._open("HEAD")
            length = response.headers.get("Content-Length")
            response.close()
        except urllib.error.HTTPError as exc:
            raise SyncError(f"url {self.url!r} answered HEAD with HTTP {exc.code} {exc.reason}", url=self.url) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise SyncError(f"url {self.url!r} did not answer: {exc}", url=self.url) from exc
        size = int(length) if length and length.isdigit() else None
        return {self.filename: SourceFile(self.filename, size, None, self.sha256)}

    def fetch(self, names: list[str], staging: str, state: FetchState, workers: int | None) -> None:
        for name in names:
            self._fetch_one(name, os.path.join(staging, name), state)

    def _fetch_one(self, name: str, target: str, state: FetchState) -> None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        state.current_file = name
        offset = os.path.getsize(target) if os.path.exists(target) else 0
        digest = hashlib.sha256()
        try:
            response = self._open("GET", {"Range": f"bytes={offset}-"} if offset else None)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the staged file is already whole: hash it below
                response = None
            else:
                raise SyncError(
                    f"url {self.url!r} answered GET with HTTP {exc.code} {exc.reason}", url=self.url
                ) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise SyncError(f"url {self.url!r} did not answer: {exc}", url=self.url) from exc
        if response is not None and offset and response.status != 206:
            offset = 0  # the server ignored Range: start again
        if offset:
            with open(target, "rb") as partial:
                for chunk in iter(lambda: partial.read(READ_SIZE), b""):
                    digest.update(chunk)
        if response is None:
            state.digests[name] = digest.hexdigest()
            return
        written = offset
        length = response.headers.get("Content-Length")
        expected_end = offset + int(length) if length and length.isdigit() else None
        try:
            with response, open(target, "ab" if offset else "wb") as writer:
                while True:
                    chunk = response.read(1024 * 1024)
                    if not chunk:
                        break
                    digest.update(chunk)
                    writer.write(chunk)
                    written += len(chunk)
                    state.add_bytes(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise SyncError(
                f"download of {self.url!r} stopped at {written} bytes ({exc}); the part is kept in staging and a"
                " rerun resumes from it",
                url=self.url,
            ) from exc
        if expected_end is not None and written < expected_end:
            raise SyncError(
                f"download of {self.url!r} stopped at {written} of {expected_end} bytes (the server closed the"
                " connection); the part is kept in staging and a rerun resumes from it",
                url=self.url,
            )
        state.digests[name] = digest.hexdigest()


CONTROL_PERSIST_S = 60
CONTROL_PATH_MAX = 90  # a unix socket path has 108 bytes; ssh adds a 17-character suffix while it sets one up


# OpenSSH's default ciphers with the AES-GCM ones first: with AES instructions (x86 AES-NI, the Arm crypto
# extensions) they cost a fraction of chacha20-poly1305's CPU, which is what a transfer between two busy hosts
# is short of (2 GB over ssh to 127.0.0.1 here: rsync -a 4.0-4.3 s with aes128-gcm, 5.5-8.0 s by default). The
# same set as the default, so any server that takes the default takes this; a Ciphers in ``ssh_options`` wins.
CIPHER_PREFERENCE = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)


@functools.lru_cache(maxsize=1)
def preferred_ciphers() -> tuple[str, ...]:
    """CIPHER_PREFERENCE less what this ssh client does not know (``ssh -Q cipher``, asked once); () (ssh's own
    default) when ssh cannot say."""
    try:
        known = subprocess.run(["ssh", "-Q", "cipher"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    names = set(known.stdout.split()) if known.returncode == 0 else set()
    return tuple(name for name in CIPHER_PREFERENCE if name in names)


def private_control_dir() -> str:
    """A directory for ssh control sockets that only this user can enter (created 0700 under the temporary directory;
    refused when it exists as anything else: a symlink, another owner, wider permissions)."""
    path = os.path.join(tempfile.gettempdir(), f"llmfleet-ssh-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return ""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return ""
    return path


class SshSource:
    """A directory on another host: rsync over ssh with partial-file resume, SFTP when rsync is missing."""

    kind = "ssh"

    def __init__(self, params: dict[str, Any]) -> None:
        self.host = params["remote_host"]
        self.user = params.get("remote_user")
        self.port = params.get("remote_port") or 22
        self.path = params["src"].rstrip("/") or "/"
        self.key = params.get("ssh_key")
        self.options = list(params.get("ssh_options") or [])
        self.rsync_path = params.get("rsync_path") or "rsync"
        self.transfer = params.get("transfer") or "auto"
        self.bwlimit_kbps = int(params.get("bwlimit_kbps") or 0)
        self.timeout = params.get("timeout") or 30
        self.method = ""
        self.remote_manifest: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "host": self.host, "path": self.path}

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_options(self) -> list[str]:
        """The ssh options of every connection. ssh takes the first value given for an option, so the user's
        ``ssh_options`` come before the connection sharing set here and can turn it off (``ControlMaster=no``)."""
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.timeout}"]
        if self.key:
            opts += ["-i", self.key]
        for option in self.options:
            opts += ["-o", option]
        ciphers = preferred_ciphers()
        if ciphers:
            opts += ["-o", "Ciphers=" + ",".join(ciphers)]
        control_path = self.control_path()
        if control_path:
            opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}"]
            opts += ["-o", f"ControlPersist={CONTROL_PERSIST_S}"]
        return opts

    def control_path(self) -> str:
        """The OpenSSH ControlPath shared by the listing, the transfer and syncs within CONTROL_PERSIST_S: one socket
        per (user, host, port, key, options), in a 0700 directory this user owns; "" when no such directory can be
        had (sharing is then off and each ssh call connects on its own)."""
        directory = private_control_dir()
        if not directory:
            return ""
        key = json.dumps([self.user, self.host, self.port, self.key, self.options])
        path = os.path.join(directory, hashlib.sha256(key.encode()).hexdigest()[:20])
        return path if len(path) <= CONTROL_PATH_MAX else ""

    def close_shared_connection(self) -> None:
        """End the shared connection now (``ssh -O exit``) rather than after CONTROL_PERSIST_S idle seconds."""
        control_path = self.control_path()
        if control_path and os.path.exists(control_path):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={control_path}", "-O", "exit", "-p", str(self.port), self.target],
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )

    def ssh(self, command: str) -> subprocess.CompletedProcess[bytes]:
        cmd = ["ssh", *self.ssh_options(), "-p", str(self.port), self.target, command]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=self.timeout * 4, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SyncError(
                f"remote_host {self.host!r} did not answer ssh within {self.timeout * 4}s", host=self.host
            ) from exc

    def list_files(self) -> dict[str, SourceFile]:
        """One ssh round trip: whether rsync is there, the source's manifest (JSON, so it holds no NUL byte) ended by
        a NUL, then ``size mtime name`` records, NUL-terminated."""
        path = shlex.quote(self.path)
        script = (
            f"if command -v {shlex.quote(self.rsync_path)} >/dev/null 2>&1;"
            " then echo rsync=yes; else echo rsync=no; fi;"
            f" cd {path} || exit {REMOTE_NO_PATH_RC};"
            f" echo manifest=; cat {MANIFEST_NAME} 2>/dev/null; printf '\\000';"
            f" find . -type f ! -path ./{MANIFEST_NAME} ! -path './.llmfleet/*' -printf '%s %T@ %P\\0'"
        )
        proc = self.ssh(script)
        err = proc.stderr.decode(errors="replace").strip()
        if proc.returncode == SSH_UNREACHABLE_RC:
            raise SyncError(f"remote_host {self.host!r} (port {self.port}) did not answer ssh: {err}", host=self.host)
        if proc.returncode == REMOTE_NO_PATH_RC:
            raise SyncError(f"src {self.path!r} is not a directory on remote_host {self.host!r}: {err}", host=self.host)
        if proc.returncode != 0:
            raise SyncError(
                f"listing src {self.path!r} on remote_host {self.host!r} failed (rc {proc.returncode}): {err}"
            )
        head, _, rest = proc.stdout.partition(b"manifest=\n")
        remote_rsync = b"rsync=yes" in head
        manifest_text, _, records = rest.partition(b"\0")
        self.method = self._choose_method(remote_rsync)
        try:
            manifest = json.loads(manifest_text) if manifest_text.strip() else None
        except ValueError:
            manifest = None
        usable = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
        self.remote_manifest = manifest if usable else None
        known = (self.remote_manifest or {}).get("files", {})
        files = {}
        for record in records.split(b"\0"):
            if not record:
                continue
            size, mtime, name = record.decode("utf-8", errors="surrogateescape").split(" ", 2)
            mtime_ns = int(decimal.Decimal(mtime) * 1_000_000_000)
            entry = known.get(name, {})
            trusted = entry.get("size") == int(size) and entry.get("mtime_ns") == mtime_ns
            files[name] = SourceFile(name, int(size), mtime_ns, entry.get("sha256") if trusted else None)
        return files

    def _choose_method(self, remote_rsync: bool) -> str:
        local_rsync = shutil.which("rsync") is not None
        if self.transfer == "sftp" or (self.transfer == "auto" and not (local_rsync and remote_rsync)):
            return "sftp"
        if not local_rsync or not remote_rsync:
            side = "this host" if not local_rsync else f"remote_host {self.host!r} (rsync_path {self.rsync_path!r})"
            raise SyncError(f"transfer is 'rsync' but rsync is missing on {side}; use transfer: auto or sftp")
        return "rsync"

    def fetch(self, names: list[str], staging: str, state: FetchState, workers: int | None) -> None:
        if not names:
            return
        state.current_file = names[0] if len(names) == 1 else f"{len(names)} files ({self.method})"
        cmd, stdin = (
            self._rsync_command(names, staging) if self.method == "rsync" else self._sftp_command(names, staging)
        )
        with tempfile.TemporaryFile() as list_file:
            list_file.write(stdin)
            list_file.seek(0)
            proc = subprocess.run(cmd, stdin=list_file, capture_output=True, check=False)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-2000:]
            raise SyncError(
                f"{self.method} from {self.target}:{self.path} failed (rc {proc.returncode}); partial files stay in"
                f" staging and a rerun resumes them: {err}",
                host=self.host,
            )

    def _rsync_command(self, names: list[str], staging: str) -> tuple[list[str], bytes]:
        ssh_cmd = shlex.join(["ssh", *self.ssh_options(), "-p", str(self.port)])
        cmd = [
            "rsync", "-a", "--partial", "--append-verify", "--from0", "--files-from=-",
            *([f"--bwlimit={self.bwlimit_kbps}"] if self.bwlimit_kbps > 0 else []),
            "-e", ssh_cmd, f"--rsync-path={self.rsync_path}", f"{self.target}:{self.path}/", staging + "/",
        ]  # fmt: skip
        return cmd, b"".join(name.encode("utf-8", errors="surrogateescape") + b"\0" for name in names)

    def _sftp_command(self, names: list[str], staging: str) -> tuple[list[str], bytes]:
        def quoted(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = []
        for name in names:
            os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
            lines.append(f"reget -p {quoted(self.path + '/' + name)} {quoted(os.path.join(staging, name))}")
        limit = ["-l", str(self.bwlimit_kbps * 8)] if self.bwlimit_kbps > 0 else []  # sftp -l takes Kbit/s
        cmd = ["sftp", "-b", "-", *limit, *self.ssh_options(), "-P", str(self.port), self.target]
        return cmd, ("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape")


def import_huggingface_hub() -> Any:
    """huggingface_hub, or None when it is not installed (the module then fails with missing_required_lib)."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


class HubSource:
    """A Hugging Face hub repository at a pinned revision, fetched file by file with huggingface_hub."""

    kind = "hf"

    def __init__(self, params: dict[str, Any], hub: Any) -> None:
        self.repo_id = params["repo_id"]
        self.revision = params["revision"]
        self.allow = params.get("allow_patterns") or None
        self.ignore = params.get("ignore_patterns") or None
        self.token = params.get("token")
        self.hub = hub
        self.method = "hub"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "repo_id": self.repo_id}

    def list_files(self) -> dict[str, SourceFile]:
        try:
            info = self.hub.HfApi(token=self.token).model_info(
                self.repo_id, revision=self.revision, files_metadata=True
            )
        except Exception as exc:
            raise SyncError(
                f"repo_id {self.repo_id!r} at revision {self.revision!r} could not be listed on the hub: {exc}",
                repo_id=self.repo_id,
                revision=self.revision,
            ) from exc
        siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
        files = {}
        for name in filter_names(sorted(siblings), self.allow, self.ignore):
            sibling = siblings[name]
            lfs = sibling.lfs
            sha256 = (
                (getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, dict) else None))
                if lfs
                else None
            )
            files[name] = SourceFile(name, sibling.size, None, sha256, None if lfs else sibling.blob_id)
        if not files:
            raise SyncError(
                f"no file of repo_id {self.repo_id!r} at revision {self.revision!r} matches allow_patterns"
                f" {self.allow} / ignore_patterns {self.ignore}"
            )
        return files

    def fetch(self, names: list[str], staging: str, state: FetchState, workers: int | None) -> None:
        for name in names:
            state.current_file = name
            before = os.path.getsize(os.path.join(staging, name)) if os.path.exists(os.path.join(staging, name)) else 0
            try:
                self.hub.hf_hub_download(
                    self.repo_id, name, revision=self.revision, local_dir=staging, token=self.token
                )
            except Exception as exc:
                raise SyncError(
                    f"download of {name!r} from repo_id {self.repo_id!r} at revision {self.revision!r} failed: {exc}"
                ) from exc
            state.add_bytes(os.path.getsize(os.path.join(staging, name)) - before)


def hub_cached_files(snapshot_dir: str, blobs_dir: str) -> tuple[dict[str, str], list[str]]:
    """Files of a cached hub snapshot (name -> blob path) and the names whose blob is missing."""
    present, missing = {}, []
    for directory, dirnames, filenames in os.walk(snapshot_dir):
        dirnames.sort()
        for filename in filenames:
            full = os.path.join(directory, filename)
            name = os.path.relpath(full, snapshot_dir).replace(os.sep, "/")
            real = os.path.realpath(full)
            if not os.path.isfile(real):
                missing.append(name)
            else:
                present[name] = real
    return present, sorted(missing)


def blob_digest_problem(name: str, blob: str, hash_sha256: Callable[[str], str], hash_git: Callable[[str], str]) -> str:
    """Why a hub blob's content does not match the name the hub gave it (sha256 for LFS, git sha1 otherwise)."""
    blob_name = os.path.basename(blob)
    if SHA256_HEX.fullmatch(blob_name):
        actual = hash_sha256(blob)
    elif PINNED_REVISION.fullmatch(blob_name):
        actual = hash_git(blob)
    else:
        return ""
    return "" if actual == blob_name else f"{name}: blob {blob_name} holds content with digest {actual}"
