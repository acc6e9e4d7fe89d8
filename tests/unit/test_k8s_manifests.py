"""vllm_kubernetes: the manifests an instance renders to, the checks that refuse one, and the
gateway backends its Services become. The schema check against real Kubernetes OpenAPI schemas
(kubernetes-validate) runs in tests/integration/test_k8s_render.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible_collections.llmfleet.fleet.plugins.module_utils.inventory.k8s import check_kubernetes, quantity
from llmfleet_endpoints import fleet_endpoints
from llmfleet_gateway import gateway_backends
from llmfleet_k8s import K8S_ONLY_KEYS, NOT_IN_A_POD, k8s_redacted, vllm_k8s_args, vllm_k8s_manifests
from llmfleet_vllm import resolve_instance

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "smol": {"source": {"ssh": {"host": "models-1", "path": "/srv/models/smol"}}, "served_name": "smol-135m"},
    "big": {"source": {"hf": "org/big", "revision": "0123456789abcdef0123456789abcdef01234567"}},
}
CLUSTER = {"namespace": "llm", "image": "vllm/vllm-openai:v0.32.0", "model_mount": "/models"}
INSTANCES = [
    {"name": "smol_a", "model": "smol", "port": 8000, "dtype": "float32", "max_model_len": 2048,
     "kv_cache_memory_bytes": 1073741824, "enforce_eager": True, "gpus": 0},
    {"name": "big", "model": "big", "port": 8001, "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9,
     "extra_args": ["--max-num-batched-tokens", "8192"], "env": {"VLLM_LOGGING_LEVEL": "INFO"}, "replicas": 2,
     "node_selector": {"gpu-type": "rtx-6000-ada"}, "resources": {"requests": {"memory": "64Gi"}}},
]


def _spec_options(role: str, variable: str) -> dict:
    spec = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return spec["argument_specs"]["main"]["options"][variable]["options"]


def _typed(options: dict) -> dict:
    return {k: {a: b for a, b in v.items() if a != "description"} for k, v in options.items()}


def _by_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def test_instance_keys_mean_what_they_mean_in_vllm_service():
    """Every vllm_service instance key a pod can use is a vllm_kubernetes key of the same type."""
    service = _spec_options("vllm_service", "vllm_service_instances")
    k8s = _spec_options("vllm_kubernetes", "vllm_kubernetes_instances")
    shared = {k: v for k, v in k8s.items() if k not in K8S_ONLY_KEYS}
    expected = {k: v for k, v in service.items() if k not in NOT_IN_A_POD}
    assert _typed(shared) == _typed(expected)
    assert set(K8S_ONLY_KEYS) <= set(k8s)


def test_the_pod_runs_the_arguments_of_the_systemd_and_docker_runtimes():
    """The same instance gives vllm_service's argument list; only the model's location differs
    (the pod reads it from the models volume, or from Hugging Face with the pinned revision)."""
    args = vllm_k8s_args(INSTANCES, MODELS, CLUSTER)
    for inst in INSTANCES:
        on_host = resolve_instance(
            {k: v for k, v in inst.items() if k not in K8S_ONLY_KEYS}, MODELS, None, {"smol": "/var/cache/smol"}
        )["args"]
        in_pod = args[inst["name"]]
        model_at = on_host.index("--model") + 1
        assert in_pod[:model_at] + in_pod[model_at + 1:] == on_host[:model_at] + on_host[model_at + 1:]
    assert args["smol_a"][1] == "/models/smol"
    assert args["big"][:4] == ["--model", "org/big", "--revision", "0123456789abcdef0123456789abcdef01234567"]


def test_manifests_of_a_cluster():
    manifests = vllm_k8s_manifests(
        INSTANCES, MODELS, {**CLUSTER, "storage_class": "fast", "servicemonitor": True, "only_gateway": True,
                            "gateway_ingress": [{"ipBlock": {"cidr": "10.0.0.5/32"}}], "hf_token": "hf_x"},
        {"smol_a": "key-a", "big": "key-b"},
    )
    assert [m["kind"] for m in manifests[:2]] == ["Namespace", "PersistentVolumeClaim"]
    assert manifests[1]["spec"]["storageClassName"] == "fast"
    deployments = {m["metadata"]["name"]: m for m in _by_kind(manifests, "Deployment")}
    assert set(deployments) == {"vllm-smol-a", "vllm-big"}
    big = deployments["vllm-big"]["spec"]
    container = big["template"]["spec"]["containers"][0]
    assert big["replicas"] == 2
    assert container["resources"]["requests"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert big["template"]["spec"]["nodeSelector"] == {"gpu-type": "rtx-6000-ada"}
    assert {v["name"]: v for v in big["template"]["spec"]["volumes"]}["dshm"]["emptyDir"]["medium"] == "Memory"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Secrets reach the pod by reference only: no key or token value in the pod spec.
    env = {e["name"]: e for e in container["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "vllm-big-secrets", "key": "api-key"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "hf-token"
    assert "key-b" not in str(deployments) and "hf_x" not in str(deployments)
    assert "resources" not in deployments["vllm-smol-a"]["spec"]["template"]["spec"]["containers"][0] or not (
        deployments["vllm-smol-a"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    )
    secrets = {m["metadata"]["name"]: m["stringData"] for m in _by_kind(manifests, "Secret")}
    assert secrets["vllm-big-secrets"] == {"api-key": "key-b", "hf-token": "hf_x"}
    services = {m["metadata"]["name"]: m["spec"] for m in _by_kind(manifests, "Service")}
    assert services["vllm-big"]["type"] == "ClusterIP" and services["vllm-big"]["ports"][0]["port"] == 8001
    assert len(_by_kind(manifests, "PodDisruptionBudget")) == 2
    policy = _by_kind(manifests, "NetworkPolicy")[0]["spec"]
    assert policy["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.0.0.5/32"}}]
    assert len(_by_kind(manifests, "ServiceMonitor")) == 2
    # Without the operator's CRD or only-gateway there is neither.
    plain = vllm_k8s_manifests(INSTANCES, MODELS, CLUSTER)
    assert not _by_kind(plain, "ServiceMonitor") and not _by_kind(plain, "NetworkPolicy")
    assert all(e["name"] != "HF_TOKEN" for d in _by_kind(plain, "Deployment")
               for e in d["spec"]["template"]["spec"]["containers"][0]["env"])
    # Files written for review carry no secret.
    assert "key-b" not in str(k8s_redacted(_by_kind(manifests, "Secret")[1], "<elsewhere>"))


def test_a_changed_key_rolls_the_pods():
    one = vllm_k8s_manifests(INSTANCES[:1], MODELS, {**CLUSTER, "secrets_checksum": "a"})
    two = vllm_k8s_manifests(INSTANCES[:1], MODELS, {**CLUSTER, "secrets_checksum": "b"})
    annotation = "llmfleet.io/secrets-checksum"
    assert (_by_kind(one, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"][annotation]
            != _by_kind(two, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"][annotation])


@pytest.mark.parametrize(("text", "number"), [("500m", 0.5), ("2", 2), ("4Gi", 4 * 2**30), ("1.5G", 1.5e9), (3, 3)])
def test_quantities(text, number):
    assert quantity(text) == pytest.approx(number)


def test_quantity_refuses_what_kubernetes_refuses():
    assert quantity("4 GB") is None and quantity("lots") is None and quantity(True) is None


def _errors(settings: dict, models: dict | None = None) -> list[str]:
    return check_kubernetes("k8s-a", ["kubernetes_clusters"], {}, settings, models or MODELS)


def test_checks_of_a_good_cluster_pass():
    assert _errors({"vllm_kubernetes_namespace": "llm-prod", "vllm_kubernetes_instances": INSTANCES,
                    "vllm_kubernetes_node_pools": {"ada": {"node_selector": {"gpu-type": "rtx-6000-ada"},
                                                           "gpus_per_node": 4}}}) == []


def test_checks_refuse_what_kubernetes_would():
    errors = _errors(
        {
            "vllm_kubernetes_namespace": "-llm",
            "fleet_only_ingress": True,
            "vllm_kubernetes_node_pools": {"ada": {"node_selector": {"gpu-type": "rtx-6000-ada"}, "gpus_per_node": 1}},
            "vllm_kubernetes_instances": [
                {**INSTANCES[1], "resources": {"requests": {"cpu": "4", "memory": "8Gi"},
                                               "limits": {"cpu": "2000m", "memory": "8 GB"}}},
                {**INSTANCES[0], "name": "big", "probes": {"startup": {"failure_threshold": 3}}},
            ],
        },
        {**MODELS, "smol": {**MODELS["smol"], "start_time_s": 60}},
    )
    text = "\n".join(errors)
    assert "vllm_kubernetes_namespace = '-llm' is not a name Kubernetes accepts" in text
    assert "vllm_kubernetes_gateway_ingress = []: the NetworkPolicy would admit nobody" in text
    assert "vllm_kubernetes_instances[0] (big) asks for 2 GPU(s) per pod" in text
    assert "vllm_kubernetes_instances[0] (big).resources.limits.cpu = '2000m' is below its request '4'" in text
    assert "vllm_kubernetes_instances[0] (big).resources.limits.memory = '8 GB' is not a Kubernetes quantity" in text
    assert "vllm_kubernetes_instances[1] (big).name = 'big' is already used by vllm_kubernetes_instances[0]" in text
    assert "vllm_kubernetes_instances[1] (big).probes.startup allows 30 s" in text
    assert len(errors) == 7, errors


def test_hosts_outside_the_group_are_not_checked():
    assert check_kubernetes("gpu-a", ["inference_nodes"], {}, {"vllm_kubernetes_namespace": "BAD"}, MODELS) == []


def test_gateway_routes_to_the_services_of_applied_clusters_only():
    hostvars = {
        "prod": {"vllm_kubernetes_namespace": "llm", "vllm_kubernetes_key_dir": "/keys/prod",
                 "vllm_kubernetes_instances": INSTANCES},
        "render-only": {"vllm_kubernetes_apply": False, "vllm_kubernetes_instances": INSTANCES},
    }
    # Through the registry, as the gateway reads them: each cluster's variables over vllm_kubernetes' defaults.
    records = fleet_endpoints(hostvars, {"kubernetes_clusters": ["prod", "render-only"]}, MODELS)
    assert [r["applied"] for r in records] == [True, True, False, False]
    backends = gateway_backends(records, MODELS)
    assert [(b["id"], b["api_base"], b["key_file"], b["backend_model"]) for b in backends] == [
        ("prod/smol_a", "http://vllm-smol-a.llm.svc.cluster.local:8000/v1", "/keys/prod/smol_a.apikey", "smol-135m"),
        ("prod/big", "http://vllm-big.llm.svc.cluster.local:8001/v1", "/keys/prod/big.apikey", "big"),
    ]
