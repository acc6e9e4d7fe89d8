# Copyright: llm-fleet contributors
# Apache-2.0
"""Refusals of the ray_cluster role across variables of a host (the validate play, validate_host).

A Ray node's ports against the host's vLLM instances and each other, the object store against the
host's declared memory, and vLLM instances on Ray (distributed_executor_backend: ray) against the
cluster's declared GPUs. A worker without a head is refused by inventory.checks.check_groups.
"""

from __future__ import annotations

from typing import Any

HEAD_PORTS = ("ray_cluster_head_port", "ray_cluster_dashboard_port", "ray_cluster_client_port")
NODE_PORTS = ("ray_cluster_metrics_export_port",)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def ray_ports(host_groups: list[str], settings: dict[str, Any]) -> list[tuple[str, Any]]:
    """The Ray ports a node listens on (the head's GCS, dashboard, client; every node's metrics), as
    (variable, value): inventory.checks.check_host_ports checks them with the host's other ports."""
    if "ray_head" not in host_groups and "ray_workers" not in host_groups:
        return []
    variables = (HEAD_PORTS if "ray_head" in host_groups else ()) + NODE_PORTS
    return [(variable, settings.get(variable)) for variable in variables]


def check_object_store(host: str, settings: dict[str, Any]) -> list[str]:
    """The object store fits in the host's memory, where the inventory declares it
    (ray_cluster_host_memory_mb; the role checks the real memory, ansible_facts.memtotal_mb, before any change)."""
    memory_mb = _int(settings.get("ray_cluster_host_memory_mb"))
    store = _int(settings.get("ray_cluster_object_store_memory"))
    if memory_mb is None or store is None or store < memory_mb * 1048576:
        return []
    return [
        f"host {host}: ray_cluster_object_store_memory = {store} is not less than the host's memory "
        f"(ray_cluster_host_memory_mb = {memory_mb}, {memory_mb * 1048576} bytes); allowed: less than "
        f"{memory_mb * 1048576} bytes (Ray's default is 30 % of the memory)"
    ]


def _parallel(inst: dict[str, Any]) -> int:
    tp, pp = _int(inst.get("tensor_parallel_size", 1)), _int(inst.get("pipeline_parallel_size", 1))
    return (tp or 1) * (pp or 1)


def check_vllm_on_ray(host: str, host_groups: list[str], groups: Any, settings: dict[str, Any]) -> list[str]:
    """vLLM instances with distributed_executor_backend ray: they run on the Ray head, and tensor x
    pipeline parallel fits in the cluster's GPUs where the inventory declares them (ray_cluster_gpus_total;
    the ray play checks the running cluster's GPUs)."""
    instances = settings.get("vllm_service_instances")
    if not isinstance(instances, list):
        return []
    errors = []
    total = _int(settings.get("ray_cluster_gpus_total"))
    heads = list((groups or {}).get("ray_head") or [])
    for index, inst in enumerate(instances):
        if not isinstance(inst, dict) or inst.get("distributed_executor_backend") != "ray":
            continue
        label = f"host {host}: vllm_service_instances[{index}] ({inst.get('name')!r})"
        if "ray_head" not in host_groups:
            errors.append(
                f"{label}.distributed_executor_backend = 'ray' but the host is not in group ray_head "
                f"({', '.join(heads) or 'no host'}); allowed: 'ray' on the Ray head only (vLLM joins the "
                "cluster of the node it starts on), else mp"
            )
        parallel = _parallel(inst)
        if total is not None and parallel > total:
            errors.append(
                f"{label}: tensor_parallel_size x pipeline_parallel_size = {parallel} needs {parallel} GPUs, but "
                f"the Ray cluster has ray_cluster_gpus_total = {total}; allowed: at most {total}"
            )
    return errors


def check_ray(
    host: str, host_groups: list[str], groups: dict[str, list[str]], settings: dict[str, Any], models: Any
) -> list[str]:
    """Every ray_cluster check of one host (hooked into inventory.checks.validate_host)."""
    errors: list[str] = []
    if "ray_head" in host_groups or "ray_workers" in host_groups:
        errors += check_object_store(host, settings)
    errors += check_vllm_on_ray(host, host_groups, groups, settings)
    return errors
