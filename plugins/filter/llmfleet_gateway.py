"""Jinja filters that build the model gateway's configuration from the catalog and the inventory.

Nothing is typed twice: every backend of a model is a record of the fleet's endpoint registry
(``fleet_endpoints``, plugins/filter/llmfleet_endpoints.py: vLLM instances, Slurm jobs, pipeline
llama.cpp servers, Kubernetes Services), an entry of ``model_gateway_external_backends`` (endpoints
outside the inventory) or a row added with ``llmfleet models add``; costs come from ``fleet_models``. Backend
API keys never enter the rendered config: a keyed backend's ``api_key`` is a placeholder, and the
proxy's callback (roles/model_gateway/files/llmfleet_backend_keys.py) puts the key from the
gateway's 0600 ``backend_keys.json`` into each request, re-reading that file when it changes, so a
backend key is rotated without restarting the proxy.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError

try:  # the collection's own import path (ansible); tests put the collection on sys.path
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.endpoint import (
        UnknownModel,
        catalog_costs,
        catalog_entry,
        endpoint,
        host_address,
    )
except ImportError:  # pragma: no cover
    from llmfleet_endpoint import UnknownModel, catalog_costs, catalog_entry, endpoint, host_address

LOOPBACK = ("127.0.0.1", "localhost", "::1")

# LiteLLM's provider prefix for an OpenAI-compatible backend by kind.
PROVIDERS = {"vllm": "hosted_vllm", "openai": "openai", "llamacpp": "openai"}


# What config.yaml says for a keyed backend's api_key: the callback swaps in the key (not a secret).
BACKEND_KEY_PLACEHOLDER = "llmfleet-backend-keys-file"
# The callback that does so (a module the role installs beside config.yaml, and its instance).
BACKEND_KEYS_CALLBACK = "llmfleet_backend_keys.backend_keys"


def _catalog_entry(models: dict, name: str, where: str) -> dict:
    try:
        return catalog_entry(models, name, where)
    except UnknownModel as exc:
        raise AnsibleFilterError(str(exc)) from exc


def _catalog_fields(name: str, entry: dict) -> dict:
    return {
        "source": "catalog",
        "served_name": str(entry.get("served_name") or name),
        **catalog_costs(name, entry),
    }


def gateway_registry_backends(rows: list[dict], models: dict) -> list[dict]:
    """Registry rows added with ``llmfleet models add`` (source cli) as backends, with their own costs.

    A row whose name is a catalog model is left to the catalog (the CLI refuses such names).
    """
    backends = []
    for row in rows or []:
        if row.get("source") != "cli" or row.get("name") in models:
            continue
        backends.append(
            {
                "id": str(row.get("backend_id") or f"cli/{row['name']}"),
                "kind": str(row.get("kind") or "openai"),
                "host": "",
                "instance": str(row["name"]),
                "model": str(row["name"]),
                "backend_model": str(row.get("backend_model") or row["name"]),
                "api_base": str(row["backend_url"]).rstrip("/"),
                "key_file": "",
                "api_key": "",
                "source": "cli",
                "served_name": str(row["name"]),
                "display_name": str(row.get("display_name") or row["name"]),
                "input_cost": float(row.get("input_cost") or 0),
                "output_cost": float(row.get("output_cost") or 0),
            }
        )
    return backends


def gateway_endpoints(host: str, hostvars: Any, models: dict) -> list[dict]:
    """The endpoint record of a gateway host (``hostvars``: its variables, role defaults included):
    the proxy's OpenAI API at ``model_gateway_scheme``://(its listen address, or the host's service
    address when it listens everywhere):``model_gateway_port``; its master key given in the
    inventory, else kept on the host (``<model_gateway_config_dir>/keys/master.key``). It answers
    to every served name of the catalog."""
    listen = str(hostvars["model_gateway_listen"])
    address = listen if listen not in ("0.0.0.0", "::") else host_address(host, hostvars)
    scheme = str(hostvars["model_gateway_scheme"])
    served = [str((e or {}).get("served_name") or name) for name, e in (models or {}).items()]
    config_dir = str(hostvars["model_gateway_config_dir"])
    master = str(hostvars["model_gateway_master_key"] or "")
    return [
        endpoint(
            kind="gateway",
            runtime="systemd",
            host=host,
            instance="gateway",
            model="",
            served=served,
            base_url=f"{scheme}://{address}:{int(hostvars['model_gateway_port'])}/v1",
            costs=catalog_costs("gateway", {}),
            key_file="" if master else f"{config_dir}/keys/master.key",
            api_key=master,
            systemd_unit="llmfleet-gateway.service",
        )
    ]


def gateway_backends(records: list[dict], models: dict) -> list[dict]:
    """The backends the gateway routes to: every endpoint record that serves a model (not the
    gateway itself, not a Kubernetes cluster only rendered, not a Slurm job whose connection info
    gave no address yet). Clients ask for the catalog's served name; the backend is asked for its
    own (``backend_model``). A pipeline llama.cpp server listening on loopback only is refused: the
    gateway cannot reach it."""
    backends = []
    for record in records or []:
        if record["kind"] == "gateway" or not record["applied"] or not record["base_url"]:
            continue
        if record["kind"] == "llamacpp" and urlsplit(record["base_url"]).hostname in LOOPBACK:
            raise AnsibleFilterError(
                f"host {record['host']}: model_pipeline_server_host is {urlsplit(record['base_url']).hostname}, so "
                "the gateway cannot reach its llama.cpp servers; set it to an address the gateway host reaches (or "
                "0.0.0.0), or leave the host out of model_gateway_workstations"
            )
        entry = (
            _catalog_entry(models, record["model"], f"host {record['host']}: {record['instance']}")
            if (record["kind"] == "vllm")
            else (models or {}).get(record["model"]) or {}
        )
        backends.append(
            {
                "id": record["id"],
                "kind": record["kind"],
                "host": record["host"],
                "instance": record["instance"],
                "model": record["model"],
                "backend_model": record["served_names"][0],
                "api_base": record["base_url"],
                "key_file": record["key_file"],
                "api_key": record["api_key"],
                "source": "catalog",
                "served_name": str(entry.get("served_name") or record["model"]),
                "display_name": record["display_name"],
                "input_cost": record["input_cost"],
                "output_cost": record["output_cost"],
            }
        )
    return backends


def gateway_external_backends(external: list[dict], models: dict) -> list[dict]:
    """``model_gateway_external_backends`` as backends: endpoints the inventory does not describe."""
    backends = []
    for index, ext in enumerate(external or []):
        where = f"model_gateway_external_backends[{index}] ({ext.get('name')})"
        entry = _catalog_entry(models, ext.get("model"), where)
        kind = ext.get("kind") or "openai"
        if kind not in PROVIDERS:
            raise AnsibleFilterError(f"{where}: kind {kind!r} is unknown; allowed: {', '.join(PROVIDERS)}")
        backends.append(
            {
                "id": f"external/{ext['name']}",
                "kind": kind,
                "host": "",
                "instance": ext["name"],
                "model": ext["model"],
                "backend_model": str(ext.get("backend_model") or entry.get("served_name") or ext["model"]),
                "api_base": str(ext["url"]).rstrip("/"),
                "key_file": "",
                "api_key": ext.get("api_key") or "",
                **_catalog_fields(ext["model"], entry),
            }
        )
    return backends


def gateway_with_keys(backends: list[dict], key_reads: list[dict] | None) -> list[dict]:
    """Attach the keys read (slurp results, looped over backends) to the backends without one."""
    read = {}
    for result in key_reads or []:
        content = result.get("content")
        if content and not result.get("failed"):
            read[result["item"]["id"]] = base64.b64decode(content).decode().strip()
    return [{**b, "api_key": b["api_key"] or read.get(b["id"], "")} for b in backends]


def _number(value: Any) -> Any:
    """Numbers templated as strings back to numbers (task vars may arrive either way)."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    return value


def _limits(name: str, limits: dict) -> dict:
    own = (limits or {}).get(name) or {}
    return {k: int(own[k]) for k in ("rpm", "tpm") if own.get(k) is not None}


def gateway_config(backends: list[dict], models: dict, settings: dict) -> dict:
    """LiteLLM's config.yaml as data: model_list (one entry per backend), router and general settings.

    ``settings``: routing_strategy, num_retries, retry_after, allowed_fails, cooldown_time, timeout,
    stream_timeout, fallbacks ({model: [models]}), model_limits ({model: {rpm, tpm}}), health_check_interval.
    """
    settings = {k: _number(v) for k, v in (settings or {}).items()}
    model_list = []
    for b in backends:
        params = {
            "model": f"{PROVIDERS[b['kind']]}/{b['backend_model']}",
            "api_base": b["api_base"],
            "api_key": BACKEND_KEY_PLACEHOLDER if b.get("api_key") else "none",
            "timeout": settings.get("timeout"),
            "stream_timeout": settings.get("stream_timeout"),
            **_limits(b["model"], settings.get("model_limits") or {}),
        }
        model_list.append(
            {
                "model_name": b["served_name"],
                "litellm_params": {k: v for k, v in params.items() if v is not None},
                "model_info": {
                    "id": b["id"],
                    "input_cost_per_token": b["input_cost"] / 1e6,
                    "output_cost_per_token": b["output_cost"] / 1e6,
                },
            }
        )
    served_of = {name: str((e or {}).get("served_name") or name) for name, e in models.items()}
    fallbacks = [
        {served_of.get(src, src): [served_of.get(dst, dst) for dst in dsts]}
        for src, dsts in sorted((settings.get("fallbacks") or {}).items())
    ]
    router = {
        "routing_strategy": settings.get("routing_strategy", "simple-shuffle"),
        "num_retries": settings.get("num_retries", 2),
        "retry_after": settings.get("retry_after", 0),
        "allowed_fails": settings.get("allowed_fails", 1),
        "cooldown_time": settings.get("cooldown_time", 30),
        "timeout": settings.get("timeout"),
        "enable_pre_call_checks": True,
    }
    if fallbacks:
        router["fallbacks"] = fallbacks
    redis = settings.get("redis") or {}
    if redis:
        router.update(redis_host=str(redis["host"]), redis_port=int(redis.get("port", 6379)))
    return {
        "model_list": model_list,
        "router_settings": {k: v for k, v in router.items() if v is not None},
        "litellm_settings": {
            "num_retries": settings.get("num_retries", 2),
            "request_timeout": settings.get("timeout"),
            "drop_params": True,
            "callbacks": [BACKEND_KEYS_CALLBACK],
        },
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            "custom_auth": "llmfleet_auth.user_api_key_auth",
            "background_health_checks": bool(settings.get("health_check_interval")),
            "health_check_interval": settings.get("health_check_interval") or 300,
        },
    }


def gateway_backend_keys(backends: list[dict]) -> dict:
    """backend_keys.json: deployment id -> {api_base, key}, for the backends that have a key."""
    return {b["id"]: {"api_base": b["api_base"], "key": b["api_key"]} for b in backends if b.get("api_key")}


def gateway_registry_rows(backends: list[dict]) -> list[dict]:
    """The model_mappings rows of the catalog's backends (costs per million tokens, as in the catalog)."""
    return [
        {
            "name": b["model"],
            "display_name": b["display_name"],
            "backend_url": b["api_base"],
            "backend_id": b["id"],
            "kind": b["kind"],
            "input_cost": b["input_cost"],
            "output_cost": b["output_cost"],
        }
        for b in backends
        if b.get("source") == "catalog"
    ]


def gateway_kept_key_names(client_keys: list[dict], master_key: str) -> list[str]:
    """Keys the gateway host generates and keeps: ``internal`` (LiteLLM's own master key, which it needs
    to start; callers never see it), ``master`` unless given, ``client-<name>`` for callers without one."""
    names = ["internal"] if master_key else ["internal", "master"]
    return names + [f"client-{c['name']}" for c in client_keys or [] if not c.get("key")]


def gateway_clients(client_keys: list[dict], kept: dict) -> list[dict]:
    """The callers of keys.json: each key as given, else the one kept on the gateway host."""
    clients = []
    for index, client in enumerate(client_keys or []):
        key = client.get("key") or kept.get(f"client-{client['name']}") or ""
        if not key:
            raise AnsibleFilterError(
                f"model_gateway_client_keys[{index}] ({client['name']}): no key given and none kept on the host; "
                "give key (from a vault) or set model_gateway_key_generate: true"
            )
        entry = {"name": client["name"], "key": key, "models": list(client.get("models") or [])}
        entry.update({k: int(client[k]) for k in ("rpm_limit", "tpm_limit") if client.get(k) is not None})
        clients.append(entry)
    return clients


def gateway_health_url(api_base: str, kind: str = "vllm") -> str:
    """Where the gateway host probes a backend's health: ``/health`` beside its ``/v1`` base, except
    for the pipeline's llama.cpp servers (kind llamacpp: llama-cpp-python's server has no /health
    route, so its ``/v1/models``, which answers once the model is loaded)."""
    base = re.sub(r"/v1/?$", "", str(api_base).rstrip("/"))
    return f"{base}/v1/models" if kind == "llamacpp" else f"{base}/health"


def gateway_rows_with_health(probes: list[dict]) -> list[dict]:
    """Registry rows (the ``item`` of each probe) with ``health`` from the probe of their /health now."""
    out = []
    for probe in probes or []:
        status = probe.get("status", -1)
        health = "healthy" if status == 200 else ("unreachable" if status in (-1, None) else f"unhealthy ({status})")
        out.append({**probe["item"], "health": health})
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "gateway_external_backends": gateway_external_backends,
            "gateway_backends": gateway_backends,
            "gateway_health_url": gateway_health_url,
            "gateway_with_keys": gateway_with_keys,
            "gateway_config": gateway_config,
            "gateway_backend_keys": gateway_backend_keys,
            "gateway_registry_rows": gateway_registry_rows,
            "gateway_registry_backends": gateway_registry_backends,
            "gateway_clients": gateway_clients,
            "gateway_kept_key_names": gateway_kept_key_names,
            "gateway_rows_with_health": gateway_rows_with_health,
        }
