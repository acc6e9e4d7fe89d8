"""Inventory checks of the vllm_kubernetes role (fleet_validate): what Kubernetes would reject, or
accept and then fail on, refused before anything is applied.

Kept apart from inventory/checks.py (which calls ``check_kubernetes`` from validate_host), with its
own small helpers, so neither imports the other's internals.
"""

from __future__ import annotations

import re
from typing import Any

# RFC 1123 label: what Kubernetes accepts as a namespace (and a Service) name.
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MAX = 63
OBJECT_PREFIX = "vllm-"
INSTANCE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
# Kubernetes quantities (resource.Quantity): a number and a binary or decimal suffix.
QUANTITY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}
PROBE_DEFAULTS = {"initial_delay_s": 0, "period_s": 10, "failure_threshold": 60}


def quantity(value: Any) -> float | None:
    """A Kubernetes quantity ("500m", "4Gi", 2) as a number, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = QUANTITY_RE.match(str(value).strip())
    return float(match.group(1)) * SUFFIX[match.group(2) or ""] if match else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _gpus(inst: dict) -> int | None:
    if inst.get("gpus") is not None:
        return _int(inst["gpus"])
    tp, pp = _int(inst.get("tensor_parallel_size", 1)), _int(inst.get("pipeline_parallel_size", 1))
    return tp * pp if tp and pp else None


def _label(index: int, inst: Any) -> str:
    name = inst.get("name") if isinstance(inst, dict) else None
    return f"vllm_kubernetes_instances[{index}]" + (f" ({name})" if name else "")


def _check_resources(where: str, resources: Any) -> list[str]:
    if not isinstance(resources, dict):
        return []
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    errors = []
    for kind, values in (("requests", requests), ("limits", limits)):
        for resource, given in (values.items() if isinstance(values, dict) else []):
            if quantity(given) is None:
                errors.append(
                    f"{where}.resources.{kind}.{resource} = {given!r} is not a Kubernetes quantity; "
                    "allowed: a number with an optional suffix (500m, 2, 4Gi, 512Mi)"
                )
    for resource in sorted(set(requests) & set(limits)):
        request, limit = quantity(requests[resource]), quantity(limits[resource])
        if request is not None and limit is not None and limit < request:
            errors.append(
                f"{where}.resources.limits.{resource} = {limits[resource]!r} is below its request "
                f"{requests[resource]!r}; Kubernetes refuses a limit under the request: allowed: a limit >= the request"
            )
    return errors


def _check_pools(where: str, inst: dict, pools: Any) -> list[str]:
    gpus = _gpus(inst)
    selector = inst.get("node_selector") or {}
    if not isinstance(pools, dict) or not gpus or not isinstance(selector, dict):
        return []
    errors = []
    for pool, spec in sorted(pools.items()):
        if not isinstance(spec, dict):
            continue
        labels = spec.get("node_selector") or {}
        per_node = _int(spec.get("gpus_per_node"))
        if labels and per_node is not None and all(selector.get(k) == v for k, v in labels.items()) and gpus > per_node:
            errors.append(
                f"{where} asks for {gpus} GPU(s) per pod (gpus, or tensor x pipeline parallel size), but its "
                f"node_selector {selector} picks node pool {pool!r}, whose nodes have {per_node}; "
                f"allowed: at most {per_node} (vllm_kubernetes_node_pools.{pool}.gpus_per_node)"
            )
    return errors


def _check_probe(where: str, inst: dict, models: dict) -> list[str]:
    entry = models.get(inst.get("model")) if isinstance(models, dict) else None
    start_s = (entry or {}).get("start_time_s") if isinstance(entry, dict) else None
    if not isinstance(start_s, (int, float)) or isinstance(start_s, bool):
        return []
    startup = {**PROBE_DEFAULTS, **(((inst.get("probes") or {}).get("startup")) or {})}
    parts = [_int(startup.get(k)) for k in ("initial_delay_s", "period_s", "failure_threshold")]
    if None in parts:
        return []
    budget = parts[0] + parts[1] * parts[2]
    if budget < start_s:
        return [
            f"{where}.probes.startup allows {budget} s (initial_delay_s {parts[0]} + period_s {parts[1]} x "
            f"failure_threshold {parts[2]}), shorter than the {start_s} s model {inst.get('model')!r} was "
            "measured to take to start (fleet_models start_time_s): the kubelet would restart it forever; "
            f"allowed: at least {start_s} s"
        ]
    return []


def check_kubernetes(
    host: str, host_groups: list[str], groups: Any, settings: dict[str, Any], models: Any
) -> list[str]:
    """The checks of one Kubernetes cluster's inventory entry (group kubernetes_clusters)."""
    instances = settings.get("vllm_kubernetes_instances")
    if "kubernetes_clusters" not in host_groups and not instances:
        return []
    errors = []
    namespace = settings.get("vllm_kubernetes_namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > DNS_LABEL_MAX or not DNS_LABEL_RE.match(namespace)
    ):
        errors.append(
            f"host {host}: vllm_kubernetes_namespace = {namespace!r} is not a name Kubernetes accepts; allowed: "
            f"an RFC 1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit, "
            f"at most {DNS_LABEL_MAX} characters)"
        )
    # The role's default follows the fleet-wide fleet_only_ingress.
    only = settings.get("vllm_kubernetes_only_gateway", settings.get("fleet_only_ingress"))
    if only is True and not settings.get("vllm_kubernetes_gateway_ingress"):
        errors.append(
            f"host {host}: vllm_kubernetes_only_gateway (or fleet_only_ingress) is true but "
            f"vllm_kubernetes_gateway_ingress = {settings.get('vllm_kubernetes_gateway_ingress') or []!r}: "
            "the NetworkPolicy would admit nobody; allowed: the gateway's peers "
            "(podSelector / namespaceSelector / ipBlock)"
        )
    catalog = models if isinstance(models, dict) else {}
    seen: dict[str, int] = {}
    for index, inst in enumerate(instances if isinstance(instances, list) else []):
        where = f"host {host}: {_label(index, inst)}"
        if not isinstance(inst, dict):
            continue
        name = inst.get("name")
        if isinstance(name, str) and INSTANCE_NAME_RE.match(name):
            object_name = OBJECT_PREFIX + name.replace("_", "-")
            if name in seen:
                errors.append(f"{where}.name = {name!r} is already used by vllm_kubernetes_instances[{seen[name]}]")
            seen.setdefault(name, index)
            if len(object_name) > DNS_LABEL_MAX:
                errors.append(f"{where}.name = {name!r} makes the object name {object_name!r}, over 63 characters")
        elif name is not None:
            errors.append(f"{where}.name = {name!r} must match {INSTANCE_NAME_RE.pattern}")
        model = inst.get("model")
        if model is not None and model not in catalog:
            errors.append(
                f"{where}.model = {model!r} is not in fleet_models; known: {', '.join(sorted(catalog)) or 'none'}"
            )
        errors += _check_resources(where, inst.get("resources"))
        errors += _check_pools(where, inst, settings.get("vllm_kubernetes_node_pools"))
        errors += _check_probe(where, inst, catalog)
    return errors
