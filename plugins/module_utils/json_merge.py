"""Merge settings into a JSON configuration file (Docker's daemon.json) without losing what is there.

Standard library only: this file travels to the target host with the module.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any


class ConfigFileError(Exception):
    """The existing file cannot be merged into (not JSON, or not a JSON object)."""


def load_json_object(text: str | None, path: str) -> dict[str, Any]:
    """The JSON object in ``text``; ``{}`` for a missing or empty file."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigFileError(f"{path} is not valid JSON ({exc}); fix or remove it before merging") from exc
    if not isinstance(value, dict):
        raise ConfigFileError(f"{path} holds a JSON {type(value).__name__}, not an object; cannot merge into it")
    return value


def deep_merge(current: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` with ``settings`` merged in: objects merge key by key, other values are replaced,
    and a key set to ``None`` is removed. Keys of ``current`` that ``settings`` does not name stay.
    """
    merged = copy.deepcopy(dict(current))
    for key, value in settings.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def render(config: Mapping[str, Any]) -> str:
    """The file content written: sorted keys, 4-space indent (as ``nvidia-ctk`` writes daemon.json)."""
    return json.dumps(config, indent=4, sort_keys=True) + "\n"


def plan_merge(text: str | None, settings: Mapping[str, Any], path: str) -> tuple[bool, dict[str, Any], str]:
    """Decide the merge: (changed, merged config, new content). Changed means the *content* differs,
    so a file with the same settings in another key order or indentation is left alone.
    """
    current = load_json_object(text, path)
    merged = deep_merge(current, settings)
    changed = text is None or merged != current
    return changed, merged, render(merged)
