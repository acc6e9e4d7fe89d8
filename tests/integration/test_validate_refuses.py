"""site.yml refuses an inconsistent inventory in its first play, before any host is touched.

These run the real site.yml through the real ansible-runner wrapper (``llmfleet deploy``); the
hosts in these inventories do not exist, so any task that reached them would show up as a failure
of its own, not of the validate task.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from llmfleet import runner

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "inventories"


@pytest.mark.parametrize(
    ("inventory", "host", "expected"),
    [
        ("dup-port", "gpu-a", "vllm_service_instances[1] ('small2').port = 8000 is already used by instance 'small'"),
        ("ray-no-head", "ray-w1", "host ray-w1 is in group ray_workers but group ray_head has no host"),
        ("bad-runtime", "gpu-b", "vllm_service_runtime = 'podman' is not a known runtime; allowed: docker, systemd"),
    ],
)
def test_site_refuses_before_any_change(tmp_path, inventory, host, expected):
    req = runner.RunRequest(
        playbook="site.yml", inventory=str(FIXTURES / inventory / "hosts.yml"), summary_dir=tmp_path, quiet=True
    )
    rc, summary, path = runner.run(req)
    assert rc != 0
    assert path.is_file()
    assert summary["totals"]["changed"] == 0
    assert summary["totals"]["ok"] == 0, "no task may have run on any host"
    assert [t["task"] for t in summary["failed_tasks"]] == ["Refuse an inconsistent inventory"]
    failed = summary["failed_tasks"][0]
    assert failed["host"] == host
    assert expected in failed["message"]
