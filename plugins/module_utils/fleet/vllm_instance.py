# Copyright: llm-fleet contributors
# Apache-2.0
"""One schema for a vLLM instance: the keys an instance takes, wherever it runs.

An instance is written the same way in ``vllm_service_instances`` (systemd, Compose),
``vllm_kubernetes_instances`` and ``slurm_job_instance``. This table is the one place its keys are
declared: ``VALUE_FLAGS`` (the vLLM flag of each key that takes one value, which
``resolve_instance`` turns into argv) is derived from it, and the instance option blocks of the three
roles' ``meta/argument_specs.yml`` are generated from it by ``scripts/vllm_instance_specs.py``
(``make lint`` runs it with ``--check``, so a hand edit of a block fails the build).

Adding a vLLM argument: one entry here (with ``flag`` when it is ``--flag VALUE``), then
``scripts/vllm_instance_specs.py`` to rewrite the three blocks.
"""

from __future__ import annotations

from typing import Any

SERVICE = "vllm_service"
KUBERNETES = "vllm_kubernetes"
SLURM = "slurm_job"
EVERYWHERE = (SERVICE, KUBERNETES, SLURM)

# key -> its argument spec (as argument_specs.yml writes it), the roles that take it, the vLLM flag
# of a key that takes one value, and per-role changes to its spec. In argv order.
INSTANCE_KEYS: dict[str, dict[str, Any]] = {
    "name": {"spec": {"type": "str", "description": "Instance name, [a-z0-9_-]."}},
    "model": {"spec": {"type": "str", "description": "A fleet_models catalog name."}},
    "model_path": {
        "spec": {"type": "str", "description": "Serve this directory instead of the cached catalog model."},
        "roles": (SLURM,),
    },
    "port": {
        "spec": {"type": "int", "description": "TCP port of the OpenAI API. Range: [1, 65535]."},
        "per_role": {SLURM: {"description": "vLLM port on the compute node. Range: [1, 65535]."}},
    },
    "served_model_name": {"spec": {"type": "raw", "description": "Served name or list of names."}},
    "host": {"spec": {"type": "str", "description": "Bind address."}, "roles": (SERVICE,)},
    "dtype": {"spec": {"type": "str", "description": "vLLM --dtype."}, "flag": "--dtype"},
    "max_model_len": {
        "spec": {"type": "int", "description": "vLLM --max-model-len. Range: [1, inf)."},
        "flag": "--max-model-len",
    },
    "max_num_seqs": {
        "spec": {"type": "int", "description": "vLLM --max-num-seqs. Range: [1, inf)."},
        "flag": "--max-num-seqs",
    },
    "gpu_memory_utilization": {
        "spec": {"type": "float", "description": "Share of each GPU's memory. Range: (0, 1]."},
        "flag": "--gpu-memory-utilization",
    },
    "quantization": {"spec": {"type": "str", "description": "vLLM --quantization."}, "flag": "--quantization"},
    "kv_cache_memory_bytes": {
        "spec": {"type": "int", "description": "vLLM --kv-cache-memory-bytes. Range: [1, inf)."},
        "flag": "--kv-cache-memory-bytes",
    },
    "tensor_parallel_size": {
        "spec": {"type": "int", "description": "Tensor parallel size. Range: [1, inf)."},
        "flag": "--tensor-parallel-size",
    },
    "pipeline_parallel_size": {
        "spec": {"type": "int", "description": "Pipeline parallel size. Range: [1, inf)."},
        "flag": "--pipeline-parallel-size",
    },
    "distributed_executor_backend": {
        "spec": {
            "type": "str",
            "choices": ["mp", "ray", "uni", "external_launcher"],
            "description": "vLLM --distributed-executor-backend (ray: across the Ray cluster of a ray_head host).",
        },
        "flag": "--distributed-executor-backend",
        "roles": (SERVICE, KUBERNETES),
        "per_role": {
            KUBERNETES: {
                "description": "vLLM --distributed-executor-backend (mp: within the pod; ray needs a Ray cluster the "
                "pods join, such as KubeRay's, which this role does not render)."
            }
        },
    },
    "enforce_eager": {"spec": {"type": "bool", "description": "vLLM --enforce-eager."}},
    "enable_prefix_caching": {"spec": {"type": "bool", "description": "Prefix caching on or off."}},
    "gpu_ids": {
        "spec": {"type": "list", "elements": "int", "description": "GPU indexes. Range: [0, inf)."},
        "roles": (SERVICE,),
    },
    "lora_modules": {
        "spec": {"type": "list", "elements": "dict", "description": "LoRA adapters [{name, path}]."},
        "roles": (SERVICE, KUBERNETES),
    },
    "extra_args": {"spec": {"type": "list", "elements": "str", "description": "More vLLM flags, verbatim."}},
    "env": {
        "spec": {"type": "dict", "description": "Extra environment variables."},
        "per_role": {SLURM: {"description": "Extra environment variables of the server."}},
    },
    "api_key": {"spec": {"type": "str", "no_log": True, "description": "Bearer token clients must send."}},
    "runtime": {
        "spec": {"type": "str", "choices": ["docker", "systemd"], "description": "Must equal vllm_service_runtime."},
        "roles": (SERVICE,),
    },
}

# Keys an instance must give, per role (a Slurm job's instance may leave them to the role's defaults).
REQUIRED = {SERVICE: ("name", "model", "port"), KUBERNETES: ("name", "model", "port"), SLURM: ()}

# instance key -> vLLM flag, for options that take one value (resolve_instance builds argv with it).
VALUE_FLAGS: dict[str, str] = {key: entry["flag"] for key, entry in INSTANCE_KEYS.items() if entry.get("flag")}


def instance_options(role: str) -> dict[str, dict[str, Any]]:
    """The instance option block of ``role``'s argument spec, in order: key -> spec."""
    options = {}
    for key, entry in INSTANCE_KEYS.items():
        if role not in entry.get("roles", EVERYWHERE):
            continue
        spec = {**entry["spec"], **entry.get("per_role", {}).get(role, {})}
        if key in REQUIRED[role]:
            spec = {"type": spec["type"], "required": True, **{k: v for k, v in spec.items() if k != "type"}}
        options[key] = spec
    return options
