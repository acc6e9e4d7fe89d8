"""Jinja filters of the model_pipeline role: the catalog it hands model_cache, and its servers.

``model_pipeline_catalog`` adds one catalog entry per adapter (``<name>-adapter``, an ssh source on
the training host) so model_cache fetches adapters with model_sync like any model.
``model_pipeline_servers`` is one llama.cpp server per model and served format: its port, unit,
the build output it serves, the kept release and the ``current`` link the unit reads.
"""

from __future__ import annotations

import posixpath
from typing import Any

try:  # the collection's own import path (ansible); tests put the collection on sys.path
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.endpoint import (
        catalog_costs,
        endpoint,
        host_address,
    )
except ImportError:  # pragma: no cover
    from llmfleet_endpoint import catalog_costs, endpoint, host_address


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


def model_pipeline_endpoints_of(host: str, hostvars: Any, models: dict) -> list[dict]:
    """The endpoint records of a workstation (``hostvars``: its variables, role defaults included):
    one per llama.cpp server the pipeline runs (a model and a served format, at consecutive ports),
    at the server's bind address, or the host's service address when it listens everywhere. Each is
    a model of its own (its served name ``<name>-<format>``), costs from a catalog entry of that
    name when there is one; no key."""
    listen = str(hostvars["model_pipeline_server_host"])
    address = listen if listen not in ("0.0.0.0", "::") else host_address(host, hostvars)
    formats = hostvars["model_pipeline_serve_formats"]
    records = []
    for server in model_pipeline_servers(hostvars.get("model_pipeline_models") or [], formats, "", "", ""):
        served = server["served_name"]
        entry = (models or {}).get(served) or {}
        costs = catalog_costs(served, entry)
        costs["display_name"] = str(entry.get("display_name") or f"{server['model']} ({server['format']})")
        records.append(
            endpoint(
                kind="llamacpp",
                runtime="systemd",
                host=host,
                instance=served,
                model=served,
                served=[served],
                base_url=f"http://{address}:{server['port']}/v1",
                costs=costs,
                systemd_unit=server["unit"],
                record_id=f"{host}/llamacpp-{served}",
            )
        )
    return records


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "model_pipeline_catalog": model_pipeline_catalog,
            "model_pipeline_base_names": model_pipeline_base_names,
            "model_pipeline_servers": model_pipeline_servers,
            "model_pipeline_endpoints": model_pipeline_endpoints,
        }
