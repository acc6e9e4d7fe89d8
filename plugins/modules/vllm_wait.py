#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0
"""Wait for a vLLM instance to be healthy; fail fast, with its logs, when it cannot start."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_wait
short_description: Wait until a vLLM instance answers /health and lists its models
description:
  - Polls C(/health) and C(/v1/models) of an OpenAI-compatible vLLM server on the host until both
    answer and every expected served name is listed.
  - Then, with O(probe=true), sends one real completion that asks for C(logprobs) / C(top_logprobs)
    (C(max_tokens) 4), the parameters evaluation tools and SDKs send. The instance is healthy only once
    that answered HTTP 200, or refused the parameters cleanly with HTTP 400 / 422. vLLM's CPU build
    compiles a sampler kernel with torch inductor on such a request, and a server without a C++
    compiler dies on it; here that shows as a restart or a failed service, with the log tail.
  - When the instance runs under systemd (O(systemd_unit)) or Docker (O(container)), each poll also
    reads the supervisor's restart count and state, so a server that cannot start fails the task after
    O(max_restarts) restarts, and a unit that is failed
    (a crash loop ended by the start limit included, as systemd's journal says) or inactive,
    or a container that exited, fails it at once, instead of waiting out O(timeout). The failure
    carries the last log lines.
  - Reads only; the probe is a completion like any client's and changes nothing on the server.
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
  timeout:
    description: Seconds to wait at most.
    type: int
    default: 600
  interval:
    description: Seconds between polls.
    type: float
    default: 3
  max_restarts:
    description: Restarts of the service tolerated while waiting.
    type: int
    default: 2
  log_lines:
    description: Log lines returned (and shown) when the instance does not become healthy.
    type: int
    default: 40
  probe:
    description:
      - Send one completion with C(logprobs) after C(/v1/models) lists the served names, and count the
        instance healthy only once it answered.
      - The model asked is the first of O(expect_models), or the first served name.
    type: bool
    default: true
  probe_api:
    description:
      - API of the probe. C(chat) sends C(logprobs=true, top_logprobs=3) to C(/v1/chat/completions);
        C(completions) sends C(logprobs=3) to C(/v1/completions) (base models without a chat template).
    type: str
    choices: [chat, completions]
    default: chat
  probe_timeout:
    description:
      - Seconds the probe may take (the first such request compiles kernels; on a small CPU host that
        takes tens of seconds). Never more than what is left of O(timeout).
    type: float
    default: 180
attributes:
  check_mode:
    support: full
    details: Waits in check mode too; it only reads (the probe is one small completion, as any client sends).
  diff_mode:
    support: none
extends_documentation_fragment:
  - llmfleet.fleet.attributes
  - llmfleet.fleet.endpoint
  - llmfleet.fleet.endpoint.supervisor
notes:
  - Proxies follow the standard environment variables (C(http_proxy), C(https_proxy), C(no_proxy)), except
    that a loopback endpoint (C(localhost), C(127.0.0.0/8), C(::1)) is always reached directly.
author:
  - llm-fleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Wait for the instance
  llmfleet.fleet.vllm_wait:
    url: http://127.0.0.1:8000
    expect_models: [qwen3-8b]
    systemd_unit: vllm-qwen3.service
    timeout: 900

- name: Wait for a base model (no chat template), probing the completions API
  llmfleet.fleet.vllm_wait:
    url: http://127.0.0.1:8001
    expect_models: [llama-3-8b-base]
    container: vllm-llama-base
    probe_api: completions
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
probe:
  description: >
    The probe request: C(api), C(model), C(http_status) (0 when nothing answered), C(detail), and
    C(logprobs) (whether the answer carried them). Empty when no probe was sent.
  returned: always
  type: dict
  sample: {"api": "chat", "model": "smollm2-135m", "http_status": 200, "logprobs": true, "detail": "answered 200"}
supervisor:
  description: >
    What systemd or Docker says about the service at the end: C(kind), C(name), C(restarts),
    C(state), C(sub_state), C(result), C(main_pid), C(started_ago_s), C(exit_code), C(exit_detail),
    C(start_limit_hit).
  returned: when systemd_unit or container is given
  type: dict
log_tail:
  description: The last log lines of the service, when it did not become healthy.
  returned: failure
  type: str
"""

import functools

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import ENDPOINT_ARGS
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.wait import (
    SUPERVISOR_ARGS,
    SUPERVISOR_EXCLUSIVE,
    Supervised,
    docker_state,
    http_get,
    http_post,
    systemd_state,
    wait_healthy,
)


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
            **ENDPOINT_ARGS,
            **SUPERVISOR_ARGS,
            "url": {"type": "str", "required": True},
            "expect_models": {"type": "list", "elements": "str", "default": []},
            "timeout": {"type": "int", "default": 600},
            "interval": {"type": "float", "default": 3},
            "max_restarts": {"type": "int", "default": 2},
            "log_lines": {"type": "int", "default": 40},
            "probe": {"type": "bool", "default": True},
            "probe_api": {"type": "str", "choices": ["chat", "completions"], "default": "chat"},
            "probe_timeout": {"type": "float", "default": 180},
        },
        mutually_exclusive=SUPERVISOR_EXCLUSIVE,
        supports_check_mode=True,
    )
    p = module.params

    def run(cmd: list[str]) -> tuple[int, str, str]:
        return module.run_command(cmd)

    supervisor = None
    if p["systemd_unit"]:

        def supervisor() -> Supervised:
            return systemd_state(run, p["systemd_unit"])
    elif p["container"]:

        def supervisor() -> Supervised:
            return docker_state(run, p["container"])

    result = wait_healthy(
        p["url"],
        p["expect_models"],
        p["timeout"],
        p["interval"],
        p["api_key"],
        supervisor,
        p["max_restarts"],
        probe=p["probe"],
        probe_api=p["probe_api"],
        probe_timeout=p["probe_timeout"],
        get=functools.partial(http_get, validate_certs=p["validate_certs"]),
        post=functools.partial(http_post, validate_certs=p["validate_certs"]),
    )
    payload = {
        "changed": False,
        "waited_s": round(result.waited_s, 1),
        "restarts": result.restarts,
        "probe": result.probe,
    }
    if p["systemd_unit"]:
        payload["supervisor"] = systemd_state(run, p["systemd_unit"], journal=not result.healthy).as_dict()
    elif p["container"]:
        payload["supervisor"] = docker_state(run, p["container"]).as_dict()
    if result.healthy:
        module.exit_json(models=result.models, max_model_len=result.max_model_len, **payload)
    what = p["systemd_unit"] or p["container"] or p["url"]
    module.fail_json(
        msg=f"{what} did not become healthy: {result.reason}", log_tail=_log_tail(module, p["log_lines"]), **payload
    )


if __name__ == "__main__":
    main()
