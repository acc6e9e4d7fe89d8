"""model_sync against real sources on this machine: an HTTP server with Range support in a thread, local
directories, a Hugging Face cache in the hub's own on-disk layout, and sshd on 127.0.0.1 (rsync and SFTP).

Nothing here is mocked: the module reads and writes real files, talks HTTP to a real socket and runs the real
rsync / sftp / ssh commands. Not marked ``lab``: it needs no container, and runs in seconds.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import model_sync
import model_sync_info
import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.sources import SshSource
from ansible_module import run_module, run_through_ansible

MiB = 1024 * 1024


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes) with HEAD, GET and ``Range: bytes=N-``; counts body bytes sent and,
    when ``server.cut_after`` is set, closes the connection after that many body bytes (a transfer killed half-way).
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _body(self) -> tuple[bytes, int] | None:
        data = self.server.files.get(self.path.lstrip("/"))  # type: ignore[attr-defined]
        if data is None:
            self.send_error(404)
            return None
        start = 0
        header = self.headers.get("Range")
        if header and header.startswith("bytes="):
            start = int(header[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return data, start

    def do_HEAD(self) -> None:
        self._body()

    def do_GET(self) -> None:
        body = self._body()
        if body is None:
            return
        data, start = body
        server = self.server
        self.server.ranges.append(start)  # type: ignore[attr-defined]
        end = len(data)
        cut = server.cut_after  # type: ignore[attr-defined]
        if cut is not None:
            end = min(end, start + cut)
        for offset in range(start, end, 256 * 1024):
            chunk = data[offset : min(offset + 256 * 1024, end)]
            self.wfile.write(chunk)
            server.bytes_sent += len(chunk)  # type: ignore[attr-defined]
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def http_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.files, server.bytes_sent, server.cut_after, server.ranges = {}, 0, None, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: http.server.ThreadingHTTPServer, name: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def test_url_with_the_right_sha256_syncs_and_is_then_unchanged(http_server, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    http_server.files["adapter_model.safetensors"] = data
    args = {
        "source": "url",
        "url": _url(http_server, "adapter_model.safetensors"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "dest": str(tmp_path / "adapter"),
    }
    first = run_module(model_sync.main, args)
    assert not first["failed"] and first["changed"], first
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == data
    assert first["bytes_transferred"] == len(data) == http_server.bytes_sent
    manifest = json.loads((tmp_path / "adapter" / ".llmfleet-manifest.json").read_text())
    assert manifest["files"]["adapter_model.safetensors"]["sha256"] == args["sha256"]
    assert manifest["source"] == {"kind": "url", "url": args["url"], "sha256": args["sha256"]}

    second = run_module(model_sync.main, args)
    assert (second["changed"], second["bytes_transferred"], second["hashed_bytes"]) == (False, 0, 0), second
    assert http_server.bytes_sent == len(data)  # only a HEAD went out


def test_url_with_a_wrong_sha256_is_refused_and_nothing_is_left_in_place(http_server, tmp_path: Path) -> None:
    http_server.files["model.bin"] = os.urandom(MiB)
    wrong = "0" * 64
    args = {"source": "url", "url": _url(http_server, "model.bin"), "sha256": wrong, "dest": str(tmp_path / "m")}
    result = run_module(model_sync.main, args)
    assert result["failed"] and "model.bin (sha256 " in result["msg"] and f"expected {wrong}" in result["msg"]
    assert not (tmp_path / "m").exists()
    assert not (tmp_path / ".m.llmfleet" / "staging" / "model.bin").exists()


def test_an_interrupted_download_resumes_and_sends_only_the_rest(http_server, tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    http_server.files["shard.safetensors"] = data
    http_server.cut_after = 1_500_000
    args = {
        "source": "url",
        "url": _url(http_server, "shard.safetensors"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "dest": str(tmp_path / "m"),
        "timeout": 5,
    }
    cut = run_module(model_sync.main, args)
    assert cut["failed"] and "stopped at 1500000 of 4194304 bytes" in cut["msg"], cut
    assert not (tmp_path / "m").exists()
    progress = json.loads((tmp_path / ".m.llmfleet" / "progress.json").read_text())
    assert (progress["status"], progress["bytes_done"], progress["bytes_total"]) == ("failed", 1_500_000, len(data))

    http_server.cut_after, http_server.bytes_sent = None, 0
    resumed = run_module(model_sync.main, args)
    assert not resumed["failed"] and resumed["changed"], resumed
    assert http_server.bytes_sent == len(data) - 1_500_000 == resumed["bytes_transferred"]
    assert http_server.ranges[-1] == 1_500_000
    assert (tmp_path / "m" / "shard.safetensors").read_bytes() == data


def _make_model(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}).encode(),
        "model-00001-of-00002.safetensors": os.urandom(3 * MiB),
        "model-00002-of-00002.safetensors": os.urandom(2 * MiB + 5),
        "tokenizer/tokenizer.json": os.urandom(300 * 1024),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_local_source_sync_idempotence_corruption_check_mode_and_diff(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = _make_model(src)
    args = {"source": "local", "src": str(src), "dest": str(dest), "workers": 2}
    first = run_module(model_sync.main, args)
    assert first["changed"] and sorted(first["added"]) == sorted(files) and first["transfer"] == "copy", first
    assert {name: (dest / name).read_bytes() for name in files} == files
    assert first["bytes_transferred"] == sum(map(len, files.values()))

    again = run_module(model_sync.main, args)
    assert (again["changed"], again["bytes_transferred"], again["hashed_bytes"]) == (False, 0, 0), again

    # flip one byte in the destination, keeping size and mtime: fast trusts it, full finds it and fetches it again
    victim = dest / "model-00002-of-00002.safetensors"
    info = victim.stat()
    with open(victim, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert not run_module(model_sync.main, args)["changed"]
    full = run_module(model_sync.main, {**args, "verify": "full"})
    assert full["changed"] and [c["file"] for c in full["corrupted"]] == ["model-00002-of-00002.safetensors"], full
    assert full["files_to_transfer"] == ["model-00002-of-00002.safetensors"]
    assert full["bytes_transferred"] == len(files["model-00002-of-00002.safetensors"])
    assert victim.read_bytes() == files["model-00002-of-00002.safetensors"]

    # the source changes: one file added, one changed, one removed; check mode reports and changes nothing
    (src / "generation_config.json").write_text('{"max_new_tokens": 64}')
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 128}')
    (src / "tokenizer" / "tokenizer.json").unlink()
    before = {path: path.stat().st_mtime_ns for path in dest.rglob("*")}
    check = run_module(model_sync.main, {**args, "_ansible_diff": True}, check_mode=True)
    assert check["changed"] and "would transfer 2 files" in check["msg"], check
    assert (check["added"], check["updated"], check["removed"]) == (
        ["generation_config.json"],
        ["config.json"],
        ["tokenizer/tokenizer.json"],
    )
    assert (
        check["bytes_to_transfer"]
        == (src / "generation_config.json").stat().st_size + (src / "config.json").stat().st_size
    )
    assert check["bytes_transferred"] == 0
    assert "tokenizer/tokenizer.json" in check["diff"]["before"] and "tokenizer" not in check["diff"]["after"]
    assert "generation_config.json" in check["diff"]["after"]
    assert {path: path.stat().st_mtime_ns for path in dest.rglob("*")} == before
    assert not (tmp_path / ".dest.llmfleet" / "staging").exists()

    done = run_module(model_sync.main, args)
    assert done["changed"] and done["removed"] == ["tokenizer/tokenizer.json"], done
    assert not (dest / "tokenizer" / "tokenizer.json").exists()
    assert (dest / "config.json").read_text() == (src / "config.json").read_text()

    info_result = run_module(model_sync_info.main, {"dest": str(dest), "verify": "full"})
    assert info_result["verified"] and info_result["manifest"]["source"] == {"kind": "local", "path": str(src)}
    assert info_result["progress"]["status"] == "done"


def _hub_cache(cache: Path, repo_id: str, revision: str, files: dict[str, bytes], lfs: set[str]) -> Path:
    """A cache exactly as huggingface_hub lays it out: blobs named by sha256 (LFS) or git blob id, snapshot
    symlinks to ``../../blobs/<id>``, and ``refs/main`` holding the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name, data in files.items():
        if name in lfs:
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = repo / "snapshots" / revision / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    return repo


def test_offline_hub_cache_is_verified_and_an_incomplete_one_is_refused(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("huggingface_hub")  # to prove the layout is the hub's own, its scanner reads it
    from huggingface_hub import scan_cache_dir

    revision = "12fd25f77366fa6b3b4b768ec3050bf629380bac"
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(2 * MiB)}
    repo = _hub_cache(tmp_path / "hub", "org/tiny", revision, files, lfs={"model.safetensors"})
    scanned = scan_cache_dir(tmp_path / "hub")
    assert [r.repo_id for r in scanned.repos] == ["org/tiny"] and not scanned.warnings
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = {
        "source": "hf",
        "repo_id": "org/tiny",
        "revision": revision,
        "dest": str(tmp_path / "hub"),
        "verify": "full",
    }

    ok = run_module(model_sync.main, args)
    assert not ok["failed"] and not ok["changed"] and ok["files"] == 2, ok
    assert ok["hashed_bytes"] == sum(map(len, files.values())) and ok["bytes_transferred"] == 0

    wanted = run_module(model_sync.main, {**args, "allow_patterns": ["*.safetensors", "tokenizer.json"]})
    assert wanted["failed"] and "tokenizer.json" in wanted["msg"] and revision in wanted["msg"], wanted

    blob = os.path.realpath(repo / "snapshots" / revision / "model.safetensors")
    os.unlink(blob)
    missing = run_module(model_sync.main, args)
    assert missing["failed"] and "missing: model.safetensors" in missing["msg"] and revision in missing["msg"], missing

    other = run_module(model_sync.main, {**args, "revision": "b" * 40})
    assert other["failed"] and f"revision '{'b' * 40}'" in other["msg"] and "not in the cache" in other["msg"]


def test_offline_hub_cache_with_a_corrupted_blob_is_named(tmp_path: Path, monkeypatch) -> None:
    revision = "c" * 40
    files = {"config.json": b"{}", "model.safetensors": os.urandom(MiB)}
    repo = _hub_cache(tmp_path / "hub", "org/tiny", revision, files, lfs={"model.safetensors"})
    Path(os.path.realpath(repo / "snapshots" / revision / "config.json")).write_bytes(b"[]")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = {
        "source": "hf",
        "repo_id": "org/tiny",
        "revision": revision,
        "dest": str(tmp_path / "hub"),
        "verify": "full",
    }
    result = run_module(model_sync.main, args)
    assert result["failed"] and result["corrupted"][0]["file"] == "config.json", result


SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[dict]:
    """sshd on 127.0.0.1 with a throwaway host key and user key, in a temporary directory."""
    if SSHD is None:
        pytest.fail("sshd is not installed: install Debian's openssh-server (scripts/bootstrap.sh should)")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sftp_server = next(p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server") if os.path.exists(p))
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp {sftp_server}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory (its init script makes it)
    log = root / "sshd.log"  # -E: sshd's log goes to this file, where a test counts the connections it accepted
    proc = subprocess.Popen([SSHD, "-D", "-E", str(log), "-f", str(root / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not listen: {log.read_text() if log.exists() else ''}")
    args = {
        "remote_host": "127.0.0.1",
        "remote_port": port,
        "ssh_key": str(root / "user_key"),
        "ssh_options": ["StrictHostKeyChecking=no", f"UserKnownHostsFile={root / 'known_hosts'}"],
    }
    yield {**args, "_log": log}
    SshSource({**args, "src": "/"}).close_shared_connection()  # the syncs' shared connection would idle for 60 s
    proc.terminate()
    proc.wait(timeout=10)


def _ssh_args(sshd: dict) -> dict:
    return {key: value for key, value in sshd.items() if not key.startswith("_")}


def _accepted(sshd: dict) -> int:
    """How many ssh connections the test sshd has accepted so far (its log says "Accepted publickey" for each)."""
    return sshd["_log"].read_text().count("Accepted publickey")


@pytest.mark.parametrize(("rsync_path", "method"), [("rsync", "rsync"), ("/nonexistent/rsync", "sftp")])
def test_ssh_source_with_rsync_and_the_sftp_fallback(sshd: dict, tmp_path: Path, rsync_path: str, method: str) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = _make_model(src)
    args = {"source": "ssh", "src": str(src), "dest": str(dest), "rsync_path": rsync_path, **_ssh_args(sshd)}
    first = run_module(model_sync.main, args)
    assert not first["failed"] and first["changed"] and first["transfer"] == method, first
    assert {name: (dest / name).read_bytes() for name in files} == files
    again = run_module(model_sync.main, args)
    assert (again["changed"], again["bytes_transferred"], again["hashed_bytes"]) == (False, 0, 0), again

    # a sync whose destination is the source of the next: its manifest is read over ssh and checked against
    copy = run_module(model_sync.main, {**args, "src": str(dest), "dest": str(tmp_path / "copy")})
    assert copy["changed"] and not copy["failed"], copy
    manifest = json.loads((tmp_path / "copy" / ".llmfleet-manifest.json").read_text())
    assert manifest["files"]["config.json"]["sha256"] == hashlib.sha256(files["config.json"]).hexdigest()


def test_ssh_sync_uses_one_connection_and_a_no_op_one_round_trip(sshd: dict, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = _make_model(src)
    own = _ssh_args(sshd)  # an option of its own: a control socket no other test's sync shares
    own["ssh_options"] = [*own["ssh_options"], "ServerAliveInterval=17"]
    args = {"source": "ssh", "src": str(src), "dest": str(dest), **own}
    source = SshSource(own | {"src": str(src)})
    assert source.control_path() and oct(os.stat(os.path.dirname(source.control_path())).st_mode & 0o777) == "0o700"
    try:
        before = _accepted(sshd)
        first = run_module(model_sync.main, args)
        assert first["changed"] and first["transfer"] == "rsync", first
        assert {name: (dest / name).read_bytes() for name in files} == files
        assert _accepted(sshd) - before == 1, "the listing and the rsync transfer share one ssh connection"

        again = run_module(model_sync.main, args)  # the shared connection is still open: no new one
        assert (again["changed"], again["hashed_bytes"]) == (False, 0) and _accepted(sshd) - before == 1, again

        source.close_shared_connection()
        assert not os.path.exists(source.control_path())
        cold = run_module(model_sync.main, {**args, "src": str(dest), "dest": str(tmp_path / "copy")})
        assert cold["changed"] and _accepted(sshd) - before == 2, cold  # listing + source manifest: one connection
        source.close_shared_connection()
        noop = run_module(model_sync.main, {**args, "src": str(dest), "dest": str(tmp_path / "copy")})
        assert not noop["changed"] and _accepted(sshd) - before == 3, noop  # a fresh no-op: one round trip
    finally:
        source.close_shared_connection()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [([], "aes128-gcm@openssh.com"), (["Ciphers=chacha20-poly1305@openssh.com"], "chacha20-poly1305@openssh.com")],
)
def test_ssh_prefers_aes_gcm_unless_ciphers_are_given(sshd: dict, extra: list[str], expected: str) -> None:
    """The cipher the real sshd negotiates (ssh -v says it) with model_sync's options: AES-GCM first by default, a
    Ciphers option of the user's taking its place."""
    own = _ssh_args(sshd)
    source = SshSource({**own, "ssh_options": [*own["ssh_options"], *extra], "src": "/"})
    cmd = ["ssh", "-o", "ControlPath=none", "-v", *source.ssh_options(), "-p", str(own["remote_port"])]  # first wins
    proc = subprocess.run([*cmd, "127.0.0.1", "true"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"cipher: {expected}" in proc.stderr, [line for line in proc.stderr.splitlines() if "cipher" in line]


def test_ssh_missing_source_path_is_named(sshd: dict, tmp_path: Path) -> None:
    args = {"source": "ssh", "src": str(tmp_path / "nope"), "dest": str(tmp_path / "dest"), **_ssh_args(sshd)}
    result = run_module(model_sync.main, args)
    assert result["failed"] and f"src '{tmp_path / 'nope'}' is not a directory on remote_host" in result["msg"]


def test_through_ansible_with_progress_read_by_the_info_module(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = _make_model(src)
    _, result = run_through_ansible("model_sync", {"source": "local", "src": str(src), "dest": str(dest)}, tmp_path)
    assert result["changed"] and result["files"] == len(files), result
    _, info = run_through_ansible("model_sync_info", {"dest": str(dest), "verify": "fast"}, tmp_path)
    assert info["verified"] and info["progress"]["bytes_done"] == info["progress"]["bytes_total"] == sum(
        map(len, files.values())
    )
    _, again = run_through_ansible("model_sync", {"source": "local", "src": str(src), "dest": str(dest)}, tmp_path)
    assert not again["changed"] and again["bytes_transferred"] == 0
