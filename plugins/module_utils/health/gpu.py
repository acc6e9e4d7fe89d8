"""Turn what ``nvidia-smi`` and ``rocm-smi`` print into the ``gpu`` facts of the ``gpu_facts`` module.

This file travels to the target host with the module, so it uses the standard library only.

Sources, in order of authority:

* ``nvidia-smi --query-gpu=<fields> --format=csv,nounits`` (header kept): one row per GPU. The
  parser maps columns by the header, so any field list parses, and a field a driver cannot report
  (``[N/A]``, ``[Not Supported]``) becomes ``None``, never a guess.
* ``nvidia-smi -L``: GPU UUIDs and MIG devices (profile and ``MIG-`` UUID, what a container needs).
* ``nvidia-smi`` (the table): the CUDA version the driver supports (no query field carries it), and
  a cross-check of the GPU count.
* ``rocm-smi --showproductname --csv`` / ``--showdriverversion --csv`` for AMD Instinct nodes.

GB10 (DGX Spark) has no dedicated framebuffer: NVML answers "Not Supported" for memory, and
nvidia-smi prints ``[N/A]`` / ``Not Supported``. Such a GPU is reported as ``memory_unified: true``
with the host's memory (``/proc/meminfo``) as its total.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# The fields gpu_facts asks for. compute_cap exists since driver 510; without it the capability is
# looked up by product name (COMPUTE_CAPABILITY_BY_NAME) and the fact says so.
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "driver_version",
    "memory.total",
    "memory.used",
    "compute_cap",
    "mig.mode.current",
    "persistence_mode",
    "utilization.gpu",
)

# nvidia-smi accepts several names for some fields and echoes the one asked for in the header.
FIELD_ALIASES: dict[str, str] = {
    "gpu_name": "name",
    "gpu_uuid": "uuid",
    "gpu_bus_id": "pci.bus_id",
}

# What nvidia-smi prints instead of a value it cannot read.
UNAVAILABLE_VALUES = frozenset(
    {
        "",
        "n/a",
        "[n/a]",
        "not supported",
        "[not supported]",
        "unknown error",
        "[unknown error]",
        "insufficient permissions",
        "[insufficient permissions]",
        "[gpu is lost]",
        "not found",
    }
)

# Messages meaning "there is no usable NVIDIA GPU here": a clean result with a reason, not a failure.
NO_GPU_MESSAGES: tuple[tuple[str, str], ...] = (
    (
        "couldn't communicate with the nvidia driver",
        "the NVIDIA kernel driver is not loaded (nvidia-smi: couldn't communicate with the NVIDIA driver)",
    ),
    (
        "no devices were found",
        "the NVIDIA driver is loaded but found no GPU (nvidia-smi: No devices were found)",
    ),
    (
        "driver/library version mismatch",
        "the loaded NVIDIA kernel module and the installed driver libraries differ "
        "(nvidia-smi: Driver/library version mismatch); reboot the host to load the new driver",
    ),
    (
        "failed to initialize nvml",
        "NVML could not be initialised (nvidia-smi: Failed to initialize NVML)",
    ),
)

_INVALID_FIELD_RE = re.compile(r'Field "([^"]+)" is not a valid field to query', re.IGNORECASE)
_NUMBER_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:MiB|GiB|%|W|MHz|C|KB/s)?\s*$", re.IGNORECASE)
_DRIVER_RE = re.compile(r"(?:Driver|KMD) Version:\s*([0-9][0-9.]*)")
_CUDA_RE = re.compile(r"CUDA (?:UMD )?Version:\s*([0-9][0-9.]*)")
_GPU_LINE_RE = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)\s*$")
_MIG_LINE_RE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)]+)\)\s*$")
_TABLE_NAME_RE = re.compile(r"^\s*(\d+)\s+(.*?)\s+(On|Off)\s*$")
_TABLE_MEMORY_RE = re.compile(r"(\d+)MiB\s*/\s*(\d+)MiB")
_TABLE_UTIL_RE = re.compile(r"^\s*(\d+)%")
_BUS_ID_RE = re.compile(r"^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f]$")
_AMD_MARKETING_NAME_RE = re.compile(r"\[(AMD [^\]]+)\]")

# Fallback when nvidia-smi cannot report compute_cap (drivers before 510). First match wins, so
# longer names come before their prefixes (A100 before A10). Source: https://developer.nvidia.com/cuda-gpus
COMPUTE_CAPABILITY_BY_NAME: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), capability)
    for pattern, capability in (
        (r"\bGB10\b", "12.1"),
        (r"\bG?B300\b", "10.3"),
        (r"\bG?B200\b|\bB100\b", "10.0"),
        (r"RTX PRO \d+ Blackwell|RTX 50\d0", "12.0"),
        (r"\bGH200\b|\bH100\b|\bH200\b|\bH800\b|\bH20\b", "9.0"),
        (r"\bL40S?\b|\bL4\b|\bL20\b|RTX 40\d0|Ada Generation", "8.9"),
        (r"\bA100\b|\bA800\b|\bA30\b", "8.0"),
        (r"\bA10G?\b|\bA40\b|\bA16\b|\bA2\b|RTX A\d+|RTX 30\d0", "8.6"),
        (r"\bT4\b|RTX 20\d0|Quadro RTX", "7.5"),
        (r"\bV100\b|TITAN V\b", "7.0"),
    )
)


def clean_value(raw: str | None) -> str | None:
    """Strip a CSV cell; ``None`` for the markers nvidia-smi prints when it cannot read a value."""
    if raw is None:
        return None
    value = raw.strip()
    return None if value.lower() in UNAVAILABLE_VALUES else value


def to_number(raw: str | None) -> float | None:
    """``'46068 MiB'``, ``'46068'``, ``'0 %'`` -> number; ``None`` when absent or not a number."""
    value = clean_value(raw)
    if value is None:
        return None
    match = _NUMBER_RE.match(value)
    return float(match.group(1)) if match else None


def to_int(raw: str | None) -> int | None:
    number = to_number(raw)
    return None if number is None else int(number)


def normalise_field(header_cell: str) -> str:
    """``'memory.total [MiB]'`` -> ``'memory.total'``; aliases to the canonical field name."""
    name = re.sub(r"\s*\[[^\]]*\]\s*$", "", header_cell.strip()).lower()
    return FIELD_ALIASES.get(name, name)


def query_command(nvidia_smi: str, fields: Sequence[str] = QUERY_FIELDS) -> list[str]:
    return [nvidia_smi, "--query-gpu=" + ",".join(fields), "--format=csv,nounits"]


def no_gpu_reason(output: str) -> str | None:
    """The reason behind a known "no usable GPU here" message of nvidia-smi, else ``None``."""
    lowered = output.lower()
    for needle, reason in NO_GPU_MESSAGES:
        if needle in lowered:
            return reason
    return None


def invalid_query_field(output: str) -> str | None:
    """The field nvidia-smi refused (``Field "x" is not a valid field to query``), else ``None``."""
    match = _INVALID_FIELD_RE.search(output)
    return match.group(1) if match else None


def parse_query_csv(text: str) -> list[dict[str, str | None]]:
    """Rows of ``nvidia-smi --query-gpu ... --format=csv[,nounits]`` keyed by the header's field names."""
    rows = [row for row in csv.reader(io.StringIO(text), skipinitialspace=True) if any(c.strip() for c in row)]
    if not rows:
        return []
    header = [normalise_field(cell) for cell in rows[0]]
    if not any("." in field or field in ("index", "name", "uuid", "compute_cap") for field in header):
        raise ValueError(f"nvidia-smi query output has no CSV header: first line is {rows[0]!r}")
    parsed = []
    for row in rows[1:]:
        if len(row) != len(header):
            raise ValueError(f"nvidia-smi query row has {len(row)} columns, header has {len(header)}: {row!r}")
        parsed.append({field: clean_value(cell) for field, cell in zip(header, row, strict=True)})
    return parsed


def parse_smi_header(text: str) -> dict[str, str | None]:
    """Driver and CUDA version from the banner of plain ``nvidia-smi`` (R610 says KMD / CUDA UMD)."""
    driver = _DRIVER_RE.search(text)
    cuda = _CUDA_RE.search(text)
    return {
        "driver_version": driver.group(1) if driver else None,
        "cuda_version": cuda.group(1) if cuda else None,
    }


def parse_smi_table(text: str) -> list[dict[str, Any]]:
    """Per-GPU rows of the plain ``nvidia-smi`` table (both the pre-2023 and the current layout).

    Each GPU takes two or three table lines: name / persistence / bus id, then fan / memory /
    utilisation, then (drivers with MIG support) the MIG mode. Parsing stops at the MIG devices or
    processes tables, whose rows look alike.
    """
    gpus: list[dict[str, Any]] = []
    lines = text.splitlines()
    current: dict[str, Any] | None = None
    line_in_block = 0
    for line in lines:
        if "MIG devices:" in line or "Processes:" in line:
            break
        if not line.startswith("|") or line.startswith("|="):
            continue
        cells = line.strip().strip("|").split("|")
        if len(cells) != 3:
            continue
        head = _TABLE_NAME_RE.match(cells[0])
        bus_id = cells[1].split()[0] if cells[1].split() else ""
        if head and _BUS_ID_RE.match(bus_id):
            current = {
                "index": int(head.group(1)),
                "name": head.group(2).strip(),
                "persistence_mode": head.group(3) == "On",
                "pci_bus_id": bus_id,
                "memory_total_mib": None,
                "memory_used_mib": None,
                "memory_reported": False,
                "utilization_gpu_pct": None,
                "mig_mode": None,
            }
            gpus.append(current)
            line_in_block = 1
            continue
        if current is None:
            continue
        line_in_block += 1
        if line_in_block == 2:
            memory = _TABLE_MEMORY_RE.search(cells[1])
            if memory:
                current["memory_used_mib"] = int(memory.group(1))
                current["memory_total_mib"] = int(memory.group(2))
                current["memory_reported"] = True
            util = _TABLE_UTIL_RE.match(cells[2])
            current["utilization_gpu_pct"] = int(util.group(1)) if util else None
        elif line_in_block == 3:
            current["mig_mode"] = normalise_mig_mode(cells[2])
    return gpus


def parse_gpu_list(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi -L``: GPUs with UUIDs, each with its MIG devices (profile, device index, UUID)."""
    gpus: list[dict[str, Any]] = []
    for line in text.splitlines():
        gpu = _GPU_LINE_RE.match(line)
        if gpu:
            gpus.append({"index": int(gpu.group(1)), "name": gpu.group(2), "uuid": gpu.group(3), "mig_devices": []})
            continue
        mig = _MIG_LINE_RE.match(line)
        if mig and gpus:
            gpus[-1]["mig_devices"].append({"profile": mig.group(1), "index": int(mig.group(2)), "uuid": mig.group(3)})
    return gpus


def parse_rocm_product_csv(text: str) -> list[dict[str, Any]]:
    """``rocm-smi --showproductname --csv``: one entry per ``cardN`` row."""
    rows = list(csv.DictReader(io.StringIO(text.strip())))
    gpus = []
    for row in rows:
        lowered = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        device = lowered.get("device", "")
        if not device.startswith("card") or not device[4:].isdigit():
            continue
        series = lowered.get("card series") or lowered.get("card model") or None
        marketing = _AMD_MARKETING_NAME_RE.search(series or "")
        gpus.append(
            {
                "index": int(device[4:]),
                "name": marketing.group(1) if marketing else series,
                "product_series": series,
                "sku": lowered.get("card sku") or None,
            }
        )
    return gpus


def parse_rocm_driver_csv(text: str) -> str | None:
    """``rocm-smi --showdriverversion --csv`` -> the driver version (``cardsystem`` row)."""
    for row in csv.DictReader(io.StringIO(text.strip())):
        lowered = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if lowered.get("driver version"):
            return lowered["driver version"]
    return None


def parse_meminfo_total_mib(text: str | None) -> int | None:
    """``MemTotal`` of ``/proc/meminfo`` in MiB."""
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) // 1024
    return None


def normalise_mig_mode(raw: str | None) -> str | None:
    value = clean_value(raw)
    if value is None:
        return None
    lowered = value.lower()
    return {"enabled": "enabled", "disabled": "disabled", "on": "enabled", "off": "disabled"}.get(lowered, lowered)


def capability_from_name(name: str | None) -> str | None:
    """Compute capability of a known NVIDIA product name, else ``None``."""
    for pattern, capability in COMPUTE_CAPABILITY_BY_NAME:
        if name and pattern.search(name):
            return capability
    return None


def _capability_key(capability: str) -> tuple[int, int]:
    major, _, minor = capability.partition(".")
    return int(major), int(minor or 0)


def version_tuple(version: str | None) -> tuple[int, ...]:
    if not version:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", version))


def cuda_arch_facts(capabilities: Iterable[str | None], cuda_version: str | None) -> dict[str, Any]:
    """What to compile for: the GPUs' capabilities, and the targets a CUDA toolkit should build.

    ``cuda_arch_list`` is ``TORCH_CUDA_ARCH_LIST`` syntax (``"9.0"``, ``"12.1"``). From CUDA 12.9,
    Blackwell-class GPUs (capability 10.x and up) have family targets: ``12.0f`` builds code that
    runs on 12.0 and 12.1 (GB10), which is how CUDA 13 builds GB10. The driver's CUDA version is the
    ceiling for a toolkit whose output must run on this host, so it decides which form applies.
    """
    unique = sorted({c for c in capabilities if c}, key=_capability_key)
    families_supported = version_tuple(cuda_version) >= (12, 9)
    build: list[str] = []
    families: list[str] = []
    for capability in unique:
        major = _capability_key(capability)[0]
        if major >= 10:
            family = f"{major}.0f"
            if family not in families:
                families.append(family)
            target = family if families_supported else capability
        else:
            target = capability
        if target not in build:
            build.append(target)
    return {
        "compute_capabilities": unique,
        "cuda_arch_list": ";".join(unique),
        "cuda_arch_families": families,
        "cuda_arch_build_list": ";".join(build),
    }


def docker_runtime_facts(
    gpu_count: int,
    daemon_json_text: str | None,
    toolkit_binaries: Mapping[str, str | None],
    cdi_specs: Sequence[str],
) -> dict[str, Any]:
    """Whether containers can use the GPUs: toolkit present, Docker told about it (runtime or CDI)."""
    runtimes: dict[str, Any] = {}
    default_runtime = None
    daemon_json_error = None
    if daemon_json_text:
        try:
            config = json.loads(daemon_json_text)
        except ValueError as exc:
            daemon_json_error = f"not valid JSON: {exc}"
        else:
            if isinstance(config, dict):
                runtimes = config.get("runtimes") or {}
                default_runtime = config.get("default-runtime")
            else:
                daemon_json_error = f"top level is {type(config).__name__}, not an object"
    toolkit_installed = any(toolkit_binaries.values())
    runtime_configured = isinstance(runtimes, dict) and "nvidia" in runtimes
    return {
        "toolkit_installed": toolkit_installed,
        "toolkit_binaries": {name: path for name, path in toolkit_binaries.items() if path},
        "runtime_configured": runtime_configured,
        "default_runtime": default_runtime,
        "cdi_specs": list(cdi_specs),
        "daemon_json_error": daemon_json_error,
        "usable": bool(gpu_count > 0 and toolkit_installed and (runtime_configured or cdi_specs)),
    }


def _empty_gpu(index: int) -> dict[str, Any]:
    return {
        "index": index,
        "vendor": "nvidia",
        "uuid": None,
        "name": None,
        "pci_bus_id": None,
        "memory_total_mib": None,
        "memory_used_mib": None,
        "memory_unified": False,
        "memory_source": None,
        "compute_capability": None,
        "compute_capability_source": None,
        "mig_mode": None,
        "mig_devices": [],
        "persistence_mode": None,
        "utilization_gpu_pct": None,
    }


def _gpu_from_query_row(position: int, row: Mapping[str, str | None]) -> dict[str, Any]:
    index = to_int(row.get("index"))
    gpu = _empty_gpu(position if index is None else index)
    persistence = row.get("persistence_mode")
    gpu.update(
        {
            "uuid": row.get("uuid"),
            "name": row.get("name"),
            "pci_bus_id": row.get("pci.bus_id"),
            "memory_total_mib": to_int(row.get("memory.total")),
            "memory_used_mib": to_int(row.get("memory.used")),
            "compute_capability": row.get("compute_cap"),
            "compute_capability_source": "nvidia-smi" if row.get("compute_cap") else None,
            "mig_mode": normalise_mig_mode(row.get("mig.mode.current")),
            "persistence_mode": None if persistence is None else persistence.lower() in ("enabled", "on"),
            "utilization_gpu_pct": to_int(row.get("utilization.gpu")),
        }
    )
    return gpu


def merge_nvidia_sources(
    query_rows: Sequence[Mapping[str, str | None]],
    table_rows: Sequence[Mapping[str, Any]],
    listed: Sequence[Mapping[str, Any]],
    host_memory_mib: int | None,
) -> list[dict[str, Any]]:
    """One list of GPUs: the query CSV first, gaps filled from the table and ``-L`` (matched by index).

    A GPU whose framebuffer size no source reports has unified memory (GB10): its total is the
    host's memory and ``memory_source`` says ``host``.
    """
    if query_rows:
        gpus = [_gpu_from_query_row(position, row) for position, row in enumerate(query_rows)]
    else:
        gpus = [_empty_gpu(int(row["index"])) for row in table_rows] or [
            _empty_gpu(int(row["index"])) for row in listed
        ]
    table_by_index = {int(row["index"]): row for row in table_rows}
    listed_by_index = {int(row["index"]): row for row in listed}
    for gpu in gpus:
        table = table_by_index.get(gpu["index"], {})
        for key in ("name", "pci_bus_id", "persistence_mode", "utilization_gpu_pct", "mig_mode"):
            if gpu[key] is None and table.get(key) is not None:
                gpu[key] = table[key]
        if gpu["memory_total_mib"] is None and table.get("memory_reported"):
            gpu["memory_total_mib"] = table["memory_total_mib"]
            gpu["memory_used_mib"] = table["memory_used_mib"]
        entry = listed_by_index.get(gpu["index"], {})
        if gpu["uuid"] is None and entry.get("uuid"):
            gpu["uuid"] = entry["uuid"]
        if gpu["name"] is None and entry.get("name"):
            gpu["name"] = entry["name"]
        gpu["mig_devices"] = [dict(device) for device in entry.get("mig_devices", [])]
        if gpu["mig_devices"] and gpu["mig_mode"] is None:
            gpu["mig_mode"] = "enabled"
        if gpu["memory_total_mib"] is not None:
            gpu["memory_source"] = "device"
        else:
            gpu["memory_unified"] = True
            gpu["memory_source"] = "host" if host_memory_mib is not None else None
            gpu["memory_total_mib"] = host_memory_mib
        if gpu["compute_capability"] is None:
            gpu["compute_capability"] = capability_from_name(gpu["name"])
            gpu["compute_capability_source"] = "name" if gpu["compute_capability"] else None
    return gpus


PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd"}


def pci_gpus(devices: Iterable[tuple[str, str, str]]) -> list[dict[str, str]]:
    """GPUs on the PCI bus from ``(address, vendor id, class)`` of ``/sys/bus/pci/devices/*``.

    Display controllers (class 0x03xxxx) of NVIDIA or AMD, whether or not a driver is loaded, so a
    host whose driver is missing still shows it has GPUs (NVSwitches and bridges are not counted).
    """
    found = []
    for address, vendor, device_class in devices:
        vendor_name = PCI_VENDORS.get(vendor.strip().lower())
        if vendor_name and device_class.strip().lower().startswith("0x03"):
            found.append({"address": address, "vendor": vendor_name, "class": device_class.strip()})
    return sorted(found, key=lambda device: device["address"])


Runner = Callable[[list[str]], tuple[int, str, str]]


def collect_gpu_facts(
    run: Runner,
    which: Callable[[str], str | None],
    read_text: Callable[[str], str | None],
    cpu_arch: str,
    nvidia_smi: str | None = None,
    rocm_smi: str | None = None,
    daemon_json_path: str = "/etc/docker/daemon.json",
    cdi_spec_paths: Sequence[str] = ("/etc/cdi/nvidia.yaml", "/var/run/cdi/nvidia.yaml"),
    pci_devices: Iterable[tuple[str, str, str]] = (),
) -> dict[str, Any]:
    """Run the GPU tools through ``run`` and build the ``gpu`` facts. Reads only; changes nothing.

    Raises ``GpuToolError`` when nvidia-smi fails in a way that does not mean "no GPU here" (a GPU
    fallen off the bus, a permission problem): that host needs a person, not a quiet ``count: 0``.
    """
    warnings: list[str] = []
    sources: list[str] = []
    facts: dict[str, Any] = {
        "vendor": None,
        "count": 0,
        "gpus": [],
        "reason": None,
        "driver_loaded": False,
        "driver_version": None,
        "cuda_version": None,
        "cpu_arch": cpu_arch,
        "unified_memory": False,
        "nvidia_smi_path": None,
        "rocm_smi_path": None,
        "sources": sources,
        "warnings": warnings,
    }
    reasons: list[str] = []

    nvidia_path = nvidia_smi or which("nvidia-smi")
    nvidia_gpus: list[dict[str, Any]] = []
    if not nvidia_path:
        reasons.append("nvidia-smi is not installed (no NVIDIA driver on this host)")
    else:
        facts["nvidia_smi_path"] = nvidia_path
        nvidia_gpus, header, reason = _collect_nvidia(run, nvidia_path, read_text, sources, warnings)
        if reason:
            reasons.append(reason)
        else:
            facts["driver_loaded"] = True
        facts["driver_version"] = header.get("driver_version")
        facts["cuda_version"] = header.get("cuda_version")

    rocm_path = rocm_smi or which("rocm-smi")
    amd_gpus: list[dict[str, Any]] = []
    if rocm_path:
        facts["rocm_smi_path"] = rocm_path
        amd_gpus, amd_driver = _collect_amd(run, rocm_path, sources, warnings)
        if amd_gpus and not nvidia_gpus:
            facts["driver_loaded"] = True
            facts["driver_version"] = amd_driver

    gpus = nvidia_gpus + amd_gpus
    facts["gpus"] = gpus
    facts["count"] = len(gpus)
    vendors = sorted({gpu["vendor"] for gpu in gpus})
    facts["vendor"] = vendors[0] if len(vendors) == 1 else ("mixed" if vendors else None)
    facts["unified_memory"] = any(gpu.get("memory_unified") for gpu in gpus)
    facts["reason"] = None if gpus else ("; ".join(reasons) or "no GPU found")
    facts.update(cuda_arch_facts((gpu.get("compute_capability") for gpu in nvidia_gpus), facts["cuda_version"]))

    facts["pci_gpus"] = pci_gpus(pci_devices)
    facts["pci_gpu_count"] = len(facts["pci_gpus"])
    if not gpus and facts["pci_gpu_count"]:
        facts["reason"] += f"; {facts['pci_gpu_count']} GPU(s) on the PCI bus have no working driver"

    toolkit = {name: which(name) for name in ("nvidia-ctk", "nvidia-container-runtime")}
    cdi_specs = [path for path in cdi_spec_paths if read_text(path) is not None]
    facts["docker"] = docker_runtime_facts(len(nvidia_gpus), read_text(daemon_json_path), toolkit, cdi_specs)
    return facts


class GpuToolError(Exception):
    """nvidia-smi failed in a way that is not "no GPU here"."""


def _collect_nvidia(
    run: Runner,
    nvidia_smi: str,
    read_text: Callable[[str], str | None],
    sources: list[str],
    warnings: list[str],
) -> tuple[list[dict[str, Any]], dict[str, str | None], str | None]:
    fields = list(QUERY_FIELDS)
    while True:
        command = query_command(nvidia_smi, fields)
        rc, out, err = run(command)
        output = f"{out}\n{err}"
        if rc == 0:
            break
        reason = no_gpu_reason(output)
        if reason:
            return [], {"driver_version": None, "cuda_version": None}, reason
        refused = invalid_query_field(output)
        if refused and refused in fields and refused != "index":
            warnings.append(f"this nvidia-smi cannot query {refused!r}; it is filled from other sources")
            fields.remove(refused)
            continue
        first_line = next(iter((err or out).strip().splitlines()), "no output")
        raise GpuToolError(f"{' '.join(command)} failed with rc={rc}: {first_line}")
    try:
        query_rows = parse_query_csv(out)
    except ValueError as exc:
        raise GpuToolError(f"cannot read the output of {' '.join(command)}: {exc}") from exc
    sources.append(" ".join(command))

    rc, table_out, table_err = run([nvidia_smi])
    table_rows: list[dict[str, Any]] = []
    header: dict[str, str | None] = {"driver_version": None, "cuda_version": None}
    if rc == 0:
        header = parse_smi_header(table_out)
        table_rows = parse_smi_table(table_out)
        sources.append(nvidia_smi)
    else:
        warnings.append(f"{nvidia_smi} failed with rc={rc}; cuda_version is unknown: {table_err.strip()[:200]}")

    rc, list_out, list_err = run([nvidia_smi, "-L"])
    listed: list[dict[str, Any]] = []
    if rc == 0:
        listed = parse_gpu_list(list_out)
        sources.append(f"{nvidia_smi} -L")
    else:
        warnings.append(f"{nvidia_smi} -L failed with rc={rc}; MIG devices are unknown: {list_err.strip()[:200]}")

    host_memory = parse_meminfo_total_mib(read_text("/proc/meminfo"))
    gpus = merge_nvidia_sources(query_rows, table_rows, listed, host_memory)
    counts = {"query": len(query_rows), "table": len(table_rows), "list": len(listed)}
    seen = {name: n for name, n in counts.items() if n}
    if len(set(seen.values())) > 1:
        warnings.append(f"nvidia-smi sources disagree on the GPU count: {seen}")
    driver_from_query = next((row.get("driver_version") for row in query_rows if row.get("driver_version")), None)
    header["driver_version"] = driver_from_query or header.get("driver_version")
    return gpus, header, None


def _collect_amd(
    run: Runner, rocm_smi: str, sources: list[str], warnings: list[str]
) -> tuple[list[dict[str, Any]], str | None]:
    rc, out, err = run([rocm_smi, "--showproductname", "--csv"])
    if rc != 0:
        warnings.append(f"{rocm_smi} --showproductname failed with rc={rc}: {(err or out).strip()[:200]}")
        return [], None
    sources.append(f"{rocm_smi} --showproductname --csv")
    gpus = []
    for entry in parse_rocm_product_csv(out):
        gpu = _empty_gpu(entry["index"])
        gpu.update({"vendor": "amd", "name": entry["name"], "product_series": entry["product_series"]})
        gpus.append(gpu)
    driver = None
    rc, out, _err = run([rocm_smi, "--showdriverversion", "--csv"])
    if rc == 0:
        driver = parse_rocm_driver_csv(out)
        sources.append(f"{rocm_smi} --showdriverversion --csv")
    return gpus, driver


def read_pci_devices(root: str = "/sys/bus/pci/devices") -> list[tuple[str, str, str]]:
    """``(address, vendor, class)`` of every PCI device; empty where sysfs is not there."""
    try:
        addresses = sorted(os.listdir(root))
    except OSError:
        return []
    devices = []
    for address in addresses:
        vendor = read_text_file(os.path.join(root, address, "vendor"))
        device_class = read_text_file(os.path.join(root, address, "class"))
        if vendor and device_class:
            devices.append((address, vendor.strip(), device_class.strip()))
    return devices


def read_text_file(path: str) -> str | None:
    """File content, or ``None`` when it does not exist or cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None
