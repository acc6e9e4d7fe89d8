"""model_sync against rsync and sha256sum on generated model-like data (a few big shards, many small files).

1. Cold copy: model_sync (ssh source: one listing round trip, rsync over the same shared ssh connection into
   staging, then parallel sha256, swap, manifest; local source: os.copy_file_range in 16 MiB pieces with the
   destination hashed from the page cache behind the copy) against plain `rsync -a` over the same path.
   Ratio = rsync time / model_sync time (goal >= 0.9).
2. No-op re-sync: model_sync with `verify: fast` on an up-to-date destination against `rsync -a --checksum`
   (goal: model_sync >= 100x faster). Over ssh twice: while model_sync's shared connection (ControlPersist 60 s)
   is still open, and with a new connection (one round trip: listing and the source's manifest together).
3. Full verification: model_sync_info `verify: full` with 1 and 2 hashing threads against `sha256sum` of every
   file on one core and two (`xargs -P2`). Goal: one thread within 10 % of sha256sum's per-core throughput, and
   two threads faster than one (by 10 % at least, above the noise); the CPU the two threads got (cores' worth)
   says whether a second core was free.

Each line ends in PASS or MISS against its goal. `--repeat N` times each step N times and keeps the best.
Everything made under the work directory (data, copies, keys, sshd) is removed at the end; `--data DIR` is kept.
Disk: about 3x --size-gb free in the work directory (checked before anything is written).

Usage, from a fresh clone (after `make venv`):

    .venv/bin/python bench/bench_model_sync.py --size-gb 5                       # local source
    .venv/bin/python bench/bench_model_sync.py --size-gb 5 --ssh-target 127.0.0.1 --ssh-port 2222 \\
        --ssh-key ~/.ssh/id_ed25519                                              # ssh source
    .venv/bin/python bench/bench_model_sync.py --size-gb 5 --start-sshd   # throwaway sshd on 127.0.0.1, plain shell

For two lab hosts, run it on one lab host with --ssh-target the other and --remote-dir a directory there that
holds the same generated data (`--generate-only --data DIR` run on that host makes it).

Not a timed test. The page cache is not dropped (that needs a machine to itself): file data is warm after the
first read, so the numbers compare the tools' own costs, with disk reads mostly out of the picture. Dirty pages
are flushed (os.sync) before each timed step, untimed, so one tool's writeback does not slow the next.
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

from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.engine import (  # noqa: E402
    read_info,
    run_sync,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.sources import (  # noqa: E402
    LocalSource,
    SshSource,
    preferred_ciphers,
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


def start_sshd(work: Path, keep_bashrc: bool = False) -> tuple[subprocess.Popen[bytes], dict[str, Any], str]:
    """A throwaway sshd on 127.0.0.1 for the current user. Unless ``keep_bashrc``, it runs in a private mount
    namespace where the user's ~/.bashrc reads as empty (bind-mounted over; the file itself is untouched): a
    source host's account normally has a plain shell, while a developer's ~/.bashrc (pyenv, conda) can cost a
    tenth of a second for every command run over ssh, by model_sync and rsync alike. Returns the process, the
    connection and a line saying which shell it gets."""
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
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    argv = [sshd, "-D", "-E", str(work / "sshd.log"), "-f", str(work / "sshd_config")]
    bashrc = Path.home() / ".bashrc"
    shell = "the user's ~/.bashrc as it is"
    hide = not keep_bashrc and bashrc.is_file() and bashrc.stat().st_size > 0
    if hide and shutil.which("unshare"):
        (work / "empty_bashrc").write_text("")
        script = 'mount --bind "$0" "$1" && shift && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(work / "empty_bashrc"),
                str(bashrc), *argv]  # fmt: skip
        shell = f"a plain shell ({bashrc} hidden in the sshd's mount namespace; --keep-bashrc keeps it)"
    elif hide:
        shell = f"{bashrc} as it is (no unshare to hide it)"
    proc = subprocess.Popen(argv)
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    if proc.poll() is not None:
        sys.exit(f"the throwaway sshd exited ({proc.returncode}); see {work / 'sshd.log'}")
    return proc, {"host": "127.0.0.1", "port": port, "key": str(work / "user_key")}, shell


DROP_CACHES = "/proc/sys/vm/drop_caches"


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes, so that the next step reads from disk
    as a no-op re-sync of a model larger than the memory left for the cache would."""
    os.sync()
    with open(DROP_CACHES, "w") as handle:
        handle.write("3\n")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def free_gib(path: Path) -> float:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1024**3


def best(repeat: int, func: Any, before: Any = None) -> tuple[float, Any]:
    """The shortest of ``repeat`` timed calls (``before`` runs untimed ahead of each); writeback of earlier writes is
    flushed first (os.sync) so that one tool's dirty pages do not slow the next one down."""
    times, value = [], None
    for _ in range(repeat):
        if before is not None:
            before()
        os.sync()
        seconds, value = timed(func)
        times.append(seconds)
    return min(times), value


def cpu_timed(func: Any) -> tuple[float, float, Any]:
    """Wall seconds, process CPU seconds (all threads, user + system) and the value of ``func()``."""
    cpu = time.process_time()
    seconds, value = timed(func)
    return seconds, time.process_time() - cpu, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=5.0)
    parser.add_argument("--work", type=Path, help="directory for the data (default a temporary one)")
    parser.add_argument("--data", type=Path, help="use (or, with --generate-only, make) the data here; kept")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--ssh-target", help="copy over ssh from this host (user@host)")
    parser.add_argument("--ssh-port", type=int, default=22)
    parser.add_argument("--ssh-key")
    parser.add_argument("--remote-dir", help="the data's directory on --ssh-target (default: the local data path)")
    parser.add_argument("--start-sshd", action="store_true", help="throwaway sshd on 127.0.0.1 as the ssh source")
    parser.add_argument(
        "--keep-bashrc", action="store_true", help="with --start-sshd: ssh commands read your ~/.bashrc as it is"
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the kernel's page, dentry and inode caches (root; the whole machine) before each timed no-op",
    )
    parser.add_argument("--repeat", type=int, default=1, help="time each step this many times, report the best")
    args = parser.parse_args()
    if args.drop_caches and not os.access(DROP_CACHES, os.W_OK):
        sys.exit(f"--drop-caches: {DROP_CACHES} is not writable here (it needs root, outside a read-only /proc)")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-model-sync-"))
    data = args.data or work / "src"
    copies = 1 if args.generate_only else 3  # the source, rsync's copy, model_sync's copy
    needed = args.size_gb * (copies if not data.exists() else copies - 1) * 1.05 + 0.2
    if free_gib(work) < needed:
        sys.exit(f"{work}: {free_gib(work):.1f} GiB free, the benchmark needs about {needed:.1f} GiB (--work DIR)")
    created = [] if args.data or data.exists() else [data]
    state: dict[str, Any] = {"sshd": None, "source": None}
    try:
        if not data.exists():
            seconds, size = timed(lambda: generate(data, args.size_gb))
            print(f"generated {size / MiB:.0f} MiB in {data} ({seconds:.1f}s)")
        if args.generate_only:
            created = []
            return
        measure(args, work, data, created, state)
    finally:
        if state["source"] is not None:
            state["source"].close_shared_connection()
        if state["sshd"] is not None:
            state["sshd"].terminate()
            state["sshd"].wait(timeout=10)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        for path in created if args.work else []:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def measure(args: argparse.Namespace, work: Path, data: Path, created: list[Path], out: dict[str, Any]) -> None:
    """Run the three comparisons; print each with its goal and PASS / MISS. ``out`` gets the sshd started and the ssh
    source (for the caller to stop and to close), ``created`` the paths made under ``work``."""
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    ssh: dict[str, Any] | None = None
    created += [work / name for name in ("dest", ".dest.llmfleet", "rsync-dest", "files.txt", "known_hosts")]
    if args.start_sshd:
        created += [work / name for name in ("host_key", "host_key.pub", "user_key", "user_key.pub")]
        created += [work / name for name in ("authorized_keys", "sshd_config", "sshd.log", "empty_bashrc")]
        out["sshd"], ssh, shell = start_sshd(work, args.keep_bashrc)
        print(f"source: a throwaway sshd on 127.0.0.1 for {os.environ.get('USER') or 'this user'}, {shell}")
    elif args.ssh_target:
        ssh = {"host": args.ssh_target, "port": args.ssh_port, "key": args.ssh_key}
    ssh_opts = ["StrictHostKeyChecking=no", f"UserKnownHostsFile={work / 'known_hosts'}"]
    params: dict[str, Any] = {"dest": str(work / "dest"), "verify": "fast", "workers": 0, "free_space_reserve_mb": 0}
    remote_dir = args.remote_dir or str(data)
    if ssh:
        user, _, host = ssh["host"].rpartition("@")
        source_params = {
            "remote_host": host, "remote_user": user or None, "remote_port": ssh["port"], "src": remote_dir,
            "ssh_key": ssh["key"], "ssh_options": ssh_opts, "transfer": "rsync", "timeout": 30,
        }  # fmt: skip

        def make_source() -> Any:
            return SshSource(source_params)

        out["source"] = make_source()
        ssh_e = " ".join(
            ["ssh", "-p", str(ssh["port"])] + (["-i", ssh["key"]] if ssh["key"] else []) + [f"-o {o}" for o in ssh_opts]
        )
        rsync_src = [f"{ssh['host']}:{remote_dir}/"]
        rsync_base = ["rsync", "-a", "-e", ssh_e]
    else:

        def make_source() -> Any:
            return LocalSource(str(data))

        rsync_src = [f"{data}/"]
        rsync_base = ["rsync", "-a"]

    def close_connection() -> None:  # model_sync shares one ssh connection for 60 s; a cold run starts without it
        if out["source"] is not None:
            out["source"].close_shared_connection()

    def fresh_dest(path: Path) -> Any:
        def clear() -> None:
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(work / ".dest.llmfleet", ignore_errors=True)
            close_connection()

        return clear

    where = f"ssh {ssh['host']}" if ssh else "local path"
    files_count = sum(1 for p in data.rglob("*") if p.is_file())
    print(f"data: {size / MiB:.0f} MiB, {files_count} files, {where}, {os.cpu_count()} cores,"
          f" load average {os.getloadavg()[0]:.2f} (the other processes' share of the cores)")  # fmt: skip
    rsync_dest = str(work / "rsync-dest") + "/"
    t_rsync, _ = best(args.repeat, lambda: run([*rsync_base, *rsync_src, rsync_dest]), fresh_dest(work / "rsync-dest"))
    t_same = None  # rsync given model_sync's cipher order; timed before model_sync, whose connection stays open
    if ssh and preferred_ciphers():
        ciphered = [*rsync_base[:-1], f"{ssh_e} -o Ciphers={','.join(preferred_ciphers())}"]
        t_same, _ = best(args.repeat, lambda: run([*ciphered, *rsync_src, rsync_dest]), fresh_dest(work / "rsync-dest"))
    t_sync, result = best(args.repeat, lambda: run_sync(params, make_source(), False, False), fresh_dest(work / "dest"))
    assert result["changed"] and result["files"] > 0
    ratio = t_rsync / t_sync
    print(f"cold copy:   rsync -a {t_rsync:.2f}s   model_sync {t_sync:.2f}s (copy + sha256 of every file + swap)"
          f"   ratio {ratio:.2f} (goal >= 0.9) {verdict(ratio >= 0.9)}")  # fmt: skip
    if t_same is not None:
        print(f"             (rsync -a with model_sync's ssh cipher preference, {preferred_ciphers()[0]} first:"
              f" {t_same:.2f}s, ratio {t_same / t_sync:.2f})")  # fmt: skip

    cold = drop_caches if args.drop_caches else None
    t_check, _ = best(args.repeat, lambda: run([*rsync_base, "--checksum", *rsync_src, rsync_dest]), cold)
    t_noop, again = best(args.repeat, lambda: run_sync(params, make_source(), False, False), cold)
    if args.drop_caches:
        print("no-op steps: the page, dentry and inode caches dropped before each (--drop-caches)")
    assert not again["changed"] and again["hashed_bytes"] == 0
    label = "model_sync" if not ssh else "model_sync (shared ssh connection still open, a rerun within 60 s)"
    print(f"no-op:       rsync -a --checksum {t_check:.3f}s   {label} {t_noop:.3f}s   "
          f"{t_check / t_noop:.0f}x faster (goal >= 100x) {verdict(t_check / t_noop >= 100)}")  # fmt: skip
    if ssh:
        t_floor, _ = best(max(3, args.repeat), lambda: out["source"].ssh("true"))
        print(f"             (floor: one command over the open connection, `ssh HOST true`, {t_floor:.3f}s: the remote"
              " account's shell start-up counts here for model_sync and rsync alike)")  # fmt: skip

        def fresh_start() -> None:
            close_connection()
            if cold is not None:
                cold()

        t_fresh, again = best(args.repeat, lambda: run_sync(params, make_source(), False, False), fresh_start)
        assert not again["changed"] and again["hashed_bytes"] == 0
        print(f"             model_sync (new ssh connection: one round trip) {t_fresh:.3f}s   "
              f"{t_check / t_fresh:.0f}x faster (goal >= 100x) {verdict(t_check / t_fresh >= 100)}")  # fmt: skip
        handshake = [*ssh_e.split(), "-o", "ControlPath=none", ssh["host"], "true"]
        t_hand, _ = best(max(3, args.repeat), lambda: run(handshake))
        print(f"             (floor: a new connection, `ssh -o ControlPath=none HOST true`, {t_hand:.3f}s; rsync pays"
              f" it too: 100x needs an `rsync --checksum` of {100 * t_hand:.0f}s or more)")  # fmt: skip

    files = [str(p) for p in (work / "dest").rglob("*") if p.is_file() and p.name != ".llmfleet-manifest.json"]
    listing = work / "files.txt"
    listing.write_text("\0".join(files))
    t_sum1, _ = best(args.repeat, lambda: run(["xargs", "-0", "-a", str(listing), "sha256sum"]))
    t_sum2, _ = best(args.repeat, lambda: run(["xargs", "-0", "-P2", "-n", "8", "-a", str(listing), "sha256sum"]))
    t_v1, v1 = best(args.repeat, lambda: read_info({"dest": params["dest"], "verify": "full", "workers": 1}))
    t_v2, cpu_v2, v2 = cpu_timed(lambda: read_info({"dest": params["dest"], "verify": "full", "workers": 2}))
    for _ in range(args.repeat - 1):
        t_again, cpu_again, _v = cpu_timed(lambda: read_info({"dest": params["dest"], "verify": "full", "workers": 2}))
        if t_again < t_v2:
            t_v2, cpu_v2 = t_again, cpu_again
    assert v1["verified"] and v2["verified"]

    def rate(seconds: float) -> float:
        return size / MiB / seconds

    per_core = t_sum1 / t_v1
    print(f"full verify: sha256sum 1 core {rate(t_sum1):.0f} MiB/s, 2 cores {rate(t_sum2):.0f} MiB/s;"
          f" model_sync 1 thread {rate(t_v1):.0f} MiB/s ({per_core:.2f}x sha256sum per core, goal >= 0.9)"
          f" {verdict(per_core >= 0.9)}")  # fmt: skip
    print(f"             model_sync 2 threads {rate(t_v2):.0f} MiB/s ({t_v1 / t_v2:.2f}x one thread, goal >= 1.1)"
          f" {verdict(t_v1 / t_v2 >= 1.1)}; CPU used {cpu_v2 / t_v2:.2f} cores"
          f" ({'a second core was free' if cpu_v2 / t_v2 >= 1.8 else 'below ~1.8: the second core was busy'};"
          f" load average {os.getloadavg()[0]:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
