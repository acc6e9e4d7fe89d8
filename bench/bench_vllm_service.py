"""The vllm_service role's deployment vs the same vLLM server started by hand (issue 4, benchmark clause).

Side by side in one run, in alternating rounds, on the container lab:

1. Time to healthy.
   - Through the project: ``llmfleet run restart_vllm`` (systemd restart + the vllm_wait health gate),
     wall time until it returns successfully. A 0.25 s poller on ``/health`` and systemd's own
     timestamps (read back from the unit; the container shares the host's CLOCK_MONOTONIC) split that
     time into: Ansible before the restart, stopping the old server, the new server's start until
     ``/health`` answers 200, and the health gate plus Ansible's teardown after that.
   - By hand: the unit's ExecStart with only ``--port`` changed, in the same container, as the same
     user (``runuser -u vllm --``), with the same environment file, working directory and open-files
     limit, launched with ``docker exec``; time until ``/health`` answers 200 (the same 0.25 s poll).
2. Output tokens/s at concurrency 1 and 16 of the deployed instance (the unit's port, with its API key)
   vs the hand-run server (same flags, same environment file, hence the same API key), with the
   project's own load generator (``bench``): the same synthetic prompts, ``max_tokens`` and
   ``ignore_eos`` for both, the order alternating between rounds.

Goals (issue 4): time to healthy role/hand <= 1.10; output tokens/s deployed/hand >= 0.95.
A benchmark reports, it does not gate: the exit code is 0 whether or not a goal is met (MISSED is
printed), and non-zero only when the benchmark itself could not run.

The hand-run server is always stopped at the end; the lab unit is left running and is checked healthy.
Requests go only to the lab container's address on a local Docker bridge network.

Usage (the container lab up, ``make lab``):

    .venv/bin/python bench/bench_vllm_service.py [--rounds 3] [--output-len 48]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.llmfleet.fleet.plugins.module_utils.bench import (  # noqa: E402
    LoadConfig,
    compute_metrics,
    run_load_async,
    synthetic_prompts,
)

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default PATH
HAND_DIR = "/run/llmfleet-bench"  # inside the container (tmpfs): launcher, pid file, log
POLL_S = 0.25
TTH_GOAL = 1.10
TPS_GOAL = 0.95
_PROFILE_LINE = re.compile(r"^(?P<task>.+?) -{3,} (?P<secs>\d+\.\d+)s$")


# --------------------------------------------------------------------------------------------
# Docker and the unit
# --------------------------------------------------------------------------------------------


def docker(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"docker {' '.join(args[:3])} ... failed (rc {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def container_ip(container: str, network: str) -> str:
    """The container's address on ``network``, refused unless that is a local bridge with a private address."""
    driver = docker("network", "inspect", "-f", "{{.Driver}}", network).strip()
    fmt = '{{(index .NetworkSettings.Networks "' + network + '").IPAddress}}'
    ip = docker("inspect", "-f", fmt, container).strip()
    if driver != "bridge" or not ip or not ipaddress.ip_address(ip).is_private:
        raise SystemExit(f"{container} on {network}: driver {driver!r}, address {ip!r}: not a local bridge address")
    return ip


@dataclass
class Unit:
    name: str
    argv: list[str]
    user: str
    workdir: str
    env_file: str
    nofile: str
    port: int


def read_unit(container: str, unit: str) -> Unit:
    text = docker("exec", container, "cat", f"/etc/systemd/system/{unit}")
    keys: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    argv = shlex.split(keys["ExecStart"].lstrip("-@+!"))
    if "--port" not in argv:
        raise SystemExit(f"{unit}: ExecStart has no --port: {argv}")
    return Unit(
        name=unit,
        argv=argv,
        user=keys.get("User", "root"),
        workdir=keys.get("WorkingDirectory", "/"),
        env_file=keys.get("EnvironmentFile", "").lstrip("-"),
        nofile=keys.get("LimitNOFILE", ""),
        port=int(argv[argv.index("--port") + 1]),
    )


def unit_times(container: str, unit: str) -> dict[str, float]:
    """systemd's CLOCK_MONOTONIC timestamps of the unit, in seconds (0 when unset)."""
    props = ["ActiveExitTimestampMonotonic", "InactiveEnterTimestampMonotonic", "ExecMainStartTimestampMonotonic"]
    out = docker("exec", container, "systemctl", "show", unit, *(f"--property={p}" for p in props))
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {p.replace("TimestampMonotonic", ""): int(values.get(p, "0") or 0) / 1e6 for p in props}


def read_api_key(container: str, path: str) -> str:
    return docker("exec", container, "cat", path).strip()


# --------------------------------------------------------------------------------------------
# Health polling
# --------------------------------------------------------------------------------------------


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Poller(threading.Thread):
    """Polls ``/health`` every POLL_S seconds and keeps (monotonic time, healthy) samples."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[tuple[float, bool]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            t = time.monotonic()
            self.samples.append((t, health_ok(self.url)))
            self.done.wait(max(0.0, POLL_S - (time.monotonic() - t)))

    def first_healthy_after(self, t0: float) -> float | None:
        return next((t for t, ok in self.samples if ok and t >= t0), None)

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def wait_healthy(url: str, t0: float, timeout: float) -> float:
    while time.monotonic() - t0 < timeout:
        t = time.monotonic()
        if health_ok(url):
            return t
        time.sleep(max(0.0, POLL_S - (time.monotonic() - t)))
    raise TimeoutError(f"{url}/health did not answer 200 within {timeout:.0f} s")


# --------------------------------------------------------------------------------------------
# Time to healthy: through the project, and by hand
# --------------------------------------------------------------------------------------------


@dataclass
class RoleStart:
    wall: float
    phases: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, float] = field(default_factory=dict)


def role_restart(args: argparse.Namespace, url: str, summary_dir: str) -> RoleStart:
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
    # Only the host under test: the rolling restart otherwise also restarts every other inference host.
    cmd = [str(REPO / ".venv" / "bin" / "llmfleet"), "run", "restart_vllm", "--limit", args.container,
           "--summary-dir", summary_dir]
    poller = Poller(url)
    poller.start()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=1200)
        t1 = time.monotonic()
    finally:
        poller.stop()
    if proc.returncode != 0:
        raise SystemExit(f"llmfleet run restart_vllm failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}")
    ts = unit_times(args.container, args.unit)
    healthy = poller.first_healthy_after(ts["ExecMainStart"])
    result = RoleStart(wall=t1 - t0)
    if t0 <= ts["ActiveExit"] <= ts["InactiveEnter"] <= ts["ExecMainStart"] <= t1 and healthy:
        result.phases = {
            "ansible before the restart": ts["ActiveExit"] - t0,
            "stopping the old server": ts["InactiveEnter"] - ts["ActiveExit"],
            "systemd: stopped -> new process": ts["ExecMainStart"] - ts["InactiveEnter"],
            "server start -> /health 200": healthy - ts["ExecMainStart"],
            "health gate + ansible after": t1 - healthy,
        }
    for line in proc.stdout.splitlines():
        m = _PROFILE_LINE.match(line.strip())
        if m:
            result.tasks[m["task"]] = float(m["secs"])
    return result


class HandServer:
    """The unit's command line on another port, started and stopped by this script (never anything else)."""

    def __init__(self, args: argparse.Namespace, unit: Unit, url: str) -> None:
        self.args = args
        self.unit = unit
        self.url = url
        self.running = False

    def launcher(self) -> str:
        argv = list(self.unit.argv)
        argv[argv.index("--port") + 1] = str(self.args.hand_port)
        lines = [
            "#!/bin/sh",
            f"echo $$ > {HAND_DIR}/pid",
            f"cd {shlex.quote(self.unit.workdir)} || exit 1",
            f"ulimit -n {shlex.quote(self.unit.nofile)} 2>/dev/null || true" if self.unit.nofile else "",
            f"set -a; . {shlex.quote(self.unit.env_file)}; set +a" if self.unit.env_file else "",
            f"exec runuser -u {shlex.quote(self.unit.user)} -- {shlex.join(argv)} > {HAND_DIR}/log 2>&1",
        ]
        return "\n".join(line for line in lines if line) + "\n"

    def start(self) -> float:
        """Launch; return seconds from the launch until /health answers 200."""
        if health_ok(self.url):
            raise SystemExit(f"something already answers on {self.url}: pick another --hand-port")
        c = self.args.container
        docker("exec", c, "mkdir", "-p", HAND_DIR)
        docker("exec", "-i", c, "sh", "-c", f"cat > {HAND_DIR}/run.sh", stdin=self.launcher())
        t0 = time.monotonic()
        docker("exec", "-d", c, "env", "-i", f"PATH={SYSTEMD_PATH}", "/bin/sh", f"{HAND_DIR}/run.sh")
        self.running = True
        try:
            return wait_healthy(self.url, t0, self.args.health_timeout) - t0
        except TimeoutError:
            log = docker("exec", c, "tail", "-n", "30", f"{HAND_DIR}/log", check=False)
            raise SystemExit(f"hand-run server not healthy within {self.args.health_timeout} s:\n{log}") from None

    def stop(self) -> None:
        """SIGTERM the launched process and its descendants, SIGKILL what is left after 60 s (TimeoutStopSec)."""
        if not self.running:
            return
        script = (
            "import os, signal, time, sys\n"
            f"root = int(open('{HAND_DIR}/pid').read())\n"
            "def tree():\n"
            "    kids = {}\n"
            "    for d in os.listdir('/proc'):\n"
            "        if d.isdigit():\n"
            "            try:\n"
            "                ppid = int(open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()[1])\n"
            "            except (OSError, IndexError, ValueError):\n"
            "                continue\n"
            "            kids.setdefault(ppid, []).append(int(d))\n"
            "    out, todo = [], [root]\n"
            "    while todo:\n"
            "        p = todo.pop()\n"
            "        if os.path.exists(f'/proc/{p}'):\n"
            "            out.append(p)\n"
            "        todo += kids.get(p, [])\n"
            "    return out\n"
            "def signal_all(pids, sig):\n"
            "    for p in pids:\n"
            "        try:\n"
            "            os.kill(p, sig)\n"
            "        except ProcessLookupError:\n"
            "            pass\n"
            "pids = tree()\n"
            "signal_all(pids, signal.SIGTERM)\n"
            "end = time.monotonic() + 60\n"
            "while time.monotonic() < end and any(os.path.exists(f'/proc/{p}') for p in pids):\n"
            "    time.sleep(0.2)\n"
            "left = [p for p in pids if os.path.exists(f'/proc/{p}')]\n"
            "signal_all(left, signal.SIGKILL)\n"
            "print(len(pids), len(left))\n"
        )
        docker("exec", self.args.container, "python3", "-c", script, timeout=90)
        self.running = False
        end = time.monotonic() + 15
        while health_ok(self.url) and time.monotonic() < end:
            time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------


def output_tps(url: str, args: argparse.Namespace, api_key: str, concurrency: int, seed: int) -> float:
    count = args.c1_prompts if concurrency == 1 else args.prompts_per_slot * concurrency
    items = synthetic_prompts(count, args.input_len, seed=seed)
    cfg = LoadConfig(
        url=url, model=args.model, api="completions", api_key=api_key, max_concurrency=concurrency,
        output_len=args.output_len, ignore_eos=True, timeout=300.0, warmup_requests=1, seed=seed,
    )  # fmt: skip
    results, duration = asyncio.run(run_load_async(cfg, items))
    metrics = compute_metrics(results, duration)
    if metrics["failed"]:
        raise SystemExit(f"{url}: {metrics['failed']} of {count} requests failed: {metrics['errors']}")
    return float(metrics["output_throughput"])


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def other_vllm_servers() -> int:
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            n += b"vllm.entrypoints.openai.api_server" in cmd and not cmd.startswith(b"runuser")
    return n


def verdict(ratio: float, goal: float, lower_is_better: bool) -> str:
    ok = ratio <= goal if lower_is_better else ratio >= goal
    return "met" if ok else "MISSED"


def report(args: argparse.Namespace, rows: dict[str, list[tuple[float, float]]], role_runs: list[RoleStart]) -> None:
    print(f"\n== vllm_service (role) vs hand-run vLLM, same flags: {args.container}, {args.model}, "
          f"{args.rounds} alternating rounds ==")  # fmt: skip
    print("values: median over rounds; ratio: median of per-round role/hand ratios")
    head = f"{'metric':<46} {'role':>9} {'hand':>9} {'ratio':>7} {'goal':>7}  {'verdict':<7} per-round ratios"
    print(head)
    print("-" * len(head))
    specs = [
        ("tth", "time to healthy (s): llmfleet run vs launch", TTH_GOAL, True),
        ("server", "  server only: unit start vs launch -> /health", None, True),
        ("c1", "output tok/s, concurrency 1", TPS_GOAL, False),
        ("c16", "output tok/s, concurrency 16", TPS_GOAL, False),
    ]
    for key, label, goal, lower in specs:
        pairs = rows.get(key, [])
        if not pairs:
            continue
        ratios = [r / h for r, h in pairs]
        ratio = median(ratios)
        goal_s = f"{'<=' if lower else '>='}{goal:.2f}" if goal else "info"
        mark = verdict(ratio, goal, lower) if goal else ""
        per = " ".join(f"{x:.2f}" for x in ratios)
        role_v, hand_v = median([r for r, _ in pairs]), median([h for _, h in pairs])
        print(f"{label:<46} {role_v:>9.2f} {hand_v:>9.2f} {ratio:>7.3f} {goal_s:>7}  {mark:<7} {per}")
    phased = [r.phases for r in role_runs if r.phases]
    if phased:
        print("\nwhere `llmfleet run restart_vllm` spends its time (median s over rounds):")
        for name in phased[0]:
            print(f"  {name:<36} {median([p[name] for p in phased]):7.2f}")
        print(f"  {'total (wall)':<36} {median([r.wall for r in role_runs]):7.2f}")
    tasked = [r.tasks for r in role_runs if r.tasks]
    if tasked:
        print("ansible tasks (profile_tasks, median s; the gate polls every 3 s):")
        names = sorted(tasked[0], key=lambda n: -median([t.get(n, 0.0) for t in tasked]))
        for name in names[:5]:
            print(f"  {name[:60]:<60} {median([t.get(name, 0.0) for t in tasked]):7.2f}")


# --------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--container", default="lab-inference-1")
    p.add_argument("--network", default="llmfleet-lab")
    p.add_argument("--instance", default="smollm2", help="vllm_service instance name (unit vllm-<name>.service)")
    p.add_argument("--model", default="smollm2-135m", help="served model name")
    p.add_argument("--hand-port", type=int, default=8002)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--input-len", type=int, default=128, help="words per synthetic prompt")
    p.add_argument("--output-len", type=int, default=48, help="max_tokens, with ignore_eos")
    p.add_argument("--c1-prompts", type=int, default=3, help="requests at concurrency 1")
    p.add_argument("--prompts-per-slot", type=int, default=1, help="requests per slot at concurrency 16")
    p.add_argument("--health-timeout", type=float, default=600)
    args = p.parse_args()
    args.unit = f"vllm-{args.instance}.service"

    ip = container_ip(args.container, args.network)
    unit = read_unit(args.container, args.unit)
    api_key = read_api_key(args.container, f"/etc/vllm/{args.instance}.apikey")
    role_url, hand_url = f"http://{ip}:{unit.port}", f"http://{ip}:{args.hand_port}"
    if not health_ok(role_url):
        raise SystemExit(f"{role_url}/health does not answer 200: converge the lab first (make lab)")
    print(f"deployed: {role_url} ({args.unit}, user {unit.user}); hand-run: {hand_url}, same argv except --port")
    print(f"argv: {shlex.join(unit.argv)}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"vLLM api_server processes on this machine: {other_vllm_servers()}", flush=True)  # fmt: skip

    hand = HandServer(args, unit, hand_url)
    rows: dict[str, list[tuple[float, float]]] = {}
    role_runs: list[RoleStart] = []
    summary_dir = tempfile.mkdtemp(prefix="bench-vllm-service-")
    t_start = time.monotonic()
    try:
        for rnd in range(args.rounds):
            role_first = rnd % 2 == 0
            print(f"\nround {rnd + 1}/{args.rounds}: {'role first' if role_first else 'hand first'}", flush=True)
            for who in ("role", "hand") if role_first else ("hand", "role"):
                if who == "role":
                    role = role_restart(args, role_url, summary_dir)
                    role_runs.append(role)
                    server = role.phases.get("server start -> /health 200", float("nan"))
                    print(f"  role: llmfleet run restart_vllm {role.wall:6.1f} s "
                          f"(server start -> healthy {server:.1f} s)", flush=True)  # fmt: skip
                else:
                    hand_tth = hand.start()
                    print(f"  hand: launch -> /health 200       {hand_tth:6.1f} s", flush=True)
            rows.setdefault("tth", []).append((role.wall, hand_tth))
            if role.phases:
                rows.setdefault("server", []).append((role.phases["server start -> /health 200"], hand_tth))
            for conc in (1, 16):
                seed = 1000 * rnd + conc
                got = {}
                for who in ("role", "hand") if role_first else ("hand", "role"):
                    url = role_url if who == "role" else hand_url
                    got[who] = output_tps(url, args, api_key, conc, seed)
                rows.setdefault(f"c{conc}", []).append((got["role"], got["hand"]))
                print(f"  concurrency {conc:>2}: role {got['role']:7.1f} tok/s, hand {got['hand']:7.1f} tok/s, "
                      f"ratio {got['role'] / got['hand']:.3f}", flush=True)  # fmt: skip
            hand.stop()
    finally:
        hand.stop()
        healthy = False
        try:
            wait_healthy(role_url, time.monotonic(), 300)
            healthy = True
        except TimeoutError:
            pass
        state = docker("exec", args.container, "systemctl", "is-active", args.unit, check=False).strip()
        print(f"\nhand-run server stopped; {args.unit}: {state}, /health {'200' if healthy else 'NOT answering'}")

    report(args, rows, role_runs)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"run took {(time.monotonic() - t_start) / 60:.1f} min; "
          f"prompts {args.input_len} words, max_tokens {args.output_len} (ignore_eos), "
          f"{args.c1_prompts} requests at c=1, {args.prompts_per_slot * 16} at c=16")  # fmt: skip
    print(json.dumps({"raw": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
