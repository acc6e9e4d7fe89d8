"""llm_bench's pure helpers: statistics, arrivals, SSE decoding, metrics, eval scoring, option checks.

Load and eval against a real vLLM are in tests/integration/test_llm_bench_real.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any
from unittest import mock

import llm_bench
import numpy as np
import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.llmfleet.fleet.plugins.module_utils.bench import (
    RequestResult,
    SSEDecoder,
    _handle_event,
    arrival_offsets,
    chunk_text,
    compute_metrics,
    describe,
    item_from_dict,
    meets_slos,
    normalize_answer,
    parse_items,
    percentile,
    percentile_key,
    request_rows,
    score_answer,
    synthetic_prompts,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.async_http import AsyncConnection

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "values",
    [[1.0], [3.0, 1.0, 2.0], [0.5, 0.1, 9.0, 3.3, 3.3, 7.0], list(np.random.default_rng(1).exponential(size=101))],
)
@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@pytest.mark.parametrize(("values", "q", "message"), [([], 50, "no values"), ([1.0], 101, "got 101")])
def test_percentile_rejects(values: list[float], q: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(values, q)


@pytest.mark.parametrize(("q", "key"), [(50, "p50"), (99.0, "p99"), (99.9, "p99.9")])
def test_percentile_key(q: float, key: str) -> None:
    assert percentile_key(q) == key


def test_describe_matches_numpy_and_scales() -> None:
    values = [0.010, 0.020, 0.030, 0.100]
    out = describe(values, (50, 90, 99), 1000.0)
    assert out["count"] == 4
    assert out["mean"] == pytest.approx(np.mean(values) * 1000)
    assert out["median"] == pytest.approx(np.median(values) * 1000)
    assert out["std"] == pytest.approx(np.std(values) * 1000)
    assert out["p90"] == pytest.approx(np.percentile(values, 90) * 1000)
    assert (out["min"], out["max"]) == pytest.approx((10.0, 100.0))


def test_describe_empty() -> None:
    assert describe([], (50,)) == {
        "count": 0,
        "mean": None,
        "median": None,
        "std": None,
        "min": None,
        "max": None,
        "p50": None,
    }


# ------------------------------------------------------------------------------------ arrivals


@pytest.mark.parametrize("rate", [None, math.inf])
def test_arrivals_all_at_once(rate: float | None) -> None:
    assert arrival_offsets(5, rate) == [0.0] * 5


@pytest.mark.parametrize(("rate", "burstiness"), [(10.0, 1.0), (2.0, 1.0), (10.0, 0.5), (10.0, 4.0)])
def test_arrivals_mean_rate(rate: float, burstiness: float) -> None:
    offsets = arrival_offsets(20001, rate, burstiness, seed=7)
    assert offsets[0] == 0.0
    assert all(np.diff(offsets) >= 0)
    assert 20000 / offsets[-1] == pytest.approx(rate, rel=0.05)
    gaps = np.diff(offsets)
    # Gamma(k, 1/(rate*k)): coefficient of variation 1/sqrt(k); Poisson (k=1) has CV 1
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1 / math.sqrt(burstiness), rel=0.1)


def test_arrivals_are_reproducible() -> None:
    assert arrival_offsets(10, 3.0, seed=1) == arrival_offsets(10, 3.0, seed=1)
    assert arrival_offsets(10, 3.0, seed=1) != arrival_offsets(10, 3.0, seed=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((3, 0.0), "request_rate must be > 0 requests/s, got 0.0"),
        ((3, 1.0, 0.0), "burstiness must be > 0"),
        ((-1, 1.0), "count must be >= 0"),
    ],
)
def test_arrivals_reject(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        arrival_offsets(*args)


# ------------------------------------------------------------------------------------------ SSE

VLLM_STREAM = (
    b'data: {"id":"cmpl-1","choices":[{"index":0,"text":" Paris","finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","choices":[{"index":0,"text":".","finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("piece", [1, 2, 7, 64, len(VLLM_STREAM)])
def test_sse_decoder_any_split(piece: int) -> None:
    decoder = SSEDecoder()
    events = []
    for start in range(0, len(VLLM_STREAM), piece):
        events += decoder.feed(VLLM_STREAM[start : start + piece])
    events += decoder.close()
    assert len(events) == 4
    assert events[-1] == "[DONE]"
    assert json.loads(events[2])["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"data: a\r\n\r\ndata: b\r\n\r\n", ["a", "b"]),
        (b": ping\n\ndata: x\n\n", ["x"]),
        (b"event: message\nid: 3\ndata: line1\ndata: line2\n\n", ["line1\nline2"]),
        (b"data:nospace\n\n", ["nospace"]),
        (b"data: unterminated", ["unterminated"]),
        (b"data: caf\xc3", []),  # half a UTF-8 character waits for the rest
        (b"data: r\rdata: s\r\r", ["r\ns"]),  # bare CR line ends: one event of two data lines
    ],
)
def test_sse_decoder_cases(raw: bytes, expected: list[str]) -> None:
    decoder = SSEDecoder()
    events = decoder.feed(raw)
    if expected == [] and raw.endswith(b"\xc3"):
        assert events == []
        assert decoder.feed(b"\xa9\n\n") == ["café"]
        return
    assert events + decoder.close() == expected


@pytest.mark.parametrize(
    ("event", "text"),
    [
        ({"choices": [{"text": " Paris"}]}, " Paris"),
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, ""),
        ({"choices": [{"delta": {"content": "Par"}}]}, "Par"),
        ({"choices": [{"delta": {"reasoning_content": "hmm"}}]}, "hmm"),
        ({"choices": [], "usage": {"completion_tokens": 3}}, ""),
    ],
)
def test_chunk_text(event: dict[str, Any], text: str) -> None:
    assert chunk_text(event) == text


def test_handle_event_times_like_vllm() -> None:
    """TTFT at the first chunk with choices (even empty text), ITL between chunks, usage wins for counts."""
    result = RequestResult(start=10.0)
    last = 10.0
    events = [
        (10.5, '{"choices":[{"delta":{"role":"assistant","content":""}}]}'),
        (10.6, '{"choices":[{"delta":{"content":"Hi"}}]}'),
        (10.8, '{"choices":[{"delta":{"content":"!"},"finish_reason":"stop"}]}'),
        (10.8, '{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}'),
        (10.9, "[DONE]"),
    ]
    for when, data in events:
        last = _handle_event(data, when, last, result)
    assert result.ttft == pytest.approx(0.5)
    assert result.itl == pytest.approx([0.1, 0.2])
    assert (result.text, result.text_chunks, result.finish_reason) == ("Hi!", 2, "stop")
    assert (result.prompt_tokens, result.output_tokens) == (5, 3)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("{not json", "stream chunk is not JSON"),
        ('{"error":{"message":"overloaded"}}', "server error in stream: overloaded"),
    ],
)
def test_handle_event_errors(data: str, error: str) -> None:
    result = RequestResult(start=0.0)
    _handle_event(data, 1.0, 0.0, result)
    assert result.error is not None and result.error.startswith(error)


# --------------------------------------------------------------------------------------- metrics


def done(
    ttft: float, latency: float, out: int | None, prompt: int = 10, chunks: int = 0, itl: list[float] | None = None
) -> RequestResult:
    return RequestResult(
        ok=True,
        start=1.0,
        ttft=ttft,
        latency=latency,
        output_tokens=out,
        prompt_tokens=prompt,
        text_chunks=chunks,
        itl=itl or [],
    )


@pytest.mark.parametrize(
    ("result", "tpot"),
    [(done(0.1, 1.1, 11), 0.1), (done(0.1, 0.1, 1), None), (done(0.2, 1.2, None, chunks=5), 0.25)],
)
def test_tpot(result: RequestResult, tpot: float | None) -> None:
    assert result.tpot == (pytest.approx(tpot) if tpot is not None else None)


def test_compute_metrics() -> None:
    results = [
        done(0.1, 1.1, 11, itl=[0.1] * 10),
        done(0.3, 2.3, 21, prompt=20, itl=[0.1] * 20),
        RequestResult(ok=False, error="HTTP 503: busy"),
        RequestResult(ok=False, error="HTTP 503: busy"),
        RequestResult(ok=False, error="timed out after 5s"),
    ]
    m = compute_metrics(results, 4.0, (50, 99), goodput={"ttft": 200, "tpot": 150})
    assert (m["num_requests"], m["completed"], m["failed"]) == (5, 2, 3)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (30, 32)
    assert m["request_throughput"] == pytest.approx(0.5)
    assert m["output_throughput"] == pytest.approx(8.0)
    assert m["total_token_throughput"] == pytest.approx(15.5)
    assert m["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert m["tpot_ms"]["median"] == pytest.approx(100.0)
    assert m["itl_ms"]["count"] == 30
    assert m["e2el_ms"]["p99"] == pytest.approx(np.percentile([1100, 2300], 99))
    assert m["errors"] == {"HTTP 503: busy": 2, "timed out after 5s": 1}
    assert (m["good_requests"], m["request_goodput"]) == (1, pytest.approx(0.25))
    assert m["usage_reported"] is True


@pytest.mark.parametrize(
    ("slos", "good"),
    [
        ({"ttft": 100}, True),
        ({"ttft": 99}, False),
        ({"tpot": 100, "e2el": 1100}, True),
        ({"e2el": 1000}, False),
        ({"tpot_ms": 100}, True),
    ],
)
def test_meets_slos(slos: dict[str, float], good: bool) -> None:
    assert meets_slos(done(0.1, 1.1, 11), slos) is good


def test_meets_slos_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown SLO 'ttlt'"):
        meets_slos(done(0.1, 1.1, 11), {"ttlt": 1})


def test_request_rows_relative_start() -> None:
    a, b = done(0.1, 1.0, 3), done(0.1, 1.0, 3)
    a.start, b.start = 100.0, 100.5
    rows = request_rows([a, b, RequestResult(error="x")])
    assert [r["start_s"] for r in rows] == [0.0, 0.5, None]
    assert "itl_s" not in rows[0] and "itl_s" in request_rows([a], detailed=True)[0]


# ------------------------------------------------------------------------------- prompts and eval


def test_synthetic_prompts() -> None:
    items = synthetic_prompts(3, 50, seed=4)
    assert [len(i.prompt.split()) for i in items] == [50, 50, 50]
    assert len({i.prompt for i in items}) == 3
    assert [i.prompt for i in synthetic_prompts(3, 50, seed=4)] == [i.prompt for i in items]


@pytest.mark.parametrize(
    ("answer", "expected", "match", "ok"),
    [
        ("The capital of France is Paris.", ["Paris"], "contains", True),
        ("The capital of France is paris", ["PARIS"], "contains", True),
        ("Parisian food", ["Paris"], "contains", False),
        ("There are 14 days", ["4"], "contains", False),
        ("2 + 2 = 4.", ["4"], "contains", True),
        ("It freezes at -18.0°C", ["0"], "contains", False),
        ("It freezes at 0 degrees", ["0", "zero"], "contains", True),
        ("George Washington", ["Washington"], "contains", True),
        ("  Paris. ", ["paris"], "exact", True),
        ("Paris, France", ["Paris"], "exact", False),
        ("The formula is H2O", [r"\bH\s*2\s*O\b"], "regex", True),
        ("the city of rome", [r"\bRom(e|a)\b"], "regex", True),
        ("", ["Paris"], "contains", False),
    ],
)
def test_score_answer(answer: str, expected: list[str], match: str, ok: bool) -> None:
    assert score_answer(answer, expected, match) is ok


@pytest.mark.parametrize(("text", "norm"), [("  The  Answer!\n", "the answer"), ('"Paris."', "paris")])
def test_normalize_answer(text: str, norm: str) -> None:
    assert normalize_answer(text) == norm


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([], "must be a JSON object"),
        ({"expected": "x"}, "'prompt' must be a non-empty string, got None"),
        ({"prompt": "p", "expected": 3}, "'expected' must be a string or a list of strings, got 3"),
        ({"prompt": "p"}, "eval items need 'expected'"),
        (
            {"prompt": "p", "expected": "x", "match": "fuzzy"},
            "'match' must be one of exact, contains, regex, got 'fuzzy'",
        ),
        ({"prompt": "p", "expected": "(", "match": "regex"}, "bad regex '\\('"),
        ({"prompt": "p", "expected": "x", "max_tokens": 0}, "'max_tokens' must be a positive integer, got 0"),
    ],
)
def test_item_from_dict_rejects(row: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        item_from_dict(row, "set.jsonl:3", need_expected=True)


def test_parse_items_names_file_and_line() -> None:
    with pytest.raises(ValueError, match=r"^set\.jsonl:2: not JSON"):
        parse_items(['{"prompt": "a"}', "{oops"], "set.jsonl")
    with pytest.raises(ValueError, match=r"set\.jsonl holds no items"):
        parse_items(["", "# comment"], "set.jsonl")
    [item] = parse_items(['{"question": "q", "answer": "a", "output_tokens": 5}'], "s")
    assert (item.prompt, item.expected, item.max_tokens, item.match) == ("q", ["a"], 5, "contains")


def test_shipped_eval_set_is_valid() -> None:
    eval_set = REPO / "roles" / "model_pipeline" / "files" / "eval" / "basic_facts.jsonl"
    items = parse_items(eval_set.read_text().splitlines(), "basic_facts", need_expected=True)
    assert len(items) >= 20
    assert len({i.id for i in items}) == len(items)
    assert {i.match for i in items} <= {"contains", "regex", "exact"}


# -------------------------------------------------------------------- HTTP/1.1 framing of the client


@pytest.mark.parametrize(
    ("response", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
            b"hello world",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b""),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil close", b"until close"),
    ],
)
def test_async_connection_framing(response: bytes, body: bytes) -> None:
    """The client's HTTP/1.1 framing against raw bytes from a socket (not an OpenAI server)."""

    async def scenario() -> tuple[int, bytes, bool]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
            if b"Content-Length" not in response and b"chunked" not in response:
                writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = AsyncConnection("127.0.0.1", port)
        status, _ = await conn.request("POST", "/v1/completions", b"{}", {})
        got = b"".join([data async for _, data in conn.iter_body()])
        reusable = conn.reusable
        await conn.close()
        server.close()
        await server.wait_closed()
        return status, got, reusable

    status, got, reusable = asyncio.run(scenario())
    assert got == body
    assert status in (200, 404)
    assert reusable is (b"HTTP/1.0" not in response)


# ----------------------------------------------------------------------------- module option checks


class ModuleExit(Exception):
    pass


def run_module(args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    def exit_json(self: basic.AnsibleModule, **kwargs: Any) -> None:
        raise ModuleExit(False, kwargs)

    def fail_json(self: basic.AnsibleModule, **kwargs: Any) -> None:
        raise ModuleExit(True, kwargs)

    with patch_module_args(args), mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json):
        try:
            llm_bench.main()
        except ModuleExit as exc:
            return exc.args[0], exc.args[1]
    raise AssertionError("module did not exit")


LOAD = {"url": "http://127.0.0.1:1", "model": "m"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"model": "m"}, "mode is load but all of the following are missing: url"),
        ({"mode": "eval", "eval_file": "x"}, "mode is eval but all of the following are missing: endpoints"),
        ({"mode": "eval", "endpoints": [{"url": "http://h:1", "model": "m"}]}, "eval_file, eval_items"),
        ({**LOAD, "max_concurrency": 0}, "max_concurrency must be > 0, got 0"),
        ({**LOAD, "request_rate": -1}, "request_rate must be > 0, got -1.0"),
        ({**LOAD, "concurrency_levels": [1, 0]}, "concurrency_levels must hold positive integers, got [1, 0]"),
        ({**LOAD, "percentiles": [50, 120]}, "percentiles must lie within 0..100, got 120.0"),
        ({**LOAD, "goodput": {"ttlt": 5}}, "goodput key 'ttlt' is not one of ttft, tpot, e2el"),
        ({**LOAD, "goodput": {"ttft": "fast"}}, "goodput.ttft must be a positive number of milliseconds, got 'fast'"),
        ({**LOAD, "url": "h:8000"}, "url must start with http:// or https://, got 'h:8000'"),
        ({**LOAD, "prompts_file": "/nonexistent.jsonl"}, "prompts_file /nonexistent.jsonl: [Errno 2]"),
    ],
)
def test_module_rejects_bad_options(args: dict[str, Any], message: str) -> None:
    failed, result = run_module(args)
    assert failed
    assert message in result["msg"]


def test_module_fails_when_every_request_fails() -> None:
    failed, result = run_module({**LOAD, "num_prompts": 3, "warmup_requests": 0, "input_len": 4})
    assert failed
    assert result["msg"].startswith(
        "concurrency unlimited: 3 of 3 requests failed (max_error_rate 0.1); most common error: "
    )
    assert "refused" in result["msg"].lower()
    assert result["results"]["runs"][0]["metrics"]["failed"] == 3


def test_module_hides_api_keys() -> None:
    assert llm_bench.ARGUMENT_SPEC["api_key"]["no_log"] is True
    assert llm_bench.ARGUMENT_SPEC["endpoints"]["options"]["api_key"]["no_log"] is True


def test_check_mode_sends_no_request(tmp_path: Path) -> None:
    """Check mode must not put load on the endpoint: a real listening socket sees no connection."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    out = tmp_path / "bench.json"
    args = {**LOAD, "url": f"http://127.0.0.1:{port}", "num_prompts": 5, "warmup_requests": 1,
            "concurrency_levels": [1, 4], "output_file": str(out), "_ansible_check_mode": True}
    try:
        failed, result = run_module(args)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert not failed and result["changed"] is False
    assert result["would_send"] == {"mode": "load", "targets": [f"http://127.0.0.1:{port}"], "requests": 12,
                                    "concurrency_levels": [1, 4]}
    assert "sent none" in result["summary"][0]
    assert not out.exists()
