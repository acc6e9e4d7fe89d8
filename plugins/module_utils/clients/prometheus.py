# Copyright: llm-fleet contributors
# Apache-2.0
"""Prometheus' text exposition format (a server's ``/metrics``): parse samples, summarise serving load.

Standard library only; it travels to target hosts inside the llm_health / llm_bench modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass
class Sample:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    value: float = 0.0


def parse_prometheus_text(text: str) -> list[Sample]:
    """Samples from Prometheus' text format. Malformed lines are skipped, not fatal."""
    samples = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if not match:
            continue
        name, label_text, value_text = match.groups()
        labels: dict[str, str] = {}
        if label_text:
            inner = label_text[1:-1]
            pos = 0
            while pos < len(inner):
                lm = _LABEL_RE.match(inner, pos)
                if not lm:
                    break
                labels[lm.group(1)] = lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                pos = lm.end()
        try:
            value = float(value_text)
        except ValueError:
            continue
        samples.append(Sample(name, labels, value))
    return samples


# The serving metrics a health check cares about, by server family. Values are summed over
# label sets (several engines or models in one process), except ratios, which take the max.
_METRIC_MAP = {
    "running": ("vllm:num_requests_running", "llamacpp:requests_processing"),
    "waiting": ("vllm:num_requests_waiting", "llamacpp:requests_deferred"),
    "kv_cache_usage": (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "llamacpp:kv_cache_usage_ratio",
    ),
    "prompt_tokens_total": ("vllm:prompt_tokens_total", "llamacpp:prompt_tokens_total"),
    "generation_tokens_total": ("vllm:generation_tokens_total", "llamacpp:tokens_predicted_total"),
    "preemptions_total": ("vllm:num_preemptions_total",),
    "request_success_total": ("vllm:request_success_total",),
}
_RATIO_KEYS = ("kv_cache_usage",)


def summarize_serving_metrics(samples: list[Sample]) -> dict[str, Any]:
    """running / waiting requests, KV-cache usage (0..1) and token counters from /metrics samples.

    Keys whose metric the server does not export are absent. ``source`` names the server family
    ("vllm", "llamacpp") when one was recognised, and ``models`` lists ``model_name`` labels.
    """
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    summary: dict[str, Any] = {}
    for key, names in _METRIC_MAP.items():
        for name in names:
            if name in by_name:
                values = [s.value for s in by_name[name]]
                summary[key] = max(values) if key in _RATIO_KEYS else sum(values)
                break
    prefixes = {s.name.split(":", 1)[0] for s in samples if ":" in s.name}
    for family in ("vllm", "llamacpp"):
        if family in prefixes:
            summary["source"] = family
            break
    models = sorted({s.labels["model_name"] for s in samples if "model_name" in s.labels})
    if models:
        summary["models"] = models
    return summary
