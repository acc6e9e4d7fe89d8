"""The fleet's endpoint registry of an inventory, as the lab tests read it.

The records come from the collection's own filter (``fleet_endpoints``) over what
``ansible-inventory --list`` says about the inventory, the way every play computes them; the tests
then check that what really runs (the health table, Prometheus' targets) covers each record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llmfleet_endpoints import fleet_endpoints

REPO = Path(__file__).resolve().parent.parent


def _members(inventory: dict, group: str, seen: set[str] | None = None) -> list[str]:
    seen = seen if seen is not None else set()
    if group in seen:
        return []
    seen.add(group)
    entry = inventory.get(group) or {}
    hosts = list(entry.get("hosts") or [])
    for child in entry.get("children") or []:
        hosts += _members(inventory, child, seen)
    return list(dict.fromkeys(hosts))


def inventory_list(inventory_path: Path) -> dict:
    """``ansible-inventory --list`` of the inventory: its groups and, under ``_meta``, its hostvars."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inventory_path), "--list"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return json.loads(result.stdout)


def registry(inventory_path: Path) -> list[dict]:
    """Every endpoint record of the inventory (a Slurm job's address is unknown here: it comes from
    the job's connection info on the login host)."""
    inventory = inventory_list(inventory_path)
    hostvars = inventory["_meta"]["hostvars"]
    groups = {name: _members(inventory, name) for name in inventory if name != "_meta"}
    models = next((hv["fleet_models"] for hv in hostvars.values() if "fleet_models" in hv), {})
    return fleet_endpoints({h: hostvars.get(h, {}) for h in groups.get("all", [])}, groups, models)
