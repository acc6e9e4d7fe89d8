#!/usr/bin/python
"""Refuse an inconsistent fleet inventory before any host changes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_validate
short_description: Check one host's fleet variables against the rest of the inventory
description:
  - Runs on the controller (delegate it to localhost) and checks what C(meta/argument_specs.yml)
    cannot see, because it spans variables, instances or hosts. Ray workers need exactly one Ray
    head; vLLM instances on one host need distinct names and ports, a known runtime, a model from
    the C(fleet_models) catalog, GPU memory shares that add up to at most 1 per GPU, and no more
    tensor x pipeline parallelism than GPUs given.
  - Every error names the host, the variable, the offending value and what is allowed.
  - Never changes anything.
options:
  host:
    description: The inventory host being checked (C(inventory_hostname)).
    type: str
    required: true
  host_groups:
    description: The groups the host belongs to (C(group_names)).
    type: list
    elements: str
    default: []
  groups:
    description: The inventory's groups (C(groups)), for checks across hosts.
    type: dict
    default: {}
  settings:
    description: The host's variables to check (C(vllm_service_runtime), C(vllm_service_instances), ...).
    type: dict
    default: {}
  models:
    description: The C(fleet_models) catalog.
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - llm-fleet maintainers
"""

EXAMPLES = r"""
- name: Refuse an inconsistent inventory
  fleet_validate:
    host: "{{ inventory_hostname }}"
    host_groups: "{{ group_names }}"
    groups: "{{ groups }}"
    settings:
      vllm_service_runtime: "{{ vllm_service_runtime | default('docker') }}"
      vllm_service_instances: "{{ vllm_service_instances | default([]) }}"
    models: "{{ fleet_models | default({}) }}"
  delegate_to: localhost
"""

RETURN = r"""
errors:
  description: What is wrong, one sentence per problem (empty when the host is consistent).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmfleet_inventory import check_models, validate_host


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "host_groups": {"type": "list", "elements": "str", "default": []},
            "groups": {"type": "dict", "default": {}},
            "settings": {"type": "dict", "default": {}},
            "models": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    errors = check_models(p["models"]) + validate_host(
        p["host"], p["host_groups"], p["groups"], p["settings"], p["models"]
    )
    if errors:
        module.fail_json(msg="inconsistent inventory: " + "; ".join(errors), errors=errors)
    module.exit_json(changed=False, errors=[])


if __name__ == "__main__":
    main()
