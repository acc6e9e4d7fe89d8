"""site.yml refuses a bad inventory in its first play, before any host is touched.

These run the real site.yml through the real ansible-runner wrapper (what ``llmfleet deploy`` and
``llmfleet check`` use). The hosts of the bad inventories do not exist (community.docker
connection to containers that are not there), so any task that reached one would fail or be
unreachable by itself: the only failure allowed is the validate play's own task. The exceptions
are the checks that need a fact of the host, whose hosts are this machine (local connection):
``tp-over-gpus`` (the real GPU count, read by gpu_facts: no nvidia-smi here, 0 GPUs),
``disk-model-cache`` (the real free space of the cache's filesystem, read by df) and ``arch-image``
(the real architecture, read by uname -m: this machine is x86_64).

The good inventory's hosts are this machine too, so only playbooks/validate.yml is run on it: the
later plays of site.yml would really install things here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llmfleet import runner

REPO = Path(__file__).resolve().parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "inventories"
VALIDATE_PLAY = "Validate the inventory before any host changes"
REFUSE = "Refuse an inconsistent inventory"
REFUSE_FACTS = "Refuse what the host's GPUs, architecture and free disk rule out"

BAD = [
    # (inventory, host, failing task, what the message must say: host, variable, value, what is allowed)
    (
        "only-ingress-open",
        "gpu-q",
        REFUSE,
        (
            "host gpu-q: vllm_service_instances[0] ('small').host = '0.0.0.0' listens on every interface under "
            "fleet_only_ingress",
            "host gpu-q: fleet_only_ingress = True but the inventory has no host in group gateway",
        ),
    ),
    (
        "dup-port",
        "gpu-a",
        REFUSE,
        "vllm_service_instances[1] ('small2').port = 8000 is already used by instance 'small'",
    ),
    ("ray-no-head", "ray-w1", REFUSE, "host ray-w1 is in group ray_workers but group ray_head has no host"),
    (
        # A port left to its role's default (observability_stack_prometheus_port: 9090) clashes too.
        "port-default",
        "box-1",
        REFUSE,
        "host box-1: observability_stack_prometheus_port = 9090 is already used by model_gateway_port on this host",
    ),
    (
        "slurm-bad",
        "hpc-login",
        REFUSE,
        (
            "host hpc-login: slurm_job_gpus = 1 asks for GPUs, but the cluster has no GRES",
            "host hpc-login: slurm_job_time = '2 hours' is not a Slurm time limit; allowed: minutes, MM:SS, HH:MM:SS",
            "host hpc-login: slurm_job_nodes = 4 is more than partition 'cpu' has; allowed: at most 2",
        ),
    ),
    (
        "slurm-partition",
        "hpc-login2",
        REFUSE,
        "host hpc-login2: slurm_job_partition = 'gpu-a100' is not a partition of the cluster; allowed: cpu, debug",
    ),
    (
        "ray-bad",
        "ray-h1",
        REFUSE,
        (
            "host ray-h1: ray_cluster_dashboard_port = 8265 is already used by vllm_service_instances[0] ('small')"
            ".port on this host",
            "host ray-h1: ray_cluster_metrics_export_port = 6379 is already used by ray_cluster_head_port",
            "host ray-h1: ray_cluster_object_store_memory = 8589934592 is not less than the host's memory "
            "(ray_cluster_host_memory_mb = 4096",
            "host ray-h1: vllm_service_instances[1] ('big'): tensor_parallel_size x pipeline_parallel_size = 4 "
            "needs 4 GPUs, but the Ray cluster has ray_cluster_gpus_total = 2; allowed: at most 2",
        ),
    ),
    (
        "k8s-bad",
        "k8s-a",
        REFUSE,
        (
            "host k8s-a: vllm_kubernetes_namespace = 'LLM_Prod' is not a name Kubernetes accepts; allowed: an RFC "
            "1123 label",
            "host k8s-a: vllm_kubernetes_instances[0] (big) asks for 2 GPU(s) per pod (gpus, or tensor x pipeline "
            "parallel size), but its node_selector {'gpu-type': 'l4'} picks node pool 'l4', whose nodes have 1; "
            "allowed: at most 1",
            "host k8s-a: vllm_kubernetes_instances[0] (big).resources.limits.memory = '32Gi' is below its request "
            "'64Gi'",
            "host k8s-a: vllm_kubernetes_instances[0] (big).probes.startup allows 120 s (initial_delay_s 0 + "
            "period_s 10 x failure_threshold 12), shorter than the 300 s model 'big' was measured to take to "
            "start (fleet_models start_time_s)",
        ),
    ),
    (
        "bad-runtime",
        "gpu-b",
        REFUSE,
        "vllm_service_runtime = 'podman' is not a known runtime; allowed: docker, systemd",
    ),
    (
        "string-for-int",
        "gpu-c",
        REFUSE,
        "host gpu-c: vllm_service_instances[0] ('small').max_model_len = 'lots' is not a valid int",
    ),
    (
        "instance-typo",
        "gpu-d",
        REFUSE,
        "host gpu-d: vllm_service_instances[0] ('small') has an unknown key 'max_model_length'; allowed: api_key,",
    ),
    (
        "bad-pr",
        "builder-1",
        REFUSE,
        "host builder-1: role vllm_build (roles/vllm_build/meta/argument_specs.yml): argument 'vllm_build_pr' "
        "is of type str and we were unable to convert to int: \"'#12345'\"",
    ),
    (
        "negative-bytes",
        "gpu-e",
        REFUSE,
        "host gpu-e: vllm_service_instances[0] ('small').kv_cache_memory_bytes = -1073741824 is out of range; "
        "allowed: int in [1, inf)",
    ),
    (
        "image-no-tag",
        "gpu-f",
        REFUSE,
        "host gpu-f: vllm_service_image = 'registry.example.org:5000/vllm/vllm-openai' is not an image reference "
        "with a tag or digest",
    ),
    (
        "runtime-mismatch",
        "gpu-g",
        REFUSE,
        "host gpu-g: vllm_service_instances[0] ('small').runtime = 'docker' contradicts the host's "
        "vllm_service_runtime = 'systemd'",
    ),
    (
        "no-instances",
        "gpu-h",
        REFUSE,
        "host gpu-h is in group inference_nodes but vllm_service_instances = []; "
        "an inference node needs at least one instance",
    ),
    (
        "secret-number",
        "gpu-i",
        REFUSE,
        "host gpu-i: vllm_service_instances[0] ('small').api_key is a secret given as int, not as a string",
    ),
    (
        "ssh-unknown-host",
        "gpu-m1",
        REFUSE,
        "fleet_models['small'].source.ssh.host = 'models-9' is not a host of this inventory; "
        "allowed: an inventory host",
    ),
    (
        "hf-unpinned",
        "gpu-m2",
        REFUSE,
        "fleet_models['small'].source.revision = 'main' is not pinned; allowed: a 40-hex commit sha",
    ),
    (
        "unknown-source-kind",
        "gpu-m3",
        REFUSE,
        "fleet_models['small'].source has unknown key(s) 's3'; allowed source kinds: hf, path, ssh, url",
    ),
    (
        "tp-over-gpus",
        "local-gpu",
        REFUSE_FACTS,
        "host local-gpu: vllm_service_instances[0] ('small'): tensor_parallel_size x pipeline_parallel_size = 2 "
        "needs 2 GPUs, but gpu_facts found 0 on the host",
    ),
    (
        "port-string",
        "gpu-p",
        REFUSE,
        (
            "host gpu-p: vllm_service_instances[1] ('small2').port = '8000' is already used by instance 'small'",
            "host gpu-p: model_gateway_port = '8000' is already used by vllm_service_instances[0] ('small').port "
            "on this host; allowed: a port no other service of the host uses",
        ),
    ),
    (
        "disk-model-cache",
        "local-cache",
        REFUSE_FACTS,
        (
            "host local-cache: model_cache_root = '/var/cache/llmfleet-validate-test/models': the filesystem of "
            "'/var/cache/llmfleet-validate-test/models/huge' (or its nearest existing parent) has ",
            "fleet_models['huge'] (size_gb 1e+06, 0.0 GB there) need 1000000.0 GB more plus "
            "model_cache_free_space_reserve_mb = 1024; allowed: at most ",
        ),
    ),
    (
        "../pipeline/inventories/pipeline-bad",
        "ws-1",
        REFUSE,
        (
            "host ws-1: model_pipeline_quantizations[3] = 'Q3_K_XL' is not a quantization type llama.cpp knows; "
            "allowed: ",
            "host ws-1: model_pipeline_models[0] ('tuned').adapter.trained_on = 'other' differs from its base_model "
            "'small'; allowed: 'small'",
            "host ws-1: model_pipeline_models[0] ('tuned') format Q8_0 (port 5000 + 2) = 5002 is already used by "
            "vllm_service_instances[0] ('small') on this host",
        ),
    ),
    (
        "gateway-loopback",
        "gw-1",
        "Refuse backends the gateway could not reach",
        "host ws-1: model_pipeline_server_host is 127.0.0.1, so the gateway cannot reach its llama.cpp servers; "
        "set it to an address the gateway host reaches (or 0.0.0.0)",
    ),
    (
        "arch-image",
        "local-x86",
        REFUSE_FACTS,
        "host local-x86: vllm_service_image = '127.0.0.1:5999/llmfleet/vllm-openai-arm:1.0' is built by "
        "vllm_builders host local-builder for linux/arm64 (vllm_build_platform = 'linux/arm64'), but this host is "
        "x86_64; allowed: an image for linux/amd64",
    ),
]


def _run(tmp_path: Path, inventory: str, playbook: str = "site.yml", check: bool = False):
    req = runner.RunRequest(
        playbook=playbook,
        inventory=str(FIXTURES / inventory / "hosts.yml"),
        check=check,
        summary_dir=tmp_path,
        quiet=True,
    )
    return runner.run(req)


def _assert_refused_in_first_play(rc, summary, path, host, task, expected):
    assert rc != 0
    assert path.is_file()
    assert summary["totals"]["changed"] == 0, "no host may change"
    assert summary["totals"]["unreachable"] == 0, "no task may have tried to reach a host"
    failed = summary["failed_tasks"]
    assert [(t["play"], t["task"]) for t in failed] == [(VALIDATE_PLAY, task)], failed
    assert failed[0]["host"] == host
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in failed[0]["message"], failed[0]["message"]


@pytest.mark.parametrize(("inventory", "host", "task", "expected"), BAD, ids=[b[0] for b in BAD])
def test_site_refuses_before_any_change(tmp_path, inventory, host, task, expected):
    rc, summary, path = _run(tmp_path, inventory)
    _assert_refused_in_first_play(rc, summary, path, host, task, expected)
    assert "12345678" not in summary["failed_tasks"][0]["message"], "a secret's value is never shown"


def test_check_mode_refuses_too(tmp_path):
    """``llmfleet check`` (check mode + diff) refuses the same way: the validate tasks, gpu_facts
    included, run for real."""
    _, host, task, expected = next(b for b in BAD if b[0] == "tp-over-gpus")
    rc, summary, path = _run(tmp_path, "tp-over-gpus", check=True)
    assert summary["mode"] == "check"
    _assert_refused_in_first_play(rc, summary, path, host, task, expected)


# The lab's hosts are containers that need not exist (and must not be touched when they do): its
# run points every host at this machine, so the reads the checks need (the builder's free disk and
# architecture) read this machine, as they would read the containers (which see its disk).
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}


@pytest.mark.parametrize(
    ("inventory", "extravars"),
    [(FIXTURES / "good" / "hosts.yml", None), (REPO / "inventories" / "lab" / "hosts.yml", LOCAL)],
    ids=["good", "lab"],
)
def test_good_inventory_passes_the_validate_play(tmp_path, inventory, extravars):
    """Both pass: the good fixture's hosts are this machine, and so are the lab's for this run."""
    req = runner.RunRequest(
        playbook="playbooks/validate.yml",
        inventory=str(inventory),
        check=True,
        extravars=extravars,
        summary_dir=tmp_path,
        quiet=True,
    )
    rc, summary, _ = runner.run(req)
    assert rc == 0, summary["failed_tasks"]
    assert summary["failed_tasks"] == []
    assert summary["totals"]["changed"] == 0
    # Both checks on every host whose groups run a role; the inventory check alone on the others
    # (the lab's model_sources host runs only playbooks/model_sources.yml, which has no spec).
    assert all(h["ok"] >= 1 for h in summary["hosts"].values()), summary["hosts"]
    assert summary["totals"]["ok"] >= 2 * len([h for h in summary["hosts"] if "models" not in h]), summary["hosts"]


BACKEND_KEY_PLAY = "Check which instance's key rotates, and that another backend serves its model"


@pytest.mark.parametrize(
    ("extravars", "task", "expected"),
    [
        (
            {"backend_key_host": "good-ray-head", "backend_key_instance": "small"},
            "Refuse a host that is not an inference node",
            'backend_key_host="good-ray-head" is not an inference node of this inventory (inference_nodes: good-gpu)',
        ),
        (
            {"backend_key_host": "good-gpu", "backend_key_instance": "smal"},
            "Refuse an instance the host does not run",
            'host good-gpu: backend_key_instance="smal" is not one of its vllm_service_instances (small, big)',
        ),
        (
            {"backend_key_host": "good-gpu", "backend_key_instance": "small"},
            "Refuse a rotation that would fail requests, when no other backend serves the model",
            "good-gpu/small is the only backend of model small: while it restarts on its new key, every request",
        ),
    ],
    ids=["not-an-inference-node", "unknown-instance", "only-backend"],
)
def test_backend_key_runbook_refuses_before_any_change(tmp_path, extravars, task, expected):
    """playbooks/runbooks/backend_key.yml checks what it is asked to rotate on the controller first:
    nothing on a host runs when the host, the instance or the model's other backends are wrong."""
    req = runner.RunRequest(
        playbook="playbooks/runbooks/backend_key.yml",
        inventory=str(FIXTURES / "good" / "hosts.yml"),
        extravars=extravars,
        summary_dir=tmp_path,
        quiet=True,
    )
    rc, summary, _ = runner.run(req)
    assert rc != 0
    assert summary["totals"]["changed"] == 0
    failed = summary["failed_tasks"]
    assert [(t["play"], t["task"], t["host"]) for t in failed] == [(BACKEND_KEY_PLAY, task, "localhost")], failed
    assert expected in failed[0]["message"], failed[0]["message"]
    assert "sk-local-example" not in json.dumps(summary), "a key is never shown"
