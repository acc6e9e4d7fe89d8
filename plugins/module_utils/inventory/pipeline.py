# Copyright: llm-fleet contributors
# Apache-2.0
"""Inventory checks of the model_pipeline role (hooked into inventory.checks.validate_host).

Refused before any host changes: a quantization type llama.cpp does not know, a model whose base is
not in the catalog, an adapter declared as trained on another base (the adapter's own
adapter_config.json is checked again on the workstation after download, before merge), a training
host outside the inventory, and two servers on one port (the pipeline's llama.cpp servers among
themselves, and against the host's vLLM instances and other services).
"""

from __future__ import annotations

from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.quantize.plan import FTYPES

# Role defaults the checks need (the validate play does not load role defaults).
DEFAULT_QUANTIZATIONS = ["Q4_K_M", "Q5_K_M", "Q8_0"]
DEFAULT_SERVE_FORMATS = ["Q4_K_M", "Q5_K_M", "Q8_0", "F16"]
OTHER_PORT_VARIABLES = (
    "model_gateway_port",
    "model_gateway_registry_port",
    "observability_stack_prometheus_port",
    "observability_stack_alertmanager_port",
)


def _port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _list(value: Any, default: list[str]) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else list(default)


def check_model_pipeline(
    host: str, host_groups: list[str], groups: Any, settings: dict[str, Any], models: Any
) -> list[str]:
    """Errors of one host's model_pipeline settings (empty when it has none)."""
    pipeline = settings.get("model_pipeline_models")
    if "model_workstations" not in host_groups and not pipeline:
        return []
    errors: list[str] = []
    allowed = ", ".join(sorted(FTYPES))
    quants = _list(settings.get("model_pipeline_quantizations"), DEFAULT_QUANTIZATIONS)
    for index, qtype in enumerate(quants):
        if qtype not in FTYPES:
            errors.append(
                f"host {host}: model_pipeline_quantizations[{index}] = {qtype!r} is not a quantization type "
                f"llama.cpp knows; allowed: {allowed}"
            )
    primary = settings.get("model_pipeline_primary_quantization")
    if primary not in (None, "") and str(primary) not in quants:
        errors.append(
            f"host {host}: model_pipeline_primary_quantization = {primary!r} is not one of "
            f"model_pipeline_quantizations; allowed: {', '.join(quants)}"
        )
    formats = _list(settings.get("model_pipeline_serve_formats"), DEFAULT_SERVE_FORMATS)
    for index, fmt in enumerate(formats):
        if fmt != "F16" and fmt not in quants:
            errors.append(
                f"host {host}: model_pipeline_serve_formats[{index}] = {fmt!r} is not built; allowed: F16 "
                f"(the merged model) or one of model_pipeline_quantizations ({', '.join(quants)})"
            )
    catalog = models if isinstance(models, dict) else {}
    inventory_hosts = set()
    for members in (groups or {}).values() if isinstance(groups, dict) else []:
        inventory_hosts.update(members or [])
    taken: dict[int, str] = {}
    instances = settings.get("vllm_service_instances")
    for index, inst in enumerate(instances if isinstance(instances, list) else []):
        port = _port(inst.get("port")) if isinstance(inst, dict) else None
        if port is not None:
            taken[port] = f"vllm_service_instances[{index}] ({inst.get('name')!r})"
    for variable in OTHER_PORT_VARIABLES:
        port = _port(settings.get(variable))
        if port is not None:
            taken.setdefault(port, variable)
    for index, model in enumerate(pipeline if isinstance(pipeline, list) else []):
        if not isinstance(model, dict):
            continue
        label = f"model_pipeline_models[{index}] ({model.get('name')!r})"
        base = model.get("base_model")
        if base not in catalog:
            errors.append(
                f"host {host}: {label}.base_model = {base!r} is not in fleet_models; allowed: "
                f"{', '.join(sorted(catalog)) or 'a catalog name'}"
            )
        adapter = model.get("adapter")
        if isinstance(adapter, dict):
            trained = adapter.get("trained_on")
            if trained not in (None, "") and trained != base:
                errors.append(
                    f"host {host}: {label}.adapter.trained_on = {trained!r} differs from its base_model {base!r}; "
                    f"allowed: {base!r} (an adapter merges only into the base it was trained on)"
                )
            if inventory_hosts and adapter.get("host") not in inventory_hosts:
                errors.append(
                    f"host {host}: {label}.adapter.host = {adapter.get('host')!r} is not an inventory host; "
                    "allowed: the training host, by its inventory name"
                )
        first = _port(model.get("port"))
        if first is None:
            continue
        for offset, fmt in enumerate(formats):
            port = first + offset
            what = f"{label} format {fmt} (port {first} + {offset})"
            if port in taken:
                errors.append(
                    f"host {host}: {what} = {port} is already used by {taken[port]} on this host; allowed: a port "
                    f"no other server of the host uses (each model takes {len(formats)} ports from its port)"
                )
            else:
                taken[port] = what
    return errors
