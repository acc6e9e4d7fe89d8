"""What playbooks/validate.yml hands fleet_validate, computed the way the play does, for unit tests."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from llmfleet_endpoints import fleet_role_defaults

REPO = Path(__file__).resolve().parent.parent


def role_defaults(host_groups: list[str], settings: dict, roles: list[str], host: str = "h1") -> dict:
    """The play's ``defaults``: the keys its _fleet_default_keys pattern picks from each role's spec,
    rendered by fleet_role_defaults from the role's own defaults file over the host's settings."""
    play = yaml.safe_load((REPO / "playbooks" / "validate.yml").read_text())[0]
    pattern = re.compile(play["vars"]["_fleet_default_keys"].strip())
    role_keys = {}
    for role in roles:
        spec = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
        role_keys[role] = [k for k in spec["argument_specs"]["main"]["options"] if pattern.match(k)]
    return fleet_role_defaults({host: settings}, {g: [host] for g in host_groups}, host, role_keys)
