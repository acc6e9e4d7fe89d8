"""Checks of a fleet inventory that span variables, instances or hosts.

Used by the ``fleet_validate`` module (the first play of site.yml and each role's validate step) so
an inconsistent inventory is refused before any host changes. Each check returns human-readable
errors naming the host, the variable, the offending value and what is allowed.
"""

from __future__ import annotations

import re
from typing import Any

RUNTIMES = ("docker", "systemd")
INSTANCE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
MODEL_SOURCE_KINDS = ("hf", "path", "url")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_groups(host: str, host_groups: list[str], groups: dict[str, list[str]]) -> list[str]:
    """Topology checks: a Ray worker needs exactly one Ray head."""
    errors = []
    heads = list(groups.get("ray_head") or [])
    if "ray_workers" in host_groups and not heads:
        errors.append(
            f"host {host} is in group ray_workers but group ray_head has no host; "
            "a Ray worker needs exactly one host in ray_head"
        )
    if "ray_head" in host_groups and len(heads) > 1:
        errors.append(
            f"host {host}: group ray_head has {len(heads)} hosts ({', '.join(sorted(heads))}); exactly one is allowed"
        )
    return errors


def check_models(models: Any) -> list[str]:
    """The fleet_models catalog: each entry has exactly one source kind, hf sources pin a revision."""
    if models in (None, ""):
        return []
    if not isinstance(models, dict):
        return [f"fleet_models must be a mapping of model name to entry, got {type(models).__name__}"]
    errors = []
    for name, entry in models.items():
        where = f"fleet_models[{name!r}]"
        if not isinstance(entry, dict):
            errors.append(f"{where} must be a mapping, got {entry!r}")
            continue
        source = entry.get("source")
        if not isinstance(source, dict):
            errors.append(f"{where}.source must be a mapping with one of {', '.join(MODEL_SOURCE_KINDS)}")
            continue
        kinds = [k for k in MODEL_SOURCE_KINDS if source.get(k)]
        if len(kinds) != 1:
            errors.append(
                f"{where}.source has {', '.join(kinds) or 'none'} of {', '.join(MODEL_SOURCE_KINDS)}; "
                "exactly one is allowed"
            )
            continue
        if kinds == ["hf"] and not source.get("revision"):
            errors.append(f"{where}.source.hf = {source['hf']!r} needs a pinned source.revision (a commit or tag)")
        if kinds == ["url"] and not re.fullmatch(r"[0-9a-f]{64}", str(source.get("sha256", ""))):
            errors.append(f"{where}.source.url needs source.sha256 (64 hex digits), got {source.get('sha256')!r}")
        if kinds == ["path"] and not str(source["path"]).startswith("/"):
            errors.append(f"{where}.source.path = {source['path']!r} must be an absolute path")
    return errors


def _instance_label(index: int, instance: Any) -> str:
    name = instance.get("name") if isinstance(instance, dict) else None
    return f"vllm_service_instances[{index}]" + (f" ({name!r})" if name else "")


def check_vllm_instances(host: str, runtime: Any, instances: Any, models: Any) -> list[str]:
    """Runtime name, and the instances of one host: names, ports, models, GPU shares, parallelism."""
    errors: list[str] = []
    if runtime not in RUNTIMES:
        errors.append(
            f"host {host}: vllm_service_runtime = {runtime!r} is not a known runtime; allowed: {', '.join(RUNTIMES)}"
        )
    if instances in (None, ""):
        return errors
    if not isinstance(instances, list):
        return [*errors, f"host {host}: vllm_service_instances must be a list, got {type(instances).__name__}"]
    catalog = models if isinstance(models, dict) else {}
    names: dict[str, int] = {}
    ports: dict[int, str] = {}
    gpu_share: dict[str, float] = {}
    for index, inst in enumerate(instances):
        label = f"host {host}: {_instance_label(index, inst)}"
        if not isinstance(inst, dict):
            errors.append(f"{label} must be a mapping, got {inst!r}")
            continue
        name = inst.get("name")
        if not isinstance(name, str) or not INSTANCE_NAME_RE.match(name):
            errors.append(f"{label}.name = {name!r} must match {INSTANCE_NAME_RE.pattern}")
        elif name in names:
            errors.append(f"{label}.name = {name!r} is already used by vllm_service_instances[{names[name]}]")
        else:
            names[name] = index
        inst_runtime = inst.get("runtime")
        if inst_runtime is not None and inst_runtime not in RUNTIMES:
            errors.append(f"{label}.runtime = {inst_runtime!r} is not a known runtime; allowed: {', '.join(RUNTIMES)}")
        port = inst.get("port")
        if not _is_int(port) or not 1 <= port <= 65535:
            errors.append(f"{label}.port = {port!r} must be an integer from 1 to 65535")
        elif port in ports:
            errors.append(f"{label}.port = {port} is already used by instance {ports[port]!r} on this host")
        else:
            ports[port] = str(name)
        model = inst.get("model")
        if not model:
            errors.append(
                f"{label}.model is missing; give a fleet_models name ({', '.join(sorted(catalog)) or 'none'})"
            )
        elif model not in catalog:
            errors.append(
                f"{label}.model = {model!r} is not in fleet_models; known: {', '.join(sorted(catalog)) or 'none'}"
            )
        util = inst.get("gpu_memory_utilization")
        if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1):
            errors.append(f"{label}.gpu_memory_utilization = {util!r} must be a number in (0, 1]")
            util = None
        gpu_ids = inst.get("gpu_ids")
        if gpu_ids is not None and (not isinstance(gpu_ids, list) or not all(_is_int(g) and g >= 0 for g in gpu_ids)):
            errors.append(f"{label}.gpu_ids = {gpu_ids!r} must be a list of GPU indexes (integers >= 0)")
            gpu_ids = None
        tp = inst.get("tensor_parallel_size", 1)
        pp = inst.get("pipeline_parallel_size", 1)
        for key, value in (("tensor_parallel_size", tp), ("pipeline_parallel_size", pp)):
            if not _is_int(value) or value < 1:
                errors.append(f"{label}.{key} = {value!r} must be an integer >= 1")
        if gpu_ids and _is_int(tp) and _is_int(pp) and tp * pp > len(gpu_ids):
            errors.append(
                f"{label}: tensor_parallel_size x pipeline_parallel_size = {tp * pp} is more than the "
                f"{len(gpu_ids)} GPU(s) in gpu_ids {gpu_ids}"
            )
        if gpu_ids and util is not None:
            for gpu in gpu_ids:
                gpu_share[str(gpu)] = gpu_share.get(str(gpu), 0.0) + float(util)
    for gpu, total in sorted(gpu_share.items()):
        if total > 1.0 + 1e-9:
            errors.append(
                f"host {host}: instances share GPU {gpu} with gpu_memory_utilization adding up to {total:.2f}; "
                "the sum per GPU must be <= 1"
            )
    return errors


def validate_host(
    host: str,
    host_groups: list[str],
    groups: dict[str, list[str]],
    settings: dict[str, Any],
    models: Any,
) -> list[str]:
    """Everything we know how to check about one host in its fleet."""
    errors = check_groups(host, host_groups, groups)
    if "inference_nodes" in host_groups or settings.get("vllm_service_instances"):
        errors += check_vllm_instances(
            host,
            settings.get("vllm_service_runtime", "docker"),
            settings.get("vllm_service_instances"),
            models,
        )
    return errors
