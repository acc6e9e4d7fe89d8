#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_daemon_config
short_description: Merge settings into Docker's daemon.json, keeping every other key
description:
  - Reads the JSON object in O(path), merges O(settings) into it and writes the result only when
    the content changes. Objects merge key by key; other values replace; a setting of V(null)
    removes that key. Keys O(settings) does not name are kept as they are.
  - A file with the same content in another key order or indentation is not rewritten.
  - The module does not restart Docker; notify a handler on C(changed).
version_added: "0.1.0"
author: llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
options:
  path:
    description: The daemon configuration file. Created (with its directory) when missing.
    type: path
    default: /etc/docker/daemon.json
  settings:
    description: The settings to merge in, for example the C(runtimes.nvidia) entry.
    type: dict
    required: true
  mode:
    description: Permissions of the file when the module writes it.
    type: str
    default: "0644"
  backup:
    description: Keep a timestamped copy of the previous file when it is changed.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports whether the file would change, and the diff, without writing.
  diff_mode:
    support: full
notes:
  - Fails, naming the file, when the existing content is not a JSON object; it never replaces a
    file it cannot read.
"""

EXAMPLES = r"""
- name: Register the NVIDIA runtime with Docker
  docker_daemon_config:
    settings:
      runtimes:
        nvidia:
          path: nvidia-container-runtime
          args: []
  notify: Restart docker

- name: Stop making nvidia the default runtime
  docker_daemon_config:
    settings:
      default-runtime: null
"""

RETURN = r"""
config:
  description: The whole configuration after the merge.
  returned: always
  type: dict
  sample: {"log-driver": "local", "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}
path:
  description: The file merged into.
  returned: always
  type: str
  sample: /etc/docker/daemon.json
backup_file:
  description: The copy of the previous file, when O(backup) made one.
  returned: when changed and backup is true and the file existed
  type: str
"""

# Ansible modules keep DOCUMENTATION/EXAMPLES/RETURN first, so the imports come after them.
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.json_merge import ConfigFileError, plan_merge


def read_existing(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/etc/docker/daemon.json"},
            "settings": {"type": "dict", "required": True},
            "mode": {"type": "str", "default": "0644"},
            "backup": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        before = read_existing(path)
        changed, merged, after = plan_merge(before, module.params["settings"], path)
    except (ConfigFileError, OSError) as exc:
        module.fail_json(msg=str(exc), path=path)

    result = {"changed": changed, "config": merged, "path": path}
    if changed:
        result["diff"] = {
            "before": before or "",
            "after": after,
            "before_header": path if before is not None else f"{path} (absent)",
            "after_header": path,
        }
    if changed and not module.check_mode:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        if module.params["backup"] and before is not None:
            result["backup_file"] = module.backup_local(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".daemon.json.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(after)
        os.chmod(tmp, int(module.params["mode"], 8))
        module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
