# Copyright: llm-fleet contributors
# Apache-2.0
"""An asyncio HTTP/1.1 client with keep-alive connections, for the load generator in ``bench``.

``AsyncConnection`` streams a response body chunk by chunk with the arrival time of each chunk
(what time-to-first-token and inter-token latency are measured from); ``AsyncPool`` keeps idle
connections to one server. Standard library only (``asyncio``, ``socket``, ``ssl``).

Proxies are not used: the load generator measures the server itself, and a proxy in between would
be measured with it. (Blocking calls go through ``clients.http.request`` and its proxy policy.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator

from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import USER_AGENT, EndpointError
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import host_port, normalize_base_url


def _ssl_context(validate_certs: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not validate_certs:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


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
