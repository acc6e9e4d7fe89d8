"""Jinja filters of the model_cache role: which models a host needs, and how each one gets there.

``model_cache_jobs`` turns the host's wanted catalog names and the ``fleet_models`` catalog into one
job per model: the directory vLLM serves it from on this host (``local_path``) and, when it has to be
fetched, the llmfleet.fleet.model_sync options that fetch it (``sync``). The role's tasks only loop.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from typing import Any

from ansible.errors import AnsibleFilterError

MODES = ("sync", "mount", "none")


def model_cache_wanted(explicit: list[str] | None, instances: list[dict] | None) -> list[str]:
    """``model_cache_models`` when given, else the ``model`` of each vllm_service instance, in order, once."""
    names = [str(n) for n in explicit or []] or [str(i.get("model")) for i in instances or [] if i.get("model")]
    return list(dict.fromkeys(names))


def _hub_snapshot(hf_home: str, repo_id: str, revision: str) -> str:
    return posixpath.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"), "snapshots", revision)


def _url_file(source: dict) -> str:
    return posixpath.basename(urllib.parse.urlparse(str(source["url"])).path) or "model"


def _cache_job(host: str, name: str, source: dict, root: str, hf_home: str, addresses: dict) -> dict[str, Any]:
    """A model fetched into this host's cache (mode sync), or found where a mount put it (mode mount)."""
    dest = posixpath.join(root, name)
    if source.get("ssh"):
        ssh = source["ssh"]
        src_host = str(ssh.get("host"))
        if src_host == host:  # the model's source is this host itself: a local copy
            return {"kind": "local", "local_path": dest, "sync": {"source": "local", "src": ssh["path"], "dest": dest}}
        return {
            "kind": "ssh",
            "source_host": src_host,
            "local_path": dest,
            "sync": {
                "source": "ssh",
                "remote_host": str(addresses.get(src_host) or src_host),
                "remote_port": int(ssh.get("port") or 22),
                "remote_user": ssh.get("user"),
                "src": str(ssh["path"]),
                "dest": dest,
            },
        }
    if source.get("url"):
        return {
            "kind": "url",
            "local_path": posixpath.join(dest, _url_file(source)),
            "sync": {"source": "url", "url": str(source["url"]), "sha256": str(source.get("sha256")), "dest": dest},
        }
    if source.get("hf"):
        hub = posixpath.join(hf_home, "hub")
        revision = str(source.get("revision"))
        return {
            "kind": "hf",
            "local_path": _hub_snapshot(hf_home, str(source["hf"]), revision),
            "sync": {"source": "hf", "repo_id": str(source["hf"]), "revision": revision, "dest": hub},
        }
    raise AnsibleFilterError(f"host {host}: fleet_models[{name!r}].source has no kind model_cache can fetch")


def model_cache_jobs(
    wanted: list[str],
    models: dict,
    host: str,
    mode: str = "sync",
    root: str = "/var/cache/llmfleet/models",
    hf_home: str = "",
    local_paths: dict | None = None,
    addresses: dict | None = None,
) -> list[dict[str, Any]]:
    """One job per wanted model: name, kind (path | local | ssh | url | hf | given), local_path, sync.

    - mode ``sync``: ``path`` sources are already on the host (sync is None: the role checks they
      exist); ssh, url and hf sources are fetched into ``root/<name>`` (hf: the hub layout under
      ``hf_home``) with the model_sync options in ``sync``.
    - mode ``mount``: a shared cache mounted at ``root`` holds what a sync host's cache would hold;
      nothing is fetched.
    - mode ``none``: the models are on the host already: at ``local_paths[name]`` when given, else at
      the catalog's ``path``; an hf model without a local path is left to vLLM (local_path None).
    """
    if mode not in MODES:
        raise AnsibleFilterError(
            f"host {host}: model_cache_mode = {mode!r} is not allowed; allowed: {', '.join(MODES)}"
        )
    catalog = models or {}
    given = local_paths or {}
    hf_home = hf_home or posixpath.join(root, "hf")
    jobs = []
    for name in wanted or []:
        if name not in catalog:
            raise AnsibleFilterError(
                f"host {host}: model {name!r} (model_cache_models or a vllm_service instance) is not in fleet_models; "
                f"known: {', '.join(sorted(catalog)) or 'none'}"
            )
        source = (catalog[name] or {}).get("source") or {}
        if mode != "sync" and name in given:
            jobs.append({"name": name, "kind": "given", "local_path": str(given[name]), "sync": None})
        elif source.get("path"):
            jobs.append({"name": name, "kind": "path", "local_path": str(source["path"]), "sync": None})
        elif mode == "none":
            if not source.get("hf"):
                kind = next((k for k in ("ssh", "url") if source.get(k)), "?")
                raise AnsibleFilterError(
                    f"host {host}: model_cache_mode = 'none' but fleet_models[{name!r}].source is {kind}, and "
                    f"model_cache_local_paths has no entry {name!r}; allowed: give model_cache_local_paths[{name!r}] "
                    "(the directory holding it on this host), or model_cache_mode sync or mount"
                )
            jobs.append({"name": name, "kind": "hf", "local_path": None, "sync": None})
        else:
            job = _cache_job(host, name, source, root, hf_home, addresses or {})
            if mode == "mount":
                job["kind"], job["sync"] = "mount", None
            jobs.append({"name": name, **job})
    return jobs


def model_cache_paths(jobs: list[dict]) -> dict[str, str]:
    """catalog name -> the directory (or file) vLLM serves it from, for the models that have one."""
    return {job["name"]: job["local_path"] for job in jobs or [] if job.get("local_path")}


def model_cache_known_host(address: str, port: int, pubkey: str) -> str:
    """A known_hosts line for ``address`` (``[address]:port`` unless 22) from an ``ssh_host_*.pub`` file."""
    parts = str(pubkey).split()
    if len(parts) < 2:
        raise AnsibleFilterError(f"host key of {address!r} is not an OpenSSH public key: {pubkey!r}")
    name = address if int(port) == 22 else f"[{address}]:{int(port)}"
    return f"{name} {parts[0]} {parts[1]}"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "model_cache_wanted": model_cache_wanted,
            "model_cache_jobs": model_cache_jobs,
            "model_cache_paths": model_cache_paths,
            "model_cache_known_host": model_cache_known_host,
        }
