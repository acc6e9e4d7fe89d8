"""model_sync against rsync and sha256sum on generated model-like data (a few big shards, many small files).

1. Cold copy: model_sync (ssh source: rsync over ssh into staging, then parallel sha256, swap, manifest; or
   the local source: threaded copy+hash) against plain `rsync -a` over the same path. Ratio = rsync time /
   model_sync time (goal >= 0.9).
2. No-op re-sync: model_sync with `verify: fast` on an up-to-date destination against `rsync -a --checksum`
   (goal: model_sync >= 100x faster).
3. Full verification: model_sync_info `verify: full` with 1 and 2 hashing threads against `sha256sum` of every
   file on one core and two (`xargs -P2`). Goal: one thread within 10 % of sha256sum's per-core throughput, and
   two threads faster than one.

Usage, from a fresh clone (after `make venv`):

    .venv/bin/python bench/bench_model_sync.py --size-gb 5                       # local source
    .venv/bin/python bench/bench_model_sync.py --size-gb 5 --ssh-target 127.0.0.1 --ssh-port 2222 \\
        --ssh-key ~/.ssh/id_ed25519                                              # ssh source
    .venv/bin/python bench/bench_model_sync.py --size-gb 5 --start-sshd          # throwaway sshd on 127.0.0.1

For two lab hosts, run it on one lab host with --ssh-target the other and --remote-dir a directory there that
holds the same generated data (`--generate-only --data DIR` run on that host makes it).

Not a timed test. The page cache is not dropped (that needs a machine to itself): file data is warm after the
first read, so the numbers compare the tools' own costs, with disk reads mostly out of the picture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.llmfleet.fleet.plugins.module_utils.llmfleet_sync import (  # noqa: E402
    read_info,
    run_sync,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.llmfleet_sync_sources import (  # noqa: E402
    LocalSource,
    SshSource,
)

MiB = 1024 * 1024


def generate(root: Path, size_gb: float) -> int:
    """A model-like tree: 4 shards holding ~95 % of the bytes, 200 small files (configs, tokenizer pieces)."""
    total = int(size_gb * 1024 * MiB)
    root.mkdir(parents=True, exist_ok=True)
    small = 200
    small_size = max(1024, total // 20 // small)
    shard = (total - small * small_size) // 4
    block = os.urandom(8 * MiB)
    written = 0
    for index in range(4):
        with open(root / f"model-{index + 1:05d}-of-00004.safetensors", "wb") as handle:
            left = shard
            while left > 0:
                piece = block[: min(left, len(block))]
                handle.write(piece)
                handle.write(index.to_bytes(8, "little"))  # shards differ from one another
                left -= len(piece) + 8
                written += len(piece) + 8
    for index in range(small):
        sub = root / ("tokenizer" if index % 2 else "extra")
        sub.mkdir(exist_ok=True)
        (sub / f"part-{index:03d}.json").write_bytes(os.urandom(small_size))
        written += small_size
    return written


def timed(func: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def start_sshd(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    for name in ("host_key", "user_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)])
    shutil.copy(work / "user_key.pub", work / "authorized_keys")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'host_key'}\nPidFile {work / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(work / "sshd_config")])
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    return proc, {"host": "127.0.0.1", "port": port, "key": str(work / "user_key")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=5.0)
    parser.add_argument("--work", type=Path, help="directory for the data (default a temporary one)")
    parser.add_argument("--data", type=Path, help="use (or, with --generate-only, make) the data here")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--ssh-target", help="copy over ssh from this host (user@host)")
    parser.add_argument("--ssh-port", type=int, default=22)
    parser.add_argument("--ssh-key")
    parser.add_argument("--remote-dir", help="the data's directory on --ssh-target (default: the local data path)")
    parser.add_argument("--start-sshd", action="store_true", help="throwaway sshd on 127.0.0.1 as the ssh source")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-model-sync-"))
    data = args.data or work / "src"
    if not data.exists():
        seconds, size = timed(lambda: generate(data, args.size_gb))
        print(f"generated {size / MiB:.0f} MiB in {data} ({seconds:.1f}s)")
    if args.generate_only:
        return
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    sshd = None
    ssh: dict[str, Any] | None = None
    if args.start_sshd:
        sshd, ssh = start_sshd(work)
    elif args.ssh_target:
        ssh = {"host": args.ssh_target, "port": args.ssh_port, "key": args.ssh_key}
    try:
        ssh_opts = ["StrictHostKeyChecking=no", f"UserKnownHostsFile={work / 'known_hosts'}"]
        params: dict[str, Any] = {
            "dest": str(work / "dest"),
            "verify": "fast",
            "workers": 0,
            "free_space_reserve_mb": 0,
        }
        remote_dir = args.remote_dir or str(data)
        if ssh:
            user, _, host = ssh["host"].rpartition("@")
            source_params = {
                "remote_host": host, "remote_user": user or None, "remote_port": ssh["port"], "src": remote_dir,
                "ssh_key": ssh["key"], "ssh_options": ssh_opts, "transfer": "rsync", "timeout": 30,
            }  # fmt: skip

            def make_source() -> Any:
                return SshSource(source_params)

            ssh_e = " ".join(
                ["ssh", "-p", str(ssh["port"])]
                + (["-i", ssh["key"]] if ssh["key"] else [])
                + [f"-o {o}" for o in ssh_opts]
            )
            rsync_src = [f"{ssh['host']}:{remote_dir}/"]
            rsync_base = ["rsync", "-a", "-e", ssh_e]
        else:

            def make_source() -> Any:
                return LocalSource(str(data))

            rsync_src = [f"{data}/"]
            rsync_base = ["rsync", "-a"]

        print(f"data: {size / MiB:.0f} MiB, {sum(1 for p in data.rglob('*') if p.is_file())} files, "
              f"{'ssh ' + ssh['host'] if ssh else 'local path'}, {os.cpu_count()} cores")  # fmt: skip
        shutil.rmtree(work / "rsync-dest", ignore_errors=True)
        t_rsync, _ = timed(lambda: run([*rsync_base, *rsync_src, str(work / "rsync-dest") + "/"]))
        shutil.rmtree(work / "dest", ignore_errors=True)
        t_sync, result = timed(lambda: run_sync(params, make_source(), False, False))
        assert result["changed"] and result["files"] > 0
        print(
            f"cold copy:   rsync -a {t_rsync:.2f}s   model_sync {t_sync:.2f}s"
            f"   ratio {t_rsync / t_sync:.2f} (goal >= 0.9)"
        )

        t_check, _ = timed(lambda: run([*rsync_base, "--checksum", *rsync_src, str(work / "rsync-dest") + "/"]))
        t_noop, again = timed(lambda: run_sync(params, make_source(), False, False))
        assert not again["changed"] and again["hashed_bytes"] == 0
        print(f"no-op:       rsync -a --checksum {t_check:.3f}s   model_sync {t_noop:.3f}s   "
              f"{t_check / t_noop:.0f}x faster (goal >= 100x)")  # fmt: skip

        files = [str(p) for p in (work / "dest").rglob("*") if p.is_file() and p.name != ".llmfleet-manifest.json"]
        listing = work / "files.txt"
        listing.write_text("\0".join(files))
        t_sum1, _ = timed(lambda: run(["xargs", "-0", "-a", str(listing), "sha256sum"]))
        t_sum2, _ = timed(lambda: run(["xargs", "-0", "-P2", "-n", "8", "-a", str(listing), "sha256sum"]))
        t_v1, v1 = timed(lambda: read_info({"dest": params["dest"], "verify": "full", "workers": 1}))
        t_v2, v2 = timed(lambda: read_info({"dest": params["dest"], "verify": "full", "workers": 2}))
        assert v1["verified"] and v2["verified"]

        def rate(seconds: float) -> float:
            return size / MiB / seconds

        print(f"full verify: sha256sum 1 core {rate(t_sum1):.0f} MiB/s, 2 cores {rate(t_sum2):.0f} MiB/s; "
              f"model_sync 1 thread {rate(t_v1):.0f} MiB/s ({t_sum1 / t_v1:.2f} of sha256sum), "
              f"2 threads {rate(t_v2):.0f} MiB/s ({t_v1 / t_v2:.2f}x one thread)")  # fmt: skip
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
