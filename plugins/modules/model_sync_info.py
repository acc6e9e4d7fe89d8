#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_sync_info
short_description: Read the manifest and the progress of a model_sync destination, and verify it
description:
  - Reads what M(llmfleet.fleet.model_sync) left at a destination, the manifest of the synced model and the
    progress file of a running or finished sync (bytes done of total, rate, current file, last update).
  - With O(verify=fast) checks sizes and mtimes against the manifest; with O(verify=full) re-hashes every file.
    Changes nothing.
version_added: "0.1.0"
author:
  - llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
options:
  dest:
    description: The O(llmfleet.fleet.model_sync#module:dest) of the sync.
    type: path
    required: true
  repo_id:
    description: For a hub cache destination, the repository (C(org/name)); with O(revision) it selects the layout.
    type: str
  revision:
    description: For a hub cache destination, the commit sha that was synced.
    type: str
  verify:
    description: V(none) only reads; V(fast) compares sizes and mtimes with the manifest; V(full) re-hashes.
    type: str
    choices: [none, fast, full]
    default: none
  workers:
    description: Hashing threads for O(verify=full); V(0) means one per core.
    type: int
    default: 0
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode as otherwise.
  diff_mode:
    support: none
    description: Reports no diff; it changes nothing.
seealso:
  - module: llmfleet.fleet.model_sync
"""

EXAMPLES = r"""
- name: Start a long copy in the background
  llmfleet.fleet.model_sync:
    source: ssh
    remote_host: gb10-a.lan
    src: /srv/models/qwen2.5-72b
    dest: /srv/models/qwen2.5-72b
  async: 7200
  poll: 0

- name: See how far it is
  llmfleet.fleet.model_sync_info:
    dest: /srv/models/qwen2.5-72b
  register: copy_info

- name: Show it
  ansible.builtin.debug:
    msg: >-
      {{ copy_info.progress.bytes_done }} of {{ copy_info.progress.bytes_total }}
      ({{ copy_info.progress.current_file }})

- name: Re-hash a synced hub revision
  llmfleet.fleet.model_sync_info:
    dest: /srv/hf/hub
    repo_id: HuggingFaceTB/SmolLM2-135M-Instruct
    revision: 12fd25f77366fa6b3b4b768ec3050bf629380bac
    verify: full
  register: model_check
  failed_when: not model_check.verified
"""

RETURN = r"""
dest:
  description: The model directory.
  returned: always
  type: str
exists:
  description: Whether the model directory exists.
  returned: always
  type: bool
manifest_path:
  description: Where the manifest is.
  returned: always
  type: str
manifest:
  description: The manifest (version, source, revision, synced_at, total_bytes, files), or null when there is none.
  returned: always
  type: dict
progress_path:
  description: Where the progress file is.
  returned: always
  type: str
progress:
  description:
    - The last progress written (status running, done or failed; bytes_done; bytes_total; files_total; rate in
      bytes/s; current_file; started; updated; pid; error), or null when no sync has fetched anything here.
  returned: always
  type: dict
problems:
  description: Files that failed verification, each with C(file) and C(problem).
  returned: always
  type: list
  elements: dict
hashed_bytes:
  description: Bytes read for O(verify=full).
  returned: always
  type: int
verified:
  description: Whether verification found no problem.
  returned: when O(verify) is not V(none)
  type: bool
"""

# Ansible modules keep DOCUMENTATION/EXAMPLES/RETURN first, so the imports come after them.
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.engine import read_info


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dest": {"type": "path", "required": True},
            "repo_id": {"type": "str"},
            "revision": {"type": "str"},
            "verify": {"type": "str", "choices": ["none", "fast", "full"], "default": "none"},
            "workers": {"type": "int", "default": 0},
        },
        required_together=[("repo_id", "revision")],
        supports_check_mode=True,
    )
    try:
        result = read_info(module.params)
    except OSError as exc:
        module.fail_json(msg=f"dest {module.params['dest']!r}: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
