"""Jinja filters of the ray_cluster role: the `ray start` arguments and the expected nodes."""

from __future__ import annotations

from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.cluster.ray import expected_node, start_args


def ray_start_args(role: str, node_name: str, node_ip: str, settings: dict[str, Any]) -> list[str]:
    """``ray start`` arguments of a node (see module_utils/llmfleet_ray.start_args)."""
    return start_args(role, node_name, node_ip, settings)


def ray_expected_node(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Name and declared resources the head must report for a node."""
    return expected_node(name, settings)


def ray_expected_nodes(names: list[str], hostvars: Any) -> list[dict[str, Any]]:
    """The expected node of each name: what its own play set (ray_cluster_expected_node), else the name
    with no resources (a node this run did not reach still has to be alive)."""
    out = []
    for name in names:
        node = hostvars.get(name, {}).get("ray_cluster_expected_node")
        out.append(dict(node) if node else {"name": name, "resources": {}})
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "ray_start_args": ray_start_args,
            "ray_expected_node": ray_expected_node,
            "ray_expected_nodes": ray_expected_nodes,
        }
