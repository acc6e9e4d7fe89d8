"""Pure logic of model_quantize: types, tensor checks, parallelism, fingerprints and stage records;
the module's refusals and check mode, run through AnsibleModule with no venv (they stop before it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.pipeline import check_model_pipeline
from ansible_collections.llmfleet.fleet.plugins.module_utils.quantize import plan as q
from ansible_collections.llmfleet.fleet.plugins.modules import model_quantize


@pytest.mark.parametrize(("qtype", "ftype"), [("Q8_0", 7), ("Q4_K_M", 15), ("Q5_K_M", 17), ("F16", 1), ("Q6_K", 18)])
def test_ftypes_are_llama_cpp_values(qtype, ftype):
    assert q.FTYPES[qtype] == ftype


def test_unknown_types():
    assert q.unknown_types(["Q4_K_M", "Q7_X", "q8_0"]) == ["Q7_X", "q8_0"]


# The real tensor mix of SmolLM2-135M's Q4_K_M (hidden 576: rows not a multiple of 256).
SMOL_Q4 = {f"blk.{i}.attn_q.weight": "Q5_0" for i in range(30)}
SMOL_Q4.update({f"blk.{i}.ffn_down.weight": "Q4_K" for i in range(16)})
SMOL_Q4.update({f"blk.{i}.ffn_down2.weight": "Q6_K" for i in range(14)})
SMOL_Q4.update({"token_embd.weight": "Q8_0", "output_norm.weight": "F32"})


def test_fallbacks_counted_and_named():
    dims = {n: (1 if n.endswith("norm.weight") else 2) for n in SMOL_Q4}
    res = q.check_tensor_types("Q4_K_M", SMOL_Q4, dims)
    assert res["ok"]
    assert res["fallbacks"] == {"Q4_K->Q5_0": 30, "Q6_K->Q8_0": 1}
    assert res["fallback_count"] == 31
    assert res["counts"]["Q4_K"] == 16
    assert res["quantized_tensors"] == 61


@pytest.mark.parametrize(
    ("qtype", "tensors", "ok", "fallback"),
    [
        ("Q8_0", {"a": "Q8_0", "n": "F32"}, True, 0),
        ("Q8_0", {"a": "F16"}, False, 0),  # left unquantized: not what was asked
        ("Q5_K_M", {"a": "Q5_1", "b": "Q5_K"}, True, 1),
        ("Q5_K_M", {"a": "Q4_0"}, False, 0),
        ("F16", {"a": "F16", "n": "F32"}, True, 0),
    ],
)
def test_tensor_type_table(qtype, tensors, ok, fallback):
    dims = {n: (1 if n == "n" else 2) for n in tensors}
    res = q.check_tensor_types(qtype, tensors, dims)
    assert res["ok"] is ok
    assert res["fallback_count"] == fallback


@pytest.mark.parametrize(
    ("count", "cpus", "mem", "job", "parallel", "expected"),
    [
        (3, 2, 64 << 30, 1 << 30, 0, (2, 1)),  # cores limit
        (3, 16, 64 << 30, 1 << 30, 0, (3, 5)),
        (3, 16, 2 << 30, 1 << 30, 0, (2, 8)),  # memory limits
        (3, 16, 1 << 20, 1 << 30, 0, (1, 16)),  # at least one
        (3, 2, 64 << 30, 1 << 30, 1, (1, 2)),  # asked: one after another
        (0, 4, 0, 0, 0, (0, 4)),
    ],
)
def test_parallel_jobs(count, cpus, mem, job, parallel, expected):
    assert q.parallel_jobs(count, cpus, mem, job, parallel) == expected


def test_fingerprint_changes_with_content_and_options(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.bin").write_bytes(b"one")
    (d / ".llmfleet-manifest.json").write_text("{}")  # bookkeeping is not an input
    cache: dict = {}
    first = q.fingerprint([str(d)], {"dtype": "float16"}, cache)
    assert q.fingerprint([str(d)], {"dtype": "float16"}, cache) == first
    assert q.fingerprint([str(d)], {"dtype": "bfloat16"}, cache) != first
    (d / ".llmfleet-manifest.json").write_text('{"x": 1}')
    assert q.fingerprint([str(d)], {"dtype": "float16"}, cache) == first
    (d / "a.bin").write_bytes(b"two")
    os.utime(d / "a.bin", ns=(1, 1))  # a new stamp: the cache re-hashes
    assert q.fingerprint([str(d)], {"dtype": "float16"}, cache) != first


def test_stage_reason_records(tmp_path):
    out = tmp_path / "x.gguf"
    assert q.stage_reason(str(out), "fp", False) == "no record of a previous run"
    out.write_bytes(b"data")
    q.write_json(q.record_path(str(out)), {"inputs": "fp", "output_stamp": q.output_stamp(str(out))})
    assert q.stage_reason(str(out), "fp", False) is None
    assert q.stage_reason(str(out), "fp", True) == "force"
    assert q.stage_reason(str(out), "other", False) == "inputs changed"
    out.write_bytes(b"changed!")
    assert q.stage_reason(str(out), "fp", False) == "output changed since it was written"
    out.unlink()
    assert q.stage_reason(str(out), "fp", False) == "output missing"


@pytest.mark.parametrize(
    ("base", "ok"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("/srv/llmfleet/models/smollm2-135m-instruct/", True),
        ("smollm2-135m", True),
        ("Qwen/Qwen2.5-0.5B", False),
    ],
)
def test_base_matches(base, ok):
    assert model_quantize.base_matches(base, ["smollm2-135m", "smollm2-135m-instruct"]) is ok


class _Exit(Exception):
    pass


def _exit(self: basic.AnsibleModule, **kwargs) -> None:
    raise _Exit(dict(kwargs, failed=False))


def _fail(self: basic.AnsibleModule, **kwargs) -> None:
    raise _Exit(dict(kwargs, failed=True))


@pytest.fixture
def module_run():
    def run(args: dict, check: bool = False) -> dict:
        if check:
            args = dict(args, _ansible_check_mode=True)
        with patch_module_args(args), mock.patch.multiple(basic.AnsibleModule, exit_json=_exit, fail_json=_fail):
            try:
                model_quantize.main()
            except _Exit as exc:
                return exc.args[0]
        raise AssertionError("module did not exit")

    return run


def _base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    return base


def test_refuses_unknown_type(tmp_path, module_run):
    res = module_run(
        {
            "python": sys.executable,
            "name": "m",
            "output_dir": str(tmp_path / "o"),
            "base_model": str(_base(tmp_path)),
            "quantizations": ["Q4_K_M", "Q9_Z"],
            "stages": ["quantize"],
        }
    )
    assert res["failed"]
    assert "Q9_Z" in res["msg"] and "Q4_K_M" in res["msg"].split("allowed:")[1]


def test_refuses_adapter_of_another_base(tmp_path, module_run):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    res = module_run(
        {
            "python": sys.executable,
            "name": "m",
            "output_dir": str(tmp_path / "o"),
            "base_model": str(_base(tmp_path)),
            "adapter": str(adapter),
            "adapter_base_names": ["smollm2-135m"],
            "converter_dir": str(tmp_path),
        }
    )
    assert res["failed"]
    assert "Qwen/Qwen2.5-0.5B" in res["msg"] and "refused before any stage runs" in res["msg"]
    assert not (tmp_path / "o").exists()


def test_check_mode_says_what_would_run_and_writes_nothing(tmp_path, module_run):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "smollm2-135m"}))
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    res = module_run(
        {
            "python": sys.executable,
            "name": "m",
            "output_dir": str(tmp_path / "o"),
            "base_model": str(_base(tmp_path)),
            "adapter": str(adapter),
            "adapter_base_names": ["smollm2-135m"],
            "converter_dir": str(tmp_path),
        },
        check=True,
    )
    assert res["changed"] is True
    stages = [(s["stage"], s.get("item"), s["run"], s["reason"]) for s in res["stages"]]
    assert stages[0] == ("merge", None, True, "no record of a previous run")
    assert stages[1] == ("convert", None, True, "its input is rebuilt by merge")
    assert {s[1] for s in stages[2:]} == {"Q4_K_M", "Q5_K_M", "Q8_0"}
    assert not (tmp_path / "o").exists()


def _host(**settings):
    base = {"model_pipeline_models": [{"name": "a", "base_model": "smol", "port": 5000}]}
    base.update(settings)
    return base


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (_host(), []),
        (
            _host(model_pipeline_quantizations=["Q4_K_M", "Q7_K", "Q5_K_M", "Q8_0"]),
            ["model_pipeline_quantizations[1] = 'Q7_K'"],
        ),
        (
            _host(vllm_service_instances=[{"name": "v", "port": 5002}]),
            ["format Q8_0 (port 5000 + 2) = 5002 is already used by vllm_service_instances[0] ('v')"],
        ),
        (
            {
                "model_pipeline_models": [
                    {"name": "a", "base_model": "smol", "port": 5000},
                    {"name": "b", "base_model": "smol", "port": 5003},
                ]
            },
            [
                "model_pipeline_models[1] ('b') format Q4_K_M (port 5003 + 0) = 5003 is already used by "
                "model_pipeline_models[0] ('a') format F16"
            ],
        ),
        (
            {
                "model_pipeline_models": [
                    {
                        "name": "a",
                        "base_model": "smol",
                        "port": 5000,
                        "adapter": {"host": "train", "path": "/x", "trained_on": "qwen"},
                    }
                ]
            },
            ["adapter.trained_on = 'qwen' differs from its base_model 'smol'"],
        ),
    ],
)
def test_inventory_refusals(settings, expected):
    errors = check_model_pipeline("ws", ["model_workstations"], {"all": ["ws", "train"]}, settings, {"smol": {}})
    assert len(errors) == len(expected), errors
    for want, got in zip(expected, errors, strict=True):
        assert want in got and got.startswith("host ws: ")
