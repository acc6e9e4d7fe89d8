"""Jinja filters of the model_pipeline role: the catalog it hands model_cache, and its servers.

``model_pipeline_catalog`` adds one catalog entry per adapter (``<name>-adapter``, an ssh source on
the training host) so model_cache fetches adapters with model_sync like any model.
``model_pipeline_servers`` is one llama.cpp server per model and served format: its port, unit,
the build output it serves, the kept release and the ``current`` link the unit reads.
"""

from __future__ import annotations

import posixpath
from typing import Any


def model_pipeline_catalog(models: list[dict], catalog: dict) -> dict:
    """``fleet_models`` plus an ssh source entry per adapter."""
    out = dict(catalog or {})
    for model in models or []:
        adapter = model.get("adapter")
        if not isinstance(adapter, dict):
            continue
        ssh = {"host": adapter["host"], "path": adapter["path"]}
        for key in ("user", "port"):
            if adapter.get(key) not in (None, ""):
                ssh[key] = adapter[key]
        out[f"{model['name']}-adapter"] = {"source": {"ssh": ssh}}
    return out


def model_pipeline_base_names(catalog: dict) -> dict[str, list[str]]:
    """Names an adapter's base_model_name_or_path may carry for each catalog model: the catalog
    name, its served name, its hub repository, and its source directory's name."""
    out: dict[str, list[str]] = {}
    for name, entry in (catalog or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        source = entry.get("source") if isinstance(entry.get("source"), dict) else {}
        names = [name, entry.get("served_name"), source.get("hf")]
        for kind in ("ssh", "path"):
            value = source.get(kind)
            path = value.get("path") if isinstance(value, dict) else value
            if path:
                names.append(posixpath.basename(str(path).rstrip("/")))
        names += list(entry.get("base_names") or [])
        out[name] = [str(n) for n in dict.fromkeys(names) if n]
    return out


def model_pipeline_servers(
    models: list[dict],
    formats: list[str],
    workdir: str,
    lmstudio_root: str,
    publisher: str,
) -> list[dict[str, Any]]:
    """One server per model and format (ports: the model's port, then the next ones in order)."""
    servers = []
    for model in models or []:
        name = model["name"]
        for index, fmt in enumerate(formats):
            file = f"{name}-{fmt}.gguf"
            base = posixpath.join(workdir, name)
            servers.append(
                {
                    "model": name,
                    "format": fmt,
                    "port": int(model["port"]) + index,
                    "unit": f"llmfleet-llamacpp-{name}-{fmt.lower().replace('_', '-')}.service",
                    "served_name": f"{name}-{fmt.lower()}",
                    "file": file,
                    "build": posixpath.join(base, "build", file),
                    "releases": posixpath.join(base, "releases"),
                    "current": posixpath.join(base, "current", file),
                    "lmstudio": posixpath.join(lmstudio_root, model.get("publisher") or publisher, name, file),
                    "system_prompt": model.get("system_prompt") or "",
                }
            )
    return servers


def model_pipeline_endpoints(servers: list[dict], address: str) -> list[dict[str, str]]:
    """llm_bench eval endpoints of the servers, labelled by format (F16: the merged model)."""
    return [
        {
            "name": "merged (F16)" if s["format"] == "F16" else s["format"],
            "model": s["served_name"],
            "url": f"http://{address}:{s['port']}/v1",
        }
        for s in servers
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "model_pipeline_catalog": model_pipeline_catalog,
            "model_pipeline_base_names": model_pipeline_base_names,
            "model_pipeline_servers": model_pipeline_servers,
            "model_pipeline_endpoints": model_pipeline_endpoints,
        }
