"""The model gateway (LiteLLM proxy) vs straight to a backend (issue 13, benchmark clause).

Side by side in one run, on the container lab (``make lab``), with the project's own load generator
(``bench``: the same synthetic prompts, ``max_tokens`` and ``ignore_eos``, streaming chat
completions, the order alternating between rounds):

1. Output tokens/s at concurrency 1 and 16 through the gateway vs straight to one backend (the lab's
   Docker instance). The gateway spreads load over every backend of the model, so at concurrency 16
   its ratio can exceed 1 (on 2 cores the backends share the CPU, so it mostly does not): the ratio is
   what a client sees. Goal >= 0.90.
2. Added TTFT p50 (gateway minus direct) at concurrency 1. Goal <= 15 ms.
3. A backend kill under load: concurrency 8 through the gateway for ``--kill-window`` seconds,
   ``kill -9`` of the systemd instance's main process after a third of it; failed requests (goal 0)
   and the p99 latency during the kill window minus the p99 before it (goal <= 2 s). systemd brings
   the instance back (Restart=always); the benchmark waits until it is healthy again.

A benchmark reports, it does not gate: the exit code is 0 whether or not a goal is met (MISSED is
printed), non-zero only when the benchmark itself could not run.

Usage (the lab up and converged):

    .venv/bin/python bench/bench_gateway.py [--rounds 2] [--output-len 64] [--no-kill]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "collections"), str(ROOT / "controller")]

from ansible_collections.llmfleet.fleet.plugins.module_utils import bench as bench  # noqa: E402
from llmfleet.paths import cache_dir, lab_name  # noqa: E402
from llmfleet_lab import containers as lab  # noqa: E402

GOALS = {"throughput_ratio": 0.90, "added_ttft_ms": 15.0, "failed": 0, "p99_spike_s": 2.0}


def _exec(container: str, cmd: str) -> str:
    out = subprocess.run(["docker", "exec", container, "sh", "-c", cmd], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def lab_endpoints() -> dict:
    hosts = lab.read_inventory()
    gw = next(h for h in hosts if "gateway" in h.groups)
    docker_host = next(h for h in hosts if h.hostvars.get("vllm_service_runtime") == "docker")
    systemd_host = next(
        h for h in hosts if "inference_nodes" in h.groups and h.hostvars.get("vllm_service_runtime") == "systemd"
    )
    d_inst = docker_host.hostvars["vllm_service_instances"][0]
    s_inst = systemd_host.hostvars["vllm_service_instances"][0]
    return {
        "gateway": f"https://127.0.0.1:{gw.hostvars['model_gateway_port']}",
        "gateway_key": _exec(gw.name, "cat /etc/llmfleet-gateway/keys/client-lab-client.key"),
        "direct": f"http://127.0.0.1:{d_inst['port']}",
        "direct_key": _exec(docker_host.name, f"cat /etc/vllm/{d_inst['name']}.apikey"),
        "victim_container": systemd_host.name,
        "victim_unit": f"vllm-{s_inst['name']}.service",
        "victim_url": f"http://{lab.container_address(systemd_host.name)}:{s_inst['port']}",
    }


def one_run(url: str, key: str, concurrency: int, prompts: int, output_len: int) -> dict:
    cfg = bench.LoadConfig(
        url=url,
        model="smollm2-135m",
        api="chat",
        api_key=key,
        max_concurrency=concurrency,
        output_len=output_len,
        ignore_eos=True,
        timeout=300.0,
        # bench trusts the system's CAs only; the lab CA is checked by the kill phase's client.
        validate_certs=not url.startswith("https:"),
    )
    items = bench.synthetic_prompts(prompts, 64, seed=concurrency)
    results, duration = asyncio.run(bench.run_load_async(cfg, items))
    return bench.compute_metrics(results, duration, (50, 99), None)


def throughput(args, ep: dict) -> list[tuple[str, float, float, str]]:
    rows = []
    for conc in (1, 16):
        gw_tps, d_tps, gw_ttft, d_ttft = [], [], [], []
        for rnd in range(args.rounds):
            order = [("gw", ep["gateway"], ep["gateway_key"]), ("direct", ep["direct"], ep["direct_key"])]
            for name, url, key in order if rnd % 2 == 0 else order[::-1]:
                m = one_run(url, key, conc, max(conc * 2, 8), args.output_len)
                (gw_tps if name == "gw" else d_tps).append(m["output_throughput"] or 0.0)
                (gw_ttft if name == "gw" else d_ttft).append(m["ttft_ms"]["p50"])
        ratio = statistics.median(gw_tps) / max(statistics.median(d_tps), 1e-9)
        rows.append((f"output tok/s ratio gateway/direct, c={conc}", ratio, GOALS["throughput_ratio"], ">="))
        if conc == 1:
            added = statistics.median(gw_ttft) - statistics.median(d_ttft)
            rows.append(("added TTFT p50 (ms), c=1", added, GOALS["added_ttft_ms"], "<="))
    return rows


def kill_under_load(args, ep: dict) -> list[tuple[str, float, float, str]]:
    lat_before, lat_during, failed = [], [], []
    ctx = ssl.create_default_context(cafile=str(cache_dir() / "lab-ca" / lab_name() / "ca.crt"))
    stop = threading.Event()
    t_kill = [None]
    body = (
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Count to five."}], '
        b'"max_tokens": 16, "temperature": 0}'
    )

    def worker() -> None:
        while not stop.is_set():
            req = urllib.request.Request(
                ep["gateway"] + "/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {ep['gateway_key']}"},
            )
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=120, context=ctx) as resp:
                    resp.read()
                    ok = resp.status == 200
            except Exception:
                ok = False
            dt = time.monotonic() - t0
            if not ok:
                failed.append(dt)
            (lat_before if t_kill[0] is None or t0 < t_kill[0] else lat_during).append(dt)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(args.kill_window / 3)
    pid = _exec(ep["victim_container"], f"systemctl show -p MainPID --value {ep['victim_unit']}")
    t_kill[0] = time.monotonic()
    _exec(ep["victim_container"], f"kill -9 {pid}")
    time.sleep(args.kill_window * 2 / 3)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(ep["victim_url"] + "/health", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(2)
    spike = bench.percentile(lat_during, 99) - bench.percentile(lat_before, 99)
    return [
        ("failed requests during a backend kill, c=8", float(len(failed)), GOALS["failed"], "<="),
        ("p99 latency spike during the kill (s)", spike, GOALS["p99_spike_s"], "<="),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--kill-window", type=float, default=45.0)
    parser.add_argument("--no-kill", action="store_true")
    args = parser.parse_args()
    try:
        ep = lab_endpoints()
    except (StopIteration, KeyError, subprocess.CalledProcessError, lab.LabError) as exc:
        print(f"bench_gateway: the lab is not up and converged with a gateway: {exc!r}", file=sys.stderr)
        return 2
    rows = throughput(args, ep)
    if not args.no_kill:
        rows += kill_under_load(args, ep)
    for name, value, goal, op in rows:
        met = value >= goal if op == ">=" else value <= goal
        print(f"{name:50s} {value:10.3f}   goal {op} {goal:g}   {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
