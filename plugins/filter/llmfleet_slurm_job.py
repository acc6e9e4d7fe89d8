"""Jinja filters of the slurm_job role's endpoint: the vLLM server a login host's Slurm job runs.

A Slurm job's node and port are known only once it runs: the job writes them to its connection
info (``<slurm_job_shared_dir>/jobs/<slurm_job_name>/connection.json``, see
roles/slurm_job/templates/job.sbatch.j2). ``slurm_job_endpoints`` gives the record with where that
file is; the consumer reads it on the login host (slurp) and ``slurm_job_endpoints_with_info``
completes the record from it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

try:  # the collection's own import path (ansible); tests put the collection on sys.path
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.endpoint import (
        catalog_costs,
        catalog_entry,
        endpoint,
        served_names,
    )
except ImportError:  # pragma: no cover
    from llmfleet_endpoint import catalog_costs, catalog_entry, endpoint, served_names


def slurm_job_endpoints(host: str, hostvars: Any, models: dict) -> list[dict]:
    """The endpoint record of a login host's Slurm job (``hostvars``: its variables, role defaults
    included), when it serves one (``slurm_job_state`` present, ``slurm_job_serve`` true, an
    instance set). Its ``base_url`` is the login host's ``slurm_job_gateway_url`` when given, else
    empty until ``slurm_job_endpoints_with_info`` reads the job's connection info."""
    inst = hostvars.get("slurm_job_instance") or {}
    serving = boolean(hostvars["slurm_job_serve"], strict=False)
    if not inst or hostvars["slurm_job_state"] != "present" or not serving:
        return []
    model = inst.get("model")
    entry = catalog_entry(models, model, f"host {host}: slurm_job_instance ({inst.get('name')})")
    shared = str(hostvars["slurm_job_shared_dir"] or "").rstrip("/")
    name = str(hostvars["slurm_job_name"])
    if not shared:
        raise AnsibleFilterError(f"host {host}: slurm_job_shared_dir is empty; the job's connection info has no home")
    return [
        endpoint(
            kind="vllm",
            runtime="slurm",
            host=host,
            instance=name,
            model=str(model),
            served=served_names(inst, entry, model),
            base_url=str(hostvars.get("slurm_job_gateway_url") or ""),
            costs=catalog_costs(model, entry),
            api_key=str(hostvars.get("slurm_job_api_key") or inst.get("api_key") or ""),
            scrape_auth="bearer",
            info_file=f"{shared}/jobs/{name}/connection.json",
        )
    ]


def slurm_job_endpoints_with_info(records: list[dict], info_reads: list[dict] | None) -> list[dict]:
    """``records`` with each Slurm job's completed from its connection info (slurp results whose
    ``item`` is the record): at the job's head node (its address as the node resolves it, else its
    name) and port unless the inventory gave a URL; its served names as the job reports them; its
    key file on the login host unless the inventory gives the key. A job with no readable connection
    info (not submitted yet, not running) or one that does not serve is left out: it is no endpoint
    now. Records of other runtimes pass as they are."""
    infos = {}
    for result in info_reads or []:
        content = result.get("content")
        if content and not result.get("failed"):
            infos[result["item"]["id"]] = json.loads(base64.b64decode(content))
    out = []
    for record in records or []:
        if record["runtime"] != "slurm":
            out.append(record)
            continue
        info = infos.get(record["id"])
        if info is None or not (info.get("url") or record["base_url"]):
            continue
        address = info.get("address") or info["node"]
        out.append(
            {
                **record,
                "base_url": (record["base_url"] or f"http://{address}:{int(info['port'])}/v1").rstrip("/"),
                "served_names": [str(s) for s in info.get("served_model_names") or record["served_names"]],
                "key_file": "" if record["api_key"] else str(info.get("api_key_file") or ""),
                "key_on": "host" if (record["api_key"] or info.get("api_key_file")) else "",
            }
        )
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "slurm_job_endpoints_with_info": slurm_job_endpoints_with_info,
        }
