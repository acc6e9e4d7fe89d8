"""The Grafana dashboards the observability_stack role ships, as the tests read them (shared by the
render tests in tests/system and the lab's Prometheus tests in tests/lab)."""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parent.parent / "roles" / "observability_stack" / "files" / "dashboards"
# What Grafana puts in for the dashboards' variables when every value is selected.
VARIABLES = {"$__rate_interval": "1m", "$host": ".*", "$instance": ".*", "$model_name": ".*"}


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every target of every panel of every dashboard."""
    return [
        (name, panel["title"], target["expr"])
        for name, dash in dashboards().items()
        for panel in dash["panels"]
        for target in panel["targets"]
    ]


def substitute(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    return expr
