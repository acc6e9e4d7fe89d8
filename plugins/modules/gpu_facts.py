#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Facts about the GPUs of a host, from nvidia-smi and rocm-smi
description:
  - Reads C(nvidia-smi) (query CSV, C(-L) and the banner of the plain table) and, when present,
    C(rocm-smi), and returns C(ansible_facts.gpu).
  - Per GPU it reports index, UUID, name, PCI bus id, memory total/used in MiB, compute capability,
    MIG mode and MIG devices, persistence mode and utilisation; for the host the driver and CUDA
    versions, the CUDA architectures to build for, the CPU architecture and whether Docker can use
    the GPUs.
  - GB10 (DGX Spark) reports no dedicated memory; such a GPU is returned with C(memory_unified=true)
    and the host's memory as its total.
  - A host without a GPU, without C(nvidia-smi), or with the driver not loaded is not a failure -
    the facts say C(count=0) and why, in C(reason).
  - The module fails only when C(nvidia-smi) is there and fails in a way that does not mean
    "no GPU" (for example a GPU that has fallen off the bus), naming the command and its error.
version_added: "0.1.0"
author: llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
  - llmfleet.fleet.attributes.facts
options:
  nvidia_smi_path:
    description:
      - Path of C(nvidia-smi). Default is to look it up on C(PATH) and in C(/usr/local/nvidia/bin).
    type: path
  rocm_smi_path:
    description:
      - Path of C(rocm-smi). Default is to look it up on C(PATH) and in C(/opt/rocm/bin).
    type: path
  docker_daemon_config:
    description:
      - Docker daemon configuration read to tell whether the C(nvidia) runtime is configured.
    type: path
    default: /etc/docker/daemon.json
  cdi_spec_paths:
    description:
      - CDI specifications whose presence means containers can request GPUs through CDI.
    type: list
    elements: path
    default: [/etc/cdi/nvidia.yaml, /var/run/cdi/nvidia.yaml]
attributes:
  check_mode:
    support: full
    details: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
  facts:
    support: full
notes:
  - Compute capability comes from the C(compute_cap) query field (driver 510 and later); on older
    drivers it is looked up from the product name and C(compute_capability_source) says C(name).
  - C(cuda_arch_build_list) uses family targets (C(12.0f)) for Blackwell-class GPUs when the driver
    supports CUDA 12.9 or later; the driver's CUDA version is the ceiling for any image run here.
"""

EXAMPLES = r"""
- name: Read the GPUs
  gpu_facts:

- name: Require at least one GPU usable from Docker
  ansible.builtin.assert:
    that:
      - ansible_facts.gpu.count > 0
      - ansible_facts.gpu.docker.usable
    fail_msg: "{{ ansible_facts.gpu.reason | default('GPUs present, not usable from Docker') }}"

- name: Build vLLM for the GPUs of this host
  ansible.builtin.debug:
    msg: "TORCH_CUDA_ARCH_LIST={{ ansible_facts.gpu.cuda_arch_list }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    gpu:
      description: The GPUs of the host.
      returned: always
      type: complex
      contains:
        vendor:
          description: C(nvidia), C(amd), C(mixed), or null when there is no GPU.
          type: str
          sample: nvidia
        count:
          description: Number of GPUs found.
          type: int
          sample: 1
        reason:
          description: Why C(count) is 0; null when GPUs were found.
          type: str
          sample: nvidia-smi is not installed (no NVIDIA driver on this host)
        driver_loaded:
          description: Whether a GPU driver answered.
          type: bool
        driver_version:
          description: GPU driver version.
          type: str
          sample: "580.126.09"
        cuda_version:
          description: Highest CUDA version the NVIDIA driver supports (from the nvidia-smi banner).
          type: str
          sample: "13.0"
        cpu_arch:
          description: CPU architecture of the host (C(x86_64), C(aarch64) for Grace).
          type: str
          sample: aarch64
        unified_memory:
          description: Whether any GPU shares the host's memory (GB10).
          type: bool
        compute_capabilities:
          description: Distinct compute capabilities of the NVIDIA GPUs, ascending.
          type: list
          elements: str
          sample: ["12.1"]
        cuda_arch_list:
          description: The capabilities in C(TORCH_CUDA_ARCH_LIST) syntax.
          type: str
          sample: "12.1"
        cuda_arch_families:
          description: CUDA family targets covering Blackwell-class GPUs (CUDA 12.9 and later).
          type: list
          elements: str
          sample: ["12.0f"]
        cuda_arch_build_list:
          description: What a toolkit no newer than the driver's CUDA version should build.
          type: str
          sample: "12.0f"
        pci_gpus:
          description: >-
            NVIDIA and AMD display controllers on the PCI bus (C(address), C(vendor), C(class)),
            found whether or not a driver is loaded.
          type: list
          elements: dict
        pci_gpu_count:
          description: Number of entries in C(pci_gpus).
          type: int
        docker:
          description: >-
            C(toolkit_installed), C(toolkit_binaries), C(runtime_configured) (daemon.json has an
            C(nvidia) runtime), C(default_runtime), C(cdi_specs), C(daemon_json_error), C(usable).
          type: dict
        gpus:
          description: >-
            One entry per GPU with C(index), C(vendor), C(uuid), C(name), C(pci_bus_id),
            C(memory_total_mib), C(memory_used_mib), C(memory_unified), C(memory_source)
            (C(device) or C(host)), C(compute_capability), C(compute_capability_source)
            (C(nvidia-smi) or C(name)), C(mig_mode), C(mig_devices) (C(index), C(profile), C(uuid)),
            C(persistence_mode), C(utilization_gpu_pct). A value the tools cannot report is null.
          type: list
          elements: dict
        sources:
          description: The commands whose output went into these facts.
          type: list
          elements: str
        warnings:
          description: Sources that failed or disagreed; the facts are still returned.
          type: list
          elements: str
        nvidia_smi_path:
          description: The nvidia-smi used, or null.
          type: str
        rocm_smi_path:
          description: The rocm-smi used, or null.
          type: str
"""

# Ansible modules keep DOCUMENTATION/EXAMPLES/RETURN first, so the imports come after them.
import os
import platform

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.gpu import (
    GpuToolError,
    collect_gpu_facts,
    read_pci_devices,
    read_text_file,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "nvidia_smi_path": {"type": "path"},
            "rocm_smi_path": {"type": "path"},
            "docker_daemon_config": {"type": "path", "default": "/etc/docker/daemon.json"},
            "cdi_spec_paths": {
                "type": "list",
                "elements": "path",
                "default": ["/etc/cdi/nvidia.yaml", "/var/run/cdi/nvidia.yaml"],
            },
        },
        supports_check_mode=True,
    )
    for option in ("nvidia_smi_path", "rocm_smi_path"):
        path = module.params[option]
        if path and not os.access(path, os.X_OK):
            module.fail_json(msg=f"{option}={path} is not an executable file on this host")
    extra_dirs = ["/usr/local/nvidia/bin", "/opt/rocm/bin", "/usr/bin"]

    def run(args: list[str]) -> tuple[int, str, str]:
        return module.run_command(args, environ_update={"LC_ALL": "C"})

    def which(name: str) -> str | None:
        return module.get_bin_path(name, opt_dirs=extra_dirs)

    try:
        facts = collect_gpu_facts(
            run=run,
            which=which,
            read_text=read_text_file,
            cpu_arch=platform.machine(),
            nvidia_smi=module.params["nvidia_smi_path"],
            rocm_smi=module.params["rocm_smi_path"],
            daemon_json_path=module.params["docker_daemon_config"],
            cdi_spec_paths=module.params["cdi_spec_paths"],
            pci_devices=read_pci_devices(),
        )
    except GpuToolError as exc:
        module.fail_json(msg=str(exc))
    for warning in facts["warnings"]:
        module.warn(warning)
    module.exit_json(changed=False, ansible_facts={"gpu": facts})


if __name__ == "__main__":
    main()
