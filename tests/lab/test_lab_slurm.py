"""vLLM as a Slurm batch job on the lab's real Slurm cluster, reached through an SSH tunnel.

After the converge of playbooks/slurm_job.yml (make test's, or `llmfleet deploy` on a dev lab):
the job runs real vLLM CPU on a compute node, wrote its connection info on shared storage, and the
tunnel from this machine (the controller) through the login node answers. The lab's hosts are found
by group (slurm_login, lab_slurm_compute), so the same tests run on a dev lab and on lab-test.
The cancel / failure / two-node tests are also ``disruptive`` (they run last).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import testinfra
from llmfleet import runner
from llmfleet_lab import containers as lab

pytestmark = [pytest.mark.lab]

ASK = "What is the capital of France? Answer in one sentence."
PLAYBOOK = "playbooks/slurm_job.yml"


def _hosts(group: str) -> list[lab.LabHost]:
    return [h for h in lab.read_inventory() if group in h.groups]


@pytest.fixture(scope="module")
def login() -> dict:
    hosts = _hosts("slurm_login")
    if not hosts:
        pytest.fail(f"the lab inventory {lab.lab_inventory_path()} has no host in group slurm_login")
    host = hosts[0]
    hv = host.hostvars
    name = f"vllm-{hv['slurm_job_instance']['name']}"
    job_dir = f"{hv['slurm_job_shared_dir']}/jobs/{name}"
    return {
        "lab": host,
        "host": testinfra.get_host(f"docker://{host.name}"),
        "job_name": name,
        "job_dir": job_dir,
        "info_file": f"{job_dir}/connection.json",
        "venv": f"{hv['slurm_job_shared_dir']}/venv",
        "port": int(hv["slurm_job_tunnel_port"]),
    }


def _info(login) -> dict:
    return json.loads(login["host"].file(login["info_file"]).content_string)


def _queue(login, name: str | None = None) -> list[list[str]]:
    out = login["host"].check_output(f"squeue -h -n {name or login['job_name']} -o '%i|%T|%N'")
    return [line.split("|") for line in out.splitlines() if line.strip()]


def _job_state(scontrol_line: str) -> str:
    """JobState, Reason, ExitCode and times of one `scontrol show job -o` line (what explains an end)."""
    keep = ("JobState", "Reason", "ExitCode", "RunTime", "StartTime", "EndTime", "NodeList")
    return " ".join(f for f in scontrol_line.split() if f.split("=", 1)[0] in keep)


def _converge(extravars: dict | None = None, check: bool = False):
    """playbooks/slurm_job.yml (make test's own second converge and check mode of site.yml cover check mode)."""
    return runner.run(
        runner.RunRequest(
            playbook=PLAYBOOK,
            inventory=str(lab.lab_inventory_path()),
            check=check,
            quiet=True,
            extravars=extravars or {},
        )
    )


def _chat(port: int, key: str | None, stream: bool = False) -> tuple[int, str]:
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": ASK}], "max_tokens": 32, "temperature": 0}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.load(resp)["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_job_runs_vllm_and_wrote_its_connection_info(login):
    info = _info(login)
    compute = {h.name for h in _hosts("lab_slurm_compute")}
    assert info["node"] in compute and info["nodes"] == [info["node"]]
    assert info["url"] == f"http://{info['node']}:{info['port']}/v1"
    # Where the gateway reaches the job: the node's own address for its name (its lab address).
    assert info["address"] == lab.container_address(info["node"])
    assert info["api_key_file"] == f"{login['job_dir']}/api-key"
    assert info["start_time"] and info["ready_time"]
    assert _queue(login) == [[info["job_id"], "RUNNING", info["node"]]]
    # vLLM answers on the compute node (seen from the login node, as the tunnel sees it).
    health = login["host"].run(f"curl -s -o /dev/null -w '%{{http_code}}' {info['url'][:-3]}/health")
    assert health.stdout == "200"
    # The key file is 0600; neither the batch script nor Slurm's record of the job holds the key.
    key_file = login["host"].file(info["api_key_file"])
    assert key_file.mode == 0o600
    key = key_file.content_string.strip()
    assert len(key) >= 32
    job = login["host"].check_output(f"scontrol show job -d {info['job_id']}")
    script = login["host"].check_output(f"scontrol write batch_script {info['job_id']} -")
    assert key not in job and key not in script
    # On the compute node, no process has the key on its command line.
    node = testinfra.get_host(f"docker://{info['node']}")
    assert key not in node.check_output("ps -eo args")


def test_tunnel_answers_with_the_key_and_refuses_without(login):
    info = _info(login)
    key = login["host"].file(info["api_key_file"]).content_string.strip()
    status, answer = _chat(login["port"], key)
    assert status == 200, answer
    assert "Paris" in answer, answer
    status, body = _chat(login["port"], None)
    assert status == 401, body


def test_openai_style_streaming_through_the_tunnel(login):
    info = _info(login)
    key = login["host"].file(info["api_key_file"]).content_string.strip()
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": ASK}],
        "max_tokens": 32,
        "temperature": 0,
        "stream": True,
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{login['port']}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    chunks = []
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                chunks.append(delta or "")
    assert len(chunks) > 2 and "Paris" in "".join(chunks)


def test_second_converge_does_not_resubmit_or_reinstall(login):
    """The second run is make test's second converge of site.yml (which must report changed=0; a
    resubmission or a reinstall would each change), run before these tests: a third converge here cost
    48 s of make test. After it: the converge's job is the only one Slurm knows (no second job of the
    name, none submitted and cancelled), and the venv's marker is older than the job's connection info
    (a reinstall after the submission would be newer). What fails on a resubmission or a reinstall in
    make test is that second converge's --expect-changed 0; this test alone cannot see a job cancelled
    and resubmitted longer ago than Slurm's MinJobAge (300 s). On a dev lab, run a converge before it."""
    info = _info(login)
    assert _queue(login) == [[info["job_id"], "RUNNING", info["node"]]]
    jobs = login["host"].check_output("scontrol show jobs -o | grep -o '^JobId=[0-9]*' || true").split()
    assert jobs == [f"JobId={info['job_id']}"], f"Slurm knows other jobs than the converge's {info['job_id']}: {jobs}"
    marker = f"{login['venv']}/.llmfleet-installed.json"
    marker_mtime, info_mtime = map(int, login["host"].check_output(f"stat -c %Y {marker} {login['info_file']}").split())
    assert marker_mtime <= info_mtime, "the venv was installed again after the job started"
    assert (
        json.loads(login["host"].file(marker).content_string)["packages"]
        == login["lab"].hostvars["slurm_job_pip_packages"]
    )


def test_refuses_a_local_port_another_process_holds(login):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        rc, summary, _ = _converge({"slurm_job_tunnel_port": port})
    assert rc != 0
    failed = summary["failed_tasks"]
    assert (
        failed
        and f"slurm_job_tunnel_port = {port} is in use on this machine by another process" in (failed[0]["message"])
    )
    assert summary["totals"]["changed"] == 0


@pytest.mark.disruptive
def test_failed_job_is_reported_with_its_log_tail(login):
    instance = {**login["lab"].hostvars["slurm_job_instance"], "name": "broken", "model_path": "/shared/does-not-exist"}
    rc, summary, _ = _converge({"slurm_job_instance": instance, "slurm_job_tunnel": False, "slurm_job_timeout": 600})
    assert rc != 0
    message = summary["failed_tasks"][0]["message"]
    assert "is FAILED (exit code" in message, message
    assert "/shared/does-not-exist" in message, message
    assert "does not exist" in message, message
    assert _queue(login, "vllm-broken") == []


@pytest.mark.disruptive
def test_absent_cancels_the_job_and_closes_the_tunnel(login):
    job_id = _info(login)["job_id"]
    # The converge's job must still run here, or there is nothing for absent to cancel.
    before = login["host"].check_output(f"scontrol show job -o {job_id}")
    assert "JobState=RUNNING" in before, f"job {job_id} is no longer running before the test: {_job_state(before)}"
    rc, summary, _ = _converge({"slurm_job_state": "absent"})
    assert rc == 0, summary["failed_tasks"]
    assert _queue(login) == []
    state = login["host"].check_output(f"scontrol show job -o {job_id}")
    assert "JobState=CANCELLED" in state, _job_state(state)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", login["port"])) != 0, "the tunnel's port still answers"


@pytest.mark.disruptive
def test_two_node_job_forms_a_ray_cluster_across_both_nodes(login):
    """vLLM's CPU backend cannot use the Ray executor, so the job stops once Ray has formed."""
    compute = sorted(h.name for h in _hosts("lab_slurm_compute"))[:2]
    instance = {**login["lab"].hostvars["slurm_job_instance"], "name": "ray2"}
    extravars = {
        "slurm_job_instance": instance,
        "slurm_job_nodes": 2,
        "slurm_job_cpus": 1,
        "slurm_job_mem": "1200M",
        "slurm_job_serve": False,
        "slurm_job_tunnel": False,
        "slurm_job_timeout": 600,
    }
    started = time.monotonic()
    rc, summary, _ = _converge(extravars)
    assert rc == 0, summary["failed_tasks"]
    info = json.loads(
        login["host"]
        .file(f"{login['lab'].hostvars['slurm_job_shared_dir']}/jobs/vllm-ray2/connection.json")
        .content_string
    )
    assert info["nodes"] == compute
    assert info["ray_nodes"] == compute
    log = login["host"].check_output(
        f"cat {login['lab'].hostvars['slurm_job_shared_dir']}/jobs/vllm-ray2/slurm-{info['job_id']}.out"
    )
    assert "Ray cluster nodes" in log, log[-2000:]
    # The last `ray status` the job printed lists both nodes as active.
    status = log.rsplit("Node status", 1)[-1]
    active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    assert active.count(" node_") == len(compute), log[-2000:]
    assert time.monotonic() - started < 600
