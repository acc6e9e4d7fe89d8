"""Checks of a fleet inventory that span variables, instances or hosts.

Used by the ``fleet_validate`` module (the first play of site.yml and each role's validate step) so
an inconsistent inventory is refused before any host changes. Each check returns human-readable
errors naming the host, the variable, the offending value and what is allowed.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ansible.module_utils.common.validation import (
    check_type_bool,
    check_type_dict,
    check_type_float,
    check_type_int,
    check_type_list,
    check_type_path,
    check_type_str,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.k8s import check_kubernetes
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.pipeline import check_model_pipeline
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.ray import check_ray, ray_ports
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.slurm import check_slurm_job

RUNTIMES = ("docker", "systemd")
# vllm_service_runtime when the host does not set it: the role's default (roles/vllm_service/defaults).
DEFAULT_RUNTIME = "systemd"
INSTANCE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
MODEL_SOURCE_KINDS = ("hf", "path", "ssh", "url")
# A pinned Hugging Face revision: a commit sha (branches and tags can be moved on the hub; model_sync
# refuses them too).
HF_REVISION_RE = re.compile(r"^[0-9a-f]{40}$")

# What a role's meta/argument_specs.yml says beyond types and choices, in an option's description
# (ansible-lint's schema allows no other keys in a spec entry, and ansible-doc shows the description,
# so the documented limit is the enforced one):
#   "Range: [1, 65535]."  interval of allowed numbers; ( ) exclude the bound, inf for none; on a list,
#                         every element
#   "Format: image."      an image reference carrying a tag or a digest; "Format: image or empty."
#                         also allows ""
RANGE_RE = re.compile(
    r"Range:\s*([\[(])\s*([-+]?(?:inf|[0-9][0-9_.eE+-]*))\s*,\s*([-+]?(?:inf|[0-9][0-9_.eE+-]*))\s*([\])])"
)
FORMAT_RE = re.compile(r"Format:\s*(image)( or empty)?\b")
FORMATS = {"image": "an image reference with a tag or digest (name:tag or name@sha256:<64 hex digits>)"}
IMAGE_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
IMAGE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
IMAGE_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TYPE_CHECKERS = {
    "int": check_type_int,
    "float": check_type_float,
    "bool": check_type_bool,
    "str": check_type_str,
    "path": check_type_path,
    "list": check_type_list,
    "dict": check_type_dict,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _description(entry: dict[str, Any]) -> str:
    text = entry.get("description") or ""
    return " ".join(text) if isinstance(text, list) else str(text)


def spec_range(entry: dict[str, Any]) -> tuple[str, float, float, str] | None:
    """The ``Range: [lo, hi]`` an option's description declares, or None."""
    match = RANGE_RE.search(_description(entry))
    if not match:
        return None
    opening, low, high, closing = match.groups()
    return opening, float(low), float(high), closing


def spec_format(entry: dict[str, Any]) -> tuple[str, bool] | None:
    """The ``Format: <kind>[ or empty]`` an option's description declares, or None."""
    match = FORMAT_RE.search(_description(entry))
    return (match.group(1), bool(match.group(2))) if match else None


def _in_range(number: float, bounds: tuple[str, float, float, str]) -> bool:
    opening, low, high, closing = bounds
    above = number > low if opening == "(" else number >= low
    below = number < high if closing == ")" else number <= high
    return above and below


def _range_text(bounds: tuple[str, float, float, str], kind: str) -> str:
    opening, low, high, closing = bounds

    def show(x: float) -> str:
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return str(int(x)) if x == int(x) else str(x)

    return f"{kind} in {opening}{show(low)}, {show(high)}{closing}"


def is_image_reference(ref: Any) -> bool:
    """``[registry[:port]/]name(:tag|@sha256:digest|:tag@sha256:digest)``: a tag or a digest is required."""
    if not isinstance(ref, str) or not ref:
        return False
    name, _, digest = ref.partition("@")
    if digest and not IMAGE_DIGEST_RE.match(digest):
        return False
    path, slash, last = name.rpartition("/")
    last, colon, tag = last.partition(":")
    if colon and not IMAGE_TAG_RE.match(tag):
        return False
    if not (colon or digest):
        return False
    repository = (path + slash + last).split("/")
    if len(repository) > 1 and ("." in repository[0] or ":" in repository[0] or repository[0] == "localhost"):
        repository = repository[1:]  # the registry host[:port]
    return bool(IMAGE_NAME_RE.match("/".join(repository)))


def _item_label(label: str, index: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"{label}[{index}]" + (f" ({name!r})" if name else "")


def _convert(entry: dict[str, Any], value: Any) -> Any:
    """The value as the spec's type would take it (raises TypeError when it cannot)."""
    checker = TYPE_CHECKERS.get(entry.get("type", "str"))
    return checker(value) if checker else value


def _check_option(host: str, label: str, entry: dict[str, Any], value: Any, nested: bool) -> list[str]:
    """One value against its spec entry: secret type, (nested: type and choices), range, format, sub-options.

    Top-level types and choices are validate_argument_spec's job; inside lists and dicts its messages
    do not say which instance is wrong, so they are checked here too, naming the instance.
    """
    if value is None:
        return []
    where = f"host {host}: {label}"
    if entry.get("no_log") and not isinstance(value, str):
        return [
            f"{where} is a secret given as {type(value).__name__}, not as a string; allowed: a string "
            "(quote it in YAML or the vault; the value is not shown)"
        ]
    kind = entry.get("type", "str")
    given = value
    try:
        value = _convert(entry, value)
    except (TypeError, ValueError) as exc:
        return [f"{where} = {value!r} is not a valid {kind}: {exc}"] if nested else []
    errors: list[str] = []
    choices = entry.get("choices")
    if nested and choices and kind != "list" and value not in choices:
        errors.append(f"{where} = {given!r} is not allowed; allowed: {', '.join(map(str, choices))}")
    bounds = spec_range(entry)
    if bounds:
        element_kind = entry.get("elements", "int") if kind == "list" else kind
        numbers = value if kind == "list" else [value]
        for number in numbers:
            try:
                number = float(number)
            except (TypeError, ValueError):
                errors.append(f"{where} = {given!r} must hold numbers; allowed: {_range_text(bounds, element_kind)}")
                break
            if not _in_range(number, bounds):
                errors.append(f"{where} = {given!r} is out of range; allowed: {_range_text(bounds, element_kind)}")
                break
    fmt = spec_format(entry)
    if fmt and not (fmt[1] and value == "") and not is_image_reference(value):
        errors.append(f"{where} = {given!r} is not {FORMATS[fmt[0]]}" + (" or empty" if fmt[1] else ""))
    sub = entry.get("options")
    if sub and kind == "dict" and isinstance(value, dict):
        errors += check_spec_values(host, sub, value, label)
    elif sub and kind == "list" and entry.get("elements") == "dict":
        for index, item in enumerate(value):
            item_label = _item_label(label, index, item)
            if not isinstance(item, dict):
                errors.append(f"host {host}: {item_label} must be a mapping, got {item!r}")
                continue
            errors += check_spec_values(host, sub, item, item_label)
    return errors


def check_spec_values(host: str, options: dict[str, Any], values: dict[str, Any], where: str = "") -> list[str]:
    """A host's values (top level: the variables it sets) against a role's argument spec options.

    Nested mappings (``where`` set: an instance) must not carry unknown keys and must carry the
    required ones; at the top level unknown names are simply other variables, and required ones may
    come from the role's defaults.
    """
    errors: list[str] = []
    if not isinstance(values, dict):
        return errors
    for key, value in values.items():
        entry = options.get(key)
        if entry is None:
            if where:
                errors.append(f"host {host}: {where} has an unknown key {key!r}; allowed: {', '.join(sorted(options))}")
            continue
        errors += _check_option(host, f"{where}.{key}" if where else key, entry, value, nested=bool(where))
    if where:
        for key, entry in options.items():
            if entry.get("required") and values.get(key) is None:
                errors.append(f"host {host}: {where}.{key} is missing; it is required ({_description(entry)})")
    return errors


def check_role_specs(host: str, specs: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Every role's spec (role name -> options of its main entry point) against the host's values."""
    errors: list[str] = []
    for role in sorted(specs or {}):
        options = specs[role] or {}
        errors += check_spec_values(host, options, {k: v for k, v in values.items() if k in options})
    return list(dict.fromkeys(errors))


# validate_argument_spec's way of naming the variable an error about a nested key belongs to.
NESTED_SPEC_ERROR_RE = re.compile(r"found in '?([A-Za-z0-9_]+)|^([A-Za-z0-9_]+)\.[A-Za-z0-9_]")


def spec_error_messages(host: str, spec_results: list[dict[str, Any]], own_errors: list[str] = ()) -> list[str]:
    """validate_argument_spec's errors, one per line, with the host and the role whose spec refused.

    An error about a key inside a variable (an instance's) is left out when ``own_errors`` (from
    check_spec_values) already name that variable's items: those say which instance is wrong.
    """
    errors = []
    for result in spec_results or []:
        role = result.get("role", "?")
        for message in result.get("errors") or []:
            nested = NESTED_SPEC_ERROR_RE.search(message)
            variable = nested and (nested.group(1) or nested.group(2))
            if variable and any(f": {variable}[" in own for own in own_errors):
                continue
            errors.append(f"host {host}: role {role} (roles/{role}/meta/argument_specs.yml): {message}")
    return errors


def secret_values(specs: dict[str, Any], values: dict[str, Any]) -> set[str]:
    """The strings given to no_log options (instances included), so module output can mask them."""
    found: set[str] = set()

    def walk(options: dict[str, Any], given: Any) -> None:
        if not isinstance(given, dict):
            return
        for key, entry in options.items():
            value = given.get(key)
            if value is None:
                continue
            if entry.get("no_log") and not isinstance(value, (dict, list)) and str(value):
                found.add(str(value))
            sub = entry.get("options")
            if sub and isinstance(value, dict):
                walk(sub, value)
            elif sub and isinstance(value, list):
                for item in value:
                    walk(sub, item)

    for options in (specs or {}).values():
        walk(options or {}, values)
    return found


def check_groups(host: str, host_groups: list[str], groups: dict[str, list[str]]) -> list[str]:
    """Topology checks: a Ray worker needs exactly one Ray head."""
    errors = []
    heads = list(groups.get("ray_head") or [])
    if "ray_workers" in host_groups and not heads:
        errors.append(
            f"host {host} is in group ray_workers but group ray_head has no host; "
            "a Ray worker needs exactly one host in ray_head"
        )
    if "ray_head" in host_groups and len(heads) > 1:
        errors.append(
            f"host {host}: group ray_head has {len(heads)} hosts ({', '.join(sorted(heads))}); exactly one is allowed"
        )
    return errors


def _inventory_hosts(groups: Any) -> set[str] | None:
    """Every host name of the inventory (``groups``, as Ansible gives it), or None when not given."""
    if not isinstance(groups, dict) or not groups:
        return None
    return {str(h) for members in groups.values() if isinstance(members, list) for h in members}


def check_models(models: Any, groups: Any = None) -> list[str]:
    """The fleet_models catalog: each entry has exactly one source kind, hf sources pin a commit, url
    sources carry a sha256, path and ssh paths are absolute, and an ssh source names an inventory host
    (checked when ``groups``, the inventory's groups, is given)."""
    if models in (None, ""):
        return []
    if not isinstance(models, dict):
        return [f"fleet_models must be a mapping of model name to entry, got {type(models).__name__}"]
    hosts = _inventory_hosts(groups)
    errors = []
    for name, entry in models.items():
        where = f"fleet_models[{name!r}]"
        if not isinstance(entry, dict):
            errors.append(f"{where} must be a mapping, got {entry!r}")
            continue
        source = entry.get("source")
        if not isinstance(source, dict):
            errors.append(f"{where}.source must be a mapping with one of {', '.join(MODEL_SOURCE_KINDS)}")
            continue
        unknown = sorted(set(source) - set(MODEL_SOURCE_KINDS) - {"revision", "sha256"})
        if unknown:
            errors.append(
                f"{where}.source has unknown key(s) {', '.join(map(repr, unknown))}; allowed source kinds: "
                f"{', '.join(MODEL_SOURCE_KINDS)} (with revision for hf, sha256 for url)"
            )
            continue
        kinds = [k for k in MODEL_SOURCE_KINDS if source.get(k)]
        if len(kinds) != 1:
            errors.append(
                f"{where}.source has {', '.join(kinds) or 'none'} of {', '.join(MODEL_SOURCE_KINDS)}; "
                "exactly one is allowed"
            )
            continue
        if kinds == ["hf"] and not source.get("revision"):
            errors.append(f"{where}.source.hf = {source['hf']!r} needs a pinned source.revision (a 40-hex commit sha)")
        elif kinds == ["hf"] and not HF_REVISION_RE.match(str(source["revision"])):
            errors.append(
                f"{where}.source.revision = {source['revision']!r} is not pinned; allowed: a 40-hex commit sha "
                "(branch names and tags can be moved on the hub)"
            )
        if kinds == ["url"] and not re.fullmatch(r"[0-9a-f]{64}", str(source.get("sha256", ""))):
            errors.append(f"{where}.source.url needs source.sha256 (64 hex digits), got {source.get('sha256')!r}")
        if kinds == ["path"] and not str(source["path"]).startswith("/"):
            errors.append(f"{where}.source.path = {source['path']!r} must be an absolute path")
        if kinds == ["ssh"]:
            errors += _check_ssh_source(where, source["ssh"], hosts)
        size = entry.get("size_gb")
        if size is not None and _catalog_size_gb(entry) is None:
            errors.append(
                f"{where}.size_gb = {size!r} is not a size; allowed: a number of GB (2^30 bytes) > 0, or leave it out"
            )
    return errors


def _check_ssh_source(where: str, ssh: Any, hosts: set[str] | None) -> list[str]:
    if not isinstance(ssh, dict):
        return [f"{where}.source.ssh = {ssh!r} must be a mapping {{host: <inventory host>, path: <absolute dir>}}"]
    errors = []
    unknown = sorted(set(ssh) - {"host", "path", "user", "port"})
    if unknown:
        errors.append(
            f"{where}.source.ssh has unknown key(s) {', '.join(map(repr, unknown))}; allowed: host, path, user, port"
        )
    host = ssh.get("host")
    if not isinstance(host, str) or not host:
        errors.append(f"{where}.source.ssh.host = {host!r} must name an inventory host")
    elif hosts is not None and host not in hosts:
        errors.append(
            f"{where}.source.ssh.host = {host!r} is not a host of this inventory; allowed: an inventory host "
            "(the model's source must be managed here, so its key can be authorized)"
        )
    path = ssh.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        errors.append(f"{where}.source.ssh.path = {path!r} must be an absolute directory path on the source host")
    port = ssh.get("port")
    if port is not None and (not _is_int(port) or not 0 < port < 65536):
        errors.append(f"{where}.source.ssh.port = {port!r} is not a TCP port; allowed: int in [1, 65535]")
    return errors


def _instance_label(index: int, instance: Any) -> str:
    return _item_label("vllm_service_instances", index, instance)


def _parallel(inst: dict[str, Any]) -> int | None:
    """tensor_parallel_size x pipeline_parallel_size, or None when either is not a positive integer."""
    tp = inst.get("tensor_parallel_size", 1)
    pp = inst.get("pipeline_parallel_size", 1)
    if not (_is_int(tp) and _is_int(pp)) or tp < 1 or pp < 1:
        return None
    return tp * pp


def needs_gpu_count(instances: Any) -> bool:
    """Whether an instance asks for more than one GPU without naming them (gpu_ids): then the
    host's real GPU count (gpu_facts) decides."""
    if not isinstance(instances, list):
        return False
    return any(
        isinstance(inst, dict) and not inst.get("gpu_ids") and not _on_ray(inst) and (_parallel(inst) or 1) > 1
        for inst in instances
    )


def _on_ray(inst: dict[str, Any]) -> bool:
    return inst.get("distributed_executor_backend") == "ray"


def check_vllm_instances(
    host: str, runtime: Any, instances: Any, models: Any, gpu: dict[str, Any] | None = None
) -> list[str]:
    """Runtime name, and the instances of one host: names, ports, runtimes, models, GPU shares, parallelism.

    Types, ranges and unknown keys of each instance come from the role's argument spec
    (check_spec_values); here go the checks across keys, instances and the host. ``gpu`` is the
    host's ``ansible_facts.gpu`` (gpu_facts) when it was read.
    """
    errors: list[str] = []
    if runtime not in RUNTIMES:
        errors.append(
            f"host {host}: vllm_service_runtime = {runtime!r} is not a known runtime; allowed: {', '.join(RUNTIMES)}"
        )
    if instances in (None, ""):
        return errors
    if not isinstance(instances, list):
        return [*errors, f"host {host}: vllm_service_instances must be a list, got {type(instances).__name__}"]
    catalog = models if isinstance(models, dict) else {}
    names: dict[str, int] = {}
    ports: dict[int, str] = {}
    gpu_share: dict[str, float] = {}
    for index, inst in enumerate(instances):
        label = f"host {host}: {_instance_label(index, inst)}"
        if not isinstance(inst, dict):
            errors.append(f"{label} must be a mapping, got {inst!r}")
            continue
        name = inst.get("name")
        if not isinstance(name, str) or not INSTANCE_NAME_RE.match(name):
            errors.append(f"{label}.name = {name!r} must match {INSTANCE_NAME_RE.pattern}")
        elif name in names:
            errors.append(f"{label}.name = {name!r} is already used by vllm_service_instances[{names[name]}]")
        else:
            names[name] = index
        inst_runtime = inst.get("runtime")
        if inst_runtime is not None and inst_runtime in RUNTIMES and runtime in RUNTIMES and inst_runtime != runtime:
            errors.append(
                f"{label}.runtime = {inst_runtime!r} contradicts the host's vllm_service_runtime = {runtime!r}; "
                "an instance's runtime must equal it (or be left out)"
            )
        # A port given as "8000" is the same port as 8000 (the spec's int type converts it).
        port = _as_int(inst.get("port"))
        if port is not None and port in ports:
            errors.append(
                f"{label}.port = {inst.get('port')!r} is already used by instance {ports[port]!r} on this host"
            )
        elif port is not None:
            ports[port] = str(name)
        model = inst.get("model")
        if not model:
            errors.append(
                f"{label}.model is missing; give a fleet_models name ({', '.join(sorted(catalog)) or 'none'})"
            )
        elif model not in catalog:
            errors.append(
                f"{label}.model = {model!r} is not in fleet_models; known: {', '.join(sorted(catalog)) or 'none'}"
            )
        util = inst.get("gpu_memory_utilization")
        if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1:
            util = None  # the spec's range refuses it
        gpu_ids = inst.get("gpu_ids")
        if not isinstance(gpu_ids, list) or not all(_is_int(g) and g >= 0 for g in gpu_ids):
            gpu_ids = None  # the spec's type and range refuse it
        parallel = _parallel(inst)
        if gpu_ids and parallel and parallel > len(gpu_ids):
            errors.append(
                f"{label}: tensor_parallel_size x pipeline_parallel_size = {parallel} is more than the "
                f"{len(gpu_ids)} GPU(s) in gpu_ids {gpu_ids}"
            )
        # On Ray (distributed_executor_backend ray) the cluster's GPUs count: inventory.ray.
        if not gpu_ids and parallel and parallel > 1 and gpu is not None and not _on_ray(inst):
            count = gpu.get("count") or 0
            if parallel > count:
                reason = f" ({gpu['reason']})" if gpu.get("reason") else ""
                errors.append(
                    f"{label}: tensor_parallel_size x pipeline_parallel_size = {parallel} needs {parallel} GPUs, "
                    f"but gpu_facts found {count} on the host{reason}; allowed: at most {count}, "
                    "or name the GPUs in gpu_ids"
                )
        if gpu_ids and util is not None:
            for gpu_id in gpu_ids:
                gpu_share[str(gpu_id)] = gpu_share.get(str(gpu_id), 0.0) + float(util)
    for gpu_id, total in sorted(gpu_share.items()):
        if total > 1.0 + 1e-9:
            errors.append(
                f"host {host}: instances share GPU {gpu_id} with gpu_memory_utilization adding up to {total:.2f}; "
                "the sum per GPU must be <= 1"
            )
    return errors


# Ports the roles listen on on the host itself (not the ports of other hosts they scrape or join).
HOST_PORT_VARIABLES = (
    "model_gateway_port",
    "model_gateway_registry_port",
    "observability_stack_prometheus_port",
    "observability_stack_alertmanager_port",
)


def check_host_ports(host: str, settings: dict[str, Any], more: list[tuple[str, Any]] = ()) -> list[str]:
    """The ports of one host's services are distinct: vLLM instances, the gateway, Prometheus,
    Alertmanager and ``more`` ((variable, value): Ray's) (a port given as "8000" is 8000)."""
    taken: dict[int, str] = {}
    instances = settings.get("vllm_service_instances")
    for index, inst in enumerate(instances if isinstance(instances, list) else []):
        port = _as_int(inst.get("port")) if isinstance(inst, dict) else None
        if port is not None:
            taken.setdefault(port, f"{_instance_label(index, inst)}.port")
    errors = []
    for variable, given in [(v, settings.get(v)) for v in HOST_PORT_VARIABLES] + list(more):
        port = _as_int(given)
        if port is None:
            continue
        if port in taken:
            errors.append(
                f"host {host}: {variable} = {given!r} is already used by {taken[port]} on this host; "
                "allowed: a port no other service of the host uses"
            )
        else:
            taken[port] = variable
    return errors


def check_build_platform(host: str, settings: dict[str, Any]) -> list[str]:
    """vllm_build_platform names a Linux platform Docker knows; a source build needs a CUDA one."""
    given = settings.get("vllm_build_platform")
    if not given:
        return []
    target = parse_platform(given)
    if target is None:
        return [
            f"host {host}: vllm_build_platform = {given!r} is not a Linux platform; allowed: '' (the builder's) or "
            f"linux/<arch>[/<variant>] with arch one of {', '.join(DOCKER_ARCHES)}"
        ]
    mode = _build_setting(settings, "mode")
    if mode == "source" and target not in SOURCE_BUILD_ARCHES:
        return [
            f"host {host}: vllm_build_platform = {given!r} with vllm_build_mode = 'source': vLLM's CUDA Dockerfile "
            "builds for linux/amd64 or linux/arm64 only (CUDA base images exist for those only); allowed: those"
        ]
    return []


def validate_host(
    host: str,
    host_groups: list[str],
    groups: dict[str, list[str]],
    settings: dict[str, Any],
    models: Any,
    specs: dict[str, Any] | None = None,
    gpu: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """Everything we know how to check about one host in its fleet.

    ``settings`` are the host's variables; ``specs`` the argument spec options of each role the
    host's groups run (role name -> options), which give types of nested keys, ranges, formats and
    secrets; ``gpu`` the host's ``ansible_facts.gpu`` when a check needed it; ``defaults`` what the
    host's roles' own defaults give where the inventory is silent (the validate play reads them with
    fleet_role_defaults): the checks across variables see them, the spec checks only what is given.
    """
    given, settings = settings, {**(defaults or {}), **settings}
    errors = check_groups(host, host_groups, groups)
    errors += check_role_specs(host, specs or {}, given)
    errors += check_build_platform(host, settings)
    errors += check_host_ports(host, settings, ray_ports(host_groups, settings))
    errors += check_kubernetes(host, host_groups, groups, settings, models)
    errors += check_ray(host, host_groups, groups, settings, models)
    errors += check_slurm_job(host, host_groups, groups, settings, models)
    errors += check_model_pipeline(host, host_groups, groups, settings, models)
    # A role's own validate step passes only its own spec and settings (vllm_build on a builder that
    # is also an inference node): the instance checks belong to vllm_service's, and site.yml's.
    if specs and "vllm_service" not in specs:
        return errors
    instances = settings.get("vllm_service_instances")
    if "inference_nodes" in host_groups and (instances in (None, "") or instances == []):
        errors.append(
            f"host {host} is in group inference_nodes but vllm_service_instances = {instances!r}; "
            "an inference node needs at least one instance"
        )
    if "inference_nodes" in host_groups or instances:
        errors += check_vllm_instances(
            host, settings.get("vllm_service_runtime", DEFAULT_RUNTIME), instances, models, gpu
        )
    if "inference_nodes" in host_groups:
        errors += check_only_ingress(host, groups, settings, instances)
    return errors


EVERY_INTERFACE = ("0.0.0.0", "::", "")


def check_only_ingress(host: str, groups: Any, settings: dict[str, Any], instances: Any) -> list[str]:
    """Under only ingress (vllm_service_only_ingress, default fleet_only_ingress) the gateway is the way
    in: there must be one, and nothing of this host may listen on every interface."""
    only = settings.get("vllm_service_only_ingress", settings.get("fleet_only_ingress", False))
    if not (only is True or str(only).lower() in ("true", "yes", "1")):
        return []
    var = "vllm_service_only_ingress" if "vllm_service_only_ingress" in settings else "fleet_only_ingress"
    errors = []
    if not (groups or {}).get("gateway"):
        errors.append(
            f"host {host}: {var} = {only!r} but the inventory has no host in group gateway: clients could "
            "reach the instances by no way at all; add a gateway host or set it false"
        )
    for key in ("vllm_service_backend_address", "fleet_service_address"):
        if key in settings and str(settings[key]).strip() in EVERY_INTERFACE:
            errors.append(
                f"host {host}: {key} = {settings[key]!r} under {var}: the backend address must be one address "
                "of the host (on the network the gateway shares with the backends), not every interface"
            )
    if settings.get("vllm_service_runtime", DEFAULT_RUNTIME) == "docker":
        publish = settings.get("vllm_service_publish_address")
        if publish is not None and str(publish).strip() in EVERY_INTERFACE:
            errors.append(
                f"host {host}: vllm_service_publish_address = {publish!r} publishes on every interface under "
                f"{var}; leave it out (the backend address) or give the backend address"
            )
    elif isinstance(instances, list):
        for index, inst in enumerate(instances):
            if isinstance(inst, dict) and "host" in inst and str(inst["host"]).strip() in EVERY_INTERFACE:
                errors.append(
                    f"host {host}: {_instance_label(index, inst)}.host = {inst['host']!r} listens on every "
                    f"interface under {var}; leave it out (the backend address) or give the backend address"
                )
    return errors


# --- Facts of the host a check needs: CPU architecture and free disk -------------------------------
# The first play reads them only where a check needs them, with one read-only command (PROBE_SCRIPT,
# run by the play as probe_argv() says), and hands its output back (parse_probe). The settings
# they read come with the roles' own defaults (validate_host's ``defaults``), never retyped here.
#
# Where Docker keeps images and build cache (not a setting of any role: Docker's own default).
DOCKER_ROOT = "/var/lib/docker"
# Groups whose playbooks run model_cache (playbooks/validate.yml, _fleet_group_roles).
MODEL_CACHE_GROUPS = ("inference_nodes", "slurm_login", "model_workstations")
# nvidia_runtime's repositories exist for these (`uname -m`; roles/nvidia_runtime/vars/main.yml).
NVIDIA_RUNTIME_ARCHES = ("x86_64", "aarch64")
# Docker platform architectures, `uname -m` names, and QEMU's binfmt handler names.
DOCKER_ARCH_BY_MACHINE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
DOCKER_ARCHES = ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")
QEMU_NAME = {"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386"}
# vLLM's own Dockerfile (source builds) starts from CUDA images, published for these only.
SOURCE_BUILD_ARCHES = ("amd64", "arm64")
GIB = 1 << 30
# One read-only pass, one line per answer: "arch <uname -m>", "binfmt <qemu handler>" (enabled ones,
# then "binfmt-read" when /proc/sys/fs/binfmt_misc is readable), "free <KiB available> <st_dev> <path>"
# of the path or, when it does not exist yet, its nearest existing parent, "used <KiB> <path>".
PROBE_SCRIPT = r"""for item do
  case $item in
    arch) printf 'arch %s\n' "$(uname -m)" ;;
    binfmt)
      if [ -e /proc/sys/fs/binfmt_misc/status ]; then
        for f in /proc/sys/fs/binfmt_misc/qemu-*; do
          if [ -f "$f" ] && [ "$(head -n 1 "$f")" = enabled ]; then printf 'binfmt %s\n' "${f##*/qemu-}"; fi
        done
        printf 'binfmt-read\n'
      fi ;;
    free=*)
      p=${item#free=}; q=$p
      while [ ! -e "$q" ]; do q=$(dirname -- "$q"); done
      printf 'free %s %s %s\n' "$(df -Pk -- "$q" | awk 'NR == 2 {print $4}')" "$(stat -c %d -- "$q")" "$p" ;;
    used=*)
      p=${item#used=}
      if [ -e "$p" ]; then printf 'used %s %s\n' "$(du -sk -- "$p" | cut -f 1)" "$p"
      else printf 'used 0 %s\n' "$p"; fi ;;
  esac
done
"""


def _as_int(value: Any) -> int | None:
    """An int given as int or as a string of digits (YAML's "8000"), else None."""
    if _is_int(value):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _as_float(value: Any, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_platform(value: Any) -> str | None:
    """The Docker architecture of a platform (``linux/arm64``, ``linux/arm/v7``, ``arm64``), or None."""
    if not isinstance(value, str) or not value:
        return None
    parts = value.lower().split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if len(parts) > 3 or parts[0] != "linux":
        return None
    return DOCKER_ARCH_BY_MACHINE.get(parts[1], parts[1] if parts[1] in DOCKER_ARCHES else None)


def _builds(host_groups: list[str]) -> bool:
    return "vllm_builders" in host_groups


def _build_setting(settings: dict[str, Any], key: str) -> Any:
    return settings.get(f"vllm_build_{key}")


def build_disk_needs(settings: dict[str, Any]) -> tuple[list[str], float | None]:
    """The paths a build writes under (vllm_build_disk_paths) and the GB each needs (vllm_build_min_free_gb)."""
    paths = settings.get("vllm_build_disk_paths")
    if paths is None:
        paths = [_build_setting(settings, "work_dir"), DOCKER_ROOT]
    paths = [str(p) for p in paths if isinstance(p, str) and p.startswith("/")] if isinstance(paths, list) else []
    return paths, _as_float(settings.get("vllm_build_min_free_gb"), None)


def build_target(host: str, host_groups: list[str], settings: dict[str, Any]) -> dict[str, Any] | None:
    """What a builder publishes: the image references it pushes (or tags locally) and its platform."""
    if not _builds(host_groups):
        return None
    name, tag, registry = (_build_setting(settings, k) for k in ("image", "tag", "registry"))
    if not name or not tag:
        return None  # the role's defaults give both; without them there is nothing to compare
    name, tag, registry = str(name), str(tag), str(registry or "")
    ref = f"{registry}/{name}:{tag}" if registry else f"{name}:{tag}"
    return {
        "host": host,
        "refs": [ref],
        "local": not registry,
        "platform": str(settings.get("vllm_build_platform") or ""),
    }


def _catalog_size_gb(entry: Any) -> float | None:
    size = entry.get("size_gb") if isinstance(entry, dict) else None
    return float(size) if isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0 else None


def model_cache_writes(
    host: str, host_groups: list[str], settings: dict[str, Any], models: Any
) -> list[dict[str, Any]]:
    """The models model_cache will fetch on this host whose catalog entry declares size_gb: name, size,
    the directory it lands in (whose filesystem must hold it) and what may already be there."""
    if not any(g in host_groups for g in MODEL_CACHE_GROUPS):
        return []
    root = settings.get("model_cache_root")
    if settings.get("model_cache_mode") != "sync" or not root or not isinstance(models, dict):
        return []
    root = str(root)
    hf_home = str(settings.get("model_cache_hf_home") or root.rstrip("/") + "/hf")
    wanted = settings.get("model_cache_models") or [
        i.get("model") for i in settings.get("vllm_service_instances") or [] if isinstance(i, dict)
    ]
    writes = []
    for name in dict.fromkeys(str(n) for n in wanted if n):
        entry = models.get(name)
        size = _catalog_size_gb(entry)
        source = entry.get("source") if isinstance(entry, dict) else None
        if size is None or not isinstance(source, dict) or source.get("path"):
            continue  # no declared size, or a path source: nothing is fetched
        if source.get("hf"):
            repo = "models--" + str(source["hf"]).replace("/", "--")
            target, used = f"{hf_home}/hub", [f"{hf_home}/hub/{repo}"]
        else:
            target, used = f"{root}/{name}", [f"{root}/{name}", f"{root}/.{name}.llmfleet"]
        writes.append({"name": name, "size_gb": size, "path": target, "used": used})
    return writes


def _needs_image_arch(host_groups: list[str], groups: Any, settings: dict[str, Any]) -> bool:
    """A docker inference node whose image a builder of this inventory may build: its arch must match."""
    return (
        "inference_nodes" in host_groups
        and settings.get("vllm_service_runtime") == "docker"
        and bool(settings.get("vllm_service_image"))
        and bool(isinstance(groups, dict) and groups.get("vllm_builders"))
    )


def probe_items(host: str, host_groups: list[str], groups: Any, settings: dict[str, Any], models: Any) -> list[str]:
    """What the probe must read on this host for the checks that need facts; empty when none does."""
    items: list[str] = []
    if "gpu_nodes" in host_groups or _builds(host_groups) or _needs_image_arch(host_groups, groups, settings):
        items.append("arch")
    if _builds(host_groups):
        platform = parse_platform(settings.get("vllm_build_platform"))
        if platform:
            items.append("binfmt")
        paths, _ = build_disk_needs(settings)
        items += [f"free={p}" for p in paths]
    for write in model_cache_writes(host, host_groups, settings, models):
        items.append(f"free={write['path']}")
        items += [f"used={u}" for u in write["used"]]
    return list(dict.fromkeys(items))


def probe_argv(items: list[str]) -> list[str]:
    """The read-only command (``ansible.builtin.command`` argv) that reads ``items``."""
    return ["/bin/sh", "-c", PROBE_SCRIPT, "llmfleet-probe", *items] if items else []


def parse_probe(text: Any) -> dict[str, Any]:
    """The probe's output: arch, binfmt (None when unreadable), free {path: (bytes, st_dev)}, used {path: bytes}."""
    facts: dict[str, Any] = {"arch": None, "binfmt": None, "free": {}, "used": {}}
    handlers: set[str] = set()
    for line in str(text or "").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "arch" and rest:
            facts["arch"] = rest.strip()
        elif kind == "binfmt" and rest:
            handlers.add(rest.strip())
        elif kind == "binfmt-read":
            facts["binfmt"] = handlers
        elif kind == "free":
            kib, dev, path = [*rest.split(" ", 2), "", ""][:3]
            if kib.isdigit() and path:
                facts["free"][path] = (int(kib) * 1024, dev)
        elif kind == "used":
            kib, _, path = rest.partition(" ")
            if kib.isdigit() and path:
                facts["used"][path] = int(kib) * 1024
    return facts


def _gb(n: float) -> str:
    return f"{n / GIB:.1f} GB"


def _check_build_facts(host: str, settings: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    arch = facts["arch"]
    machine = DOCKER_ARCH_BY_MACHINE.get(arch or "")
    given = settings.get("vllm_build_platform") or ""
    target = parse_platform(given) if given else machine
    mode = _build_setting(settings, "mode")
    if mode == "source" and not given and arch and machine not in SOURCE_BUILD_ARCHES:
        errors.append(
            f"host {host}: vllm_build_mode = 'source' with vllm_build_platform = '' builds vLLM's CUDA Dockerfile "
            f"for the builder's architecture {arch!r}; allowed: a builder on x86_64 or aarch64, or "
            "vllm_build_platform linux/amd64 or linux/arm64 (CUDA base images exist for those only)"
        )
    docker_host = str(_build_setting(settings, "docker_host") or "")
    if given and target and machine and target != machine and docker_host.startswith("unix://"):
        handlers = facts["binfmt"]
        handler = QEMU_NAME.get(target, target)
        if handlers is not None and handler not in handlers:
            errors.append(
                f"host {host}: vllm_build_platform = {given!r} is not the builder's architecture ({arch}) and the "
                f"builder's kernel has no binfmt handler qemu-{handler}, so the build's RUN steps cannot run; "
                f"allowed: linux/{machine} (or ''), or register QEMU first (docker run --privileged "
                f"tonistiigi/binfmt --install {target})"
            )
    paths, min_gb = build_disk_needs(settings)
    if min_gb is None:
        return errors
    for path in paths:
        free = facts["free"].get(path)
        if free is not None and free[0] < min_gb * GIB:
            errors.append(
                f"host {host}: vllm_build_disk_paths entry {path!r} (or the nearest existing parent) has "
                f"{_gb(free[0])} free, but a {mode} build needs vllm_build_min_free_gb = {min_gb:g} GB; "
                "allowed: at least that much free (docker system prune, docker builder prune), or a lower "
                "vllm_build_min_free_gb"
            )
    return errors


def _check_cache_facts(
    host: str, host_groups: list[str], settings: dict[str, Any], models: Any, facts: dict[str, Any]
) -> list[str]:
    """Models to fetch against the free space of the filesystem they land on (model_sync's own check,
    made before any host changes: what is already there counts, the reserve must stay free)."""
    reserve_mb = _as_int(settings.get("model_cache_free_space_reserve_mb"))
    reserve = (reserve_mb or 0) << 20
    by_fs: dict[str, dict[str, Any]] = {}
    for write in model_cache_writes(host, host_groups, settings, models):
        free = facts["free"].get(write["path"])
        if free is None:
            continue
        present = sum(facts["used"].get(u, 0) for u in write["used"])
        need = max(0, int(write["size_gb"] * GIB) - present)
        if need == 0:
            continue
        fs = by_fs.setdefault(free[1], {"free": free[0], "need": 0, "models": [], "path": write["path"]})
        fs["need"] += need
        fs["models"].append(f"fleet_models[{write['name']!r}] (size_gb {write['size_gb']:g}, {_gb(present)} there)")
    errors = []
    for fs in by_fs.values():
        if fs["need"] + reserve > fs["free"]:
            root = settings.get("model_cache_root")
            errors.append(
                f"host {host}: model_cache_root = {root!r}: "
                f"the filesystem of {fs['path']!r} (or its nearest existing parent) has {_gb(fs['free'])} free, but "
                f"{', '.join(fs['models'])} need {_gb(fs['need'])} more plus model_cache_free_space_reserve_mb = "
                f"{reserve >> 20}; allowed: at most {_gb(max(0, fs['free'] - reserve))} to fetch there (free space, "
                "point model_cache_root elsewhere, or model_cache_mode mount / none)"
            )
    return errors


def _check_image_arch(
    host: str, settings: dict[str, Any], facts: dict[str, Any], builds: list[dict[str, Any]], probes: dict[str, Any]
) -> list[str]:
    """A docker inference node running an image a builder of this inventory builds for another architecture."""
    machine = DOCKER_ARCH_BY_MACHINE.get(facts["arch"] or "")
    image = settings.get("vllm_service_image")
    if not machine or not image:
        return []
    for build in builds or []:
        if not isinstance(build, dict) or image not in (build.get("refs") or []):
            continue
        if build.get("local") and build.get("host") != host:
            continue  # an image tagged on another host only: not this one's
        platform = build.get("platform") or ""
        target = parse_platform(platform) if platform else None
        if not platform:
            builder_arch = parse_probe((probes or {}).get(build.get("host"), ""))["arch"]
            target = DOCKER_ARCH_BY_MACHINE.get(builder_arch or "")
        if target and target != machine:
            source = f"vllm_build_platform = {platform!r}" if platform else f"its architecture {builder_arch}"
            return [
                f"host {host}: vllm_service_image = {image!r} is built by vllm_builders host {build.get('host')} for "
                f"linux/{target} ({source}), but this host is {facts['arch']}; allowed: an image for linux/{machine} "
                f"(set that builder's vllm_build_platform to linux/{machine}, or use another image)"
            ]
    return []


def check_host_facts(
    host: str,
    host_groups: list[str],
    settings: dict[str, Any],
    models: Any,
    probe: Any,
    builds: list[dict[str, Any]] | None = None,
    build_probes: dict[str, Any] | None = None,
) -> list[str]:
    """What the host's facts (the probe's output) rule out: an architecture nvidia_runtime or a build
    cannot serve, an image built for another architecture, too little free disk for a build or the models."""
    facts = parse_probe(probe)
    errors: list[str] = []
    arch = facts["arch"]
    if "gpu_nodes" in host_groups and arch and arch not in NVIDIA_RUNTIME_ARCHES:
        errors.append(
            f"host {host} is in group gpu_nodes (nvidia_runtime) but its architecture is {arch!r}; "
            f"allowed: {', '.join(NVIDIA_RUNTIME_ARCHES)} (NVIDIA's repositories have no other)"
        )
    if _builds(host_groups):
        errors += _check_build_facts(host, settings, facts)
    if settings.get("vllm_service_runtime") == "docker" and "inference_nodes" in host_groups:
        errors += _check_image_arch(host, settings, facts, builds or [], build_probes or {})
    errors += _check_cache_facts(host, host_groups, settings, models, facts)
    return errors
