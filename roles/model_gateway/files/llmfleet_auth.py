"""Key check of the llm-fleet gateway (LiteLLM ``general_settings.custom_auth``), without a database.

LiteLLM's own client keys ("virtual keys") live in its database, which needs Prisma engine binaries
downloaded at run time. This hook reads the keys from one 0600 JSON file instead (written by the
model_gateway role, path in LLMFLEET_GATEWAY_KEYS_FILE):

    {"master": ["<key>", ...], "clients": [{"name": ..., "key": ..., "rpm_limit": N, "tpm_limit": N,
     "models": [...]}]}

The file is read again whenever it changes, so a key is added or retired without a restart and
without a failed request (docs/model_gateway.md, "Rotating keys"). A request with no key or an
unknown one is refused with 401; LiteLLM's rate limiter enforces each client's rpm / tpm limits
(429 over them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, ProxyErrorTypes, ProxyException, UserAPIKeyAuth

_KEYS_FILE = os.environ.get("LLMFLEET_GATEWAY_KEYS_FILE", "/etc/llmfleet-gateway/keys.json")
_cache: dict = {"mtime": None, "master": [], "clients": []}


def _load() -> dict:
    try:
        mtime = os.stat(_KEYS_FILE).st_mtime_ns
    except OSError:
        return _cache
    if mtime != _cache["mtime"]:
        with open(_KEYS_FILE, encoding="utf-8") as handle:
            data = json.load(handle)
        _cache.update(mtime=mtime, master=list(data.get("master") or []), clients=list(data.get("clients") or []))
    return _cache


def _refuse(message: str) -> ProxyException:
    return ProxyException(message=message, type=ProxyErrorTypes.auth_error, param="api_key", code=401)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = (api_key or "").removeprefix("Bearer ").strip()
    if not key:
        raise _refuse("no API key: send Authorization: Bearer <key>")
    keys = _load()
    token = hashlib.sha256(key.encode()).hexdigest()
    if any(_same(key, m) for m in keys["master"]):
        return UserAPIKeyAuth(api_key=key, token=token, user_role=LitellmUserRoles.PROXY_ADMIN)
    for client in keys["clients"]:
        if _same(key, str(client.get("key", ""))):
            return UserAPIKeyAuth(
                api_key=key,
                token=token,
                key_alias=client.get("name"),
                user_id=client.get("name"),
                rpm_limit=client.get("rpm_limit"),
                tpm_limit=client.get("tpm_limit"),
                models=list(client.get("models") or []),
            )
    raise _refuse("invalid API key")
