"""Jinja filters that build the model gateway's configuration from the catalog and the inventory.

Nothing is typed twice: every backend of a model comes from where it is already described —
``vllm_service_instances`` of every inference host, the Slurm job of every login host (its
connection info, read on the login host at each converge), the llama.cpp servers of every
workstation's model pipeline, ``model_gateway_external_backends`` (endpoints outside the
inventory), rows added with ``llmfleet models add`` — and its costs from ``fleet_models``. Backend
API keys never enter the rendered config: a keyed backend's ``api_key`` is a placeholder, and the
proxy's callback (roles/model_gateway/files/llmfleet_backend_keys.py) puts the key from the
gateway's 0600 ``backend_keys.json`` into each request, re-reading that file when it changes, so a
backend key is rotated without restarting the proxy.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

try:  # the collection's own import path (ansible); tests put plugins/filter on sys.path
    from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_model_pipeline import model_pipeline_servers
except ImportError:  # pragma: no cover
    from llmfleet_model_pipeline import model_pipeline_servers

# LiteLLM's provider prefix for an OpenAI-compatible backend by kind.
PROVIDERS = {"vllm": "hosted_vllm", "openai": "openai", "llamacpp": "openai"}


# What config.yaml says for a keyed backend's api_key: the callback swaps in the key (not a secret).
BACKEND_KEY_PLACEHOLDER = "llmfleet-backend-keys-file"
# The callback that does so (a module the role installs beside config.yaml, and its instance).
BACKEND_KEYS_CALLBACK = "llmfleet_backend_keys.backend_keys"


# Role defaults the backends of other roles' hosts are found with (role defaults are not in hostvars).
# tests/unit/test_gateway_filters.py checks each against the role's defaults/main.yml.
SLURM_SHARED_DIR = "/projects/{user}/llmfleet"  # slurm_job_shared_dir: /projects/<ansible_user or llm>/llmfleet
SLURM_JOB_NAME = "vllm-{instance}"  # slurm_job_name: vllm-<slurm_job_instance.name or server>
PIPELINE_SERVE_FORMATS = ["Q4_K_M", "Q5_K_M", "Q8_0", "F16"]  # model_pipeline_serve_formats
PIPELINE_SERVER_HOST = "0.0.0.0"  # model_pipeline_server_host


def _host_address(host: str, hv: Any) -> str:
    """Where peers reach a host's services: fleet_service_address, else its default IPv4, else its name."""
    facts = hv.get("ansible_facts") or {}
    return hv.get("fleet_service_address") or (facts.get("default_ipv4") or {}).get("address") or host


def _catalog_entry(models: dict, name: str, where: str) -> dict:
    if name not in models:
        raise AnsibleFilterError(
            f"{where}: model {name!r} is not in fleet_models (known: {', '.join(sorted(models)) or 'none'})"
        )
    return models[name] or {}


def _catalog_fields(name: str, entry: dict) -> dict:
    return {
        "source": "catalog",
        "served_name": str(entry.get("served_name") or name),
        "display_name": str(entry.get("display_name") or entry.get("served_name") or name),
        "input_cost": float(entry.get("cost_per_million_input_tokens") or 0),
        "output_cost": float(entry.get("cost_per_million_output_tokens") or 0),
    }


def gateway_registry_backends(rows: list[dict], models: dict) -> list[dict]:
    """Registry rows added with ``llmfleet models add`` (source cli) as backends, with their own costs.

    A row whose name is a catalog model is left to the catalog (the CLI refuses such names).
    """
    backends = []
    for row in rows or []:
        if row.get("source") != "cli" or row.get("name") in models:
            continue
        backends.append(
            {
                "id": str(row.get("backend_id") or f"cli/{row['name']}"),
                "kind": str(row.get("kind") or "openai"),
                "host": "",
                "instance": str(row["name"]),
                "model": str(row["name"]),
                "backend_model": str(row.get("backend_model") or row["name"]),
                "api_base": str(row["backend_url"]).rstrip("/"),
                "key_file": "",
                "api_key": "",
                "source": "cli",
                "served_name": str(row["name"]),
                "display_name": str(row.get("display_name") or row["name"]),
                "input_cost": float(row.get("input_cost") or 0),
                "output_cost": float(row.get("output_cost") or 0),
            }
        )
    return backends


def _instance_backend(host: str, inst: dict, entry: dict, api_base: str, key_file: str) -> dict:
    """One vLLM instance (vllm_service or vllm_kubernetes keys) as a backend."""
    served = inst.get("served_model_name") or entry.get("served_name") or inst["model"]
    served = served if isinstance(served, str) else next(iter(served))
    return {
        "id": f"{host}/{inst['name']}",
        "kind": "vllm",
        "host": host,
        "instance": inst["name"],
        "model": inst["model"],
        "backend_model": str(served),
        "api_base": api_base,
        "key_file": key_file,
        "api_key": inst.get("api_key") or "",
        **_catalog_fields(inst["model"], entry),
    }


def gateway_vllm_backends(hosts: list[str], hostvars: Any, models: dict) -> list[dict]:
    """Every vllm_service instance of ``hosts``, as a backend: host, instance, address, port, model.

    The address is the host's ``fleet_service_address`` (the address peers reach its services at),
    else its default IPv4 address from facts, else its inventory name.
    """
    backends = []
    for host in hosts:
        hv = hostvars[host]
        address = _host_address(host, hv)
        config_dir = hv.get("vllm_service_config_dir") or "/etc/vllm"
        for index, inst in enumerate(hv.get("vllm_service_instances") or []):
            where = f"host {host}: vllm_service_instances[{index}] ({inst.get('name')})"
            entry = _catalog_entry(models, inst.get("model"), where)
            backends.append(
                _instance_backend(
                    host, inst, entry, f"http://{address}:{int(inst['port'])}/v1", f"{config_dir}/{inst['name']}.apikey"
                )
            )
    return backends


def gateway_k8s_backends(clusters: list[str], hostvars: Any, models: dict) -> list[dict]:
    """Every vllm_kubernetes instance of the ``clusters`` the role applies to, as a backend: its
    ClusterIP Service (``http://vllm-<instance>.<namespace>.svc.<domain>:<port>/v1``), its key from
    the controller's key directory. A cluster only rendered (vllm_kubernetes_apply false) serves
    nothing and gives no backend."""
    backends = []
    for cluster in clusters:
        hv = hostvars[cluster]
        if not hv.get("vllm_kubernetes_apply", True):
            continue
        namespace = hv.get("vllm_kubernetes_namespace") or "llm"
        domain = hv.get("vllm_kubernetes_cluster_domain") or "cluster.local"
        key_dir = hv.get("vllm_kubernetes_key_dir") or ""
        for index, inst in enumerate(hv.get("vllm_kubernetes_instances") or []):
            where = f"host {cluster}: vllm_kubernetes_instances[{index}] ({inst.get('name')})"
            entry = _catalog_entry(models, inst.get("model"), where)
            service = "vllm-" + str(inst["name"]).replace("_", "-").lower()
            backends.append(
                _instance_backend(
                    cluster,
                    inst,
                    entry,
                    f"http://{service}.{namespace}.svc.{domain}:{int(inst['port'])}/v1",
                    f"{key_dir}/{inst['name']}.apikey" if key_dir else "",
                )
            )
    return backends


def gateway_slurm_jobs(login_hosts: list[str], hostvars: Any, models: dict) -> list[dict]:
    """The Slurm job of each login host that serves one (slurm_job_state present, slurm_job_serve true,
    an instance set): the login host, the job's name, its catalog model and where its connection info
    is (``<slurm_job_shared_dir>/jobs/<slurm_job_name>/connection.json``, as the slurm_job role writes
    it). The gateway reads that file on the login host (the job's node and port change when it is
    resubmitted) and makes the backend with ``gateway_slurm_backends``."""
    jobs = []
    for host in login_hosts or []:
        hv = hostvars[host]
        inst = hv.get("slurm_job_instance") or {}
        serving = boolean(hv.get("slurm_job_serve", True), strict=False)
        if not inst or hv.get("slurm_job_state", "present") != "present" or not serving:
            continue
        where = f"host {host}: slurm_job_instance ({inst.get('name')})"
        entry = _catalog_entry(models, inst.get("model"), where)
        shared = hv.get("slurm_job_shared_dir") or SLURM_SHARED_DIR.format(user=hv.get("ansible_user") or "llm")
        name = hv.get("slurm_job_name") or SLURM_JOB_NAME.format(instance=inst.get("name") or "server")
        jobs.append(
            {
                "host": host,
                "job_name": str(name),
                "info_file": f"{str(shared).rstrip('/')}/jobs/{name}/connection.json",
                "url": str(hv.get("slurm_job_gateway_url") or ""),
                "api_key": str(hv.get("slurm_job_api_key") or inst.get("api_key") or ""),
                "model": inst["model"],
                "served_name": str(inst.get("served_model_name") or entry.get("served_name") or inst["model"]),
            }
        )
    return jobs


def gateway_slurm_backends(info_reads: list[dict], models: dict) -> list[dict]:
    """A backend per Slurm job whose connection info was read (slurp results, looped over
    ``gateway_slurm_jobs``): at the job's head node (its address as the node resolves it, else its
    name) and port, or at the login host's ``slurm_job_gateway_url`` when given; the key from the
    inventory, else the job's key file on the login host. A job with no connection info (not
    submitted yet, or not running) gives no backend."""
    backends = []
    for result in info_reads or []:
        job = result["item"]
        content = result.get("content")
        if result.get("failed") or not content:
            continue
        info = json.loads(base64.b64decode(content))
        if not info.get("url") and not job["url"]:  # a job that does not serve (slurm_job_serve false)
            continue
        served = info.get("served_model_names") or [job["served_name"]]
        address = info.get("address") or info["node"]
        backends.append(
            {
                "id": f"{job['host']}/{job['job_name']}",
                "kind": "vllm",
                "host": job["host"],
                "instance": job["job_name"],
                "model": job["model"],
                "backend_model": str(served[0]),
                "api_base": (job["url"] or f"http://{address}:{int(info['port'])}/v1").rstrip("/"),
                "key_file": "" if job["api_key"] else str(info.get("api_key_file") or ""),
                "api_key": job["api_key"],
                **_catalog_fields(job["model"], models.get(job["model"]) or {}),
            }
        )
    return backends


def gateway_pipeline_backends(workstations: list[str], hostvars: Any, models: dict) -> list[dict]:
    """The llama.cpp servers of every workstation's model pipeline (one per model and served format,
    as model_pipeline runs them), at the host's fleet_service_address, else its default IPv4 address.
    Each is a model of its own (its served name, ``<name>-<format>``), with no key; costs from a
    catalog entry of that name when there is one, else none. A workstation whose servers listen on
    loopback only (model_pipeline_server_host 127.0.0.1) is refused: the gateway cannot reach them."""
    backends = []
    for host in workstations or []:
        hv = hostvars[host]
        listen = str(hv.get("model_pipeline_server_host") or PIPELINE_SERVER_HOST)
        formats = hv.get("model_pipeline_serve_formats") or PIPELINE_SERVE_FORMATS
        servers = model_pipeline_servers(hv.get("model_pipeline_models") or [], formats, "", "", "")
        if servers and listen in ("127.0.0.1", "localhost", "::1"):
            raise AnsibleFilterError(
                f"host {host}: model_pipeline_server_host is {listen}, so the gateway cannot reach its llama.cpp "
                "servers; set it to an address the gateway host reaches (or 0.0.0.0), or leave the host out of "
                "model_gateway_workstations"
            )
        address = listen if listen not in ("0.0.0.0", "::") else _host_address(host, hv)
        for server in servers:
            served = server["served_name"]
            entry = (models or {}).get(served) or {}
            backends.append(
                {
                    "id": f"{host}/llamacpp-{served}",
                    "kind": "llamacpp",
                    "host": host,
                    "instance": served,
                    "model": served,
                    "backend_model": served,
                    "api_base": f"http://{address}:{server['port']}/v1",
                    "key_file": "",
                    "api_key": "",
                    **_catalog_fields(served, entry),
                    "display_name": str(entry.get("display_name") or f"{server['model']} ({server['format']})"),
                }
            )
    return backends


def gateway_external_backends(external: list[dict], models: dict) -> list[dict]:
    """``model_gateway_external_backends`` as backends: endpoints the inventory does not describe."""
    backends = []
    for index, ext in enumerate(external or []):
        where = f"model_gateway_external_backends[{index}] ({ext.get('name')})"
        entry = _catalog_entry(models, ext.get("model"), where)
        kind = ext.get("kind") or "openai"
        if kind not in PROVIDERS:
            raise AnsibleFilterError(f"{where}: kind {kind!r} is unknown; allowed: {', '.join(PROVIDERS)}")
        backends.append(
            {
                "id": f"external/{ext['name']}",
                "kind": kind,
                "host": "",
                "instance": ext["name"],
                "model": ext["model"],
                "backend_model": str(ext.get("backend_model") or entry.get("served_name") or ext["model"]),
                "api_base": str(ext["url"]).rstrip("/"),
                "key_file": "",
                "api_key": ext.get("api_key") or "",
                **_catalog_fields(ext["model"], entry),
            }
        )
    return backends


def gateway_with_keys(backends: list[dict], key_reads: list[dict] | None) -> list[dict]:
    """Attach the keys read (slurp results, looped over backends) to the backends without one."""
    read = {}
    for result in key_reads or []:
        content = result.get("content")
        if content and not result.get("failed"):
            read[result["item"]["id"]] = base64.b64decode(content).decode().strip()
    return [{**b, "api_key": b["api_key"] or read.get(b["id"], "")} for b in backends]


def _number(value: Any) -> Any:
    """Numbers templated as strings back to numbers (task vars may arrive either way)."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    return value


def _limits(name: str, limits: dict) -> dict:
    own = (limits or {}).get(name) or {}
    return {k: int(own[k]) for k in ("rpm", "tpm") if own.get(k) is not None}


def gateway_config(backends: list[dict], models: dict, settings: dict) -> dict:
    """LiteLLM's config.yaml as data: model_list (one entry per backend), router and general settings.

    ``settings``: routing_strategy, num_retries, retry_after, allowed_fails, cooldown_time, timeout,
    stream_timeout, fallbacks ({model: [models]}), model_limits ({model: {rpm, tpm}}), health_check_interval.
    """
    settings = {k: _number(v) for k, v in (settings or {}).items()}
    model_list = []
    for b in backends:
        params = {
            "model": f"{PROVIDERS[b['kind']]}/{b['backend_model']}",
            "api_base": b["api_base"],
            "api_key": BACKEND_KEY_PLACEHOLDER if b.get("api_key") else "none",
            "timeout": settings.get("timeout"),
            "stream_timeout": settings.get("stream_timeout"),
            **_limits(b["model"], settings.get("model_limits") or {}),
        }
        model_list.append(
            {
                "model_name": b["served_name"],
                "litellm_params": {k: v for k, v in params.items() if v is not None},
                "model_info": {
                    "id": b["id"],
                    "input_cost_per_token": b["input_cost"] / 1e6,
                    "output_cost_per_token": b["output_cost"] / 1e6,
                },
            }
        )
    served_of = {name: str((e or {}).get("served_name") or name) for name, e in models.items()}
    fallbacks = [
        {served_of.get(src, src): [served_of.get(dst, dst) for dst in dsts]}
        for src, dsts in sorted((settings.get("fallbacks") or {}).items())
    ]
    router = {
        "routing_strategy": settings.get("routing_strategy", "simple-shuffle"),
        "num_retries": settings.get("num_retries", 2),
        "retry_after": settings.get("retry_after", 0),
        "allowed_fails": settings.get("allowed_fails", 1),
        "cooldown_time": settings.get("cooldown_time", 30),
        "timeout": settings.get("timeout"),
        "enable_pre_call_checks": True,
    }
    if fallbacks:
        router["fallbacks"] = fallbacks
    redis = settings.get("redis") or {}
    if redis:
        router.update(redis_host=str(redis["host"]), redis_port=int(redis.get("port", 6379)))
    return {
        "model_list": model_list,
        "router_settings": {k: v for k, v in router.items() if v is not None},
        "litellm_settings": {
            "num_retries": settings.get("num_retries", 2),
            "request_timeout": settings.get("timeout"),
            "drop_params": True,
            "callbacks": [BACKEND_KEYS_CALLBACK],
        },
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            "custom_auth": "llmfleet_auth.user_api_key_auth",
            "background_health_checks": bool(settings.get("health_check_interval")),
            "health_check_interval": settings.get("health_check_interval") or 300,
        },
    }


def gateway_backend_keys(backends: list[dict]) -> dict:
    """backend_keys.json: deployment id -> {api_base, key}, for the backends that have a key."""
    return {b["id"]: {"api_base": b["api_base"], "key": b["api_key"]} for b in backends if b.get("api_key")}


def gateway_registry_rows(backends: list[dict]) -> list[dict]:
    """The model_mappings rows of the catalog's backends (costs per million tokens, as in the catalog)."""
    return [
        {
            "name": b["model"],
            "display_name": b["display_name"],
            "backend_url": b["api_base"],
            "backend_id": b["id"],
            "kind": b["kind"],
            "input_cost": b["input_cost"],
            "output_cost": b["output_cost"],
        }
        for b in backends
        if b.get("source") == "catalog"
    ]


def gateway_kept_key_names(client_keys: list[dict], master_key: str) -> list[str]:
    """Keys the gateway host generates and keeps: ``internal`` (LiteLLM's own master key, which it needs
    to start; callers never see it), ``master`` unless given, ``client-<name>`` for callers without one."""
    names = ["internal"] if master_key else ["internal", "master"]
    return names + [f"client-{c['name']}" for c in client_keys or [] if not c.get("key")]


def gateway_clients(client_keys: list[dict], kept: dict) -> list[dict]:
    """The callers of keys.json: each key as given, else the one kept on the gateway host."""
    clients = []
    for index, client in enumerate(client_keys or []):
        key = client.get("key") or kept.get(f"client-{client['name']}") or ""
        if not key:
            raise AnsibleFilterError(
                f"model_gateway_client_keys[{index}] ({client['name']}): no key given and none kept on the host; "
                "give key (from a vault) or set model_gateway_key_generate: true"
            )
        entry = {"name": client["name"], "key": key, "models": list(client.get("models") or [])}
        entry.update({k: int(client[k]) for k in ("rpm_limit", "tpm_limit") if client.get(k) is not None})
        clients.append(entry)
    return clients


def gateway_health_url(api_base: str, kind: str = "vllm") -> str:
    """Where the gateway host probes a backend's health: ``/health`` beside its ``/v1`` base, except
    for the pipeline's llama.cpp servers (kind llamacpp: llama-cpp-python's server has no /health
    route, so its ``/v1/models``, which answers once the model is loaded)."""
    base = re.sub(r"/v1/?$", "", str(api_base).rstrip("/"))
    return f"{base}/v1/models" if kind == "llamacpp" else f"{base}/health"


def gateway_rows_with_health(probes: list[dict]) -> list[dict]:
    """Registry rows (the ``item`` of each probe) with ``health`` from the probe of their /health now."""
    out = []
    for probe in probes or []:
        status = probe.get("status", -1)
        health = "healthy" if status == 200 else ("unreachable" if status in (-1, None) else f"unhealthy ({status})")
        out.append({**probe["item"], "health": health})
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "gateway_vllm_backends": gateway_vllm_backends,
            "gateway_external_backends": gateway_external_backends,
            "gateway_k8s_backends": gateway_k8s_backends,
            "gateway_slurm_jobs": gateway_slurm_jobs,
            "gateway_slurm_backends": gateway_slurm_backends,
            "gateway_pipeline_backends": gateway_pipeline_backends,
            "gateway_health_url": gateway_health_url,
            "gateway_with_keys": gateway_with_keys,
            "gateway_config": gateway_config,
            "gateway_backend_keys": gateway_backend_keys,
            "gateway_registry_rows": gateway_registry_rows,
            "gateway_registry_backends": gateway_registry_backends,
            "gateway_clients": gateway_clients,
            "gateway_kept_key_names": gateway_kept_key_names,
            "gateway_rows_with_health": gateway_rows_with_health,
        }
