# Copyright: llm-fleet contributors
# Apache-2.0
"""The OpenAI-compatible API (vLLM, llama.cpp server, LM Studio): URLs, auth, model ids, completions.

Standard library only; it travels to target hosts inside the llm_health / llm_bench modules. The
HTTP calls go through ``clients.http.request`` (one proxy policy); the streaming client of the
load generator is ``clients.async_http``.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import EndpointError, request

DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."

# The options of a module that talks to one server (documented by the llmfleet.fleet.endpoint doc
# fragment): merged into its argument_spec, as community.docker's DOCKER_COMMON_ARGS is.
ENDPOINT_ARGS: dict[str, dict[str, Any]] = {
    "url": {"type": "str"},
    "api_key": {"type": "str", "no_log": True},
    "validate_certs": {"type": "bool", "default": True},
}


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
# Models and completions
# --------------------------------------------------------------------------------------------


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
