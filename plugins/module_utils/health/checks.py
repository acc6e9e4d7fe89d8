# Copyright: llm-fleet contributors
# Apache-2.0
"""Health checks behind the llm_health module: endpoint, GGUF files, system.

Every check is a dict ``{name, ok, severity, detail, ...}``. A failed check of severity
``critical`` makes the whole result ``unhealthy``; a failed ``warning`` makes it ``degraded``.
Standard library only, except the GGUF file check, which imports the ``gguf`` package when (and
only when) files are given.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import EndpointError, check_port, request
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import (
    DEFAULT_PROMPT,
    auth_headers,
    complete,
    host_port,
    join_url,
    model_ids,
    normalize_base_url,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.prometheus import (
    parse_prometheus_text,
    summarize_serving_metrics,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.wait import (
    Runner,
    Supervised,
    docker_state,
    systemd_state,
)

CRITICAL = "critical"
WARNING = "warning"
HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"


def make_check(name: str, ok: bool, detail: str, severity: str = CRITICAL, **extra: Any) -> dict[str, Any]:
    if severity not in (CRITICAL, WARNING):
        raise ValueError(f"severity must be {CRITICAL!r} or {WARNING!r}, got {severity!r}")
    result = {"name": name, "ok": bool(ok), "severity": severity, "detail": detail}
    result.update(extra)
    return result


def overall_status(checks: Iterable[dict[str, Any]]) -> tuple[str, list[str]]:
    """(status, reasons): reasons are ``"<check>: <detail>"`` of failed checks, critical first."""
    critical = [c for c in checks if not c["ok"] and c["severity"] == CRITICAL]
    warnings = [c for c in checks if not c["ok"] and c["severity"] == WARNING]
    reasons = ["{}: {}".format(c["name"], c["detail"]) for c in critical + warnings]
    if critical:
        return UNHEALTHY, reasons
    if warnings:
        return DEGRADED, reasons
    return HEALTHY, reasons


# --------------------------------------------------------------------------------------------
# Endpoint
# --------------------------------------------------------------------------------------------


@dataclass
class EndpointSpec:
    url: str
    model: str | None = None
    api_key: str | None = None
    prompt: str = DEFAULT_PROMPT
    expect: str | None = None
    expect_regex: str | None = None
    min_length: int = 1
    max_tokens: int = 32
    timeout: float = 30.0
    api: str = "chat"
    validate_certs: bool = True
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    content_severity: str = CRITICAL
    max_latency_s: float | None = None
    min_tokens_per_s: float | None = None
    max_waiting_requests: float | None = None
    max_kv_cache_usage: float | None = 0.95


def check_completion_text(
    text: str, min_length: int = 1, expect: str | None = None, expect_regex: str | None = None
) -> tuple[bool, str]:
    """Whether a completion's text is acceptable, and why not."""
    stripped = (text or "").strip()
    shown = stripped if len(stripped) <= 120 else stripped[:117] + "..."
    if len(stripped) < min_length:
        return False, f"answer is {len(stripped)} characters, fewer than min_length {min_length}: {shown!r}"
    if expect and expect.lower() not in stripped.lower():
        return False, f"answer does not contain {expect!r}: {shown!r}"
    if expect_regex and not re.search(expect_regex, stripped):
        return False, f"answer does not match regex {expect_regex!r}: {shown!r}"
    return True, f"answer {shown!r}"


def _health_check(spec: EndpointSpec, base: str) -> dict[str, Any]:
    url = join_url(base, spec.health_path)
    try:
        resp = request(
            "GET",
            url,
            headers=auth_headers(spec.api_key),
            timeout=spec.timeout,
            validate_certs=spec.validate_certs,
        )
    except EndpointError as exc:
        return make_check("health", False, str(exc))
    extra = {"http_status": resp.status, "elapsed_s": round(resp.elapsed_s, 4)}
    if resp.status == 200:
        return make_check("health", True, f"GET {spec.health_path}: HTTP 200", **extra)
    if resp.status == 404:
        # LM Studio and llama-cpp-python have no /health; /v1/models and the completion decide.
        return make_check(
            "health",
            True,
            f"GET {spec.health_path}: HTTP 404, this server has no health "
            "route; readiness is judged by /v1/models and the completion",
            supported=False,
            **extra,
        )
    if resp.status == 503:
        return make_check(
            "health",
            False,
            f"GET {spec.health_path}: {resp.error_summary()} (server up, not ready: model loading or engine dead)",
            **extra,
        )
    return make_check("health", False, f"GET {spec.health_path}: {resp.error_summary()}", **extra)


def _models_check(spec: EndpointSpec, base: str) -> tuple[dict[str, Any], list[str]]:
    url = join_url(base, "/v1/models")
    try:
        resp = request(
            "GET",
            url,
            headers=auth_headers(spec.api_key),
            timeout=spec.timeout,
            validate_certs=spec.validate_certs,
        )
    except EndpointError as exc:
        return make_check("models", False, str(exc)), []
    if resp.status in (401, 403):
        hint = "the api_key was rejected" if spec.api_key else "the server wants an api_key"
        return make_check(
            "models", False, f"GET /v1/models: {resp.error_summary()} ({hint})", http_status=resp.status
        ), []
    if resp.status != 200:
        return make_check("models", False, f"GET /v1/models: {resp.error_summary()}", http_status=resp.status), []
    try:
        served = model_ids(resp.json())
    except (EndpointError, ValueError) as exc:
        return make_check("models", False, str(exc)), []
    if not served:
        return make_check("models", False, "GET /v1/models lists no model", served=served), served
    if spec.model and spec.model not in served:
        detail = f"expected model {spec.model!r} is not served; /v1/models lists {served}"
        return make_check("models", False, detail, served=served), served
    detail = "serves " + (spec.model if spec.model else ", ".join(served))
    return make_check("models", True, detail, served=served), served


def _metrics_checks(spec: EndpointSpec, base: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    url = join_url(base, spec.metrics_path)
    try:
        resp = request(
            "GET",
            url,
            headers=dict(auth_headers(spec.api_key), Accept="text/plain"),
            timeout=spec.timeout,
            validate_certs=spec.validate_certs,
        )
    except EndpointError as exc:
        return [make_check("metrics", False, str(exc), WARNING)], {}
    if resp.status == 404:
        return [
            make_check(
                "metrics",
                True,
                f"GET {spec.metrics_path}: HTTP 404, not exported by this server",
                supported=False,
            )
        ], {}
    if resp.status != 200:
        return [make_check("metrics", False, f"GET {spec.metrics_path}: {resp.error_summary()}", WARNING)], {}
    metrics = summarize_serving_metrics(parse_prometheus_text(resp.text))
    shown = ", ".join(
        f"{k}={_fmt(v)}" for k, v in sorted(metrics.items()) if k in ("running", "waiting", "kv_cache_usage")
    )
    shown = shown or "no serving metrics recognised"
    checks = [make_check("metrics", True, f"GET {spec.metrics_path}: {shown}")]
    waiting = metrics.get("waiting")
    if spec.max_waiting_requests is not None and waiting is not None:
        ok = waiting <= spec.max_waiting_requests
        detail = f"{_fmt(waiting)} requests waiting (max_waiting_requests {_fmt(spec.max_waiting_requests)})"
        checks.append(make_check("queue", ok, detail, WARNING, value=waiting, threshold=spec.max_waiting_requests))
    kv = metrics.get("kv_cache_usage")
    if spec.max_kv_cache_usage is not None and kv is not None:
        ok = kv <= spec.max_kv_cache_usage
        detail = f"KV cache {kv:.1%} used (max_kv_cache_usage {spec.max_kv_cache_usage:.1%})"
        checks.append(make_check("kv_cache", ok, detail, WARNING, value=kv, threshold=spec.max_kv_cache_usage))
    return checks, metrics


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.3g}"
    return str(value)


def check_endpoint(spec: EndpointSpec) -> dict[str, Any]:
    """Run the endpoint checks in order; stop early when the port is closed.

    Returns ``{checks, completion, metrics, served_models, url, model}``.
    """
    base = normalize_base_url(spec.url)
    result: dict[str, Any] = {
        "url": base,
        "model": spec.model,
        "checks": [],
        "completion": None,
        "metrics": {},
        "served_models": [],
    }
    checks: list[dict[str, Any]] = result["checks"]
    host, port = host_port(base)
    ok, detail, elapsed = check_port(host, port, timeout=min(spec.timeout, 10.0))
    checks.append(make_check("port", ok, detail, elapsed_s=round(elapsed, 4)))
    if not ok:
        return result

    if spec.health_path:
        checks.append(_health_check(spec, base))

    models_check, served = _models_check(spec, base)
    checks.append(models_check)
    result["served_models"] = served
    model = spec.model or (served[0] if served else None)
    result["model"] = model

    if models_check["ok"] and model:
        try:
            comp = complete(
                base,
                model,
                spec.prompt,
                spec.max_tokens,
                spec.api,
                spec.api_key,
                spec.timeout,
                spec.validate_certs,
            )
        except EndpointError as exc:
            checks.append(make_check("completion", False, str(exc)))
        else:
            result["completion"] = comp.as_dict()
            checks.append(
                make_check(
                    "completion",
                    True,
                    "{} tokens in {:.2f}s".format(
                        comp.completion_tokens if comp.completion_tokens is not None else "?", comp.latency_s
                    ),
                    latency_s=round(comp.latency_s, 4),
                )
            )
            text_ok, text_detail = check_completion_text(comp.text, spec.min_length, spec.expect, spec.expect_regex)
            checks.append(make_check("content", text_ok, text_detail, spec.content_severity))
            checks.extend(_performance_checks(spec, comp.latency_s, comp.tokens_per_s, comp.completion_tokens))

    if spec.metrics_path:
        metric_checks, metrics = _metrics_checks(spec, base)
        checks.extend(metric_checks)
        result["metrics"] = metrics
    return result


def _performance_checks(
    spec: EndpointSpec, latency_s: float, tokens_per_s: float | None, completion_tokens: int | None
) -> list[dict[str, Any]]:
    checks = []
    if spec.max_latency_s is not None:
        checks.append(
            make_check(
                "latency",
                latency_s <= spec.max_latency_s,
                f"completion took {latency_s:.2f}s (max_latency_s {spec.max_latency_s:.2f})",
                WARNING,
                value=round(latency_s, 4),
                threshold=spec.max_latency_s,
            )
        )
    if spec.min_tokens_per_s is not None:
        if tokens_per_s is None:
            checks.append(
                make_check(
                    "throughput",
                    False,
                    f"no tokens/s: the server returned no usage.completion_tokens (got {completion_tokens!r})",
                    WARNING,
                    threshold=spec.min_tokens_per_s,
                )
            )
        else:
            checks.append(
                make_check(
                    "throughput",
                    tokens_per_s >= spec.min_tokens_per_s,
                    f"{tokens_per_s:.1f} tokens/s (min_tokens_per_s {spec.min_tokens_per_s:.1f})",
                    WARNING,
                    value=round(tokens_per_s, 2),
                    threshold=spec.min_tokens_per_s,
                )
            )
    return checks


# --------------------------------------------------------------------------------------------
# GGUF files
# --------------------------------------------------------------------------------------------

# Tensor types llama.cpp's quantizer gives the bulk of 2-D weights for each file type. A tensor of
# another type means the quantizer fell back (row size not divisible by the block size, e.g. a
# Q4_K_M of a model with hidden size 576 gets Q5_0): the header still names the requested type.
_K_BUMPS = {"Q4_K", "Q5_K", "Q6_K", "Q8_0"}
EXPECTED_TENSOR_TYPES: dict[str, frozenset] = {
    "F32": frozenset({"F32"}),
    "F16": frozenset({"F16"}),
    "BF16": frozenset({"BF16"}),
    "Q8_0": frozenset({"Q8_0"}),
    "Q4_0": frozenset({"Q4_0"}),
    "Q4_1": frozenset({"Q4_1"}),
    "Q5_0": frozenset({"Q5_0"}),
    "Q5_1": frozenset({"Q5_1"}),
    "Q2_K": frozenset({"Q2_K", "Q3_K"} | _K_BUMPS),
    "Q2_K_S": frozenset({"Q2_K", "Q3_K"} | _K_BUMPS),
    "Q3_K_S": frozenset({"Q3_K"} | _K_BUMPS),
    "Q3_K_M": frozenset({"Q3_K"} | _K_BUMPS),
    "Q3_K_L": frozenset({"Q3_K"} | _K_BUMPS),
    "Q4_K_S": frozenset(_K_BUMPS),
    "Q4_K_M": frozenset(_K_BUMPS),
    "Q5_K_S": frozenset({"Q5_K", "Q6_K", "Q8_0"}),
    "Q5_K_M": frozenset({"Q5_K", "Q6_K", "Q8_0"}),
    "Q6_K": frozenset({"Q6_K", "Q8_0"}),
}
# output.weight / token_embd.weight follow their own rules (--output-tensor-type,
# --token-embedding-type, Q6_K or Q8_0 by default) and are not held to the file type.
_FREE_TENSORS = ("output.weight", "token_embd.weight")
_FREE_TYPES = frozenset({"Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16", "BF16", "F32"})


def normalize_quant_name(name: str | None) -> str | None:
    """'q4_k_m' / 'MOSTLY_Q4_K_M' / 'Q4_K_M' -> 'Q4_K_M'; None stays None."""
    if not name:
        return None
    upper = str(name).strip().upper()
    for prefix in ("MOSTLY_", "ALL_"):
        if upper.startswith(prefix):
            upper = upper[len(prefix) :]
    return upper


def unexpected_tensor_types(
    tensors: Iterable[tuple[str, str, int]], quantization: str
) -> tuple[dict[str, int] | None, int]:
    """Count 2-D+ tensors whose type is not what ``quantization`` produces.

    ``tensors`` is ``(name, type_name, n_dims)``. Returns ({type: count} of unexpected tensors, number
    of tensors held to the rule), or (None, 0) when there is no expectation for ``quantization``.
    """
    expected = EXPECTED_TENSOR_TYPES.get(normalize_quant_name(quantization) or "")
    if expected is None:
        return None, 0
    unexpected: dict[str, int] = {}
    considered = 0
    for name, type_name, n_dims in tensors:
        if n_dims < 2:
            continue  # norms and biases stay F32 in every file type
        if name in _FREE_TENSORS:
            if type_name not in _FREE_TYPES | expected:
                unexpected[type_name] = unexpected.get(type_name, 0) + 1
            considered += 1
            continue
        considered += 1
        if type_name not in expected:
            unexpected[type_name] = unexpected.get(type_name, 0) + 1
    return unexpected, considered


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            data = handle.read(chunk)
            if not data:
                break
            digest.update(data)
    return digest.hexdigest()


def read_gguf_summary(path: str) -> dict[str, Any]:
    """Header facts and tensor type counts of a GGUF file, read with the ``gguf`` package."""
    import gguf  # documented requirement of the file check only

    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} does not start with the GGUF magic: first bytes are {magic!r}")
    reader = gguf.GGUFReader(path, "r")

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    file_type_id = field("general.file_type")
    file_type = None
    if file_type_id is not None:
        try:
            file_type = normalize_quant_name(gguf.LlamaFileType(int(file_type_id)).name)
        except ValueError:
            file_type = f"unknown({file_type_id})"
    tensors = []
    type_counts: dict[str, int] = {}
    data_end = 0
    for t in reader.tensors:
        type_name = gguf.GGMLQuantizationType(int(t.tensor_type)).name
        tensors.append((t.name, type_name, len(t.shape)))
        type_counts[type_name] = type_counts.get(type_name, 0) + 1
        data_end = max(data_end, int(t.data_offset) + int(t.n_bytes))
    return {
        "path": path,
        "size_bytes": os.path.getsize(path),
        "version": field("GGUF.version"),
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "file_type": file_type,
        "tensor_count": len(tensors),
        "tensor_types": dict(sorted(type_counts.items())),
        "data_end": data_end,
        "tensors": tensors,
    }


def check_gguf_file(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Checks of one GGUF file: ``spec`` has path and optional sha256, quantization, architecture,
    size_bytes. Returns (checks, facts)."""
    path = spec["path"]
    tag = f"gguf[{path}]"
    if not os.path.isfile(path):
        return [make_check(tag, False, f"{path} does not exist or is not a file")], {"path": path}
    try:
        facts = read_gguf_summary(path)
    except ImportError as exc:
        raise ImportError(f"the GGUF file check needs the 'gguf' Python package on the target: {exc}") from exc
    except (ValueError, OSError, IndexError, KeyError) as exc:
        return [make_check(tag, False, f"not a readable GGUF file: {exc}")], {"path": path}
    tensors = facts.pop("tensors")
    data_end = facts.pop("data_end")
    checks = []
    size = facts["size_bytes"]
    if data_end > size:
        detail, ok = f"file ends at byte {size} but tensor data runs to byte {data_end}: truncated", False
    elif not facts["tensor_count"]:
        detail, ok = "GGUF file has no tensors", False
    else:
        detail = (
            f"GGUF v{facts['version']}, {facts['architecture']}, {facts['tensor_count']} tensors, "
            f"file type {facts['file_type']}, {size / 2**20:.1f} MiB"
        )
        ok = True
    checks.append(make_check(tag, ok, detail))
    want_size = spec.get("size_bytes")
    if want_size is not None:
        checks.append(make_check(f"{tag}.size", size == int(want_size), f"{size} bytes (expected {int(want_size)})"))
    want_arch = spec.get("architecture")
    if want_arch:
        checks.append(
            make_check(
                f"{tag}.architecture",
                facts["architecture"] == want_arch,
                f"architecture {facts['architecture']!r} (expected {want_arch!r})",
            )
        )
    quant = normalize_quant_name(spec.get("quantization")) or facts["file_type"]
    if spec.get("quantization") and facts["file_type"] != quant:
        checks.append(make_check(f"{tag}.file_type", False, f"header file type {facts['file_type']}, expected {quant}"))
    unexpected, considered = unexpected_tensor_types(tensors, quant or "")
    if unexpected is None:
        checks.append(
            make_check(
                f"{tag}.tensor_types",
                True,
                f"types {facts['tensor_types']} (no expectation for file type {quant})",
                WARNING,
            )
        )
    elif unexpected:
        count = sum(unexpected.values())
        checks.append(
            make_check(
                f"{tag}.tensor_types",
                False,
                f"{count} of {considered} weight tensors are not {quant}-type: "
                + ", ".join(f"{name} x{n}" for name, n in sorted(unexpected.items()))
                + f" (the quantizer fell back; the header says {facts['file_type']})",
                WARNING,
                unexpected=unexpected,
            )
        )
    else:
        checks.append(
            make_check(
                f"{tag}.tensor_types",
                True,
                f"all {considered} weight tensors match {quant}: {facts['tensor_types']}",
                WARNING,
            )
        )
    want_sha = spec.get("sha256")
    if want_sha:
        got = sha256_file(path)
        facts["sha256"] = got
        checks.append(
            make_check(f"{tag}.sha256", got == want_sha.lower(), f"sha256 {got} (expected {want_sha.lower()})")
        )
    return checks, facts


# --------------------------------------------------------------------------------------------
# System
# --------------------------------------------------------------------------------------------


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_disk(paths: Iterable[str], min_free_gb: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    checks, facts = [], []
    for path in paths:
        probe = _existing_parent(path)
        st = os.statvfs(probe)
        free = st.f_bavail * st.f_frsize
        total = st.f_blocks * st.f_frsize
        free_gb = free / 1e9
        facts.append(
            {
                "path": path,
                "checked_path": probe,
                "free_gb": round(free_gb, 2),
                "total_gb": round(total / 1e9, 2),
            }
        )
        checks.append(
            make_check(
                f"disk[{path}]",
                free_gb >= min_free_gb,
                f"{free_gb:.1f} GB free of {total / 1e9:.1f} GB on {probe} "
                f"(min_free_disk_gb {_fmt(float(min_free_gb))})",
                WARNING,
                value=round(free_gb, 2),
                threshold=min_free_gb,
            )
        )
    return checks, facts


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: bytes}."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        out[key.strip()] = value * 1024 if len(parts) > 1 and parts[1].lower() == "kb" else value
    return out


def check_memory(
    min_available_gb: float, meminfo_path: str = "/proc/meminfo"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        with open(meminfo_path) as handle:
            info = parse_meminfo(handle.read())
    except OSError as exc:
        return [make_check("memory", True, f"memory not checked: {exc}", WARNING)], {}
    available = info.get("MemAvailable", info.get("MemFree", 0)) / 1e9
    total = info.get("MemTotal", 0) / 1e9
    facts = {"available_gb": round(available, 2), "total_gb": round(total, 2)}
    return [
        make_check(
            "memory",
            available >= min_available_gb,
            f"{available:.1f} GB available of {total:.1f} GB (min_available_memory_gb {_fmt(float(min_available_gb))})",
            WARNING,
            value=round(available, 2),
            threshold=min_available_gb,
        )
    ], facts


def _number(value: Any) -> float | None:
    """A number ``gpu_facts`` reported (an int or float), or None when it could not read one."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def gpu_facts_problem(gpu_facts: Any) -> str | None:
    """Why ``gpu_facts`` is not what the ``gpu_facts`` module sets (``ansible_facts.gpu``), or None."""
    if gpu_facts is None:
        return None
    if not isinstance(gpu_facts, dict) or not isinstance(gpu_facts.get("gpus"), list):
        got = sorted(gpu_facts) if isinstance(gpu_facts, dict) else type(gpu_facts).__name__
        return (
            "gpu_facts must be what llmfleet.fleet.gpu_facts sets (ansible_facts.gpu: a dict with a 'gpus' list), "
            f"got {got}"
        )
    return None


def gpu_devices(gpu_facts: Any) -> list[dict[str, Any]]:
    """The per-GPU dicts of what ``gpu_facts`` set (``ansible_facts.gpu``, its ``gpus`` list)."""
    problem = gpu_facts_problem(gpu_facts)
    if problem:
        raise ValueError(problem)
    return [g for g in (gpu_facts or {}).get("gpus", []) if isinstance(g, dict)]


def _gpu_memory_check(
    label: str, dev: dict[str, Any], used: float | None, total: float | None, max_memory_percent: float
) -> dict[str, Any]:
    if used is None or not total or dev.get("memory_unified"):
        return make_check(
            f"{label}.memory",
            True,
            f"{dev.get('name') or label} reports no dedicated memory (unified memory, e.g. GB10): not checked",
            WARNING,
        )
    pct = 100.0 * used / total
    return make_check(
        f"{label}.memory",
        pct <= max_memory_percent,
        f"{pct:.0f}% memory used ({_fmt(used)} of {_fmt(total)} MiB; "
        f"max_gpu_memory_percent {_fmt(float(max_memory_percent))})",
        WARNING,
        value=round(pct, 1),
        threshold=max_memory_percent,
    )


def check_gpus(
    gpu_facts: Any,
    min_gpus: int | None = None,
    max_memory_percent: float | None = None,
    max_utilization_percent: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """GPU count, memory and utilization from ``gpu_facts`` output. Returns (checks, per-GPU facts)."""
    devices = gpu_devices(gpu_facts)
    checks: list[dict[str, Any]] = []
    facts: list[dict[str, Any]] = []
    count = len(devices)
    if isinstance(gpu_facts, dict) and isinstance(gpu_facts.get("count"), int) and not devices:
        count = gpu_facts["count"]
    if min_gpus is not None:
        detail = f"{count} GPU(s) visible (min_gpus {min_gpus})"
        if count == 0 and isinstance(gpu_facts, dict) and gpu_facts.get("reason"):
            detail += f": {gpu_facts['reason']}"
        checks.append(make_check("gpu_count", count >= min_gpus, detail, value=count, threshold=min_gpus))
    for pos, dev in enumerate(devices):
        label = f"gpu{dev.get('index', pos)}"
        total = _number(dev.get("memory_total_mib"))
        used = _number(dev.get("memory_used_mib"))
        util = _number(dev.get("utilization_gpu_pct"))
        unified = bool(dev.get("memory_unified"))
        mem_pct = (100.0 * used / total) if (used is not None and total and not unified) else None
        facts.append(
            {
                "gpu": label,
                "name": dev.get("name"),
                "memory_total_mib": total,
                "memory_used_mib": used,
                "memory_used_percent": None if mem_pct is None else round(mem_pct, 1),
                "memory_unified": unified,
                "utilization_percent": util,
            }
        )
        if max_memory_percent is not None:
            checks.append(_gpu_memory_check(label, dev, used, total, max_memory_percent))
        if max_utilization_percent is not None and util is not None:
            limit = _fmt(float(max_utilization_percent))
            checks.append(
                make_check(
                    f"{label}.utilization",
                    util <= max_utilization_percent,
                    f"{_fmt(util)}% utilization (max_gpu_utilization_percent {limit})",
                    WARNING,
                    value=util,
                    threshold=max_utilization_percent,
                )
            )
    return checks, facts


# --------------------------------------------------------------------------------------------
# Supervisor: restarts and last exit
# --------------------------------------------------------------------------------------------

_RUNNING = {"systemd": ("active",), "docker": ("running",)}


def check_restarts(sup: Supervised, window_s: float) -> dict[str, Any]:
    """One ``service`` check from what systemd / Docker says.

    Down, missing or between two starts is critical. Running, but restarted by the supervisor
    (``NRestarts`` / ``RestartCount`` > 0) with the current server started within ``window_s``, is a
    warning (degraded): the instance serves, but it just died once, and requests in flight then
    failed. Restarts longer ago than that are reported and not held against it.
    """
    what = f"{sup.kind} {'unit' if sup.kind == 'systemd' else 'container'} {sup.name}"
    facts = {"value": sup.restarts, "threshold": window_s, "restarts": sup.restarts, "state": sup.state}
    if sup.error or sup.down:
        return make_check("service", False, sup.describe(), **facts)
    if sup.state not in _RUNNING[sup.kind] or (sup.kind == "systemd" and sup.sub_state not in ("running", "")):
        state = sup.state + (f"/{sup.sub_state}" if sup.sub_state else "")
        detail = f"{what} is {state}, not running"
        if sup.restarts:
            detail += f", after {sup.restarts} restart(s)"
        if sup.exit_detail:
            detail += f"; last exit: {sup.exit_detail}"
        return make_check("service", False, detail, **facts)
    last_exit = f"; last exit: {sup.exit_detail}" if sup.exit_detail else ""
    if not sup.restarts:
        return make_check("service", True, f"{what} is running, never restarted by its supervisor", WARNING, **facts)
    ago = sup.started_ago_s
    ago_text = "at an unknown time" if ago is None else f"{ago:.0f} s ago"
    if ago is None or ago <= window_s:
        detail = (
            f"{what} restarted {sup.restarts} time(s); the current server started {ago_text}, within "
            f"restart_window_s {_fmt(float(window_s))}{last_exit}"
        )
        return make_check("service", False, detail, WARNING, **facts)
    detail = (
        f"{what} is running; restarted {sup.restarts} time(s), the last {ago_text} (longer ago than "
        f"restart_window_s {_fmt(float(window_s))}){last_exit}"
    )
    return make_check("service", True, detail, WARNING, **facts)


def read_supervisor(
    params: dict[str, Any],
    run: Runner,
    monotonic: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
) -> Supervised | None:
    """The supervisor state named by ``systemd_unit`` / ``container``; None when neither is given."""
    if params.get("systemd_unit"):
        sup = systemd_state(run, params["systemd_unit"], monotonic)
        if sup.restarts and not sup.error and not sup.exit_detail:
            sup = systemd_state(run, params["systemd_unit"], monotonic, journal=True)
        return sup
    if params.get("container"):
        return docker_state(run, params["container"], now)
    return None


# --------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------


def run_health(
    params: dict[str, Any],
    run: Runner | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """All checks the module options ask for -> the module's result (without ``changed``).

    ``run`` runs a command on the host (the module's ``run_command``); it reads the supervisor
    when ``systemd_unit`` or ``container`` is given.
    """
    checks: list[dict[str, Any]] = []
    result: dict[str, Any] = {"completion": None, "metrics": {}, "files": [], "system": {}, "supervisor": {}}
    if run is not None and (params.get("systemd_unit") or params.get("container")):
        sup = read_supervisor(params, run, monotonic, now)
        if sup is not None:
            checks.append(check_restarts(sup, float(params.get("restart_window_s") or 600.0)))
            result["supervisor"] = sup.as_dict()
    if params.get("url"):
        spec = EndpointSpec(
            url=params["url"],
            model=params.get("model"),
            api_key=params.get("api_key"),
            prompt=params.get("prompt") or DEFAULT_PROMPT,
            expect=params.get("expect"),
            expect_regex=params.get("expect_regex"),
            min_length=params.get("min_length", 1),
            max_tokens=params.get("max_tokens", 32),
            timeout=params.get("timeout", 30.0),
            api=params.get("api", "chat"),
            validate_certs=params.get("validate_certs", True),
            health_path=params.get("health_path", "/health"),
            metrics_path=params.get("metrics_path", "/metrics"),
            content_severity=CRITICAL if params.get("content_mismatch", UNHEALTHY) == UNHEALTHY else WARNING,
            max_latency_s=params.get("max_latency_s"),
            min_tokens_per_s=params.get("min_tokens_per_s"),
            max_waiting_requests=params.get("max_waiting_requests"),
            max_kv_cache_usage=params.get("max_kv_cache_usage", 0.95),
        )
        endpoint = check_endpoint(spec)
        checks.extend(endpoint.pop("checks"))
        result.update(endpoint)
    for file_spec in params.get("gguf_files") or []:
        file_checks, facts = check_gguf_file(file_spec)
        checks.extend(file_checks)
        result["files"].append(facts)
    if params.get("disk_paths"):
        disk_checks, disk = check_disk(params["disk_paths"], params.get("min_free_disk_gb", 1.0))
        checks.extend(disk_checks)
        result["system"]["disk"] = disk
    if params.get("check_memory"):
        mem_checks, mem = check_memory(params.get("min_available_memory_gb", 0.5))
        checks.extend(mem_checks)
        result["system"]["memory"] = mem
    if params.get("gpu_facts") is not None or params.get("min_gpus") is not None:
        gpu_checks, gpus = check_gpus(
            params.get("gpu_facts"),
            params.get("min_gpus"),
            params.get("max_gpu_memory_percent"),
            params.get("max_gpu_utilization_percent"),
        )
        checks.extend(gpu_checks)
        result["system"]["gpus"] = gpus
    status, reasons = overall_status(checks)
    result.update(status=status, reasons=reasons, checks=checks)
    return result
