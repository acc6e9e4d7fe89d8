"""Jinja filters that turn a vllm_service instance plus its fleet_models entry into a server command.

``vllm_instances`` resolves every instance once (model source, served names, the argument list,
the environment) so the systemd unit and the Compose file render the same command.
"""

from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleFilterError

try:  # the collection's own import path (ansible); tests put the collection on sys.path
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.endpoint import (
        catalog_costs,
        catalog_entry,
        endpoint,
        host_address,
        served_names,
    )
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.vllm_instance import VALUE_FLAGS
except ImportError:  # pragma: no cover
    from llmfleet_endpoint import catalog_costs, catalog_entry, endpoint, host_address, served_names
    from llmfleet_vllm_instance import VALUE_FLAGS


def _model_source(name: str, entry: dict, local_path: str | None = None) -> tuple[str, list[str]]:
    if local_path:  # where the model_cache role put (or found) it on this host
        return str(local_path), []
    source = entry.get("source") or {}
    if source.get("path"):
        return str(source["path"]), []
    if source.get("hf"):
        return str(source["hf"]), ["--revision", str(source.get("revision", "main"))]
    raise AnsibleFilterError(
        f"fleet_models[{name!r}].source has no path or hf entry vLLM can serve, and the model_cache role gave no "
        "local path for it (model_cache_paths); run the model_cache role first (vllm_service includes it)"
    )


def resolve_instance(
    instance: dict, models: dict, defaults: dict | None = None, local_paths: dict | None = None
) -> dict:
    """One instance, resolved: name, port, served names, model source, args (list), env (dict).

    ``local_paths`` (the model_cache role's ``model_cache_paths``: catalog name -> directory on this
    host) takes precedence over the catalog's source: such a model is served from that path.
    """
    inst = {**(defaults or {}), **instance}
    model_name = inst.get("model")
    if model_name not in models:
        raise AnsibleFilterError(
            f"vllm_service instance {inst.get('name')!r}: model {model_name!r} is not in fleet_models "
            f"(known: {', '.join(sorted(models)) or 'none'})"
        )
    entry = models[model_name] or {}
    local_path = (local_paths or {}).get(model_name)
    source, source_args = _model_source(model_name, entry, local_path)
    served = served_names(inst, entry, model_name)
    if inst.get("max_model_len") is None and entry.get("context_length"):
        inst["max_model_len"] = entry["context_length"]

    args = [
        "--model",
        source,
        *source_args,
        "--served-model-name",
        *served,
        "--host",
        str(inst.get("host", "0.0.0.0")),
        "--port",
        str(inst["port"]),
    ]
    for key, flag in VALUE_FLAGS.items():
        value = inst.get(key)
        if value is None or (key.endswith("_parallel_size") and int(value) == 1):
            continue
        args += [flag, str(value)]
    if inst.get("enable_prefix_caching") is True:
        args.append("--enable-prefix-caching")
    elif inst.get("enable_prefix_caching") is False:
        args.append("--no-enable-prefix-caching")
    if inst.get("enforce_eager"):
        args.append("--enforce-eager")
    lora = inst.get("lora_modules") or []
    if lora:
        args.append("--enable-lora")
        args += ["--lora-modules", *[f"{m['name']}={m['path']}" for m in lora]]
    args += [str(a) for a in entry.get("serve_args") or []]
    args += [str(a) for a in inst.get("extra_args") or []]

    # GPUs: systemd units get CUDA_VISIBLE_DEVICES from gpu_ids; containers get the devices
    # themselves (renumbered from 0 inside), so gpu_ids is kept apart from env.
    env = {str(k): str(v) for k, v in (inst.get("env") or {}).items()}
    return {
        "name": inst["name"],
        "port": int(inst["port"]),
        "host": str(inst.get("host", "0.0.0.0")),
        "served_names": served,
        "model": model_name,
        "model_source": source,
        "model_is_path": bool(local_path or (entry.get("source") or {}).get("path")),
        "args": args,
        "env": env,
        "gpu_ids": [int(g) for g in inst.get("gpu_ids") or []],
        "api_key": inst.get("api_key") or "",
    }


def vllm_service_endpoints(host: str, hostvars: Any, models: dict) -> list[dict]:
    """The endpoint records of a vllm_service host (``hostvars``: its variables, role defaults
    included): one per instance, at the host's service address and the instance's port, its key in
    ``<vllm_service_config_dir>/<instance>.apikey`` on the host unless the inventory gives it."""
    address = host_address(host, hostvars)
    runtime = str(hostvars["vllm_service_runtime"])
    config_dir = str(hostvars["vllm_service_config_dir"])
    records = []
    for index, inst in enumerate(hostvars.get("vllm_service_instances") or []):
        model = inst.get("model")
        entry = catalog_entry(models, model, f"host {host}: vllm_service_instances[{index}] ({inst.get('name')})")
        records.append(
            endpoint(
                kind="vllm",
                runtime=runtime,
                host=host,
                instance=str(inst["name"]),
                model=str(model),
                served=served_names(inst, entry, model),
                base_url=f"http://{address}:{int(inst['port'])}/v1",
                costs=catalog_costs(model, entry),
                key_file=f"{config_dir}/{inst['name']}.apikey",
                api_key=str(inst.get("api_key") or ""),
                scrape_auth="bearer",
                systemd_unit=f"vllm-{inst['name']}.service" if runtime == "systemd" else "",
                container=f"vllm-{inst['name']}" if runtime == "docker" else "",
            )
        )
    return records


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_missing(requirements: list[str], freeze: str) -> list[str]:
    """Requirements not satisfied by a ``pip freeze`` listing.

    ``name==version`` must match exactly (local labels such as ``+cpu`` included); a bare name only
    has to be installed. Extras (``litellm[proxy]==1.2``) are matched by the name without them.
    Anything else (ranges, URLs) is reported missing, so pip decides.
    """
    installed: dict[str, str] = {}
    for line in (freeze or "").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            installed[_canonical(name)] = version.strip()
    missing = []
    for req in requirements or []:
        name, sep, version = str(req).strip().partition("==")
        have = installed.get(_canonical(re.sub(r"\[[A-Za-z0-9_,.-]*\]$", "", name.strip())))
        if sep and have == version.strip():
            continue
        if not sep and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and have is not None:
            continue
        missing.append(str(req))
    return missing


def vllm_instances(
    instances: list[dict], models: dict, defaults: dict | None = None, local_paths: dict | None = None
) -> list[dict]:
    return [resolve_instance(i, models or {}, defaults, local_paths) for i in instances or []]


def vllm_without_keys(resolved: list[dict]) -> list[dict]:
    """The resolved instances without their keys, for the tasks that loop over them (whose items
    Ansible prints at -v): ``api_key_given`` says whether the inventory gave one. The keys go apart,
    into a no_log fact (``vllm_given_keys``, ``vllm_api_keys``)."""
    return [
        {**{k: v for k, v in inst.items() if k != "api_key"}, "api_key_given": bool(inst.get("api_key"))}
        for inst in resolved or []
    ]


def vllm_given_keys(resolved: list[dict]) -> dict[str, str]:
    """Instance name -> the API key the inventory gave it (instances given none are left out)."""
    return {inst["name"]: str(inst["api_key"]) for inst in resolved or [] if inst.get("api_key")}


def vllm_api_keys(given: dict[str, str], key_reads: list[dict] | None) -> dict[str, str]:
    """Instance name -> its API key: the inventory's, else its kept key file's.

    ``key_reads`` are the results of slurping ``<config_dir>/<name>.apikey`` per instance given no
    key; an unreadable or missing file (check mode before the first apply) gives no entry.
    """
    import base64

    keys = dict(given or {})
    for res in key_reads or []:
        item = res.get("item") or {}
        if res.get("content") and not res.get("failed") and item.get("name") not in keys:
            keys[item.get("name")] = base64.b64decode(res["content"]).decode().strip()
    return keys


def vllm_backups(results: list[dict]) -> list[dict]:
    """From looped template results with ``backup: true``: which files changed, per instance.

    Each entry: name (instance), dest (the file written) and backup (its previous content's copy,
    or "" when the file is new). Used to roll an instance back when it fails its health gate.
    """
    out = []
    for res in results or []:
        if not res.get("changed"):
            continue
        out.append(
            {
                "name": (res.get("item") or {}).get("name"),
                "dest": res.get("dest") or res.get("path"),
                "backup": res.get("backup_file", ""),
            }
        )
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "vllm_instances": vllm_instances,
            "pip_missing": pip_missing,
            "vllm_without_keys": vllm_without_keys,
            "vllm_given_keys": vllm_given_keys,
            "vllm_api_keys": vllm_api_keys,
            "vllm_backups": vllm_backups,
        }
