"""The fleet's endpoint registry: every OpenAI-compatible endpoint the fleet runs, one record each.

``fleet_endpoints`` asks each kind's producer (beside the code that knows it, see
``plugins/module_utils/fleet/endpoint.py``) for the records of the hosts of its group, and hands
each producer the host's variables **with its role's defaults**: role defaults are not in
``hostvars``, so instead of retyping another role's default here, the role's own
``defaults/main.yml`` is read (a value written with Jinja is rendered against the host's
variables). What the inventory sets wins, as in a play of that role.

Consumers: the gateway's backends (roles/model_gateway/tasks/backends.yml), Prometheus' targets
(roles/observability_stack), the health runbook (playbooks/runbooks/health_report.yml, which
``llmfleet health`` and ``make lab`` print) and ``llmfleet endpoints``. A Slurm job's record is
completed from its connection info on the login host (``slurm_job_endpoints_with_info``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from ansible.errors import AnsibleFilterError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

try:  # ansible-core 2.19 renders only strings marked as templates
    from ansible.template import trust_as_template
except ImportError:  # pragma: no cover - older ansible-core renders every string

    def trust_as_template(value: str) -> str:
        return value


from jinja2 import Environment, nodes

try:  # the collection's own import path (ansible); tests put plugins/filter on sys.path
    from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_gateway import gateway_endpoints
    from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_k8s import k8s_endpoints
    from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_model_pipeline import model_pipeline_endpoints_of
    from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_slurm_job import slurm_job_endpoints
    from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_vllm import vllm_service_endpoints
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.endpoint import UnknownModel
except ImportError:  # pragma: no cover
    from llmfleet_endpoint import UnknownModel
    from llmfleet_gateway import gateway_endpoints
    from llmfleet_k8s import k8s_endpoints
    from llmfleet_model_pipeline import model_pipeline_endpoints_of
    from llmfleet_slurm_job import slurm_job_endpoints
    from llmfleet_vllm import vllm_service_endpoints

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"

# Host group -> (the role whose defaults its hosts carry, the producer of its records). The order
# is the registry's order. A new backend kind is one line here and one producer.
PRODUCERS: dict[str, tuple[str, Callable[[str, Any, dict], list[dict]]]] = {
    "inference_nodes": ("vllm_service", vllm_service_endpoints),
    "slurm_login": ("slurm_job", slurm_job_endpoints),
    "model_workstations": ("model_pipeline", model_pipeline_endpoints_of),
    "kubernetes_clusters": ("vllm_kubernetes", k8s_endpoints),
    "gateway": ("model_gateway", gateway_endpoints),
}

_JINJA = Environment()


@functools.cache
def role_defaults(role: str) -> dict[str, Any]:
    """A role's ``defaults/main.yml``, as written (read once per run)."""
    path = ROLES_DIR / role / "defaults" / "main.yml"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise AnsibleFilterError(f"role {role}: cannot read its defaults ({path}): {exc}") from exc


def _trusted(value: Any) -> Any:
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    return value


def _names_in(value: Any) -> set[str]:
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return set()
        return {node.name for node in _JINJA.parse(value).find_all(nodes.Name) if node.ctx == "load"}
    if isinstance(value, list):
        return set().union(*(_names_in(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_names_in(v) for v in value.values())) if value else set()
    return set()


class HostView:
    """A host's variables as a play of ``role`` sees them: the inventory's (``hostvars``) over the
    role's defaults, a default written with Jinja rendered against the same view."""

    def __init__(self, host: str, hostvars: Any, role: str, groups: dict | None = None) -> None:
        self.host = host
        self._hostvars = hostvars
        self._defaults = role_defaults(role)
        self._magic = {"inventory_hostname": host, "groups": groups or {}}
        self._rendered: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._hostvars or key in self._defaults or key in self._magic

    def __getitem__(self, key: str) -> Any:
        if key in self._hostvars:
            return self._hostvars[key]
        if key in self._magic:
            return self._magic[key]
        if key not in self._defaults:
            raise KeyError(key)
        if key not in self._rendered:
            self._rendered[key] = self._render(key, self._defaults[key])
        return self._rendered[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def _render(self, key: str, value: Any) -> Any:
        names = _names_in(value)
        if not names and not isinstance(value, str):
            return value
        variables = {name: self[name] for name in names if name != key and name in self}
        try:
            return Templar(loader=DataLoader(), variables=variables).template(_trusted(value))
        except Exception as exc:
            raise AnsibleFilterError(f"host {self.host}: cannot render the default of {key}: {exc}") from exc


def fleet_endpoints(
    hostvars: Any, groups: dict, models: dict, hosts: dict | None = None, only: str | None = None
) -> list[dict]:
    """Every endpoint of the fleet, one record each (see llmfleet_endpoint.FIELDS).

    ``hosts``: group -> the hosts to take from it, where a consumer narrows them (the gateway's
    ``model_gateway_inference_hosts`` ...); else the group's hosts. ``only``: the records of that one
    host (the health runbook, on each host)."""
    records: list[dict] = []
    for group, (role, producer) in PRODUCERS.items():
        members = (hosts or {}).get(group)
        members = (groups or {}).get(group, []) if members is None else members
        for host in members or []:
            if only is not None and host != only:
                continue
            try:
                records.extend(producer(host, HostView(host, hostvars[host], role, groups), models or {}))
            except UnknownModel as exc:
                raise AnsibleFilterError(str(exc)) from exc
    return records


def fleet_host_defaults(hostvars: Any, groups: dict, host: str, role: str, keys: list[str]) -> dict:
    """Some of a host's variables as a play of ``role`` sees them (the inventory's over the role's
    defaults): for consumers that need another host's setting, such as a port, without retyping the
    role's default."""
    view = HostView(host, hostvars[host], role, groups)
    return {key: view[key] for key in keys if key in view}


def fleet_role_defaults(hostvars: Any, groups: dict, host: str, role_keys: dict) -> dict:
    """``fleet_host_defaults`` over several roles (role -> the keys wanted of it): the validate play
    hands these to fleet_validate, so its checks across variables (ports, disk, memory) see each
    role's default where the inventory is silent and never retype it."""
    out: dict[str, Any] = {}
    for role, keys in (role_keys or {}).items():
        out.update(fleet_host_defaults(hostvars, groups, host, role, keys))
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "fleet_endpoints": fleet_endpoints,
            "fleet_host_defaults": fleet_host_defaults,
            "fleet_role_defaults": fleet_role_defaults,
        }
