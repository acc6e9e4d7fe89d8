# Copyright: llm-fleet contributors
# Apache-2.0
"""The endpoint record: one OpenAI-compatible endpoint the fleet runs, as every consumer reads it.

Each kind of endpoint is produced once, beside the code that already knows it (a vLLM instance
under systemd or Compose: ``plugins/filter/llmfleet_vllm.py``; a Kubernetes Service:
``llmfleet_k8s.py``; a pipeline llama.cpp server: ``llmfleet_model_pipeline.py``; a Slurm job:
``llmfleet_slurm_job.py``; the gateway and endpoints outside the inventory: ``llmfleet_gateway.py``)
and gathered by ``plugins/filter/llmfleet_endpoints.py``. The gateway's backends, Prometheus' scrape
targets, the health runbook (``llmfleet health``, ``make lab``) and the model registry read these
records and nothing else.

A record never holds a key read from a host: ``key_file`` says where the key lives (on ``host``, or
on the controller when ``key_on`` is ``controller``); ``api_key`` is only a key the inventory gives
inline (from a vault), so records are handled with ``no_log`` like the inventory itself.
"""

from __future__ import annotations

from typing import Any

# Kind -> (health path, metrics path) of the server software behind it.
#   vllm: vLLM's own /health and /metrics.
#   llamacpp: llama-cpp-python's server has no /health and no /metrics; /v1/models answers once the
#     model is loaded.
#   gateway: LiteLLM's liveliness route; its /metrics is an Enterprise feature (off unless asked).
KIND_PATHS: dict[str, tuple[str, str]] = {
    "vllm": ("/health", "/metrics"),
    "llamacpp": ("/v1/models", ""),
    "gateway": ("/health/liveliness", ""),
}

# Where the endpoint runs: the supervisor the health check asks about restarts.
RUNTIMES = ("systemd", "docker", "slurm", "kubernetes")

FIELDS = (
    "id",
    "kind",
    "runtime",
    "host",
    "instance",
    "model",
    "served_names",
    "base_url",
    "key_file",
    "key_on",
    "api_key",
    "health_path",
    "metrics_path",
    "scrape_auth",
    "systemd_unit",
    "container",
    "applied",
    "display_name",
    "input_cost",
    "output_cost",
    "info_file",
)


def host_address(host: str, hostvars: Any) -> str:
    """Where peers reach a host's services: ``fleet_service_address``, else its default IPv4 address
    from facts, else its inventory name."""
    facts = hostvars.get("ansible_facts") or {}
    return str(hostvars.get("fleet_service_address") or (facts.get("default_ipv4") or {}).get("address") or host)


class UnknownModel(ValueError):
    """An endpoint names a model the catalog (``fleet_models``) does not have."""


def catalog_entry(models: dict, model: Any, where: str) -> dict:
    """The catalog entry of ``model``; ``where`` (host, variable, instance) names the reference."""
    if model not in (models or {}):
        raise UnknownModel(
            f"{where}: model {model!r} is not in fleet_models (known: {', '.join(sorted(models or {})) or 'none'})"
        )
    return models[model] or {}


def catalog_costs(name: str, entry: dict | None) -> dict[str, Any]:
    """Display name and costs (per million tokens) of a catalog entry (an empty entry: none)."""
    entry = entry or {}
    return {
        "display_name": str(entry.get("display_name") or entry.get("served_name") or name),
        "input_cost": float(entry.get("cost_per_million_input_tokens") or 0),
        "output_cost": float(entry.get("cost_per_million_output_tokens") or 0),
    }


def served_names(instance: dict, entry: dict | None, model: str) -> list[str]:
    """The names an instance answers to: its ``served_model_name`` (a name or a list), else the
    catalog's ``served_name``, else the catalog name. The one rule vLLM's argv, the gateway,
    Prometheus' labels and the health check follow."""
    served = instance.get("served_model_name") or (entry or {}).get("served_name") or model
    return [str(served)] if isinstance(served, str) else [str(s) for s in served]


def endpoint(
    *,
    kind: str,
    runtime: str,
    host: str,
    instance: str,
    model: str,
    served: list[str],
    base_url: str,
    costs: dict[str, Any],
    key_file: str = "",
    key_on: str = "host",
    api_key: str = "",
    health_path: str | None = None,
    metrics_path: str | None = None,
    scrape_auth: str = "none",
    systemd_unit: str = "",
    container: str = "",
    applied: bool = True,
    info_file: str = "",
    record_id: str | None = None,
) -> dict[str, Any]:
    """One record, with every field present (consumers never guess a key)."""
    if kind not in KIND_PATHS:
        raise ValueError(f"endpoint kind {kind!r} is unknown; known: {', '.join(KIND_PATHS)}")
    if runtime not in RUNTIMES:
        raise ValueError(f"endpoint runtime {runtime!r} is unknown; known: {', '.join(RUNTIMES)}")
    default_health, default_metrics = KIND_PATHS[kind]
    record = {
        "id": record_id or f"{host}/{instance}",
        "kind": kind,
        "runtime": runtime,
        "host": host,
        "instance": instance,
        "model": model,
        "served_names": [str(s) for s in served],
        "base_url": str(base_url).rstrip("/"),
        "key_file": key_file,
        "key_on": key_on if (key_file or api_key) else "",
        "api_key": api_key or "",
        "health_path": default_health if health_path is None else health_path,
        "metrics_path": default_metrics if metrics_path is None else metrics_path,
        "scrape_auth": scrape_auth,
        "systemd_unit": systemd_unit,
        "container": container,
        "applied": bool(applied),
        "display_name": costs["display_name"],
        "input_cost": costs["input_cost"],
        "output_cost": costs["output_cost"],
        "info_file": info_file,
    }
    return record
