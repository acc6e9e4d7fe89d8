#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0
"""Read a Ray cluster's nodes from the head's state API, waiting until they are as expected."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ray_cluster_info
short_description: Read the nodes of a Ray cluster from its head, and wait until every expected node is alive
description:
  - Reads C(GET /api/v0/nodes) of the Ray dashboard (Ray's state API) on the head.
  - With O(expect) or O(absent), polls until every expected node is ALIVE under its node name with at
    least the resources given, and no node named in O(absent) is ALIVE; otherwise fails after
    O(timeout), naming each node that did not join (or did not leave) and the resource that was short.
  - A node that restarted leaves a DEAD record under the same name; DEAD nodes are never counted.
  - Reads only.
options:
  url:
    description: Base URL of the dashboard, such as V(http://127.0.0.1:8265).
    type: str
    required: true
  expect:
    description:
      - Nodes that must be ALIVE. Each has C(name) (the node name, C(ray start --node-name)) and
        C(resources) (resource name to the least amount the node must report, such as C(CPU), C(GPU)).
    type: list
    elements: dict
    default: []
  absent:
    description: Node names that must not be ALIVE (retired workers).
    type: list
    elements: str
    default: []
  exact:
    description: Also fail while an ALIVE node is neither expected nor absent.
    type: bool
    default: true
  timeout:
    description: Seconds to wait at most.
    type: int
    default: 120
  interval:
    description: Seconds between polls.
    type: float
    default: 2
attributes:
  check_mode:
    support: full
    details: Reads only; it waits in check mode too.
  diff_mode:
    support: none
extends_documentation_fragment:
  - llmfleet.fleet.attributes
author:
  - llm-fleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Wait for the head and two workers
  llmfleet.fleet.ray_cluster_info:
    url: http://127.0.0.1:8265
    expect:
      - {name: ray-head-1, resources: {CPU: 2}}
      - {name: ray-worker-1, resources: {}}
      - {name: ray-worker-2, resources: {GPU: 8}}
    absent: [ray-worker-3]
    timeout: 120
"""

RETURN = r"""
nodes:
  description: >
    The ALIVE nodes by name: C(name), C(node_id), C(ip), C(is_head), C(cpu), C(gpu), C(memory),
    C(object_store_memory) (bytes), C(resources) (every resource total).
  returned: always
  type: list
  elements: dict
alive:
  description: How many nodes are ALIVE.
  returned: always
  type: int
dead:
  description: How many DEAD node records the head keeps.
  returned: always
  type: int
gpus:
  description: GPUs of the ALIVE nodes together.
  returned: always
  type: float
waited_s:
  description: Seconds waited.
  returned: always
  type: float
problems:
  description: What was still not as expected at the end (empty on success).
  returned: always
  type: list
  elements: str
"""

import json
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.cluster.ray import (
    compare_nodes,
    nodes_from_state_api,
    summary,
)


def read_nodes(url: str, timeout: float) -> tuple[list[dict], str]:
    """The state API's node records, or ([], why) when the head does not answer."""
    request = urllib.request.Request(url.rstrip("/") + "/api/v0/nodes?limit=10000&detail=true")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return nodes_from_state_api(json.loads(response.read().decode("utf-8"))), ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return [], f"the head's state API at {url} did not answer: {exc}"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "expect": {"type": "list", "elements": "dict", "default": []},
            "absent": {"type": "list", "elements": "str", "default": []},
            "exact": {"type": "bool", "default": True},
            "timeout": {"type": "int", "default": 120},
            "interval": {"type": "float", "default": 2},
        },
        supports_check_mode=True,
    )
    params = module.params
    expect = [{"name": str(e.get("name")), "resources": dict(e.get("resources") or {})} for e in params["expect"]]
    known = {e["name"] for e in expect} | set(params["absent"])
    start = time.monotonic()
    while True:
        nodes, error = read_nodes(params["url"], timeout=10)
        problems = [error] if error else compare_nodes(nodes, expect, params["absent"])
        alive = summary(nodes)
        if params["exact"] and not error and (expect or params["absent"]):
            problems += [f"node {n['name']} is ALIVE but not in the inventory" for n in alive if n["name"] not in known]
        waited = round(time.monotonic() - start, 1)
        if not problems or waited >= params["timeout"]:
            break
        time.sleep(params["interval"])
    result = {
        "changed": False,
        "nodes": alive,
        "alive": len(alive),
        "dead": sum(1 for n in nodes if n.get("state") == "DEAD"),
        "gpus": float(sum(n["gpu"] for n in alive)),
        "waited_s": waited,
        "problems": problems,
    }
    if problems:
        module.fail_json(
            msg=f"the Ray cluster is not as the inventory says after {waited} s: " + "; ".join(problems), **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
