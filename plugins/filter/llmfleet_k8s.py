"""Jinja filters that turn vLLM instances (the keys vllm_service uses, plus what only Kubernetes has)
into Kubernetes manifests: Namespace, Secret, PersistentVolumeClaim, Deployment, Service,
PodDisruptionBudget, NetworkPolicy and ServiceMonitor.

The server's arguments come from ``resolve_instance`` (plugins/filter/llmfleet_vllm.py), the function
the systemd unit and the Compose file of vllm_service are rendered from, so one instance definition
gives one command line on every runtime. ``k8s_schema_errors`` checks manifests against the
Kubernetes OpenAPI schemas of a release with PyPI's ``kubernetes-validate`` on the controller.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

try:  # the collection's own import path (ansible); tests put plugins/filter on sys.path
    from ansible_collections.llmfleet.fleet.plugins.filter.llmfleet_vllm import resolve_instance
    from ansible_collections.llmfleet.fleet.plugins.module_utils.fleet.endpoint import (
        catalog_costs,
        catalog_entry,
        endpoint,
        served_names,
    )
except ImportError:  # pragma: no cover
    from llmfleet_endpoint import catalog_costs, catalog_entry, endpoint, served_names
    from llmfleet_vllm import resolve_instance

APP = "vllm"
MANAGED_BY = "llm-fleet"
# Keys a Kubernetes instance has beyond vllm_service's (see roles/vllm_kubernetes/meta/argument_specs.yml).
K8S_ONLY_KEYS = (
    "replicas",
    "gpus",
    "resources",
    "node_selector",
    "tolerations",
    "shm_size",
    "probes",
    "image",
    "strategy",
)
# vllm_service keys that have no meaning in a pod (the GPUs are the pod's; the address is the pod's).
NOT_IN_A_POD = ("gpu_ids", "runtime", "host")


def k8s_name(instance_name: str) -> str:
    """The Kubernetes object name of an instance: ``vllm-<name>`` with ``_`` as ``-``."""
    return f"{APP}-{str(instance_name).replace('_', '-').lower()}"


def _labels(cluster: dict, instance: str | None = None) -> dict:
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/managed-by": MANAGED_BY}
    if instance is not None:
        labels["app.kubernetes.io/instance"] = k8s_name(instance)
    labels.update({str(k): str(v) for k, v in (cluster.get("labels") or {}).items()})
    return labels


def instance_gpus(inst: dict) -> int:
    """GPUs a pod asks for: ``gpus`` when given, else tensor x pipeline parallel size (at least 1
    unless ``gpus: 0``)."""
    if inst.get("gpus") is not None:
        return int(inst["gpus"])
    return int(inst.get("tensor_parallel_size") or 1) * int(inst.get("pipeline_parallel_size") or 1)


def startup_budget_s(probes: dict) -> int:
    """Seconds the startup probe lets the server take before the kubelet restarts it."""
    startup = probes.get("startup") or {}
    return int(startup.get("initial_delay_s", 0)) + int(startup.get("period_s", 10)) * int(
        startup.get("failure_threshold", 60)
    )


DEFAULT_PROBES = {
    # Until /health answers, only the startup probe runs: a slow model load is not a failed liveness.
    "startup": {"initial_delay_s": 0, "period_s": 10, "failure_threshold": 60, "timeout_s": 5},
    "readiness": {"initial_delay_s": 0, "period_s": 10, "failure_threshold": 3, "timeout_s": 5},
    "liveness": {"initial_delay_s": 0, "period_s": 30, "failure_threshold": 3, "timeout_s": 10},
}


def instance_probes(inst: dict) -> dict:
    given = inst.get("probes") or {}
    return {kind: {**DEFAULT_PROBES[kind], **(given.get(kind) or {})} for kind in DEFAULT_PROBES}


def _probe(spec: dict) -> dict:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "initialDelaySeconds": int(spec["initial_delay_s"]),
        "periodSeconds": int(spec["period_s"]),
        "failureThreshold": int(spec["failure_threshold"]),
        "timeoutSeconds": int(spec["timeout_s"]),
    }


def model_location(model: str, entry: dict, cluster: dict) -> str | None:
    """Where the pod reads a catalog model: None for a Hugging Face source (vLLM downloads it into
    HF_HOME on the models volume, with the pinned revision); else ``<models mount>/<catalog name>`` on
    that volume (a path or ssh source: the volume must hold it, e.g. synced there with model_sync)."""
    source = entry.get("source") or {}
    if source.get("hf"):
        return None
    return f"{cluster.get('model_mount', '/models')}/{model}"


def resolve_k8s_instance(inst: dict, models: dict, cluster: dict) -> dict:
    """vllm_service's resolution of the instance, as a pod runs it: on 0.0.0.0, the model from the
    models volume (or Hugging Face), no GPU ids (the pod's GPUs are the ones it was given)."""
    pod_inst = {k: v for k, v in inst.items() if k not in NOT_IN_A_POD and k not in K8S_ONLY_KEYS}
    model = inst.get("model")
    if model not in (models or {}):
        raise AnsibleFilterError(
            f"vllm_kubernetes_instances {inst.get('name')!r}: model {model!r} is not in fleet_models "
            f"(known: {', '.join(sorted(models or {})) or 'none'})"
        )
    location = model_location(model, models[model] or {}, cluster)
    return resolve_instance(pod_inst, models, None, {model: location} if location else None)


def _env(resolved: dict, cluster: dict, secret: str) -> list[dict]:
    env = [
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret, "key": "api-key"}}},
        {"name": "HF_HOME", "value": f"{cluster.get('model_mount', '/models')}/hf-cache"},
    ]
    if cluster.get("hf_token_set"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "hf-token"}}})
    env += [{"name": k, "value": v} for k, v in sorted(resolved["env"].items())]
    return env


def _resources(inst: dict) -> dict:
    given = inst.get("resources") or {}
    requests = {str(k): str(v) for k, v in (given.get("requests") or {}).items()}
    limits = {str(k): str(v) for k, v in (given.get("limits") or {}).items()}
    gpus = instance_gpus(inst)
    if gpus > 0:
        # Extended resources: the request must equal the limit.
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _deployment(inst: dict, resolved: dict, cluster: dict) -> dict:
    name = k8s_name(inst["name"])
    secret = f"{name}-secrets"
    labels = _labels(cluster, inst["name"])
    probes = instance_probes(inst)
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "vllm",
                "image": str(inst.get("image") or cluster["image"]),
                "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                "args": resolved["args"],
                "env": _env(resolved, cluster, secret),
                "ports": [{"name": "http", "containerPort": resolved["port"], "protocol": "TCP"}],
                "resources": _resources(inst),
                "volumeMounts": [
                    {"name": "models", "mountPath": cluster.get("model_mount", "/models")},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
                "startupProbe": _probe(probes["startup"]),
                "readinessProbe": _probe(probes["readiness"]),
                "livenessProbe": _probe(probes["liveness"]),
            }
        ],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": cluster.get("model_pvc", "vllm-models")}},
            # The engine's workers share tensors through /dev/shm: a memory-backed emptyDir, not the 64 MiB default.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(inst.get("shm_size") or "2Gi")}},
        ],
        "terminationGracePeriodSeconds": 60,
    }
    if inst.get("node_selector"):
        pod_spec["nodeSelector"] = {str(k): str(v) for k, v in inst["node_selector"].items()}
    if inst.get("tolerations"):
        pod_spec["tolerations"] = list(inst["tolerations"])
    strategy = inst.get("strategy") or {
        # GPUs are scarce: replace a pod in place rather than asking for a second set of GPUs first.
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": cluster["namespace"], "labels": labels},
        "spec": {
            "replicas": int(inst.get("replicas", 1)),
            "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
            "strategy": strategy,
            "template": {
                "metadata": {
                    "labels": labels,
                    # A changed key or token rolls the pods (the Secret's content is not in the pod spec).
                    "annotations": {"llmfleet.io/secrets-checksum": str(cluster.get("secrets_checksum", ""))},
                },
                "spec": pod_spec,
            },
        },
    }


def vllm_k8s_manifests(instances: list[dict], models: dict, cluster: dict, api_keys: dict | None = None) -> list[dict]:
    """Every manifest of one cluster's instances, in the order they are applied.

    ``cluster``: namespace, image, model_pvc, model_pvc_size, storage_class, model_mount,
    access_modes, hf_token (secret), only_gateway (bool), gateway_ingress (NetworkPolicy ``from``
    peers), servicemonitor (bool: the Prometheus Operator's CRD is there), labels.
    ``api_keys``: instance name -> its API key (the Secret's content).
    """
    api_keys = api_keys or {}
    namespace = cluster["namespace"]
    base = _labels(cluster)
    manifests: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": base}},
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": cluster.get("model_pvc", "vllm-models"), "namespace": namespace, "labels": base},
            "spec": {
                "accessModes": list(cluster.get("access_modes") or ["ReadWriteMany"]),
                "resources": {"requests": {"storage": str(cluster.get("model_pvc_size", "100Gi"))}},
                **({"storageClassName": cluster["storage_class"]} if cluster.get("storage_class") else {}),
            },
        },
    ]
    for inst in instances or []:
        resolved = resolve_k8s_instance(inst, models, cluster)
        name = k8s_name(inst["name"])
        labels = _labels(cluster, inst["name"])
        selector = {"app.kubernetes.io/instance": name}
        secret_data = {"api-key": str(api_keys.get(inst["name"], ""))}
        if cluster.get("hf_token"):
            secret_data["hf-token"] = str(cluster["hf_token"])
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-secrets", "namespace": namespace, "labels": labels},
                "type": "Opaque",
                "stringData": secret_data,
            }
        )
        manifests.append(_deployment(inst, resolved, {**cluster, "hf_token_set": bool(cluster.get("hf_token"))}))
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {
                    "type": "ClusterIP",
                    "selector": selector,
                    "ports": [{"name": "http", "port": resolved["port"], "targetPort": "http", "protocol": "TCP"}],
                },
            }
        )
        manifests.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                # At most one pod of an instance is evicted at a time (a node drain waits for its replacement).
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
            }
        )
        if cluster.get("only_gateway"):
            manifests.append(
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {"name": f"{name}-only-gateway", "namespace": namespace, "labels": labels},
                    "spec": {
                        "podSelector": {"matchLabels": selector},
                        "policyTypes": ["Ingress"],
                        "ingress": [
                            {
                                "from": list(cluster.get("gateway_ingress") or []),
                                "ports": [{"protocol": "TCP", "port": resolved["port"]}],
                            }
                        ],
                    },
                }
            )
        if cluster.get("servicemonitor"):
            manifests.append(
                {
                    "apiVersion": "monitoring.coreos.com/v1",
                    "kind": "ServiceMonitor",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels},
                    "spec": {
                        "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
                        "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
                    },
                }
            )
    return manifests


def vllm_k8s_args(instances: list[dict], models: dict, cluster: dict) -> dict:
    """Instance name -> the server arguments its pod runs (for comparing with the other runtimes)."""
    return {inst["name"]: resolve_k8s_instance(inst, models, cluster)["args"] for inst in instances or []}


def k8s_schema_errors(manifests: list[dict], version: str = "1.37.0", strict: bool = True) -> list[str]:
    """Each manifest checked against the OpenAPI schema of Kubernetes ``version`` (kubernetes-validate).

    Kinds no Kubernetes release defines (ServiceMonitor: a CRD of the Prometheus Operator) are
    reported in ``k8s_schema_skipped`` instead."""
    try:
        import kubernetes_validate
    except ImportError as exc:
        raise AnsibleFilterError(
            f"kubernetes-validate is not installed in the controller's Python ({exc}); "
            "pip install kubernetes-validate, or set vllm_kubernetes_validate_schemas: false"
        ) from exc
    errors = []
    for manifest in manifests or []:
        what = f"{manifest.get('kind')}/{(manifest.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(manifest, version, strict)
        except kubernetes_validate.SchemaNotFoundError:
            continue
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{what}: {exc.message} (at {'.'.join(str(p) for p in exc.path) or 'the top'})")
        except kubernetes_validate.InvalidSchemaError as exc:  # pragma: no cover
            errors.append(f"{what}: the schema of Kubernetes {version} is invalid: {exc}")
    return errors


def k8s_schema_skipped(manifests: list[dict], version: str = "1.37.0") -> list[str]:
    """apiVersion/kind of the ``manifests`` Kubernetes ``version`` has no schema for (custom resources)."""
    import kubernetes_validate

    skipped = set()
    for manifest in manifests or []:
        try:
            kubernetes_validate.validate(manifest, version, False)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.add(f"{manifest.get('apiVersion')}/{manifest.get('kind')}")
        except kubernetes_validate.ValidationError:
            pass
    return sorted(skipped)


def k8s_redacted(manifest: dict, note: str) -> dict:
    """A Secret with each value replaced by ``note`` (for files written for review); others as they are."""
    if manifest.get("kind") != "Secret":
        return manifest
    return {**manifest, "stringData": {key: note for key in manifest.get("stringData") or {}}}


def k8s_endpoints(cluster: str, hostvars: Any, models: dict) -> list[dict]:
    """The endpoint records of a Kubernetes cluster entry (``hostvars``: its variables, role defaults
    included): one per instance, its ClusterIP Service
    (``http://vllm-<instance>.<namespace>.svc.<domain>:<port>/v1``), its key in the controller's key
    directory. A cluster only rendered (``vllm_kubernetes_apply`` false) gives records marked
    ``applied: false``: they serve nothing and no consumer routes to or scrapes them."""
    namespace = str(hostvars["vllm_kubernetes_namespace"])
    domain = str(hostvars["vllm_kubernetes_cluster_domain"])
    key_dir = str(hostvars["vllm_kubernetes_key_dir"] or "")
    applied = boolean(hostvars["vllm_kubernetes_apply"], strict=False)
    records = []
    for index, inst in enumerate(hostvars.get("vllm_kubernetes_instances") or []):
        model = inst.get("model")
        entry = catalog_entry(models, model, f"host {cluster}: vllm_kubernetes_instances[{index}] ({inst.get('name')})")
        service = k8s_name(inst["name"])
        records.append(
            endpoint(
                kind="vllm",
                runtime="kubernetes",
                host=cluster,
                instance=str(inst["name"]),
                model=str(model),
                served=served_names(inst, entry, model),
                base_url=f"http://{service}.{namespace}.svc.{domain}:{int(inst['port'])}/v1",
                costs=catalog_costs(model, entry),
                key_file=f"{key_dir}/{inst['name']}.apikey" if key_dir else "",
                key_on="controller",
                api_key=str(inst.get("api_key") or ""),
                scrape_auth="bearer",
                applied=applied,
            )
        )
    return records


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "vllm_k8s_manifests": vllm_k8s_manifests,
            "vllm_k8s_args": vllm_k8s_args,
            "vllm_k8s_name": k8s_name,
            "k8s_schema_errors": k8s_schema_errors,
            "k8s_schema_skipped": k8s_schema_skipped,
            "k8s_redacted": k8s_redacted,
        }
