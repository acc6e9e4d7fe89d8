"""Run playbooks through ansible-runner: what CI and runbooks use.

Output streams as Ansible prints it; at the end a JSON summary (hosts, ok / changed / failed counts,
duration, the failed tasks and their messages) is written under ``artifacts/runs/`` and the exit
code is non-zero when anything failed or was unreachable.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ansible_runner

from llmfleet.paths import lab_inventory, repo_root

STAT_KEYS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed")


@dataclass
class RunRequest:
    playbook: str
    inventory: str | None = None
    check: bool = False
    diff: bool = False
    limit: str | None = None
    tags: str | None = None
    skip_tags: str | None = None
    extravars: dict[str, Any] | None = None
    verbosity: int = 0
    summary_dir: Path | None = None
    quiet: bool = False


def resolve_playbook(name: str) -> Path:
    """A playbook path as given, or relative to the repository (``site.yml``, ``playbooks/x.yml``)."""
    for candidate in (
        Path(name),
        repo_root() / name,
        repo_root() / "playbooks" / name,
        repo_root() / "playbooks" / f"{name}.yml",
        repo_root() / "playbooks" / "runbooks" / f"{name}.yml",
    ):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"playbook {name!r} not found (looked in ., the repository and playbooks/)")


def _failure_message(res: dict[str, Any]) -> str:
    for key in ("msg", "stderr", "reason"):
        if res.get(key):
            return str(res[key])
    results = res.get("results")
    if isinstance(results, list):
        msgs = [str(r.get("msg")) for r in results if isinstance(r, dict) and r.get("failed") and r.get("msg")]
        if msgs:
            return "; ".join(msgs)
    return json.dumps(res)[:500]


def summarize(events: list[dict[str, Any]], stats: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    """Per-host counts and failed tasks, from ansible-runner's stats and events."""
    stats = stats or {}
    hosts: dict[str, dict[str, int]] = {}
    for key in STAT_KEYS:
        for host, count in (stats.get(key) or {}).items():
            hosts.setdefault(host, dict.fromkeys(STAT_KEYS, 0))[key] = count
    summary_hosts = {
        h: {
            "ok": c["ok"],
            "changed": c["changed"],
            "failed": c["failures"],
            "unreachable": c["dark"],
            "skipped": c["skipped"],
            "rescued": c["rescued"],
            "ignored": c["ignored"],
        }
        for h, c in sorted(hosts.items())
    }
    failed_tasks = []
    for event in events:
        if event.get("event") not in ("runner_on_failed", "runner_on_unreachable"):
            continue
        data = event.get("event_data", {})
        if data.get("ignore_errors"):
            continue
        failed_tasks.append(
            {
                "host": data.get("host"),
                "play": data.get("play"),
                "task": data.get("task"),
                "unreachable": event["event"] == "runner_on_unreachable",
                "message": _failure_message(data.get("res") or {}),
            }
        )
    totals = {k: sum(h[k] for h in summary_hosts.values()) for k in ("ok", "changed", "failed", "unreachable")}
    return {"hosts": summary_hosts, "totals": totals, "failed_tasks": failed_tasks}


def run(req: RunRequest) -> tuple[int, dict[str, Any], Path]:
    """Run one playbook; return (exit code, summary, path of the summary JSON)."""
    root = repo_root()
    playbook = resolve_playbook(req.playbook)
    inventory = Path(req.inventory).resolve() if req.inventory else lab_inventory()
    venv_bin = str(Path(sys.executable).parent)
    envvars = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "0" if sys.stdout.isatty() else "1",
    }
    cmdline = []
    if req.check:
        cmdline.append("--check")
    if req.diff or req.check:
        cmdline.append("--diff")
    if req.skip_tags:
        cmdline += ["--skip-tags", req.skip_tags]
    started = datetime.now(UTC)
    t0 = time.monotonic()
    private = Path(tempfile.mkdtemp(prefix="llmfleet-runner-"))
    try:
        result = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(root),
            playbook=str(playbook),
            inventory=str(inventory),
            envvars=envvars,
            extravars=req.extravars or {},
            limit=req.limit,
            tags=req.tags,
            cmdline=" ".join(cmdline) or None,
            verbosity=req.verbosity or None,
            quiet=req.quiet,
        )
        events = list(result.events)
        summary = summarize(events, result.stats)
        rc = result.rc
        status = result.status
    finally:
        shutil.rmtree(private, ignore_errors=True)
    duration = time.monotonic() - t0
    if rc == 0 and (summary["totals"]["failed"] or summary["totals"]["unreachable"]):
        rc = 2
    summary = {
        "playbook": str(playbook.relative_to(root) if playbook.is_relative_to(root) else playbook),
        "inventory": str(inventory),
        "mode": "check" if req.check else "apply",
        "limit": req.limit,
        "tags": req.tags,
        "status": status,
        "rc": rc,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        **summary,
    }
    out_dir = req.summary_dir or root / "artifacts" / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{stamp}-{playbook.stem}-{summary['mode']}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rc, summary, path


def print_summary(summary: dict[str, Any], path: Path, out=sys.stdout) -> None:
    t = summary["totals"]
    print(
        f"\nllmfleet: {summary['playbook']} ({summary['mode']}) {summary['status']} in {summary['duration_s']} s: "
        f"ok={t['ok']} changed={t['changed']} failed={t['failed']} unreachable={t['unreachable']}",
        file=out,
    )
    for task in summary["failed_tasks"]:
        print(f"  FAILED {task['host']}: {task['task']}: {task['message'][:400]}", file=out)
    print(f"llmfleet: summary written to {path}", file=out)
