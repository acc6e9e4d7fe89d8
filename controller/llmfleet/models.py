"""``llmfleet models list|add|remove``: the model registry (model_mappings) of the gateway.

The work is done on the gateway host by ``playbooks/runbooks/models.yml`` (community.postgresql)
through ansible-runner; this module only builds its variables and prints the rows it reports.
``add`` and ``remove`` then converge the gateway (``playbooks/model_gateway.yml``) so the proxy
routes the change, unless ``apply`` is false.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmfleet import runner
from llmfleet.paths import repo_root

CLI_NOTE = "added from the CLI: not in git; move it into fleet_models + model_gateway_external_backends"


def _report_path() -> Path:
    return repo_root() / "artifacts" / "models" / "models.json"


def run(
    action: str,
    inventory: str | None = None,
    name: str = "",
    display_name: str | None = None,
    backend_url: str = "",
    backend_model: str | None = None,
    kind: str = "openai",
    input_cost: float = 0.0,
    output_cost: float = 0.0,
    apply: bool = True,
    as_json: bool = False,
) -> int:
    report = _report_path()
    shutil.rmtree(report.parent, ignore_errors=True)
    extravars = {"models_action": action, "models_report": str(report)}
    if action != "list":
        extravars.update(models_name=name, models_kind=kind, models_input_cost=input_cost,
                         models_output_cost=output_cost, models_backend_url=backend_url)
        extravars["models_display_name"] = display_name or name
        extravars["models_backend_model"] = backend_model or name
    rc, summary, path = runner.run(
        runner.RunRequest(playbook="playbooks/runbooks/models.yml", inventory=inventory, quiet=True,
                          extravars=extravars)
    )
    if rc != 0:
        runner.print_summary(summary, path)
        return rc
    if action != "list" and apply:
        rc, summary, path = runner.run(
            runner.RunRequest(playbook="playbooks/model_gateway.yml", inventory=inventory, quiet=True)
        )
        if rc != 0:
            runner.print_summary(summary, path)
            return rc
    rows = json.loads(report.read_text()).get("rows", []) if report.exists() else []
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    headers = ["name", "display name", "backend", "input $/M", "output $/M", "state", "health now", "source"]
    table = [
        [r["name"], r["display_name"], r["backend_url"], f"{r['input_cost']:g}", f"{r['output_cost']:g}",
         r.get("state", "?"), r.get("health", "?"), r["source"]]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table, strict=False)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    if any(r["source"] == "cli" for r in rows):
        print(f"\nsource cli: {CLI_NOTE}")
