"""The Ray cluster of the lab: a head and two workers (groups ray_head, ray_workers) as the converge of
playbooks/ray_cluster.yml left them, read through the head's dashboard / state API from this machine.

The read-only tests come first; the ``disruptive`` one retires a worker and adds it back
(ray_cluster_retired_workers as an extra variable) while another worker's raylet was killed, with
two converges of the Ray play alone.
"""

from __future__ import annotations

import json
import shlex
import time
import urllib.request

import pytest
import testinfra
from llmfleet import runner
from llmfleet_lab import containers as lab

pytestmark = [pytest.mark.lab]

PLAYBOOK = "playbooks/ray_cluster.yml"
# A job whose tasks are pinned one per alive node, each returning the hostname it ran on.
JOB = """
import json, socket, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
@ray.remote(num_cpus=0.1)
def where():
    return socket.gethostname()
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
print("HOSTS=" + json.dumps(sorted(ray.get(refs))))
"""


def _hosts(group: str) -> list[lab.LabHost]:
    return [h for h in lab.read_inventory() if group in h.groups]


@pytest.fixture(scope="module")
def cluster() -> dict:
    heads, workers = _hosts("ray_head"), _hosts("ray_workers")
    if len(heads) != 1 or len(workers) < 2:
        pytest.fail(f"the lab inventory {lab.lab_inventory_path()} needs one ray_head and two ray_workers")
    head = heads[0]
    port = head.hostvars.get("ray_cluster_dashboard_port", 8265)
    return {
        "head": head,
        "workers": workers,
        "names": sorted([head.name, *(w.name for w in workers)]),
        "dashboard": f"http://{lab.container_address(head.name)}:{port}",
    }


def alive_nodes(cluster: dict) -> dict[str, dict]:
    """ALIVE nodes by node name, as the head's state API reports them."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(cluster["dashboard"] + "/api/v0/nodes?limit=1000&detail=true", timeout=10) as response:
        rows = json.loads(response.read())["data"]["result"]["result"]
    return {r["node_name"]: r for r in rows if r["state"] == "ALIVE"}


def converge(tmp_path, extravars: dict | None = None) -> dict:
    started = time.monotonic()
    rc, summary, _ = runner.run(
        runner.RunRequest(
            playbook=PLAYBOOK,
            inventory=str(lab.lab_inventory_path()),
            extravars=extravars,
            summary_dir=tmp_path,
            quiet=True,
        )
    )
    assert rc == 0, summary.get("failed_tasks")
    summary["took_s"] = round(time.monotonic() - started, 1)
    return summary


def test_cluster_reports_every_node_with_cpus_and_memory(cluster):
    nodes = alive_nodes(cluster)
    assert sorted(nodes) == cluster["names"]
    for name, node in nodes.items():
        total = node["resources_total"]
        assert total["CPU"] >= 1, (name, total)
        assert total["memory"] > 1 << 30, (name, total)
        # The inventory's object store (group_vars ray_head / ray_workers), not Ray's 30 % of memory.
        assert total["object_store_memory"] <= 256 << 20, (name, total)
    assert [n for n, node in nodes.items() if node["is_head_node"]] == [cluster["head"].name]


def test_dashboard_answers(cluster):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(cluster["dashboard"] + "/api/version", timeout=10) as response:
        version = json.loads(response.read())
    assert version["ray_version"] == "2.60.0"


def test_nodes_run_under_systemd_with_metrics(cluster):
    port = cluster["head"].hostvars.get("ray_cluster_metrics_export_port", 8080)
    for lab_host in [cluster["head"], *cluster["workers"]]:
        ti = testinfra.get_host(f"docker://{lab_host.name}")
        svc = ti.service("ray.service")
        assert svc.is_running and svc.is_enabled, lab_host.name
        metrics = ti.check_output(
            "/opt/llmfleet/ray/venv/bin/python -c %s",
            f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())",
        )
        assert "ray_" in metrics, lab_host.name


def test_job_through_the_head_runs_on_every_node(cluster, tmp_path):
    job_id = f"test-hosts-{int(time.time())}"
    rc, summary, _ = runner.run(
        runner.RunRequest(
            playbook="ray_job",
            inventory=str(lab.lab_inventory_path()),
            extravars={"ray_job_entrypoint": "python -c " + shlex.quote(JOB), "ray_job_submission_id": job_id},
            summary_dir=tmp_path,
            quiet=True,
        )
    )
    assert rc == 0, summary.get("failed_tasks")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{cluster['dashboard']}/api/jobs/{job_id}", timeout=10) as response:
        assert json.loads(response.read())["status"] == "SUCCEEDED"
    with opener.open(f"{cluster['dashboard']}/api/jobs/{job_id}/logs", timeout=10) as response:
        logs = json.loads(response.read())["logs"]
    seen = json.loads(logs.split("HOSTS=")[-1].splitlines()[0])
    assert sorted(seen) == cluster["names"]


@pytest.mark.disruptive
def test_retired_worker_leaves_then_rejoins_with_a_killed_raylet(cluster, tmp_path):
    """Retire a worker (converge: it is drained and stopped, two nodes alive); then kill -9 the other
    worker's raylet and converge with the inventory as it was: both are back (three nodes), the killed
    one under a new node id. Two converges for the three checks, to keep make test short (the second
    converge's changed=0 is make test's check of the whole site.yml)."""
    leaving, victim = cluster["workers"][-1].name, cluster["workers"][0].name
    retire = converge(tmp_path, {"ray_cluster_retired_workers": [leaving]})
    assert sorted(alive_nodes(cluster)) == [n for n in cluster["names"] if n != leaving]
    gone = testinfra.get_host(f"docker://{leaving}").service("ray.service")
    assert not gone.is_running and not gone.is_enabled

    ti = testinfra.get_host(f"docker://{victim}")
    before = alive_nodes(cluster)[victim]["node_id"]
    ti.run("kill -9 %s", ti.check_output("pgrep -u ray -x raylet").split()[0])
    back = converge(tmp_path)
    nodes = alive_nodes(cluster)
    assert sorted(nodes) == cluster["names"]
    assert nodes[victim]["node_id"] != before  # a new raylet, not the killed one still counted
    print(f"retire converge {retire['took_s']} s, rejoin converge {back['took_s']} s")
