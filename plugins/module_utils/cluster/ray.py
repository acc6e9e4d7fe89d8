# Copyright: llm-fleet contributors
# Apache-2.0
"""Ray cluster helpers: the `ray start` command of a node, and what the head's state API says.

Standard library only: the ray_cluster_info module runs this on the head.
"""

from __future__ import annotations

import json
from typing import Any

# Below this Ray refuses --object-store-memory (ray/_private/ray_constants.py OBJECT_STORE_MINIMUM_MEMORY_BYTES).
OBJECT_STORE_MINIMUM_BYTES = 75 * 1024 * 1024


def _given(value: Any) -> bool:
    return value is not None and str(value).strip() not in ("", "None")


def start_args(role: str, node_name: str, node_ip: str, settings: dict[str, Any]) -> list[str]:
    """The arguments of ``ray start`` (after ``start``) for a head or a worker, ``--block`` included, so
    the supervisor (systemd, Docker) owns the processes. ``settings`` keys: head_address, head_port,
    dashboard_host, dashboard_port, client_port, metrics_export_port, object_store_memory, num_cpus,
    num_gpus, resources (dict)."""
    args = ["--block", "--disable-usage-stats", "--node-ip-address", str(node_ip), "--node-name", str(node_name)]
    if role == "head":
        args += [
            "--head",
            "--port",
            str(settings["head_port"]),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            str(settings["dashboard_host"]),
            "--dashboard-port",
            str(settings["dashboard_port"]),
            "--ray-client-server-port",
            str(settings["client_port"]),
        ]
    else:
        args += ["--address", f"{settings['head_address']}:{settings['head_port']}"]
    args += ["--metrics-export-port", str(settings["metrics_export_port"])]
    if _given(settings.get("object_store_memory")):
        args += ["--object-store-memory", str(int(settings["object_store_memory"]))]
    for key, flag in (("num_cpus", "--num-cpus"), ("num_gpus", "--num-gpus")):
        if _given(settings.get(key)):
            args += [flag, str(int(settings[key]))]
    resources = settings.get("resources") or {}
    if resources:
        args += ["--resources", json.dumps(resources, sort_keys=True, separators=(",", ":"))]
    return args


def expected_node(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What the head must report of a node: its name and the resources the inventory fixes."""
    resources: dict[str, float] = {}
    for key, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        if _given(settings.get(key)):
            resources[resource] = float(settings[key])
    for resource, amount in (settings.get("resources") or {}).items():
        resources[str(resource)] = float(amount)
    return {"name": name, "resources": resources}


def nodes_from_state_api(payload: Any) -> list[dict[str, Any]]:
    """The node records of a ``GET /api/v0/nodes`` answer of the dashboard (Ray's state API)."""
    data = payload.get("data", {}) if isinstance(payload, dict) else {}
    result = data.get("result", {}) if isinstance(data, dict) else {}
    rows = result.get("result", []) if isinstance(result, dict) else result
    return [row for row in rows or [] if isinstance(row, dict)]


def alive_by_name(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Alive nodes by node name (a restarted node leaves a DEAD record under the same name: not counted)."""
    return {str(n.get("node_name")): n for n in nodes if n.get("state") == "ALIVE"}


def compare_nodes(nodes: list[dict[str, Any]], expected: list[dict[str, Any]], absent: list[str]) -> list[str]:
    """What keeps the cluster from being as the inventory says: an expected node not alive, or alive with
    less of a resource than declared; a node that must be gone (retired) still alive. Empty when done."""
    alive = alive_by_name(nodes)
    problems = []
    for want in expected:
        node = alive.get(want["name"])
        if node is None:
            problems.append(f"node {want['name']} has not joined (no ALIVE node of that name)")
            continue
        total = node.get("resources_total") or {}
        for resource, amount in sorted(want["resources"].items()):
            if float(total.get(resource, 0)) < amount:
                problems.append(
                    f"node {want['name']} reports {resource} = {total.get(resource, 0)}, expected {amount:g}"
                )
    for name in absent:
        if name in alive:
            problems.append(f"node {name} is retired but still ALIVE")
    return problems


def summary(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alive nodes, sorted by name: name, ip, head or not, CPU, GPU, memory and object store bytes."""
    out = []
    for name, node in sorted(alive_by_name(nodes).items()):
        total = node.get("resources_total") or {}
        out.append(
            {
                "name": name,
                "node_id": node.get("node_id"),
                "ip": node.get("node_ip"),
                "is_head": bool(node.get("is_head_node")),
                "cpu": total.get("CPU", 0),
                "gpu": total.get("GPU", 0),
                "memory": total.get("memory", 0),
                "object_store_memory": total.get("object_store_memory", 0),
                "resources": total,
            }
        )
    return out
