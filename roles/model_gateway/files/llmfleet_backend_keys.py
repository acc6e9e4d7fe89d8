"""Backend API keys of the llm-fleet gateway, re-read when they change (a LiteLLM callback).

config.yaml holds no backend key: a keyed backend's ``litellm_params.api_key`` is the placeholder
``llmfleet-backend-keys-file``. After the router has picked a deployment and before the request is
sent, this callback (``litellm_settings.callbacks``) puts that backend's key, read from a 0600 JSON
file the model_gateway role writes (path in LLMFLEET_GATEWAY_BACKEND_KEYS_FILE), into the request:

    {"<deployment id>": {"api_base": "http://host:port/v1", "key": "<key>"}, ...}

The file is read again whenever it changes, so a backend's key is rotated without restarting the
proxy (playbooks/runbooks/backend_key.yml; docs/model_gateway.md, "Rotating keys"). A backend found
neither by its deployment id nor by its api_base keeps the placeholder: the backend answers 401 and
the router retries the request on another backend of the model.
"""

from __future__ import annotations

import json
import os
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

PLACEHOLDER = "llmfleet-backend-keys-file"
_METADATA = ("metadata", "litellm_metadata")


class BackendKeys(CustomLogger):
    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path or os.environ.get(
            "LLMFLEET_GATEWAY_BACKEND_KEYS_FILE", "/etc/llmfleet-gateway/backend_keys.json"
        )
        self._mtime: int | None = None
        self._by_id: dict[str, str] = {}
        self._by_base: dict[str, str] = {}

    def _load(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        with open(self.path, encoding="utf-8") as handle:
            data = json.load(handle)
        self._by_id = {str(i): str(e.get("key") or "") for i, e in data.items()}
        self._by_base = {str(e.get("api_base") or "").rstrip("/"): str(e.get("key") or "") for e in data.values()}
        self._mtime = mtime

    @staticmethod
    def _deployment_id(kwargs: dict[str, Any]) -> str | None:
        for name in _METADATA:
            info = (kwargs.get(name) or {}).get("model_info") or {}
            if info.get("id"):
                return str(info["id"])
        info = kwargs.get("model_info") or {}
        return str(info["id"]) if info.get("id") else None

    def key_for(self, kwargs: dict[str, Any]) -> str | None:
        self._load()
        found = self._by_id.get(self._deployment_id(kwargs) or "")
        if found is None:
            found = self._by_base.get(str(kwargs.get("api_base") or "").rstrip("/"))
        return found or None

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict | None:
        if kwargs.get("api_key") != PLACEHOLDER:
            return None
        key = self.key_for(kwargs)
        if key is None:
            return None
        changed = dict(kwargs, api_key=key)
        # An OpenAI SDK client the router made at start carries the placeholder: let LiteLLM make
        # (and cache) one with the key instead. hosted_vllm's HTTP handler takes the key per request.
        if type(changed.get("client")).__module__.split(".")[0] == "openai":
            changed.pop("client")
        return changed


backend_keys = BackendKeys()
