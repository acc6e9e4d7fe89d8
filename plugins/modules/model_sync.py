#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_sync
short_description: Fetch a model or adapter into a cache, verified file by file, swapped into place atomically
description:
  - Copies a model from a Hugging Face hub repository at a pinned revision (O(source=hf)), a directory on
    another host over SSH (O(source=ssh)), one file at an http(s) URL with its sha256 (O(source=url)), or a
    directory on the target (O(source=local)) into O(dest).
  - For O(source=hf), O(dest) is a Hugging Face hub cache directory (C($HF_HOME/hub)); the model lands in the
    hub's own layout (C(models--org--name/blobs), C(snapshots/<revision>), C(refs/<hf_ref>)), so vLLM or
    transformers with C(HF_HOME) set find it without downloading. Otherwise O(dest) is a plain directory.
  - Unchanged files are hard-linked into a staging directory beside the destination (same filesystem), the
    others are fetched there (resuming a part left by an interrupted run), every fetched file is hashed
    (sha256, in parallel over O(workers) threads) and compared with what the source says (the source's
    manifest, the hub's LFS sha256 or git blob id, O(sha256)). Only when all match is the staging directory
    exchanged with the destination, so a reader never sees a half-written model. The manifest (files, sizes,
    sha256, mtimes, source, revision, time) is written last.
  - An up-to-date destination is C(changed=false) with nothing transferred and, with O(verify=fast), nothing
    read. O(verify=full) re-hashes the destination; a corrupted file is reported in RV(corrupted) and fetched
    again.
  - Free space (files to fetch plus O(free_space_reserve_mb)) is checked before any byte moves.
  - While a sync runs (for example under C(async)), RV(progress_path) holds JSON with C(bytes_done),
    C(bytes_total), C(rate), C(current_file) and C(updated), rewritten about once a second; read it with
    M(llmfleet.fleet.model_sync_info).
version_added: "0.1.0"
author:
  - llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
requirements:
  - for O(source=hf) online, C(huggingface_hub) on the target (offline verification needs nothing)
  - for O(source=ssh), the C(ssh) client, and C(rsync) on both sides or C(sftp) as the fallback
options:
  source:
    description: Where the model comes from.
    type: str
    required: true
    choices: [hf, ssh, url, local]
  dest:
    description:
      - With O(source=hf), the hub cache directory (C($HF_HOME/hub)); the model goes to
        C(<dest>/models--org--name/snapshots/<revision>).
      - Otherwise the directory the model's files end up in (created with its parents).
    type: path
    required: true
  repo_id:
    description: Hub repository, C(org/name). Required with O(source=hf).
    type: str
  revision:
    description:
      - The commit sha (40 hexadecimal digits) of the hub repository. Required with O(source=hf).
      - Branch names (C(main)) and tags are refused, because both can be moved to another commit on the hub.
    type: str
  allow_patterns:
    description:
      - Only hub files matching one of these glob patterns (huggingface_hub's rule; C(dir/) means all under it).
    type: list
    elements: str
  ignore_patterns:
    description: Hub files matching one of these glob patterns are left out.
    type: list
    elements: str
  token:
    description: Hugging Face token for gated or private repositories. Defaults to C(HF_TOKEN) in the environment.
    type: str
  offline:
    description:
      - Do not contact the hub; verify the cached revision instead and fail, naming the revision or the missing
        files, when it is incomplete. Defaults to C(HF_HUB_OFFLINE) in the module's environment.
      - Without a manifest from an earlier online sync, O(verify=full) checks each blob against the digest the hub
        named it by (sha256 for LFS files, git blob id otherwise).
    type: bool
  hf_ref:
    description:
      - With O(source=hf), the ref file (C(refs/<hf_ref>)) written to point at O(revision), so that loaders asking
        for that ref find the snapshot offline. Empty writes no ref.
    type: str
    default: main
  src:
    description: The source directory, on the target (O(source=local)) or on O(remote_host) (O(source=ssh)).
    type: str
  remote_host:
    description: The host to copy from with O(source=ssh).
    type: str
  remote_user:
    description: The SSH user on O(remote_host); the SSH client's default when unset.
    type: str
  remote_port:
    description: The SSH port of O(remote_host).
    type: int
    default: 22
  ssh_key:
    description: Private key file for SSH (C(ssh -i)).
    type: path
  ssh_options:
    description:
      - Extra C(ssh -o) options, such as C(StrictHostKeyChecking=accept-new). C(BatchMode=yes) is always set.
      - The listing, the transfer and syncs within 60 seconds share one SSH connection (OpenSSH C(ControlMaster=auto),
        C(ControlPersist=60)) through a socket in a directory only this user can enter
        (C(<tmpdir>/llmfleet-ssh-<uid>), mode 0700). These options come first, so C(ControlMaster=no) turns the
        sharing off.
      - Ciphers are OpenSSH's default set with the AES-GCM ones first, less those the local C(ssh -Q cipher) does not
        list; with AES instructions they take much less CPU than chacha20-poly1305. C(Ciphers=...) here replaces that.
    type: list
    elements: str
    default: []
  rsync_path:
    description: The rsync command on O(remote_host).
    type: str
    default: rsync
  bwlimit_kbps:
    description:
      - With O(source=ssh), limit the transfer to this many KiB/s (rsync C(--bwlimit), SFTP C(-l) in Kbit/s); V(0)
        means no limit.
    type: int
    default: 0
  transfer:
    description:
      - V(auto) uses rsync (C(--partial --append-verify)) when it is on both sides, else SFTP (C(reget), which resumes).
      - V(rsync) and V(sftp) force one; V(rsync) fails when rsync is missing on either side.
    type: str
    choices: [auto, rsync, sftp]
    default: auto
  url:
    description: The http(s) URL of the file to fetch with O(source=url). Proxies come from the environment.
    type: str
  sha256:
    description: The expected sha256 of the file at O(url). Required with O(source=url).
    type: str
  filename:
    description: The file's name in O(dest) for O(source=url); default the last part of the URL's path.
    type: str
  validate_certs:
    description: Verify the server's TLS certificate for O(source=url).
    type: bool
    default: true
  timeout:
    description: Seconds to wait for a connection (SSH C(ConnectTimeout), HTTP socket timeout).
    type: int
    default: 30
  verify:
    description:
      - V(fast) trusts files whose size and mtime match the manifest (reads nothing); V(full) re-hashes them.
    type: str
    choices: [fast, full]
    default: fast
  workers:
    description:
      - Files hashed (and, for O(source=local), copied) in parallel; V(0) means one per core.
      - With O(source=local) each file over 16 MiB is copied in the kernel (C(copy_file_range), else C(sendfile),
        else read and write) by a thread of its own while its worker hashes what has landed in the destination.
    type: int
    default: 0
  free_space_reserve_mb:
    description: Space (MiB) that must stay free on the destination's filesystem after the sync.
    type: int
    default: 100
attributes:
  check_mode:
    support: full
    description: Lists the source and compares it with the manifest (re-hashing with O(verify=full)); reports the
      files and bytes that would move and writes nothing.
  diff_mode:
    support: full
    description: The diff lists files (name, size, sha256) before and after; RV(added), RV(updated) and RV(removed)
      name them.
notes:
  - Blobs of an older revision in a hub cache are not deleted; use C(hf cache) tools for that.
  - Two syncs into the same O(dest) at the same time are not supported.
seealso:
  - module: llmfleet.fleet.model_sync_info
"""

EXAMPLES = r"""
- name: Put a pinned model revision into the hub cache vLLM reads (HF_HOME=/srv/hf)
  llmfleet.fleet.model_sync:
    source: hf
    repo_id: HuggingFaceTB/SmolLM2-135M-Instruct
    revision: 12fd25f77366fa6b3b4b768ec3050bf629380bac
    allow_patterns: ["*.json", "*.safetensors", "*.txt"]
    dest: /srv/hf/hub
    token: "{{ vault_hf_token }}"

- name: Copy the model from the first GB10 box, resuming an interrupted copy
  llmfleet.fleet.model_sync:
    source: ssh
    remote_host: gb10-a.lan
    remote_user: llm
    src: /srv/models/qwen2.5-72b
    dest: /srv/models/qwen2.5-72b
  async: 7200
  poll: 0
  register: model_copy

- name: Fetch a LoRA adapter from the training host's web server
  llmfleet.fleet.model_sync:
    source: url
    url: https://train.lan/adapters/run-42/adapter_model.safetensors
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    dest: /srv/adapters/run-42

- name: Check an offline cache is complete (air-gapped host)
  llmfleet.fleet.model_sync:
    source: hf
    repo_id: HuggingFaceTB/SmolLM2-135M-Instruct
    revision: 12fd25f77366fa6b3b4b768ec3050bf629380bac
    dest: /srv/hf/hub
    verify: full
  environment:
    HF_HUB_OFFLINE: "1"
"""

RETURN = r"""
dest:
  description: The directory holding the model (for O(source=hf), the snapshot directory).
  returned: always
  type: str
  sample: /srv/hf/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/12fd25f77366fa6b3b4b768ec3050bf629380bac
manifest_path:
  description: The manifest of the destination.
  returned: always
  type: str
progress_path:
  description: The progress JSON written while files are fetched.
  returned: always
  type: str
transfer:
  description: How files were moved (C(rsync), C(sftp), C(http), C(copy), C(hub)), or C(none).
  returned: always
  type: str
files:
  description: How many files the model has.
  returned: always
  type: int
bytes_total:
  description: The model's size in bytes (as the source lists it).
  returned: always
  type: int
files_to_transfer:
  description: The files that were (or, in check mode, would be) fetched.
  returned: always
  type: list
  elements: str
bytes_to_transfer:
  description: Bytes of the files to fetch.
  returned: always
  type: int
bytes_transferred:
  description: Payload bytes actually written into staging by this run (a resumed file counts only its rest).
  returned: always
  type: int
hashed_bytes:
  description: Bytes read to compute sha256 by this run (0 for an up-to-date destination with O(verify=fast)).
  returned: always
  type: int
added:
  description: Files the destination did not have.
  returned: always
  type: list
  elements: str
updated:
  description: Files the destination had in another version (or corrupted).
  returned: always
  type: list
  elements: str
removed:
  description: Files of the destination the source no longer has.
  returned: always
  type: list
  elements: str
corrupted:
  description: Destination files whose content did not match the manifest under O(verify=full), each with the problem.
  returned: always
  type: list
  elements: dict
revision:
  description: The revision synced (O(source=hf)).
  returned: always
  type: str
rate:
  description: Bytes per second over the run.
  returned: when files were transferred
  type: int
"""

# Ansible modules keep DOCUMENTATION/EXAMPLES/RETURN first, so the imports come after them.
import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.engine import (
    run_sync,
    validate_params,
    verify_hub_offline,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.sync.sources import (
    HubSource,
    LocalSource,
    SshSource,
    SyncError,
    UrlSource,
    import_huggingface_hub,
)

ARGUMENT_SPEC = {
    "source": {"type": "str", "required": True, "choices": ["hf", "ssh", "url", "local"]},
    "dest": {"type": "path", "required": True},
    "repo_id": {"type": "str"},
    "revision": {"type": "str"},
    "allow_patterns": {"type": "list", "elements": "str"},
    "ignore_patterns": {"type": "list", "elements": "str"},
    "token": {"type": "str", "no_log": True, "fallback": (env_fallback, ["HF_TOKEN"])},
    "offline": {"type": "bool", "fallback": (env_fallback, ["HF_HUB_OFFLINE"])},
    "hf_ref": {"type": "str", "default": "main"},
    "src": {"type": "str"},
    "remote_host": {"type": "str"},
    "remote_user": {"type": "str"},
    "remote_port": {"type": "int", "default": 22},
    "ssh_key": {"type": "path", "no_log": False},
    "ssh_options": {"type": "list", "elements": "str", "default": []},
    "rsync_path": {"type": "str", "default": "rsync"},
    "bwlimit_kbps": {"type": "int", "default": 0},
    "transfer": {"type": "str", "choices": ["auto", "rsync", "sftp"], "default": "auto"},
    "url": {"type": "str"},
    "sha256": {"type": "str"},
    "filename": {"type": "str"},
    "validate_certs": {"type": "bool", "default": True},
    "timeout": {"type": "int", "default": 30},
    "verify": {"type": "str", "choices": ["fast", "full"], "default": "fast"},
    "workers": {"type": "int", "default": 0},
    "free_space_reserve_mb": {"type": "int", "default": 100},
}


def build_module() -> AnsibleModule:
    return AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[
            ("source", "hf", ("repo_id", "revision")),
            ("source", "ssh", ("remote_host", "src")),
            ("source", "url", ("url", "sha256")),
            ("source", "local", ("src",)),
        ],
        mutually_exclusive=[("url", "src"), ("repo_id", "src"), ("repo_id", "url")],
        supports_check_mode=True,
    )


def make_source(module: AnsibleModule) -> LocalSource | SshSource | UrlSource | HubSource:
    params = module.params
    kind = params["source"]
    if kind == "local":
        return LocalSource(params["src"])
    if kind == "ssh":
        return SshSource(params)
    if kind == "url":
        return UrlSource(
            params["url"], params["sha256"], params["filename"], params["timeout"], params["validate_certs"]
        )
    hub = import_huggingface_hub()
    if hub is None:
        module.fail_json(msg=missing_required_lib("huggingface_hub"), exception=traceback.format_exc())
    return HubSource(params, hub)


def main() -> None:
    module = build_module()
    params = module.params
    problem = validate_params(params)
    if problem:
        module.fail_json(msg=problem)
    try:
        if params["source"] == "hf" and params["offline"]:
            result = verify_hub_offline(params)
        else:
            result = run_sync(params, make_source(module), module.check_mode, module._diff)
    except SyncError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    except OSError as exc:
        module.fail_json(msg=f"dest {params['dest']!r}: {exc}", exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
