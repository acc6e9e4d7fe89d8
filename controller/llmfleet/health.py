"""Fleet health: run the health runbook through ansible-runner and print a table of endpoints.

The rows are the fleet's endpoint registry (every vLLM instance, Slurm job, pipeline llama.cpp
server, the gateway; Kubernetes instances listed as rendered), each checked on the host that owns it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmfleet import runner
from llmfleet.paths import repo_root


def _report_dir() -> Path:
    return repo_root() / "artifacts" / "health"


def collect(report_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(report_dir.glob("*.json")):
        data = json.loads(path.read_text())
        for inst in data.get("instances", []):
            rows.append({"host": data["host"], "address": data.get("address", data["host"]), **inst})
    return rows


# Rows that are listed but not checked here (a Kubernetes instance only rendered, or inside a cluster).
NOT_CHECKED = ("rendered", "not checked")


def run_and_print(inventory: str | None, as_json: bool) -> int:
    report_dir = _report_dir()
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    req = runner.RunRequest(
        playbook="playbooks/runbooks/health_report.yml",
        inventory=inventory,
        quiet=True,
        extravars={"fleet_health_report_dir": str(report_dir)},
    )
    rc, summary, path = runner.run(req)
    rows = collect(report_dir)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    if rc != 0:
        runner.print_summary(summary, path)
        return rc
    if not rows:
        print("llmfleet: no endpoints in the inventory")
        return 1
    return 0 if all(r.get("status") in ("healthy", *NOT_CHECKED) for r in rows) else 1


def print_table(rows: list[dict]) -> None:
    headers = ["host", "instance", "kind", "model", "endpoint", "status", "latency", "answer"]
    table = []
    for r in rows:
        comp = r.get("completion") or {}
        latency = comp.get("latency_s")
        answer = " ".join(str(comp.get("text", "")).split())[:60]
        if r.get("status") != "healthy" and r.get("reasons"):
            answer = "; ".join(r["reasons"])[:60]
        table.append(
            [
                r["host"],
                r["name"],
                f"{r.get('kind', '?')}/{r.get('runtime', '?')}",
                r["model"],
                r.get("endpoint") or "-",
                r.get("status", "?"),
                f"{latency:.2f}s" if isinstance(latency, (int, float)) else "-",
                answer,
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table, strict=False)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
