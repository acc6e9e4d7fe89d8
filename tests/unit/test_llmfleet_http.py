"""clients.http: the one blocking HTTP client of module_utils and its proxy policy.

Real sockets only: a real HTTP server on 127.0.0.1 and a real listening "proxy" socket that records
what reaches it. No other host is reachable from a test, so which non-loopback URLs are proxied is
checked on the decision function with a table, and end to end with a name the proxy is asked for
(a proxied request never resolves the target name itself).
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible.module_utils.urls import open_url
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import (
    USER_AGENT,
    EndpointError,
    is_loopback,
    open_http,
    proxy_for,
    request,
)

PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ftp_proxy")


class RecordingProxy:
    """A listening socket standing in for a proxy: records each request line, answers 502."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.request_lines: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.request_lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\nConnection: close\r\n\r\nvia proxy")

    def close(self) -> None:
        self.sock.close()


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(  # type: ignore[attr-defined]
            {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
        )
        if self.path == "/missing":
            out, status = json.dumps({"error": {"message": "no such route"}}).encode(), 404
        else:
            out, status = json.dumps({"ok": True, "path": self.path}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    """A recording proxy, set as http_proxy and https_proxy (both cases), with no_proxy unset."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    rec = RecordingProxy()
    for name in ("http_proxy", "https_proxy"):
        monkeypatch.setenv(name, rec.url)
        monkeypatch.setenv(name.upper(), rec.url)
    yield rec
    rec.close()


def test_the_proxy_socket_sees_what_urllib_and_open_url_send_it(proxy: RecordingProxy, server) -> None:
    """The detector works, and the explicit loopback exemption is needed: plain urllib and
    open_url(use_proxy=True) both send a loopback URL to http_proxy when no_proxy does not name it."""
    url = f"http://127.0.0.1:{server.server_port}/health"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.build_opener().open(url, timeout=5)
    assert err.value.code == 502
    with pytest.raises(urllib.error.HTTPError) as err:
        open_url(url, use_proxy=True, timeout=5)
    assert err.value.code == 502
    assert proxy.request_lines == [f"GET {url} HTTP/1.1"] * 2
    assert server.seen == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_goes_direct_with_a_proxy_set(proxy: RecordingProxy, server, host: str) -> None:
    resp = request("GET", f"http://{host}:{server.server_port}/v1/models", headers={"X-Probe": "1"}, timeout=5)
    assert resp.status == 200
    assert resp.json() == {"ok": True, "path": "/v1/models"}
    assert proxy.request_lines == []
    (seen,) = server.seen
    assert seen["headers"]["User-Agent"] == USER_AGENT
    assert seen["headers"]["X-Probe"] == "1"


def test_open_http_streams_a_loopback_answer_direct(proxy: RecordingProxy, server) -> None:
    base = f"http://127.0.0.1:{server.server_port}"
    with open_http("GET", f"{base}/models", headers={"Range": "bytes=0-"}, timeout=5) as resp:
        assert resp.status == 200
        assert json.loads(resp.read(4096)) == {"ok": True, "path": "/models"}
    with pytest.raises(urllib.error.HTTPError) as err:
        open_http("GET", f"{base}/missing", timeout=5)
    assert err.value.code == 404
    assert server.seen[0]["headers"]["Range"] == "bytes=0-"
    assert proxy.request_lines == []


def test_json_body_and_http_errors_come_back_as_responses(proxy: RecordingProxy, server) -> None:
    base = f"http://127.0.0.1:{server.server_port}"
    resp = request("POST", f"{base}/v1/completions", {"model": "m", "prompt": "hi"}, {"Authorization": "Bearer k"})
    assert resp.status == 200
    seen = server.seen[-1]
    assert seen["method"] == "POST"
    assert json.loads(seen["body"]) == {"model": "m", "prompt": "hi"}
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["Authorization"] == "Bearer k"
    missing = request("GET", f"{base}/missing", timeout=5)
    assert missing.status == 404
    assert missing.error_summary() == "HTTP 404: no such route"
    assert proxy.request_lines == []


def test_a_non_loopback_name_goes_through_the_proxy(proxy: RecordingProxy) -> None:
    """The proxy is asked for the absolute URL; the name is never resolved here (.invalid never resolves)."""
    url = "http://model-server.invalid:8000/v1/models"
    resp = request("GET", url, timeout=5)
    assert resp.status == 502
    assert proxy.request_lines == [f"GET {url} HTTP/1.1"]


def test_no_proxy_makes_a_non_loopback_name_direct(proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "model-server.invalid")
    with pytest.raises(EndpointError) as err:
        request("GET", "http://model-server.invalid:8000/v1/models", timeout=5)
    assert str(err.value).startswith("GET http://model-server.invalid:8000/v1/models failed: ")
    assert proxy.request_lines == []


def test_nothing_listening_is_an_honest_connection_error(proxy: RecordingProxy) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError) as err:
        request("GET", f"http://127.0.0.1:{port}/health", timeout=5)
    assert str(err.value) == f"GET http://127.0.0.1:{port}/health failed: connection refused (nothing listens there)"
    assert proxy.request_lines == []


P = "http://proxy.example:3128"


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "http://10.0.0.5:8000/health", None),
        ({"http_proxy": P}, "http://10.0.0.5:8000/health", P),
        ({"HTTP_PROXY": P}, "http://gpu-node-1:8000/health", P),
        ({"http_proxy": P}, "http://gpu-node-1.example.org:8000/v1", P),
        ({"http_proxy": P}, "https://10.0.0.5:8443/health", None),
        ({"https_proxy": P}, "https://10.0.0.5:8443/health", P),
        ({"https_proxy": P}, "http://10.0.0.5:8000/health", None),
        ({"http_proxy": P, "no_proxy": "10.0.0.5"}, "http://10.0.0.5:8000/health", None),
        ({"http_proxy": P, "no_proxy": "example.org"}, "http://gpu-node-1.example.org:8000/", None),
        ({"http_proxy": P, "no_proxy": ".example.org"}, "http://gpu-node-1.example.org:8000/", None),
        ({"http_proxy": P, "no_proxy": "other.org"}, "http://gpu-node-1.example.org:8000/", P),
        ({"http_proxy": P, "NO_PROXY": "*"}, "http://10.0.0.5:8000/health", None),
        ({"http_proxy": P, "no_proxy": "gpu-node-1:8000"}, "http://gpu-node-1:8000/", None),
        ({"http_proxy": P, "no_proxy": "gpu-node-1:9000"}, "http://gpu-node-1:8000/", P),
        # loopback: direct whatever the environment says
        ({"http_proxy": P}, "http://127.0.0.1:8000/health", None),
        ({"http_proxy": P}, "http://127.8.9.10:8000/health", None),
        ({"http_proxy": P}, "http://localhost:8000/health", None),
        ({"http_proxy": P}, "http://LocalHost.:8000/health", None),
        ({"http_proxy": P}, "http://vllm.localhost:8000/health", None),
        ({"http_proxy": P}, "http://[::1]:8000/health", None),
        ({"http_proxy": P}, "http://[::ffff:127.0.0.1]:8000/health", None),
        ({"http_proxy": P}, "http://0.0.0.0:8000/health", None),
        ({"https_proxy": P}, "https://127.0.0.1:8443/health", None),
        ({"http_proxy": P, "no_proxy": "other.org"}, "http://127.0.0.1:8000/", None),
        ({"http_proxy": P}, "http://user:pw@127.0.0.1:8000/", None),
        # not loopback, though they look close
        ({"http_proxy": P}, "http://128.0.0.1:8000/health", P),
        ({"http_proxy": P}, "http://localhost.example.org:8000/health", P),
        ({"http_proxy": P}, "http://[::2]:8000/health", P),
    ],
)
def test_proxy_for(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: str | None) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(url) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", True),
        ("", False),
        ("10.0.0.1", False),
        ("fe80::1", False),
        ("gpu-node-1", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
