"""gpu_facts and health.gpu against recorded outputs of real GPU hosts.

The recordings and where each comes from: tests/fixtures/gpu/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import gpu_facts
import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.gpu import (
    QUERY_FIELDS,
    capability_from_name,
    cuda_arch_facts,
    docker_runtime_facts,
    invalid_query_field,
    no_gpu_reason,
    parse_gpu_list,
    parse_meminfo_total_mib,
    parse_query_csv,
    parse_rocm_driver_csv,
    parse_rocm_product_csv,
    parse_smi_header,
    parse_smi_table,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpu"
NVIDIA_SMI = "/usr/bin/nvidia-smi"
ROCM_SMI = "/opt/rocm/bin/rocm-smi"
QUERY = (NVIDIA_SMI, "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,nounits")
QUERY_WITHOUT_CC = (
    NVIDIA_SMI,
    "--query-gpu=" + ",".join(f for f in QUERY_FIELDS if f != "compute_cap"),
    "--format=csv,nounits",
)
TABLE = (NVIDIA_SMI,)
LIST = (NVIDIA_SMI, "-L")
# A DGX Spark's /proc/meminfo MemTotal (128 GB LPDDR5X; figure posted in XuehaiPan/nvitop#208).
SPARK_MEMINFO = "MemTotal:       127600748 kB\nMemAvailable:   118566368 kB\n"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------- pure parsers on recordings


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gb10_dgx_spark.nvidia-smi.txt", {"driver_version": "580.126.09", "cuda_version": "13.0"}),
        ("h100_sxm_8gpu.nvidia-smi.txt", {"driver_version": "565.57.01", "cuda_version": "12.7"}),
        ("a100_80gb_mig.nvidia-smi.txt", {"driver_version": "520.61.05", "cuda_version": "11.8"}),
        ("b200_r610.nvidia-smi.txt", {"driver_version": "610.43.02", "cuda_version": "13.3"}),
        ("error_driver_not_loaded.txt", {"driver_version": None, "cuda_version": None}),
    ],
)
def test_parse_smi_header(name: str, expected: dict[str, str | None]) -> None:
    assert parse_smi_header(fixture(name)) == expected


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        (
            "gb10_dgx_spark.nvidia-smi.txt",
            1,
            {
                "index": 0,
                "name": "NVIDIA GB10",
                "pci_bus_id": "0000000F:01:00.0",
                "persistence_mode": True,
                "memory_reported": False,
                "memory_total_mib": None,
                "utilization_gpu_pct": 0,
                "mig_mode": None,
            },
        ),
        (
            "h100_sxm_8gpu.nvidia-smi.txt",
            8,
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "pci_bus_id": "00000000:18:00.0",
                "memory_reported": True,
                "memory_total_mib": 81559,
                "memory_used_mib": 1,
                "mig_mode": "disabled",
            },
        ),
        (
            "a100_80gb_mig.nvidia-smi.txt",
            2,
            {
                "index": 0,
                "name": "NVIDIA A100 80G...",
                "memory_total_mib": 81920,
                "memory_used_mib": 26,
                "utilization_gpu_pct": None,
                "mig_mode": "enabled",
            },
        ),
        ("b200_r610.nvidia-smi.txt", 2, {"index": 0, "name": "NVIDIA B200", "memory_total_mib": 183359}),
        ("error_driver_not_loaded.txt", 0, None),
    ],
)
def test_parse_smi_table(name: str, count: int, first: dict[str, Any] | None) -> None:
    rows = parse_smi_table(fixture(name))
    assert len(rows) == count
    if first is not None:
        assert {key: rows[0][key] for key in first} == first


def test_parse_smi_table_eight_gpus_in_order() -> None:
    rows = parse_smi_table(fixture("h100_sxm_8gpu.nvidia-smi.txt"))
    assert [row["index"] for row in rows] == list(range(8))
    assert rows[7]["pci_bus_id"] == "00000000:DB:00.0"
    assert {row["memory_total_mib"] for row in rows} == {81559}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "gb10_dgx_spark.query.csv",
            [{"index": "0", "name": "NVIDIA GB10", "memory.total": None, "memory.free": None}],
        ),
        (
            "gb10_dgx_spark.query-units.csv",
            [
                {
                    "memory.total": None,
                    "memory.used": None,
                    "memory.free": None,
                    "utilization.gpu": "0 %",
                    "power.draw": "11.17 W",
                    "temperature.gpu": "35",
                }
            ],
        ),
        (
            "titanv_rtx5880.query.csv",
            [
                {
                    "compute_cap": "7.0",
                    "compute_mode": "Default",
                    "driver_version": "570.86.15",
                    "name": "NVIDIA TITAN V",
                    "index": "0",
                },
                {
                    "compute_cap": "8.9",
                    "compute_mode": "Default",
                    "driver_version": "570.86.15",
                    "name": "NVIDIA RTX 5880 Ada Generation",
                    "index": "1",
                },
            ],
        ),
    ],
)
def test_parse_query_csv(name: str, expected: list[dict[str, str | None]]) -> None:
    assert parse_query_csv(fixture(name)) == expected


def test_parse_query_csv_l40s_keeps_units_out_of_names() -> None:
    rows = parse_query_csv(fixture("l40s_2gpu.query.csv"))
    assert [row["pci.bus_id"] for row in rows] == ["00000000:01:00.0", "00000000:91:00.0"]
    assert rows[0]["memory.total"] == "46068 MiB"


@pytest.mark.parametrize(
    "text",
    ["0, NVIDIA GB10, [N/A], [N/A], [N/A]\n", "index, name\n0, NVIDIA GB10, extra\n"],
    ids=["no-header", "ragged-row"],
)
def test_parse_query_csv_rejects_what_it_cannot_map(text: str) -> None:
    with pytest.raises(ValueError, match=r"header|columns"):
        parse_query_csv(text)


def test_parse_gpu_list_mig_devices() -> None:
    gpus = parse_gpu_list(fixture("a100_80gb_pcie_mig.nvidia-smi-L.txt"))
    assert gpus == [
        {
            "index": 0,
            "name": "NVIDIA A100 80GB PCIe",
            "uuid": "GPU-932bfb2c-849a-2a22-1e84-9eff6bc02b39",
            "mig_devices": [
                {"profile": "3g.40gb", "index": 0, "uuid": "MIG-0929581a-2be6-5dec-bf34-0954c6c529a6"},
                {"profile": "3g.40gb", "index": 1, "uuid": "MIG-3adbed3a-d03d-549f-a016-ba1fd7359f23"},
            ],
        }
    ]


def test_parse_rocm_mi100() -> None:
    gpus = parse_rocm_product_csv(fixture("mi100_2gpu.rocm-smi-productname.csv"))
    assert [(g["index"], g["name"]) for g in gpus] == [(0, "AMD Instinct MI100"), (1, "AMD Instinct MI100")]
    assert parse_rocm_driver_csv(fixture("mi100_2gpu.rocm-smi-driverversion.csv")) == "4.18.0-348.12.2.el8_5.x86_64"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("error_driver_not_loaded.txt", "kernel driver is not loaded"),
        ("error_no_devices.txt", "found no GPU"),
        ("error_driver_library_mismatch.txt", "reboot the host"),
        ("h100_sxm_8gpu.nvidia-smi.txt", None),
    ],
)
def test_no_gpu_reason(name: str, fragment: str | None) -> None:
    reason = no_gpu_reason(fixture(name))
    assert (reason is None) if fragment is None else (fragment in reason)


def test_invalid_query_field() -> None:
    assert invalid_query_field(fixture("error_compute_cap_invalid.txt")) == "compute_cap"
    assert invalid_query_field(fixture("error_no_devices.txt")) is None


@pytest.mark.parametrize(
    ("name", "capability"),
    [
        ("NVIDIA GB10", "12.1"),
        ("NVIDIA H100 80GB HBM3", "9.0"),
        ("NVIDIA H200", "9.0"),
        ("NVIDIA A100-SXM4-80GB", "8.0"),
        ("NVIDIA A100 80G...", "8.0"),
        ("NVIDIA A10", "8.6"),
        ("NVIDIA L40S", "8.9"),
        ("NVIDIA L40", "8.9"),
        ("NVIDIA L4", "8.9"),
        ("NVIDIA B200", "10.0"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "12.0"),
        ("Tesla V100-SXM2-32GB", "7.0"),
        ("Quadro P2000", None),
        (None, None),
    ],
)
def test_capability_from_name(name: str | None, capability: str | None) -> None:
    assert capability_from_name(name) == capability


@pytest.mark.parametrize(
    ("capabilities", "cuda", "arch_list", "families", "build"),
    [
        (["12.1"], "13.0", "12.1", ["12.0f"], "12.0f"),
        (["12.1"], "12.8", "12.1", ["12.0f"], "12.1"),
        (["9.0"] * 8, "12.7", "9.0", [], "9.0"),
        (["8.9", "7.0"], "12.8", "7.0;8.9", [], "7.0;8.9"),
        (["10.0", "12.0", "9.0"], "13.0", "9.0;10.0;12.0", ["10.0f", "12.0f"], "9.0;10.0f;12.0f"),
        ([], None, "", [], ""),
    ],
)
def test_cuda_arch_facts(
    capabilities: list[str], cuda: str | None, arch_list: str, families: list[str], build: str
) -> None:
    facts = cuda_arch_facts(capabilities, cuda)
    assert (facts["cuda_arch_list"], facts["cuda_arch_families"], facts["cuda_arch_build_list"]) == (
        arch_list,
        families,
        build,
    )


@pytest.mark.parametrize(
    ("count", "daemon", "binaries", "cdi", "usable", "configured"),
    [
        (
            1,
            '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}',
            {"nvidia-ctk": "/usr/bin/nvidia-ctk"},
            [],
            True,
            True,
        ),
        (1, None, {"nvidia-ctk": "/usr/bin/nvidia-ctk"}, ["/etc/cdi/nvidia.yaml"], True, False),
        (1, '{"log-driver": "local"}', {"nvidia-ctk": None}, [], False, False),
        (0, '{"runtimes": {"nvidia": {}}}', {"nvidia-ctk": "/usr/bin/nvidia-ctk"}, [], False, True),
    ],
)
def test_docker_runtime_facts(
    count: int,
    daemon: str | None,
    binaries: dict[str, str | None],
    cdi: list[str],
    usable: bool,
    configured: bool,
) -> None:
    facts = docker_runtime_facts(count, daemon, binaries, cdi)
    assert (facts["usable"], facts["runtime_configured"]) == (usable, configured)


def test_docker_runtime_facts_reports_broken_daemon_json() -> None:
    facts = docker_runtime_facts(1, "{not json", {"nvidia-ctk": "/usr/bin/nvidia-ctk"}, [])
    assert facts["daemon_json_error"].startswith("not valid JSON")
    assert facts["usable"] is False


def test_parse_meminfo() -> None:
    assert parse_meminfo_total_mib(SPARK_MEMINFO) == 124610
    assert parse_meminfo_total_mib(None) is None


# ---------------------------------------------------------------- the module, run through main()


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def _exit_json(self: basic.AnsibleModule, **kwargs: Any) -> None:
    raise ExitJson(kwargs)


def _fail_json(self: basic.AnsibleModule, **kwargs: Any) -> None:
    raise FailJson(kwargs)


def run_module(
    args: dict[str, Any],
    commands: dict[tuple[str, ...], tuple[int, str, str]],
    binaries: dict[str, str],
    files: dict[str, str] | None = None,
    machine: str = "x86_64",
    pci: list[tuple[str, str, str]] | None = None,
) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """Run gpu_facts.main(); every command must be one the test expects (an unexpected one fails)."""
    files = files or {}
    calls: list[tuple[str, ...]] = []

    def run_command(self: basic.AnsibleModule, args: list[str], **kwargs: Any) -> tuple[int, str, str]:
        calls.append(tuple(args))
        if tuple(args) not in commands:
            raise AssertionError(f"unexpected command {args!r}")
        return commands[tuple(args)]

    def get_bin_path(self: basic.AnsibleModule, name: str, *a: Any, **kw: Any) -> str | None:
        return binaries.get(name)

    with (
        patch_module_args(args),
        mock.patch.multiple(
            basic.AnsibleModule,
            exit_json=_exit_json,
            fail_json=_fail_json,
            run_command=run_command,
            get_bin_path=get_bin_path,
        ),
        mock.patch.object(gpu_facts, "read_text_file", side_effect=files.get),
        mock.patch.object(gpu_facts.platform, "machine", return_value=machine),
        mock.patch.object(gpu_facts.os, "access", return_value=True),
        mock.patch.object(gpu_facts, "read_pci_devices", return_value=pci or []),
    ):
        try:
            gpu_facts.main()
        except ExitJson as exc:
            return {"ok": True, **exc.args[0]}, calls
        except FailJson as exc:
            return {"ok": False, **exc.args[0]}, calls
    raise AssertionError("module did not exit")


NO_OUTPUT = (0, "", "")


@pytest.mark.parametrize("check_mode", [False, True])
def test_gb10_unified_memory(check_mode: bool) -> None:
    """GB10: memory [N/A] / Not Supported becomes unified memory sized from the host; arch list 12.1."""
    result, calls = run_module(
        {"_ansible_check_mode": check_mode},
        {
            QUERY: (0, fixture("gb10_dgx_spark.query.csv"), ""),
            TABLE: (0, fixture("gb10_dgx_spark.nvidia-smi.txt"), ""),
            LIST: NO_OUTPUT,  # no public `nvidia-smi -L` recording of a GB10
        },
        {"nvidia-smi": NVIDIA_SMI},
        {"/proc/meminfo": SPARK_MEMINFO},
        machine="aarch64",
    )
    assert result["ok"] and result["changed"] is False
    gpu = result["ansible_facts"]["gpu"]
    assert (gpu["vendor"], gpu["count"], gpu["reason"]) == ("nvidia", 1, None)
    assert (gpu["driver_version"], gpu["cuda_version"], gpu["cpu_arch"]) == ("580.126.09", "13.0", "aarch64")
    assert gpu["unified_memory"] is True
    assert gpu["cuda_arch_list"] == "12.1"
    assert gpu["cuda_arch_families"] == ["12.0f"]
    assert gpu["cuda_arch_build_list"] == "12.0f"
    (card,) = gpu["gpus"]
    assert card["name"] == "NVIDIA GB10"
    assert card["memory_unified"] is True
    assert (card["memory_total_mib"], card["memory_source"], card["memory_used_mib"]) == (
        124610,
        "host",
        None,
    )
    assert (card["compute_capability"], card["compute_capability_source"]) == ("12.1", "name")
    assert card["persistence_mode"] is True  # from the table; this CSV recording has no persistence_mode
    assert card["pci_bus_id"] == "0000000F:01:00.0"
    assert card["uuid"] is None  # neither recording holds it: null, not invented
    assert calls == [QUERY, TABLE, LIST]


def test_h100_eight_gpus_from_table_when_query_has_no_rows() -> None:
    result, _ = run_module(
        {},
        {
            QUERY: NO_OUTPUT,  # no public query CSV of this host
            TABLE: (0, fixture("h100_sxm_8gpu.nvidia-smi.txt"), ""),
            LIST: NO_OUTPUT,
        },
        {"nvidia-smi": NVIDIA_SMI},
    )
    gpu = result["ansible_facts"]["gpu"]
    assert gpu["count"] == 8
    assert gpu["cuda_arch_list"] == "9.0"
    assert gpu["unified_memory"] is False
    assert all(card["memory_total_mib"] == 81559 and card["memory_source"] == "device" for card in gpu["gpus"])
    assert all(card["mig_mode"] == "disabled" for card in gpu["gpus"])


def test_a100_mig_devices() -> None:
    result, _ = run_module(
        {},
        {
            QUERY: NO_OUTPUT,
            TABLE: (1, "", "table not recorded"),
            LIST: (0, fixture("a100_80gb_pcie_mig.nvidia-smi-L.txt"), ""),
        },
        {"nvidia-smi": NVIDIA_SMI},
    )
    gpu = result["ansible_facts"]["gpu"]
    (card,) = gpu["gpus"]
    assert card["uuid"] == "GPU-932bfb2c-849a-2a22-1e84-9eff6bc02b39"
    assert card["mig_mode"] == "enabled"
    assert [d["profile"] for d in card["mig_devices"]] == ["3g.40gb", "3g.40gb"]
    assert card["compute_capability"] == "8.0"
    assert gpu["cuda_version"] is None
    assert any("cuda_version is unknown" in w for w in result["ansible_facts"]["gpu"]["warnings"])


def test_l40s_query_csv() -> None:
    result, _ = run_module(
        {},
        {QUERY: (0, fixture("l40s_2gpu.query.csv"), ""), TABLE: NO_OUTPUT, LIST: NO_OUTPUT},
        {"nvidia-smi": NVIDIA_SMI},
    )
    gpu = result["ansible_facts"]["gpu"]
    assert (gpu["count"], gpu["driver_version"], gpu["cuda_arch_list"]) == (2, "595.71.05", "8.9")
    assert [card["index"] for card in gpu["gpus"]] == [0, 1]
    assert [card["memory_total_mib"] for card in gpu["gpus"]] == [46068, 46068]


def test_compute_cap_from_nvidia_smi_and_uuids_from_list() -> None:
    result, _ = run_module(
        {},
        {
            QUERY: (0, fixture("titanv_rtx5880.query.csv"), ""),
            TABLE: NO_OUTPUT,
            LIST: (0, fixture("titanv_rtx5880.nvidia-smi-L.txt"), ""),
        },
        {"nvidia-smi": NVIDIA_SMI},
    )
    gpu = result["ansible_facts"]["gpu"]
    assert gpu["cuda_arch_list"] == "7.0;8.9"
    assert [c["compute_capability_source"] for c in gpu["gpus"]] == ["nvidia-smi", "nvidia-smi"]
    assert gpu["gpus"][1]["uuid"] == "GPU-7518f6b0-991f-ce2b-3d37-c779130d3137"


def test_old_driver_without_compute_cap_retries_without_it() -> None:
    result, calls = run_module(
        {},
        {
            QUERY: (2, fixture("error_compute_cap_invalid.txt"), ""),
            QUERY_WITHOUT_CC: (0, fixture("l40s_2gpu.query.csv"), ""),
            TABLE: NO_OUTPUT,
            LIST: NO_OUTPUT,
        },
        {"nvidia-smi": NVIDIA_SMI},
    )
    assert calls[:2] == [QUERY, QUERY_WITHOUT_CC]
    assert result["ansible_facts"]["gpu"]["gpus"][0]["compute_capability_source"] == "name"
    assert any("compute_cap" in w for w in result["ansible_facts"]["gpu"]["warnings"])


@pytest.mark.parametrize(
    ("binaries", "query_result", "reason", "driver_loaded"),
    [
        ({}, None, "nvidia-smi is not installed", False),
        ({"nvidia-smi": NVIDIA_SMI}, (9, fixture("error_driver_not_loaded.txt"), ""), "not loaded", False),
        ({"nvidia-smi": NVIDIA_SMI}, (6, fixture("error_no_devices.txt"), ""), "found no GPU", False),
        ({"nvidia-smi": NVIDIA_SMI}, (18, fixture("error_driver_library_mismatch.txt"), ""), "reboot", False),
    ],
    ids=["no-nvidia-smi", "driver-not-loaded", "no-devices", "version-mismatch"],
)
@pytest.mark.parametrize("check_mode", [False, True])
def test_no_gpu_is_a_clean_result(
    binaries: dict[str, str],
    query_result: tuple[int, str, str] | None,
    reason: str,
    driver_loaded: bool,
    check_mode: bool,
) -> None:
    commands = {QUERY: query_result} if query_result else {}
    result, calls = run_module({"_ansible_check_mode": check_mode}, commands, binaries)
    assert result["ok"] and result["changed"] is False
    gpu = result["ansible_facts"]["gpu"]
    assert gpu["count"] == 0 and gpu["gpus"] == [] and gpu["vendor"] is None
    assert reason in gpu["reason"]
    assert gpu["driver_loaded"] is driver_loaded
    assert gpu["cuda_arch_list"] == ""
    assert gpu["docker"]["usable"] is False
    assert len(calls) == (1 if query_result else 0)


def test_unknown_nvidia_smi_failure_fails_naming_the_command() -> None:
    lost = "Unable to determine the device handle for GPU0000:18:00.0: Unknown Error"
    result, _ = run_module({}, {QUERY: (255, lost, "")}, {"nvidia-smi": NVIDIA_SMI})
    assert result["ok"] is False
    assert "--query-gpu=" in result["msg"] and "rc=255" in result["msg"] and "Unknown Error" in result["msg"]


def test_amd_mi100_node() -> None:
    result, _ = run_module(
        {},
        {
            (ROCM_SMI, "--showproductname", "--csv"): (0, fixture("mi100_2gpu.rocm-smi-productname.csv"), ""),
            (ROCM_SMI, "--showdriverversion", "--csv"): (
                0,
                fixture("mi100_2gpu.rocm-smi-driverversion.csv"),
                "",
            ),
        },
        {"rocm-smi": ROCM_SMI},
    )
    gpu = result["ansible_facts"]["gpu"]
    assert (gpu["vendor"], gpu["count"], gpu["driver_version"]) == ("amd", 2, "4.18.0-348.12.2.el8_5.x86_64")
    assert gpu["cuda_arch_list"] == ""


def test_docker_facts_read_daemon_json_and_cdi() -> None:
    daemon = json.dumps({"log-driver": "local", "runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}})
    result, _ = run_module(
        {},
        {QUERY: (0, fixture("l40s_2gpu.query.csv"), ""), TABLE: NO_OUTPUT, LIST: NO_OUTPUT},
        {"nvidia-smi": NVIDIA_SMI, "nvidia-ctk": "/usr/bin/nvidia-ctk"},
        {"/etc/docker/daemon.json": daemon, "/etc/cdi/nvidia.yaml": "cdiVersion: 0.5.0\n"},
    )
    docker = result["ansible_facts"]["gpu"]["docker"]
    assert docker["usable"] is True and docker["runtime_configured"] is True
    assert docker["cdi_specs"] == ["/etc/cdi/nvidia.yaml"]


def test_strict_arguments() -> None:
    result, _ = run_module({"nvidia_smi": "/usr/bin/nvidia-smi"}, {}, {})
    assert result["ok"] is False and "nvidia_smi" in result["msg"]


def test_explicit_path_must_exist() -> None:
    with mock.patch.object(gpu_facts.os, "access", return_value=False):
        commands: dict[tuple[str, ...], tuple[int, str, str]] = {}
        with (
            patch_module_args({"nvidia_smi_path": "/opt/nvidia/bin/nvidia-smi"}),
            mock.patch.multiple(basic.AnsibleModule, exit_json=_exit_json, fail_json=_fail_json),
            pytest.raises(FailJson) as failure,
        ):
            gpu_facts.main()
    assert "nvidia_smi_path=/opt/nvidia/bin/nvidia-smi" in failure.value.args[0]["msg"]
    assert commands == {}


def test_pci_gpus_without_driver_are_reported() -> None:
    # An H100 SXM (class 0x030200) and an NVSwitch (0x068000, not a GPU), NVIDIA driver missing.
    pci = [("0000:18:00.0", "0x10de", "0x030200"), ("0000:05:00.0", "0x10de", "0x068000")]
    result, _ = run_module({}, {}, {}, pci=pci)
    gpu = result["ansible_facts"]["gpu"]
    assert gpu["count"] == 0 and gpu["pci_gpu_count"] == 1
    assert gpu["pci_gpus"] == [{"address": "0000:18:00.0", "vendor": "nvidia", "class": "0x030200"}]
    assert "1 GPU(s) on the PCI bus have no working driver" in gpu["reason"]
