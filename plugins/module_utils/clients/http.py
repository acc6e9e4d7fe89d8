# Copyright: llm-fleet contributors
# Apache-2.0
"""The one way module_utils make a blocking HTTP call, on ``ansible.module_utils.urls.open_url``.

Every blocking HTTP call of the collection's modules goes through ``request`` (health checks, the
health gate's polls, completions) or, for a body to stream (a download), ``open_http``, so they
share one proxy policy, one TLS switch and one timeout meaning; ``request`` also shares one set of
error texts. (The asyncio client of the load generator, ``clients.async_http``, connects directly.)

Proxy policy:

* the standard proxy environment variables are honoured, as ``use_proxy=True`` of
  ``ansible.module_utils.urls`` (urllib's default handler) honours them: ``http_proxy`` for
  ``http://`` URLs, ``https_proxy`` for ``https://`` URLs (either case), and ``no_proxy`` (host
  names and domain suffixes, ``*`` for all) for the hosts reached directly;
* loopback is never proxied, whatever ``no_proxy`` says: ``localhost`` (and ``*.localhost``),
  ``127.0.0.0/8``, ``::1`` and the unspecified addresses ``0.0.0.0`` / ``::``. urllib, and so
  ``open_url``, sends ``http://127.0.0.1:8000`` to ``http_proxy`` unless ``no_proxy`` names it, and
  a proxy cannot reach this host's loopback: a health check of a local server would test the proxy.
  So a request to a loopback URL is made with ``use_proxy=False`` here, explicitly.

``proxy_for`` states the decision for one URL (which proxy, or None for direct); ``open_http`` (a
response to stream) and ``request`` (a whole answer, JSON bodies) act on it. Host names are not
resolved for the decision: a name that resolves to a loopback address but is not ``localhost``
follows ``no_proxy`` like any other name.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url

USER_AGENT = "llm-fleet/0.1 (+llm_health)"


class EndpointError(Exception):
    """The endpoint could not be reached or answered with something that is not HTTP."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


# --------------------------------------------------------------------------------------------
# Proxy decision
# --------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address literal, IPv6 with or without brackets) is this host."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        addr = mapped
    return addr.is_loopback or addr.is_unspecified


def proxy_for(url: str) -> str | None:
    """The proxy a request to ``url`` goes through under the current environment, or None (direct).

    Loopback hosts are direct; otherwise this is urllib's own decision (``getproxies`` for the
    URL's scheme, then ``proxy_bypass`` with ``no_proxy``), the one ``request`` leaves to it.
    """
    parts = urllib.parse.urlsplit(url)
    if is_loopback(parts.hostname or ""):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy:
        return None
    hostport = parts.netloc.rpartition("@")[2]
    if hostport and urllib.request.proxy_bypass(hostport):
        return None
    return proxy


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


def open_http(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    validate_certs: bool = True,
) -> Any:
    """Send one request under the proxy policy above; return the response unread, for the caller to
    read (a download streams it) and close.

    Raises what ``open_url`` raises: ``urllib.error.HTTPError`` for a non-2xx answer (it carries the
    status and body), ``urllib.error.URLError`` / ``OSError`` when nothing answered. No ``~/.netrc``
    credentials are added and a gzip body is not decoded: the caller sends exactly what it means to.
    """
    return open_url(
        url,
        data=data,
        headers=headers or {},
        method=method,
        use_proxy=not is_loopback(urllib.parse.urlsplit(url).hostname or ""),
        timeout=timeout,
        validate_certs=validate_certs,
        use_netrc=False,
        decompress=False,
    )


def request(
    method: str,
    url: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    validate_certs: bool = True,
) -> HttpResponse:
    """One HTTP request. Any HTTP status comes back as a response; only transport failures raise.

    ``payload`` (when not None) is sent as a JSON body. Proxies: see the module docstring.
    """
    body = None
    all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if payload is not None:
        body = json.dumps(payload).encode("utf-8")
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    start = time.perf_counter()
    try:
        with open_http(method, url, body, all_headers, timeout, validate_certs) as resp:
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
    except (OSError, ValueError, UrlsConnectionError) as exc:
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
