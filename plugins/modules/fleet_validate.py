#!/usr/bin/python
"""Refuse an inconsistent fleet inventory before any host changes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_validate
short_description: Check one host's fleet variables against the role specs and the rest of the inventory
description:
  - Runs on the controller (delegate it to localhost) in the first play of C(site.yml), after
    C(ansible.builtin.validate_argument_spec) has checked the host's variables against the
    C(meta/argument_specs.yml) of every role its groups run; it reports those errors together with
    its own, naming the host and the role.
  - "From the same specs it checks what a type cannot say, ranges (C(Range: [1, 65535]) in an
    option's description) and formats (C(Format: image), an image reference with a tag or digest),
    that secrets (C(no_log) options) are strings, and, inside instance lists, unknown keys, missing
    keys, types and choices, naming the instance."
  - Then the checks across variables, instances and hosts. Ray workers need exactly one Ray head;
    an inference node needs at least one vLLM instance; instances on one host need distinct names
    and ports, the host's runtime, a model from the C(fleet_models) catalog, GPU memory shares that
    add up to at most 1 per GPU, and no more tensor x pipeline parallelism than GPUs given in
    C(gpu_ids) or, without them, than the host has (O(gpu), from C(llmfleet.fleet.gpu_facts)).
  - "Where a check needs a fact of the host, the first call says which (RV(facts_needed)) and hands
    back the read-only command that reads architecture and free disk (RV(probe_argv)); the second call
    gets its output in O(probe) and refuses: a C(gpu_nodes) host that is not x86_64 or aarch64; a
    builder asked for a foreign C(vllm_build_platform) whose kernel has no QEMU binfmt handler for it;
    a source build for a builder that is not x86_64 or aarch64; a docker inference node whose
    C(vllm_service_image) a builder of the inventory builds for another architecture (O(builds));
    too little free disk on C(vllm_build_disk_paths) for C(vllm_build_min_free_gb), and on the
    filesystem of the model cache for the catalog models (with C(size_gb)) model_cache will fetch,
    less what is already there, plus C(model_cache_free_space_reserve_mb)."
  - Ports of one host are compared as numbers (a port given as the string C(8000) is 8000), across
    the instances, the gateway and its registry, Prometheus and Alertmanager.
  - Every error names the host, the variable (with the instance's index and name), the offending
    value (a secret's is never shown) and what is allowed.
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
    description:
      - The host's variables to check, variable name to value (the options of O(specs) the host
        defines, C(vllm_service_runtime), C(vllm_service_instances), ...).
      - Marked C(no_log) because it may hold secrets; the module's output masks only the values of
        the specs' C(no_log) options, so messages can still show the other values.
    type: dict
    default: {}
  specs:
    description:
      - Role name to the options of that role's C(main) entry point in its C(meta/argument_specs.yml),
        for every role the host's groups run.
    type: dict
    default: {}
  spec_errors:
    description:
      - What C(ansible.builtin.validate_argument_spec) refused, one item per role.
    type: list
    elements: dict
    default: []
    suboptions:
      role:
        description: The role whose spec was checked.
        type: str
        required: true
      errors:
        description: The error messages (C(argument_errors)).
        type: list
        elements: str
        default: []
  models:
    description: The C(fleet_models) catalog.
    type: dict
    default: {}
  defaults:
    description:
      - What the host's roles' own C(defaults/main.yml) give for settings the inventory leaves out, as the
        roles would see them (C(llmfleet.fleet.fleet_role_defaults)). Every port the roles open, and the
        settings the disk, image and memory checks read.
      - The checks across variables and hosts see them, so a port left to its default clashes as surely as a
        written one. The argument spec checks see only O(settings).
    type: dict
    default: {}
  gpu:
    description:
      - The host's C(ansible_facts.gpu) as C(llmfleet.fleet.gpu_facts) read it; when given, instances
        without C(gpu_ids) may not ask for more tensor x pipeline parallelism than its C(count).
      - Leave it out on the first call; RV(facts_needed) says whether the host's GPUs must be read.
    type: dict
  probe:
    description:
      - The output of the command RV(probe_argv) of the first call, run on the host (architecture,
        binfmt handlers, free and used disk). Leave it out on the first call.
    type: str
  builds:
    description:
      - What the C(vllm_builders) hosts publish, each one's RV(build) of its first call; a docker
        inference node's image is checked against them.
    type: list
    elements: dict
    default: []
  build_probes:
    description:
      - Builder host to the output of its probe (O(probe)), for the architecture of a builder with
        no C(vllm_build_platform).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same way in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
author:
  - llm-fleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Refuse an inconsistent inventory
  llmfleet.fleet.fleet_validate:
    host: "{{ inventory_hostname }}"
    host_groups: "{{ group_names }}"
    groups: "{{ groups }}"
    specs:
      vllm_service: "{{ (lookup('ansible.builtin.file', 'roles/vllm_service/meta/argument_specs.yml')
        | from_yaml).argument_specs.main.options }}"
    settings:
      vllm_service_runtime: "{{ vllm_service_runtime | default('systemd') }}"
      vllm_service_instances: "{{ vllm_service_instances | default([]) }}"
    models: "{{ fleet_models | default({}) }}"
  delegate_to: localhost
  check_mode: false
"""

RETURN = r"""
errors:
  description: What is wrong, one sentence per problem (empty when the host is consistent).
  returned: always
  type: list
  elements: str
facts_needed:
  description:
    - Host facts a check still needs (C(gpu) - an instance asks for more than one GPU without
      C(gpu_ids) and O(gpu) was not given; C(arch), C(disk) - read by RV(probe_argv)); read them and
      call the module again with them.
  returned: always
  type: list
  elements: str
  sample: [gpu, arch, disk]
probe_argv:
  description:
    - The read-only command (argv of C(ansible.builtin.command)) that reads the facts the checks
      need on the host (C(uname -m), binfmt handlers, C(df) of each path or its nearest existing
      parent, C(du) of what is already there); empty when no check needs one or O(probe) was given.
  returned: always
  type: list
  elements: str
build:
  description: On a builder, what it publishes (host, image references, platform); null elsewhere.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.checks import (
    build_target,
    check_host_facts,
    check_models,
    needs_gpu_count,
    probe_argv,
    probe_items,
    secret_values,
    spec_error_messages,
    validate_host,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "host_groups": {"type": "list", "elements": "str", "default": []},
            "groups": {"type": "dict", "default": {}},
            "settings": {"type": "dict", "default": {}, "no_log": True},
            "specs": {"type": "dict", "default": {}},
            "spec_errors": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "role": {"type": "str", "required": True},
                    "errors": {"type": "list", "elements": "str", "default": []},
                },
            },
            "models": {"type": "dict", "default": {}},
            "defaults": {"type": "dict", "default": {}},
            "gpu": {"type": "dict"},
            "probe": {"type": "str"},
            "builds": {"type": "list", "elements": "dict", "default": []},
            "build_probes": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    # no_log on settings kept the whole mapping out of the module's log; from here on mask only the
    # secrets the specs name, so messages can show the offending ports, names and images.
    module.no_log_values = secret_values(p["specs"], {**p["defaults"], **p["settings"]})
    own = check_models(p["models"], p["groups"]) + validate_host(
        p["host"], p["host_groups"], p["groups"], p["settings"], p["models"], p["specs"], p["gpu"], p["defaults"]
    )
    # From here on the host's settings as its roles see them: the inventory's over the roles' defaults.
    p["settings"] = {**p["defaults"], **p["settings"]}
    if p["probe"] is not None:
        own += check_host_facts(
            p["host"], p["host_groups"], p["settings"], p["models"], p["probe"], p["builds"], p["build_probes"]
        )
    errors = list(dict.fromkeys(spec_error_messages(p["host"], p["spec_errors"], own) + own))
    facts_needed = []
    if p["gpu"] is None and needs_gpu_count(p["settings"].get("vllm_service_instances")):
        facts_needed.append("gpu")
    items = (
        []
        if p["probe"] is not None
        else probe_items(p["host"], p["host_groups"], p["groups"], p["settings"], p["models"])
    )
    if "arch" in items:
        facts_needed.append("arch")
    if any(i.startswith("free=") for i in items):
        facts_needed.append("disk")
    result = {
        "errors": errors,
        "facts_needed": facts_needed,
        "probe_argv": probe_argv(items),
        "build": build_target(p["host"], p["host_groups"], p["settings"]),
    }
    if errors:
        module.fail_json(msg=f"inconsistent inventory ({len(errors)} problem(s)): " + "; ".join(errors), **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
