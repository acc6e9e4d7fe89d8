# Copyright: llm-fleet contributors
# Apache-2.0
"""Talk to an OpenAI-compatible server (vLLM, llama.cpp server, LM Studio) with the standard library.

This file travels to target hosts inside the llm_health / llm_bench modules, so it uses only
``urllib``, ``socket``, ``ssl`` and ``asyncio``: a host with nothing but python3 can run it.

Two clients live here:

* a blocking one (``request``, ``list_models``, ``complete``) for health checks;
* an asyncio one (``AsyncPool`` / ``AsyncConnection``) that streams a response body chunk by chunk
  with the arrival time of each chunk, for the load generator in ``llmfleet_bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."
USER_AGENT = "llm-fleet/0.1 (+llm_health)"


class EndpointError(Exception):
    """The endpoint could not be reached or answered with something that is not HTTP."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


def normalize_base_url(url: str) -> str:
    """Return the server root for ``url``: no trailing slash, no trailing ``/v1``.

    Operators paste either ``http://h:8000`` or ``http://h:8000/v1`` (what OpenAI SDKs want);
    both name the same server, and ``/health`` and ``/metrics`` live at its root.
    """
    if not url or not isinstance(url, str):
        raise ValueError(f"url must be a non-empty string, got {url!r}")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")
    if not parsed.hostname:
        raise ValueError(f"url has no host: {url!r}")
    path = parsed.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def join_url(base: str, path: str) -> str:
    """``join_url('http://h:8000/v1', '/v1/models')`` -> ``http://h:8000/v1/models``."""
    return normalize_base_url(base) + "/" + path.lstrip("/")


def host_port(url: str) -> tuple[str, int]:
    """Host and port of ``url``, with the scheme's default port when none is written."""
    parsed = urllib.parse.urlsplit(normalize_base_url(url))
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname or "", port


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# --------------------------------------------------------------------------------------------
# Blocking client
# --------------------------------------------------------------------------------------------


@dataclass
class HttpResponse:
    url: str
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise EndpointError(
                f"{self.url} answered HTTP {self.status} with a body that is not JSON: {exc} "
                f"(body starts {self.body[:200]!r})",
                self.url,
            ) from exc

    def error_summary(self) -> str:
        """One line for a non-2xx answer: status plus the server's own message when it gave one."""
        message = self.text.strip()
        try:
            payload = json.loads(message)
            if isinstance(payload, dict):
                err = payload.get("error", payload.get("detail", payload.get("message")))
                if isinstance(err, dict):
                    err = err.get("message", err)
                if err:
                    message = str(err)
        except ValueError:
            pass
        if len(message) > 300:
            message = message[:300] + "..."
        return f"HTTP {self.status}: {message}" if message else f"HTTP {self.status}"


def _ssl_context(validate_certs: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not validate_certs:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(
    method: str,
    url: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    validate_certs: bool = True,
) -> HttpResponse:
    """One HTTP request. Any HTTP status comes back as a response; only transport failures raise.

    Proxies from the environment are ignored: health checks talk to the endpoint itself.
    """
    body = None
    all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if payload is not None:
        body = json.dumps(payload).encode("utf-8")
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    req = urllib.request.Request(url, data=body, headers=all_headers, method=method)
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if url.startswith("https://"):
        handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(validate_certs)))
    opener = urllib.request.build_opener(*handlers)
    start = time.perf_counter()
    try:
        with opener.open(req, timeout=timeout) as resp:
            data = resp.read()
            return HttpResponse(url, resp.status, dict(resp.headers.items()), data, time.perf_counter() - start)
    except urllib.error.HTTPError as exc:
        data = exc.read() if exc.fp is not None else b""
        return HttpResponse(
            url, exc.code, dict(exc.headers.items()) if exc.headers else {}, data, time.perf_counter() - start
        )
    except urllib.error.URLError as exc:
        raise EndpointError(f"{method} {url} failed: {describe_socket_error(exc.reason)}", url) from exc
    except TimeoutError as exc:
        raise EndpointError(f"{method} {url} timed out after {timeout:.1f}s", url) from exc
    except (OSError, ValueError) as exc:
        # http.client.RemoteDisconnected, ConnectionResetError, BadStatusLine ...
        raise EndpointError(f"{method} {url} failed: {describe_socket_error(exc)}", url) from exc


def describe_socket_error(reason: Any) -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(reason, socket.gaierror):
        return "name does not resolve (%s)" % (reason.strerror or reason)
    if isinstance(reason, BaseException):
        text = str(reason) or type(reason).__name__
        return f"{type(reason).__name__}: {text}" if text != type(reason).__name__ else text
    return str(reason)


def check_port(host: str, port: int, timeout: float = 5.0) -> tuple[bool, str, float]:
    """TCP connect to host:port. Returns (ok, detail, seconds)."""
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return False, f"{host}:{port}: {describe_socket_error(exc)}", time.perf_counter() - start
    elapsed = time.perf_counter() - start
    return True, f"{host}:{port} accepts connections ({elapsed * 1000:.1f} ms)", elapsed


def model_ids(payload: Any) -> list[str]:
    """Served model names from a ``/v1/models`` answer (OpenAI shape, or llama.cpp's ``models``)."""
    if not isinstance(payload, dict):
        raise ValueError(f"/v1/models answer is not a JSON object: {payload!r}")
    items = payload.get("data")
    if items is None:
        items = payload.get("models")
    if not isinstance(items, list):
        raise ValueError(f"/v1/models answer has no 'data' list: {payload!r}")
    ids = []
    for item in items:
        if isinstance(item, dict):
            name = item.get("id") or item.get("model") or item.get("name")
            if name:
                ids.append(str(name))
        elif isinstance(item, str):
            ids.append(item)
    return ids


@dataclass
class Completion:
    text: str
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    model: str | None

    @property
    def tokens_per_s(self) -> float | None:
        """Output tokens over the whole request time (prefill included), from the server's usage."""
        if not self.completion_tokens or self.latency_s <= 0:
            return None
        return self.completion_tokens / self.latency_s

    def as_dict(self) -> dict[str, Any]:
        tps = self.tokens_per_s
        return {
            "text": self.text,
            "latency_s": round(self.latency_s, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(tps, 2) if tps is not None else None,
            "finish_reason": self.finish_reason,
            "model": self.model,
        }


def completion_payload(
    model: str,
    prompt: str,
    max_tokens: int,
    api: str = "chat",
    temperature: float = 0.0,
    stream: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if api not in ("chat", "completions"):
        raise ValueError(f"api must be 'chat' or 'completions', got {api!r}")
    payload: dict[str, Any] = {"model": model, "max_tokens": int(max_tokens), "temperature": temperature}
    if api == "chat":
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    if extra:
        payload.update(extra)
    return payload


def completion_path(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


def parse_completion(payload: Any, latency_s: float) -> Completion:
    """Text, usage and finish reason from a (non-streamed) chat or text completion answer."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"completion answer has no choices: {json.dumps(payload)[:300]}")
    choice = payload["choices"][0]
    message = choice.get("message")
    if isinstance(message, dict):
        text = message.get("content") or ""
        if not text and message.get("reasoning_content"):
            text = message["reasoning_content"]
    else:
        text = choice.get("text") or ""
    usage = payload.get("usage") or {}
    return Completion(
        text=text,
        latency_s=latency_s,
        prompt_tokens=_opt_int(usage.get("prompt_tokens")),
        completion_tokens=_opt_int(usage.get("completion_tokens")),
        finish_reason=choice.get("finish_reason"),
        model=payload.get("model"),
    )


def _opt_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def complete(
    base_url: str,
    model: str,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 32,
    api: str = "chat",
    api_key: str | None = None,
    timeout: float = 60.0,
    validate_certs: bool = True,
    temperature: float = 0.0,
) -> Completion:
    """A real, greedy completion. Raises EndpointError on transport or HTTP failure."""
    url = join_url(base_url, completion_path(api))
    resp = request(
        "POST",
        url,
        completion_payload(model, prompt, max_tokens, api, temperature),
        auth_headers(api_key),
        timeout,
        validate_certs,
    )
    if resp.status != 200:
        raise EndpointError(f"POST {url}: {resp.error_summary()}", url)
    try:
        return parse_completion(resp.json(), resp.elapsed_s)
    except ValueError as exc:
        raise EndpointError(f"POST {url}: {exc}", url) from exc


# --------------------------------------------------------------------------------------------
# Prometheus text exposition (/metrics)
# --------------------------------------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass
class Sample:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    value: float = 0.0


def parse_prometheus_text(text: str) -> list[Sample]:
    """Samples from Prometheus' text format. Malformed lines are skipped, not fatal."""
    samples = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if not match:
            continue
        name, label_text, value_text = match.groups()
        labels: dict[str, str] = {}
        if label_text:
            inner = label_text[1:-1]
            pos = 0
            while pos < len(inner):
                lm = _LABEL_RE.match(inner, pos)
                if not lm:
                    break
                labels[lm.group(1)] = lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                pos = lm.end()
        try:
            value = float(value_text)
        except ValueError:
            continue
        samples.append(Sample(name, labels, value))
    return samples


# The serving metrics a health check cares about, by server family. Values are summed over
# label sets (several engines or models in one process), except ratios, which take the max.
_METRIC_MAP = {
    "running": ("vllm:num_requests_running", "llamacpp:requests_processing"),
    "waiting": ("vllm:num_requests_waiting", "llamacpp:requests_deferred"),
    "kv_cache_usage": (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "llamacpp:kv_cache_usage_ratio",
    ),
    "prompt_tokens_total": ("vllm:prompt_tokens_total", "llamacpp:prompt_tokens_total"),
    "generation_tokens_total": ("vllm:generation_tokens_total", "llamacpp:tokens_predicted_total"),
    "preemptions_total": ("vllm:num_preemptions_total",),
    "request_success_total": ("vllm:request_success_total",),
}
_RATIO_KEYS = ("kv_cache_usage",)


def summarize_serving_metrics(samples: list[Sample]) -> dict[str, Any]:
    """running / waiting requests, KV-cache usage (0..1) and token counters from /metrics samples.

    Keys whose metric the server does not export are absent. ``source`` names the server family
    ("vllm", "llamacpp") when one was recognised, and ``models`` lists ``model_name`` labels.
    """
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    summary: dict[str, Any] = {}
    for key, names in _METRIC_MAP.items():
        for name in names:
            if name in by_name:
                values = [s.value for s in by_name[name]]
                summary[key] = max(values) if key in _RATIO_KEYS else sum(values)
                break
    prefixes = {s.name.split(":", 1)[0] for s in samples if ":" in s.name}
    for family in ("vllm", "llamacpp"):
        if family in prefixes:
            summary["source"] = family
            break
    models = sorted({s.labels["model_name"] for s in samples if "model_name" in s.labels})
    if models:
        summary["models"] = models
    return summary


# --------------------------------------------------------------------------------------------
# asyncio streaming client (for the load generator)
# --------------------------------------------------------------------------------------------


class HttpProtocolError(EndpointError):
    """The server broke HTTP/1.1 framing."""


class StaleConnectionError(HttpProtocolError):
    """A reused keep-alive connection was closed by the server before it answered: retry once."""


class AsyncConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams.

    ``request`` sends a request and returns (status, headers); ``iter_body`` then yields
    ``(arrival_time, bytes)`` per chunk as it arrives (chunked transfer decoding, Content-Length,
    or read-to-close). The caller must drain ``iter_body`` before the next ``request``.
    """

    def __init__(self, host: str, port: int, use_ssl: bool = False, validate_certs: bool = True) -> None:
        self.host = host
        self.port = port
        self.use_ssl = use_ssl
        self.validate_certs = validate_certs
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reusable = False
        self.requests_sent = 0
        self._framing: tuple[str, int] = ("close", 0)

    async def connect(self) -> None:
        ctx = _ssl_context(self.validate_certs) if self.use_ssl else None
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=ctx, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reusable = True

    @property
    def connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str]]:
        if not self.connected:
            await self.connect()
        if self.reader is None or self.writer is None:
            raise HttpProtocolError(f"connection to {self.host}:{self.port} is not open")
        host_header = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {host_header}",
            f"User-Agent: {USER_AGENT}",
            f"Content-Length: {len(body)}",
        ]
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        reused = self.requests_sent > 0
        self.requests_sent += 1
        try:
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await self.writer.drain()
            status_line = await self.reader.readline()
        except (ConnectionResetError, BrokenPipeError) as exc:
            if reused:
                raise StaleConnectionError(f"kept-alive connection reset: {exc}") from exc
            raise
        if not status_line:
            if reused:
                raise StaleConnectionError(f"{self.host}:{self.port} closed a kept-alive connection")
            raise HttpProtocolError(f"{self.host}:{self.port} closed the connection before answering")
        parts = status_line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HttpProtocolError(f"{self.host}:{self.port} sent a bad status line {status_line!r}")
        status = int(parts[1])
        resp_headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            resp_headers[key.strip().lower()] = value.strip()
        if resp_headers.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0":
            self.reusable = False
        if "chunked" in resp_headers.get("transfer-encoding", "").lower():
            self._framing = ("chunked", 0)
        elif "content-length" in resp_headers:
            self._framing = ("length", int(resp_headers["content-length"]))
        else:
            self._framing = ("close", 0)
            self.reusable = False
        return status, resp_headers

    async def iter_body(self) -> AsyncIterator[tuple[float, bytes]]:
        if self.reader is None:
            raise HttpProtocolError(f"connection to {self.host}:{self.port} is not open: no response to read")
        kind, length = self._framing
        if kind == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise HttpProtocolError("connection closed inside a chunked body")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers, then the blank line
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield time.perf_counter(), data
        elif kind == "length":
            remaining = length
            while remaining > 0:
                data = await self.reader.read(min(remaining, 65536))
                if not data:
                    raise HttpProtocolError(f"connection closed with {remaining} body bytes missing")
                remaining -= len(data)
                yield time.perf_counter(), data
        else:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                yield time.perf_counter(), data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self.writer.wait_closed()
        self.writer = None
        self.reader = None


class AsyncPool:
    """Idle keep-alive connections to one server; ``acquire`` reuses one or opens a new one."""

    def __init__(self, base_url: str, validate_certs: bool = True) -> None:
        self.base_url = normalize_base_url(base_url)
        self.host, self.port = host_port(self.base_url)
        self.use_ssl = self.base_url.startswith("https://")
        self.prefix = urllib.parse.urlsplit(self.base_url).path
        self.validate_certs = validate_certs
        self._idle: list[AsyncConnection] = []

    def path(self, api_path: str) -> str:
        return self.prefix + "/" + api_path.lstrip("/")

    async def acquire(self) -> AsyncConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.connected:
                return conn
        return AsyncConnection(self.host, self.port, self.use_ssl, self.validate_certs)

    async def release(self, conn: AsyncConnection, ok: bool) -> None:
        if ok and conn.reusable and conn.connected:
            self._idle.append(conn)
        else:
            await conn.close()

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()
