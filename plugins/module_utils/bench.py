# Copyright: llm-fleet contributors
# Apache-2.0
"""Load generator and evaluator behind the llm_bench module.

Standard library only (it travels to the host that runs the module). The numbers follow vLLM's own
``vllm bench serve`` definitions so the two can be compared side by side:

* TTFT: request sent -> first streamed chunk that carries ``choices``;
* ITL: gaps between successive such chunks, over all requests;
* TPOT: per request, (E2E latency - TTFT) / (output tokens - 1), for requests with more than one token;
* E2E latency: request sent -> end of the stream;
* output tokens: the server's ``usage.completion_tokens`` (``stream_options.include_usage``); when the
  server sends no usage, the number of chunks with text;
* throughputs: totals over the wall time from the first dispatch to the last completion;
* goodput: completed requests meeting every given SLO (TTFT, TPOT, E2E in ms) per second.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.async_http import AsyncPool, StaleConnectionError
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import EndpointError
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import (
    auth_headers,
    completion_path,
    completion_payload,
)

RESULTS_VERSION = 1
MATCH_MODES = ("exact", "contains", "regex")

# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q!r}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentile_key(q: float) -> str:
    """50 -> 'p50', 99.9 -> 'p99.9'."""
    return "p" + (str(int(q)) if float(q).is_integer() else str(q))


def describe(
    values: Sequence[float], percentiles: Iterable[float] = (50, 90, 99), scale: float = 1.0
) -> dict[str, float | int | None]:
    """count, mean, median, std (population, as numpy), min, max and the percentiles, times ``scale``."""
    out: dict[str, float | int | None] = {"count": len(values)}
    if not values:
        for key in ("mean", "median", "std", "min", "max"):
            out[key] = None
        for q in percentiles:
            out[percentile_key(q)] = None
        return out
    n = len(values)
    mean = sum(values) / n
    out["mean"] = mean * scale
    out["median"] = percentile(values, 50) * scale
    out["std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / n) * scale
    out["min"] = min(values) * scale
    out["max"] = max(values) * scale
    for q in percentiles:
        out[percentile_key(q)] = percentile(values, q) * scale
    return out


# --------------------------------------------------------------------------------------------
# Arrivals
# --------------------------------------------------------------------------------------------


def arrival_offsets(count: int, request_rate: float | None, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds after the start at which each request is sent.

    ``request_rate`` None or inf sends everything at once (bounded by the concurrency limit). Otherwise
    gaps are Gamma(shape=burstiness, scale=1/(rate*burstiness)): burstiness 1 is a Poisson process,
    lower is burstier, higher is more regular; the mean rate is ``request_rate`` either way (as vLLM).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count!r}")
    if request_rate is None or math.isinf(request_rate):
        return [0.0] * count
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0 requests/s, got {request_rate!r}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness!r}")
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.gammavariate(burstiness, 1.0 / (request_rate * burstiness))
    return offsets


# --------------------------------------------------------------------------------------------
# Server-sent events
# --------------------------------------------------------------------------------------------


class SSEDecoder:
    """Incremental decoder of a ``text/event-stream`` body: feed bytes, get the ``data`` of each complete
    event. Handles events split across reads, several events in one read, CRLF, multi-line data
    (joined by newlines) and comment lines (``: ping``)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += self._decoder.decode(chunk)
        events = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            line, self._buffer = self._buffer[: cut[0]], self._buffer[cut[1] :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[str]:
        """Flush a last event the server did not terminate with a blank line."""
        events = []
        if self._buffer:
            event = self._line(self._buffer)
            self._buffer = ""
            if event is not None:
                events.append(event)
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: str) -> str | None:
        if line == "":
            if self._data:
                data, self._data = "\n".join(self._data), []
                return data
            return None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


def _line_end(text: str) -> tuple[int, int] | None:
    """(end of the first line, start of the next) for \\n, \\r\\n or \\r endings; None if incomplete."""
    for pos, char in enumerate(text):
        if char == "\n":
            return pos, pos + 1
        if char == "\r":
            if pos + 1 == len(text):
                return None  # a \n may follow in the next read
            return (pos, pos + 2) if text[pos + 1] == "\n" else (pos, pos + 1)
    return None


def chunk_text(event: dict[str, Any]) -> str:
    """Text carried by one streamed completion or chat chunk."""
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or delta.get("reasoning_content") or ""
    return choice.get("text") or ""


# --------------------------------------------------------------------------------------------
# Prompts and eval sets
# --------------------------------------------------------------------------------------------

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "that",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "they",
    "this",
    "have",
    "had",
    "not",
    "are",
    "but",
    "which",
    "one",
    "all",
    "were",
    "when",
    "we",
    "there",
    "can",
    "an",
    "been",
    "has",
    "more",
    "their",
    "if",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "year",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "river",
    "mountain",
    "garden",
    "window",
    "market",
    "music",
    "color",
    "paper",
    "light",
    "energy",
]


@dataclass
class BenchItem:
    prompt: str
    max_tokens: int | None = None
    expected: list[str] | None = None
    match: str = "contains"
    id: str = ""


def synthetic_prompts(count: int, input_len: int, seed: int = 0) -> list[BenchItem]:
    """``count`` prompts of ``input_len`` common English words (about one token each for BPE tokenizers;
    the real prompt token count comes back in the server's usage). Each prompt is drawn independently
    so prefix caching does not flatter the numbers."""
    if input_len < 1:
        raise ValueError(f"input_len must be >= 1, got {input_len!r}")
    rng = random.Random(seed)
    return [BenchItem(prompt=" ".join(rng.choice(_WORDS) for _ in range(input_len)), id=str(i)) for i in range(count)]


def parse_items(lines: Iterable[str], source: str = "<items>", need_expected: bool = False) -> list[BenchItem]:
    """BenchItems from JSONL: ``prompt`` (or ``question``), optional ``max_tokens`` / ``output_tokens``,
    ``expected`` / ``answer`` (string or list of accepted answers), ``match`` and ``id``."""
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: not JSON: {exc}") from exc
        items.append(item_from_dict(row, f"{source}:{number}", need_expected))
    if not items:
        raise ValueError(f"{source} holds no items")
    return items


def item_from_dict(row: Any, where: str, need_expected: bool = False) -> BenchItem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: item must be a JSON object, got {row!r}")
    prompt = row.get("prompt", row.get("question"))
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
    expected = row.get("expected", row.get("answer"))
    if isinstance(expected, str):
        expected = [expected]
    if expected is not None and (not isinstance(expected, list) or not all(isinstance(e, str) for e in expected)):
        raise ValueError(f"{where}: 'expected' must be a string or a list of strings, got {expected!r}")
    if need_expected and not expected:
        raise ValueError(f"{where}: eval items need 'expected'")
    match = row.get("match", "contains")
    if match not in MATCH_MODES:
        raise ValueError(f"{where}: 'match' must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    if match == "regex":
        for pattern in expected or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{where}: bad regex {pattern!r}: {exc}") from exc
    max_tokens = row.get("max_tokens", row.get("output_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"{where}: 'max_tokens' must be a positive integer, got {max_tokens!r}")
    return BenchItem(prompt=prompt, max_tokens=max_tokens, expected=expected, match=match, id=str(row.get("id", where)))


def load_items(path: str, need_expected: bool = False) -> list[BenchItem]:
    with open(path, encoding="utf-8") as handle:
        return parse_items(handle, path, need_expected)


def normalize_answer(text: str) -> str:
    """Casefold, collapse whitespace, drop surrounding punctuation and quotes."""
    return re.sub(r"\s+", " ", text.casefold()).strip().strip(" .,;:!?\"'`*()[]")


def score_answer(answer: str, expected: Sequence[str], match: str = "contains") -> bool:
    """Whether ``answer`` matches any accepted answer.

    exact: equal after normalize_answer; contains: the normalized expected text occurs in the answer as
    whole words or numbers ("4" is not found in "14" nor "0" in "18.0"); regex: ``re.search`` ignoring case.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
    norm = normalize_answer(answer)
    for exp in expected:
        if match == "exact" and norm == normalize_answer(exp):
            return True
        if match == "contains":
            needle = normalize_answer(exp)
            if needle and re.search(r"(?<![\w.])" + re.escape(needle) + r"(?!\w|[.,]\d)", norm):
                return True
        if match == "regex" and re.search(exp, answer, re.IGNORECASE):
            return True
    return False


# --------------------------------------------------------------------------------------------
# One streamed request
# --------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    ok: bool = False
    error: str | None = None
    start: float = 0.0
    ttft: float | None = None
    latency: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    text_chunks: int = 0
    text: str = ""
    finish_reason: str | None = None

    @property
    def output_len(self) -> int:
        """Output tokens for the metrics: the server's usage, else the chunks that carried text."""
        if self.output_tokens is not None:
            return self.output_tokens
        return self.text_chunks

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.latency is None or self.output_len <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_len - 1)


async def _stream_once(pool: AsyncPool, path: str, body: bytes, headers: dict[str, str], result: RequestResult) -> None:
    conn = await pool.acquire()
    clean = False
    try:
        result.start = time.perf_counter()
        status, _ = await conn.request("POST", path, body, headers)
        if status != 200:
            raw = b"".join([data async for _, data in conn.iter_body()])
            clean = True
            result.error = _http_error(status, raw)
            return
        decoder = SSEDecoder()
        last = result.start
        async for arrived, data in conn.iter_body():
            for event_data in decoder.feed(data):
                last = _handle_event(event_data, arrived, last, result)
        for event_data in decoder.close():
            last = _handle_event(event_data, time.perf_counter(), last, result)
        clean = True
        result.latency = time.perf_counter() - result.start
        if result.error is None:
            if result.ttft is None:
                result.error = "stream ended without any completion chunk"
            else:
                result.ok = True
    finally:
        await pool.release(conn, clean)


def _handle_event(data: str, arrived: float, last: float, result: RequestResult) -> float:
    if data.strip() == "[DONE]":
        return last
    try:
        event = json.loads(data)
    except ValueError:
        result.error = f"stream chunk is not JSON: {data[:200]!r}"
        return last
    if not isinstance(event, dict):
        return last
    if event.get("error"):
        err = event["error"]
        result.error = "server error in stream: " + str(err.get("message", err) if isinstance(err, dict) else err)
        return last
    if event.get("choices"):
        if result.ttft is None:
            result.ttft = arrived - result.start
        else:
            result.itl.append(arrived - last)
        text = chunk_text(event)
        if text:
            result.text_chunks += 1
            result.text += text
        finish = event["choices"][0].get("finish_reason")
        if finish:
            result.finish_reason = finish
        last = arrived
    usage = event.get("usage")
    if isinstance(usage, dict):
        if usage.get("completion_tokens") is not None:
            result.output_tokens = int(usage["completion_tokens"])
        if usage.get("prompt_tokens") is not None:
            result.prompt_tokens = int(usage["prompt_tokens"])
    return last


def _http_error(status: int, raw: bytes) -> str:
    message = raw.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(message)
        if isinstance(payload, dict):
            err = payload.get("error", payload.get("detail", payload.get("message", message)))
            message = str(err.get("message", err) if isinstance(err, dict) else err)
    except ValueError:
        pass
    return f"HTTP {status}: {message[:300]}" if message else f"HTTP {status}"


async def stream_request(
    pool: AsyncPool, path: str, payload: dict[str, Any], headers: dict[str, str], timeout: float
) -> RequestResult:
    """Send one streaming request and time it. Never raises: failures land in ``error``."""
    body = json.dumps(payload).encode("utf-8")
    all_headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    all_headers.update(headers)
    for attempt in (1, 2):
        result = RequestResult()
        try:
            await asyncio.wait_for(_stream_once(pool, pool.path(path), body, all_headers, result), timeout)
            return result
        except StaleConnectionError:
            if attempt == 2:
                result.error = "server closed the connection twice before answering"
                return result
        except asyncio.TimeoutError:  # noqa: UP041 - not the builtin TimeoutError before Python 3.11
            result.error = f"timed out after {timeout:g}s"
            result.latency = time.perf_counter() - result.start
            return result
        except (OSError, EndpointError, asyncio.IncompleteReadError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return result
    return result  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


@dataclass
class LoadConfig:
    url: str
    model: str
    api: str = "completions"
    api_key: str | None = None
    max_concurrency: int | None = None
    request_rate: float | None = None
    burstiness: float = 1.0
    seed: int = 0
    output_len: int = 128
    ignore_eos: bool = False
    timeout: float = 600.0
    warmup_requests: int = 1
    validate_certs: bool = True
    percentiles: tuple[float, ...] = (50, 90, 99)
    goodput: dict[str, float] | None = None
    detailed: bool = False

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("api_key")
        out["percentiles"] = list(self.percentiles)
        if out["request_rate"] is None:
            out["request_rate"] = "inf"
        return out


def _payload(cfg: LoadConfig, item: BenchItem, max_tokens: int | None = None) -> dict[str, Any]:
    extra = {"ignore_eos": True} if cfg.ignore_eos else None
    return completion_payload(
        cfg.model,
        item.prompt,
        max_tokens or item.max_tokens or cfg.output_len,
        cfg.api,
        temperature=0.0,
        stream=True,
        extra=extra,
    )


async def run_load_async(cfg: LoadConfig, items: Sequence[BenchItem]) -> tuple[list[RequestResult], float]:
    """Send every item once, at the configured arrival times and concurrency. Returns (results, seconds)."""
    pool = AsyncPool(cfg.url, cfg.validate_certs)
    headers = auth_headers(cfg.api_key)
    path = completion_path(cfg.api)
    try:
        for item in list(items)[: cfg.warmup_requests]:
            await stream_request(pool, path, _payload(cfg, item, 8), headers, cfg.timeout)
        offsets = arrival_offsets(len(items), cfg.request_rate, cfg.burstiness, cfg.seed)
        limit = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        start = time.perf_counter()

        async def one(offset: float, item: BenchItem) -> RequestResult:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if limit is None:
                return await stream_request(pool, path, _payload(cfg, item), headers, cfg.timeout)
            async with limit:
                return await stream_request(pool, path, _payload(cfg, item), headers, cfg.timeout)

        results = await asyncio.gather(*(one(offsets[n], item) for n, item in enumerate(items)))
        return list(results), time.perf_counter() - start
    finally:
        await pool.close()


def compute_metrics(
    results: Sequence[RequestResult],
    duration: float,
    percentiles: Iterable[float] = (50, 90, 99),
    goodput: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What ``vllm bench serve`` reports, from the per-request results of one run."""
    percentiles = tuple(percentiles)
    done = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    ttfts = [r.ttft for r in done if r.ttft is not None]
    tpots = [r.tpot for r in done if r.tpot is not None]
    itls = [gap for r in done for gap in r.itl]
    e2els = [r.latency for r in done if r.latency is not None]
    total_in = sum(r.prompt_tokens or 0 for r in done)
    total_out = sum(r.output_len for r in done)
    metrics: dict[str, Any] = {
        "num_requests": len(results),
        "completed": len(done),
        "failed": len(failed),
        "duration_s": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(done) / duration if duration > 0 else None,
        "output_throughput": total_out / duration if duration > 0 else None,
        "total_token_throughput": (total_in + total_out) / duration if duration > 0 else None,
        "ttft_ms": describe(ttfts, percentiles, 1000.0),
        "tpot_ms": describe(tpots, percentiles, 1000.0),
        "itl_ms": describe(itls, percentiles, 1000.0),
        "e2el_ms": describe(e2els, percentiles, 1000.0),
        "usage_reported": all(r.output_tokens is not None for r in done) if done else None,
        "errors": count_errors(failed),
    }
    if goodput:
        good = sum(1 for r in done if meets_slos(r, goodput))
        metrics["goodput_slos_ms"] = dict(goodput)
        metrics["good_requests"] = good
        metrics["request_goodput"] = good / duration if duration > 0 else None
    return metrics


def meets_slos(result: RequestResult, slos_ms: dict[str, float]) -> bool:
    """vLLM's rule: every given SLO (``ttft``, ``tpot``, ``e2el``, ms) is met; one-token answers: TPOT 0."""
    values = {"ttft": result.ttft, "tpot": result.tpot or 0.0, "e2el": result.latency}
    for name, limit in slos_ms.items():
        key = name.replace("_ms", "")
        if key not in values:
            raise ValueError(f"unknown SLO {name!r}: use ttft, tpot or e2el (milliseconds)")
        value = values[key]
        if value is None or value * 1000.0 > limit:
            return False
    return True


def count_errors(failed: Iterable[RequestResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in failed:
        key = result.error or "unknown error"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def request_rows(results: Sequence[RequestResult], detailed: bool = False) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "ok": r.ok,
            "start_s": r.start,
            "ttft_s": r.ttft,
            "latency_s": r.latency,
            "tpot_s": r.tpot,
            "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_len,
            "error": r.error,
        }
        if detailed:
            row["itl_s"] = r.itl
            row["text"] = r.text
        rows.append(row)
    if rows:
        first = min(row["start_s"] for row in rows if row["start_s"]) if any(r["start_s"] for r in rows) else 0.0
        for row in rows:
            row["start_s"] = (row["start_s"] - first) if row["start_s"] else None
    return rows


def run_load(
    cfg: LoadConfig, items: Sequence[BenchItem], concurrency_levels: Sequence[int | None] | None = None
) -> dict[str, Any]:
    """One run per concurrency level (or one run at ``cfg.max_concurrency``) -> results document."""
    levels = list(concurrency_levels) if concurrency_levels else [cfg.max_concurrency]
    runs = []
    for level in levels:
        run_cfg = LoadConfig(**{**asdict(cfg), "max_concurrency": level})
        results, duration = asyncio.run(run_load_async(run_cfg, items))
        runs.append(
            {
                "max_concurrency": level,
                "request_rate": cfg.request_rate if cfg.request_rate is not None else "inf",
                "metrics": compute_metrics(results, duration, cfg.percentiles, cfg.goodput),
                "requests": request_rows(results, cfg.detailed),
            }
        )
    return {
        "kind": "llmfleet.bench",
        "version": RESULTS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "endpoint": {"url": cfg.url, "model": cfg.model, "api": cfg.api},
        "config": dict(cfg.describe(), num_prompts=len(items)),
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class EvalEndpoint:
    name: str
    url: str
    model: str
    api_key: str | None = None
    api: str = "chat"


def evaluate(
    endpoints: Sequence[EvalEndpoint],
    items: Sequence[BenchItem],
    max_tokens: int = 32,
    concurrency: int = 4,
    timeout: float = 120.0,
    validate_certs: bool = True,
    percentiles: Iterable[float] = (50, 90, 99),
) -> dict[str, Any]:
    """Every endpoint answers every item (greedy); per-model quality score, latency and throughput."""
    models = []
    for ep in endpoints:
        cfg = LoadConfig(
            url=ep.url,
            model=ep.model,
            api=ep.api,
            api_key=ep.api_key,
            max_concurrency=concurrency,
            output_len=max_tokens,
            timeout=timeout,
            warmup_requests=0,
            validate_certs=validate_certs,
            percentiles=tuple(percentiles),
        )
        results, duration = asyncio.run(run_load_async(cfg, items))
        rows = []
        correct = 0
        for item, res in ((items[n], results[n]) for n in range(len(items))):
            ok = res.ok and score_answer(res.text, item.expected or [], item.match)
            correct += ok
            rows.append(
                {
                    "id": item.id,
                    "prompt": item.prompt,
                    "expected": item.expected,
                    "match": item.match,
                    "answer": res.text,
                    "correct": ok,
                    "error": res.error,
                    "latency_s": res.latency,
                    "ttft_s": res.ttft,
                    "output_tokens": res.output_len,
                }
            )
        metrics = compute_metrics(results, duration, percentiles)
        models.append(
            {
                "name": ep.name,
                "url": ep.url,
                "model": ep.model,
                "total": len(items),
                "correct": correct,
                "score": correct / len(items) if items else 0.0,
                "errors": metrics["failed"],
                "metrics": metrics,
                "items": rows,
            }
        )
    return {
        "kind": "llmfleet.eval",
        "version": RESULTS_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "items": len(items),
            "percentiles": list(percentiles),
        },
        "models": models,
    }
