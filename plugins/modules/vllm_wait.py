#!/usr/bin/python
"""Wait for a vLLM instance to be healthy; fail fast, with its logs, when it cannot start."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_wait
short_description: Wait until a vLLM instance answers /health and lists its models
description:
  - Polls C(/health) and C(/v1/models) of an OpenAI-compatible vLLM server on the host until both
    answer and every expected served name is listed.
  - When the instance runs under systemd (O(systemd_unit)) or Docker (O(container)), each poll also
    reads the supervisor's restart count, so a server that cannot start fails the task after
    O(max_restarts) restarts instead of waiting out O(timeout). The failure carries the last log lines.
  - Reads only; never changes anything.
options:
  url:
    description: Base URL of the server, such as V(http://127.0.0.1:8000).
    type: str
    required: true
  expect_models:
    description: Served model names C(/v1/models) must list.
    type: list
    elements: str
    default: []
  api_key:
    description: Bearer token for C(/v1/models).
    type: str
  timeout:
    description: Seconds to wait at most.
    type: int
    default: 600
  interval:
    description: Seconds between polls.
    type: float
    default: 3
  systemd_unit:
    description: The systemd unit running the server.
    type: str
  container:
    description: The Docker container running the server.
    type: str
  max_restarts:
    description: Restarts of the service tolerated while waiting.
    type: int
    default: 2
  log_lines:
    description: Log lines returned (and shown) when the instance does not become healthy.
    type: int
    default: 40
attributes:
  check_mode:
    support: full
    details: Waits in check mode too; it only reads.
  diff_mode:
    support: none
mutually_exclusive:
  - [systemd_unit, container]
author:
  - llm-fleet maintainers
"""

EXAMPLES = r"""
- name: Wait for the instance
  vllm_wait:
    url: http://127.0.0.1:8000
    expect_models: [qwen3-8b]
    systemd_unit: vllm-qwen3.service
    timeout: 900
"""

RETURN = r"""
waited_s:
  description: Seconds waited.
  returned: always
  type: float
restarts:
  description: Restarts of the service seen while waiting.
  returned: always
  type: int
models:
  description: Served names listed by /v1/models.
  returned: success
  type: list
  elements: str
max_model_len:
  description: Context length per served name, as the server reports it.
  returned: success
  type: dict
log_tail:
  description: The last log lines of the service, when it did not become healthy.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.llmfleet_wait import docker_restarts, systemd_restarts, wait_healthy


def _log_tail(module: AnsibleModule, lines: int) -> str:
    p = module.params
    if p["systemd_unit"]:
        cmd = ["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", p["systemd_unit"]]
    elif p["container"]:
        cmd = ["docker", "logs", "--tail", str(lines), p["container"]]
    else:
        return ""
    rc, out, err = module.run_command(cmd)
    return (out + err).strip() if rc == 0 else f"(could not read logs: {err.strip()})"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "expect_models": {"type": "list", "elements": "str", "default": []},
            "api_key": {"type": "str", "no_log": True},
            "timeout": {"type": "int", "default": 600},
            "interval": {"type": "float", "default": 3},
            "systemd_unit": {"type": "str"},
            "container": {"type": "str"},
            "max_restarts": {"type": "int", "default": 2},
            "log_lines": {"type": "int", "default": 40},
        },
        mutually_exclusive=[("systemd_unit", "container")],
        supports_check_mode=True,
    )
    p = module.params

    def run(cmd: list[str]) -> tuple[int, str, str]:
        return module.run_command(cmd)

    supervisor = None
    if p["systemd_unit"]:
        def supervisor() -> tuple[int, str]:
            return systemd_restarts(run, p["systemd_unit"])
    elif p["container"]:
        def supervisor() -> tuple[int, str]:
            return docker_restarts(run, p["container"])

    result = wait_healthy(
        p["url"], p["expect_models"], p["timeout"], p["interval"], p["api_key"], supervisor, p["max_restarts"]
    )
    payload = {"changed": False, "waited_s": round(result.waited_s, 1), "restarts": result.restarts}
    if result.healthy:
        module.exit_json(models=result.models, max_model_len=result.max_model_len, **payload)
    what = p["systemd_unit"] or p["container"] or p["url"]
    module.fail_json(msg=f"{what} did not become healthy: {result.reason}",
                     log_tail=_log_tail(module, p["log_lines"]), **payload)


if __name__ == "__main__":
    main()
