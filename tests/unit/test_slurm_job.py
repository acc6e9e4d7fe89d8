"""slurm_job parsing and checks, on output captured from the real lab cluster (tests/fixtures/slurm).

The fixtures were captured with `llmfleet lab up` (dev-slurm): three jobs submitted on the login
node (one running, one pending on Resources, one pending on Priority that later failed with exit
code 3), then squeue / scontrol / sinfo as the module and the validate step run them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.cluster.slurm import (
    ACTIVE_STATES,
    exit_code,
    expand_nodelist,
    parse_scontrol,
    parse_sinfo,
    parse_squeue,
    tail,
    valid_walltime,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory import slurm as inv

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_squeue_states_reasons_and_nodes():
    jobs = {j["name"]: j for j in parse_squeue(_read("squeue.txt"))}
    assert jobs["fx-run"]["state"] == "RUNNING"
    assert jobs["fx-run"]["nodes"] == ["dev-slurm-compute-1"]
    assert jobs["fx-pend"]["state"] == "PENDING" and jobs["fx-pend"]["reason"] == "Resources"
    assert jobs["fx-fail"]["reason"] == "Priority"
    assert jobs["fx-pend"]["nodes"] == []
    assert all(j["state"] in ACTIVE_STATES and j["user"] == "root" for j in jobs.values())


def test_scontrol_failed_job():
    fields = parse_scontrol(_read("scontrol_failed.txt"))
    assert fields["JobId"] == "3"
    assert fields["JobState"] == "FAILED"
    assert fields["Reason"] == "NonZeroExitCode"
    assert exit_code(fields["ExitCode"]) == (3, 0)
    assert fields["StdOut"] == "/shared/fx-fail.out"
    assert fields["NodeList"] == "dev-slurm-compute-1"
    assert "FAILED" not in ACTIVE_STATES


def test_scontrol_pending_and_cancelled():
    pending = parse_scontrol(_read("scontrol_pending.txt"))
    assert pending["JobState"] == "PENDING" and pending["Reason"] == "Resources"
    assert pending["NumNodes"].startswith("2")
    cancelled = parse_scontrol(_read("scontrol_cancelled.txt"))
    assert cancelled["JobState"] == "CANCELLED"


def test_scontrol_keeps_values_with_spaces():
    fields = parse_scontrol("JobId=9 Command=/bin/echo a b Reason=None WorkDir=/x")
    assert fields["Command"] == "/bin/echo a b" and fields["Reason"] == "None" and fields["WorkDir"] == "/x"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("dev-slurm-compute-[1-2]", ["dev-slurm-compute-1", "dev-slurm-compute-2"]),
        ("n[01-03,7],login", ["n01", "n02", "n03", "n7", "login"]),
        ("a1,b[2]", ["a1", "b2"]),
        ("", []),
        ("(null)", []),
    ],
)
def test_expand_nodelist(text, names):
    assert expand_nodelist(text) == names


def test_sinfo_of_the_lab():
    parts = parse_sinfo(_read("sinfo.txt"))
    assert parts == {
        "lab": {"nodes": 2, "gres": False, "cpus": 2, "memory_mb": 3072, "time_limit": "infinite", "default": True}
    }


@pytest.mark.parametrize("value", ["30", "30:00", "04:00:00", "1-12", "1-12:30", "2-00:00:00", "UNLIMITED"])
def test_walltimes_slurm_accepts(value):
    assert valid_walltime(value)


@pytest.mark.parametrize("value", ["2 hours", "4h", "1:2:3:4", "", "-1", "1-"])
def test_walltimes_slurm_refuses(value):
    assert not valid_walltime(value)


def test_tail_of_a_file(tmp_path):
    log = tmp_path / "out"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(str(log), 3) == "line 97\nline 98\nline 99"
    assert "could not read" in tail(str(tmp_path / "missing"))


BASE = {
    "slurm_job_partition": "lab",
    "slurm_job_time": "00:30:00",
    "slurm_job_nodes": 1,
    "slurm_job_gpus": 0,
    "slurm_job_tunnel": False,
    "slurm_job_cluster": {"sinfo": (FIXTURES / "sinfo.txt").read_text()},
}


def _check(**changes):
    return inv.check_slurm_job("login", ["slurm_login"], {}, {**BASE, **changes}, {})


def test_inventory_checks_pass_and_refuse():
    assert _check() == []
    assert _check(slurm_job_partition="") == ["host login: slurm_job_partition = '' names no partition; allowed: lab"]
    assert (
        "slurm_job_partition = 'gpu' is not a partition of the cluster; allowed: lab"
        in _check(slurm_job_partition="gpu")[0]
    )
    assert "slurm_job_gpus = 1 asks for GPUs, but the cluster has no GRES" in _check(slurm_job_gpus=1)[0]
    assert "slurm_job_time = '2 hours' is not a Slurm time limit" in _check(slurm_job_time="2 hours")[0]
    assert "slurm_job_nodes = 3 is more than partition 'lab' has; allowed: at most 2" in _check(slurm_job_nodes=3)[0]
    # Without cluster facts only what needs none is checked.
    unknown = {**BASE, "slurm_job_cluster": {}, "slurm_job_gpus": 2}
    assert inv.check_slurm_job("login", ["slurm_login"], {}, unknown, {}) == []


def test_inventory_refuses_a_local_port_in_use(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        errors = _check(slurm_job_tunnel=True, slurm_job_tunnel_port=port, slurm_job_tunnel_dir=str(tmp_path))
    assert errors == [
        f"host login: slurm_job_tunnel_port = {port} is in use on this machine by another process; "
        "allowed: a free local port"
    ]
