# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)
"""Inventory checks of the slurm_job role, refused before anything is submitted.

The cluster's facts (partitions, their node counts, whether it has GRES) come from the host's
``slurm_job_cluster``: ``{gres: bool, partitions: {name: {nodes: N}}}`` as the inventory declares
it, or ``{sinfo: <text>}`` as the role's validate step reads it on the login node (read-only
``sinfo -h -o '%P|%D|%G|%c|%m|%l'``). Without either, only what needs no cluster fact is checked.
"""

from __future__ import annotations

import json
import os
import socket

from ansible_collections.llmfleet.fleet.plugins.module_utils.cluster.slurm import parse_sinfo, valid_walltime

# The role's default slurm_job_tunnel_dir (site.yml's validate play sees only the inventory's values).
DEFAULT_TUNNEL_DIR = "~/.cache/llmfleet/slurm-tunnels"
WALLTIME_FORMATS = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, UNLIMITED"


def cluster_facts(cluster) -> dict | None:
    """{gres: bool, partitions: {name: {nodes}}} from slurm_job_cluster, or None when unknown."""
    if not isinstance(cluster, dict) or not cluster:
        return None
    if cluster.get("sinfo"):
        parts = parse_sinfo(str(cluster["sinfo"]))
        return {"gres": any(p["gres"] for p in parts.values()), "partitions": parts}
    partitions = cluster.get("partitions") or {}
    if not isinstance(partitions, dict):
        return None
    return {"gres": bool(cluster.get("gres", False)), "partitions": partitions}


def _port_held_by_our_tunnel(settings: dict, port: int) -> bool:
    """True when this role's own tunnel (its control socket's record) holds the port."""
    tunnel_dir = str(settings.get("slurm_job_tunnel_dir") or os.path.expanduser(DEFAULT_TUNNEL_DIR))
    if not tunnel_dir or not os.path.isdir(tunnel_dir):
        return False
    for name in os.listdir(tunnel_dir):
        if not name.endswith(".sock.json") or not os.path.exists(os.path.join(tunnel_dir, name[: -len(".json")])):
            continue
        try:
            with open(os.path.join(tunnel_dir, name)) as handle:
                local = json.load(handle).get("local", "")
        except (OSError, ValueError):
            continue
        if local.rsplit(":", 1)[-1] == str(port):
            return True
    return False


def local_port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return True
    return False


def check_slurm_job(host, host_groups, groups, settings, models) -> list[str]:
    """Partition, GPUs vs GRES, walltime, node count, and the local tunnel port, of a slurm_login host."""
    if "slurm_login" not in host_groups:
        return []
    if str(settings.get("slurm_job_state", "present")) == "absent":
        return []
    errors = []
    partition = str(settings.get("slurm_job_partition") or "")
    facts = cluster_facts(settings.get("slurm_job_cluster"))
    known = sorted((facts or {}).get("partitions", {}))
    if not partition:
        errors.append(
            f"host {host}: slurm_job_partition = '' names no partition; allowed: "
            f"{', '.join(known) if known else 'a partition of the cluster (sinfo)'}"
        )
    elif facts is not None and partition not in facts["partitions"]:
        errors.append(
            f"host {host}: slurm_job_partition = {partition!r} is not a partition of the cluster; "
            f"allowed: {', '.join(known) or 'none found'}"
        )
    gpus = settings.get("slurm_job_gpus", 0)
    try:
        gpus = int(gpus or 0)
    except (TypeError, ValueError):
        gpus = 0
    if gpus > 0 and facts is not None and not facts["gres"]:
        errors.append(
            f"host {host}: slurm_job_gpus = {gpus} asks for GPUs, but the cluster has no GRES (no gpu "
            "generic resources in slurm_job_cluster / sinfo); allowed: 0"
        )
    walltime = settings.get("slurm_job_time", "")
    if walltime not in (None, "") and not valid_walltime(walltime):
        errors.append(
            f"host {host}: slurm_job_time = {walltime!r} is not a Slurm time limit; allowed: {WALLTIME_FORMATS}"
        )
    nodes = settings.get("slurm_job_nodes", 1)
    part = (facts or {}).get("partitions", {}).get(partition) if partition else None
    if isinstance(part, dict) and part.get("nodes") is not None:
        try:
            have, want = int(part["nodes"]), int(nodes)
        except (TypeError, ValueError):
            have = want = 0
        if want > have:
            errors.append(
                f"host {host}: slurm_job_nodes = {want} is more than partition {partition!r} has; "
                f"allowed: at most {have}"
            )
    port = settings.get("slurm_job_tunnel_port")
    tunnel = settings.get("slurm_job_tunnel", True) not in (False, "false", "False")
    if tunnel and isinstance(port, int) and local_port_in_use(port) and not _port_held_by_our_tunnel(settings, port):
        errors.append(
            f"host {host}: slurm_job_tunnel_port = {port} is in use on this machine by another process; "
            "allowed: a free local port"
        )
    return errors
