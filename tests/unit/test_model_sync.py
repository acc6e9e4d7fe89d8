"""Pure helpers of model_sync (manifest diff, plan, free-space arithmetic, pinned revisions) and its option errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import model_sync
import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.engine import (
    Plan,
    file_is_current,
    hub_layout,
    make_plan,
    plain_layout,
    space_needed,
    validate_params,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.manifest import (
    diff_files,
    git_blob_sha1,
    hash_files,
    sha256_file,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.sources import (
    COPY_CHUNK,
    FetchState,
    SourceFile,
    _copy_and_hash,
    filter_names,
    is_pinned_revision,
    largest_first,
)
from ansible_module import run_module

SHA = "a" * 40


@pytest.mark.parametrize(
    ("revision", "pinned"),
    [
        ("12fd25f77366fa6b3b4b768ec3050bf629380bac", True),
        ("main", False),
        ("v1.0", False),  # tags are refused: a tag can be moved to another commit on the hub
        ("12fd25f", False),  # a short sha can become ambiguous
        ("12FD25F77366FA6B3B4B768EC3050BF629380BAC", False),  # the hub spells commits in lower case
        ("", False),
        (None, False),
        ("refs/pr/1", False),
    ],
)
def test_revision_is_pinned(revision: str | None, pinned: bool) -> None:
    assert is_pinned_revision(revision) is pinned


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({}, {"a": {"size": 1}}, {"added": ["a"], "changed": [], "removed": []}),
        ({"a": {"size": 1}}, {}, {"added": [], "changed": [], "removed": ["a"]}),
        (
            {"a": {"size": 1, "sha256": "x"}},
            {"a": {"size": 1, "sha256": "x"}},
            {"added": [], "changed": [], "removed": []},
        ),
        (
            {"a": {"size": 1, "sha256": "x"}},
            {"a": {"size": 1, "sha256": "y"}},
            {"added": [], "changed": ["a"], "removed": []},
        ),
        ({"a": {"size": 1}}, {"a": {"size": 2}}, {"added": [], "changed": ["a"], "removed": []}),
        ({"a": {"size": 1, "sha256": "x"}}, {"a": {"size": 1}}, {"added": [], "changed": [], "removed": []}),
    ],
)
def test_diff_files(before: dict, after: dict, expected: dict) -> None:
    assert diff_files(before, after) == expected


@pytest.mark.parametrize(
    ("names", "allow", "ignore", "kept"),
    [
        (
            ["config.json", "model.safetensors", "onnx/model.onnx"],
            None,
            None,
            ["config.json", "model.safetensors", "onnx/model.onnx"],
        ),
        (["config.json", "model.safetensors", "onnx/model.onnx"], ["*.json"], None, ["config.json"]),
        (
            ["config.json", "model.safetensors", "onnx/model.onnx"],
            None,
            ["onnx/"],
            ["config.json", "model.safetensors"],
        ),
        (["a.bin", "b.safetensors"], ["*.safetensors", "*.bin"], ["a.*"], ["b.safetensors"]),
    ],
)
def test_filter_names_follows_the_hub_rule(names: list, allow: list | None, ignore: list | None, kept: list) -> None:
    assert filter_names(names, allow, ignore) == kept


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _manifest_for(root: Path, names: dict[str, int]) -> dict:
    files = {}
    for name, src_mtime in names.items():
        info = (root / name).stat()
        files[name] = {
            "size": info.st_size,
            "sha256": sha256_file(str(root / name)),
            "mtime_ns": info.st_mtime_ns,
            "src_mtime_ns": src_mtime,
        }
    return {"version": 1, "source": {"kind": "local", "path": "/src"}, "files": files}


def test_plan_keeps_current_files_and_fetches_the_rest(tmp_path: Path) -> None:
    model = tmp_path / "model"
    _write(model / "a", b"aaaa")
    _write(model / "b", b"bbbb")
    _write(model / "gone", b"x")
    manifest = _manifest_for(model, {"a": 10, "b": 10, "gone": 10})
    source = {
        "a": SourceFile("a", 4, 10),  # same size and source mtime: kept
        "b": SourceFile("b", 4, 11),  # the source file changed: fetched
        "new": SourceFile("new", 7, 10),
    }
    plan = make_plan(source, manifest, str(model), "fast", 2, {"kind": "local", "path": "/src"})
    assert (plan.keep, plan.fetch, plan.added, plan.updated, plan.removed) == (
        ["a"],
        ["b", "new"],
        ["new"],
        ["b"],
        ["gone"],
    )
    assert (plan.bytes_to_fetch, plan.hashed_bytes, plan.rewrite_manifest) == (11, 0, False)


def test_full_plan_refetches_a_corrupted_file_that_fast_trusts(tmp_path: Path) -> None:
    model = tmp_path / "model"
    _write(model / "a", b"aaaa")
    manifest = _manifest_for(model, {"a": 10})
    info = (model / "a").stat()
    (model / "a").write_bytes(b"aaab")
    os.utime(model / "a", ns=(info.st_atime_ns, info.st_mtime_ns))  # same size and mtime: only a hash sees it
    source = {"a": SourceFile("a", 4, 10)}
    desc = {"kind": "local", "path": "/src"}
    assert make_plan(source, manifest, str(model), "fast", 1, desc).fetch == []
    full = make_plan(source, manifest, str(model), "full", 1, desc)
    assert full.fetch == ["a"] and full.corrupted[0]["file"] == "a" and full.hashed_bytes == 4


@pytest.mark.parametrize(
    ("src", "entry", "current"),
    [
        (SourceFile("a", 4, 10), {"size": 4, "src_mtime_ns": 10, "mtime_ns": 5}, True),
        (SourceFile("a", 4, 11), {"size": 4, "src_mtime_ns": 10, "mtime_ns": 5}, False),
        (SourceFile("a", 5, 10), {"size": 4, "src_mtime_ns": 10, "mtime_ns": 5}, False),
        (SourceFile("a", 4, None, "s1"), {"size": 4, "sha256": "s1", "mtime_ns": 5}, True),
        (SourceFile("a", 4, None, "s2"), {"size": 4, "sha256": "s1", "mtime_ns": 5}, False),
        (SourceFile("a", 4, 10), None, False),
    ],
)
def test_file_is_current(src: SourceFile, entry: dict | None, current: bool) -> None:
    stat = SimpleNamespace(st_size=4, st_mtime_ns=5)  # what the destination file's os.stat says now
    assert file_is_current(src, entry, stat) is current


@pytest.mark.parametrize(
    ("fetch", "sizes", "staged", "reserve", "needed"),
    [
        (["a", "b"], {"a": 100, "b": 50}, {}, 0, 150),
        (["a", "b"], {"a": 100, "b": 50}, {"a": 40}, 10, 120),  # a resumable part counts what it already holds
        (["a"], {"a": 100}, {"a": 500}, 0, 0),  # an oversized part is dropped, it never counts negative
        ([], {"a": 100}, {}, 7, 7),
    ],
)
def test_space_needed(fetch: list, sizes: dict, staged: dict, reserve: int, needed: int) -> None:
    files = {name: SourceFile(name, size) for name, size in sizes.items()}
    assert space_needed(Plan(fetch=fetch), files, staged, reserve) == needed


def test_layouts() -> None:
    plain = plain_layout("/srv/models/qwen/")
    assert (plain.model_dir, plain.work_dir) == ("/srv/models/qwen", "/srv/models/.qwen.llmfleet")
    assert plain.manifest_path == "/srv/models/qwen/.llmfleet-manifest.json"
    hub = hub_layout("/srv/hf/hub", "org/name", SHA)
    assert hub.model_dir == f"/srv/hf/hub/models--org--name/snapshots/{SHA}"
    assert hub.manifest_path == f"/srv/hf/hub/models--org--name/.llmfleet/{SHA}.manifest.json"


@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "readwrite"])
def test_each_copy_method_copies_and_the_readback_hash_is_the_content_s(tmp_path: Path, method: str) -> None:
    data = os.urandom(COPY_CHUNK * 2 + 12345)  # over one piece: the copy runs in its own thread, hashed behind
    src, dst = _write(tmp_path / "src", data), tmp_path / "dst"
    os.utime(src, ns=(1_000_000_000, 1_700_000_000_123_456_789))
    state = FetchState()
    digest = _copy_and_hash(str(src), str(dst), state, first=method)  # the fallback chain starts at ``method``
    assert dst.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert state.bytes_transferred == len(data) and dst.stat().st_mtime_ns == 1_700_000_000_123_456_789


def test_a_copy_across_filesystems_falls_back_from_copy_file_range(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's temporary directory")
    data = os.urandom(3 * 1024 * 1024 + 7)
    src = Path("/dev/shm") / f"llmfleet-test-{os.getpid()}"
    try:
        _write(src, data)
        assert _copy_and_hash(str(src), str(tmp_path / "dst"), FetchState()) == hashlib.sha256(data).hexdigest()
    finally:
        src.unlink()
    assert (tmp_path / "dst").read_bytes() == data


def test_copy_of_empty_and_small_files(tmp_path: Path) -> None:
    for name, data in (("empty", b""), ("small", b"x" * 5000)):
        digest = _copy_and_hash(str(_write(tmp_path / name, data)), str(tmp_path / f"{name}.copy"), FetchState())
        assert digest == hashlib.sha256(data).hexdigest() and (tmp_path / f"{name}.copy").read_bytes() == data


def test_largest_first() -> None:
    sizes = {"a": 1, "b": 30, "c": 30, "d": 5}
    assert largest_first(list(sizes), sizes.__getitem__) == ["b", "c", "d", "a"]


def test_parallel_hashes_match_hashlib(tmp_path: Path) -> None:
    blobs = {f"f{i}": os.urandom(1024 * 1024 * (i + 1) + i) for i in range(4)}
    paths = {name: str(_write(tmp_path / name, data)) for name, data in blobs.items()}
    assert hash_files(paths, workers=2) == {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    # git's object id of a blob, as `git hash-object` prints it ("hello\n")
    assert git_blob_sha1(str(_write(tmp_path / "h", b"hello\n"))) == "ce013625030ba8dba906f756967f9e9ca394464a"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"source": "hf", "repo_id": "org/name", "revision": "main"}, "revision 'main'"),
        ({"source": "hf", "repo_id": "org/name", "revision": "v1.0"}, "revision 'v1.0'"),
        ({"source": "hf", "repo_id": "justname", "revision": SHA}, "repo_id 'justname'"),
        ({"source": "url", "url": "ftp://h/x", "sha256": "0" * 64}, "url 'ftp://h/x'"),
        ({"source": "url", "url": "http://h/x", "sha256": "abc"}, "sha256 'abc'"),
        ({"source": "url", "url": "http://h/x", "sha256": "0" * 64, "filename": "a/b"}, "filename 'a/b'"),
        ({"source": "ssh", "src": "/m", "remote_port": 70000}, "remote_port 70000"),
        ({"source": "local", "src": "/m", "workers": -1}, "workers -1"),
        ({"source": "local", "src": "/m", "free_space_reserve_mb": -5}, "free_space_reserve_mb -5"),
    ],
)
def test_validate_params_names_the_option_and_value(params: dict, named: str) -> None:
    assert named in validate_params(params)


def test_validate_params_accepts_good_input() -> None:
    assert validate_params({"source": "hf", "repo_id": "org/name", "revision": SHA}) == ""
    assert validate_params({"source": "url", "url": "https://h/x.bin", "sha256": "A" * 64}) == ""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"source": "nfs", "dest": "/tmp/x"}, "nfs"),
        ({"source": "hf", "dest": "/tmp/x", "repo_id": "org/name"}, "revision"),
        ({"source": "url", "dest": "/tmp/x", "url": "http://h/x"}, "sha256"),
        ({"source": "ssh", "dest": "/tmp/x", "src": "/m"}, "remote_host"),
        ({"source": "local", "dest": "/tmp/x", "src": "/m", "url": "http://h/x"}, "url"),
        ({"source": "hf", "dest": "/tmp/x", "repo_id": "org/name", "revision": "main"}, "revision 'main'"),
    ],
)
def test_module_refuses_bad_options(args: dict, named: str, tmp_path: Path) -> None:
    result = run_module(model_sync.main, args)
    assert result["failed"] and named in result["msg"], result


def test_module_refuses_an_unreachable_ssh_host_before_any_byte_moves(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    args = {
        "source": "ssh",
        "remote_host": "127.0.0.1",
        "remote_port": 1,  # nothing listens on port 1
        "src": "/m",
        "dest": str(dest),
        "timeout": 5,
        "ssh_options": ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"],
    }
    result = run_module(model_sync.main, args)
    assert result["failed"] and "remote_host '127.0.0.1' (port 1) did not answer" in result["msg"], result
    assert not dest.exists() and not (tmp_path / ".dest.llmfleet").exists()


def test_module_refuses_a_destination_without_room(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src / "config.json", b"{}")
    args = {"source": "local", "src": str(src), "dest": str(tmp_path / "dest"), "free_space_reserve_mb": 1 << 40}
    result = run_module(model_sync.main, args)
    assert result["failed"] and f"dest '{tmp_path / 'dest'}'" in result["msg"] and "bytes free" in result["msg"]
    assert result["bytes_needed"] > result["bytes_free"]
    assert not (tmp_path / "dest").exists()
