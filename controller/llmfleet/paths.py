"""Where llm-fleet keeps things on the controller."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """The controller cache (models, wheelhouse, downloads): ``$LLMFLEET_CACHE`` or ``~/.cache/llmfleet``."""
    env = os.environ.get("LLMFLEET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmfleet"


def repo_root() -> Path:
    """The repository checkout this package runs from (``$LLMFLEET_REPO`` overrides)."""
    env = os.environ.get("LLMFLEET_REPO")
    return Path(env).resolve() if env else REPO_ROOT


DEFAULT_LAB = "lab"


def lab_name() -> str:
    """Which container lab this process drives: ``$LLMFLEET_LAB`` or ``lab`` (the user's ``make lab``).

    ``make test`` sets ``lab-test``: its own inventory (``inventories/lab-test``), containers,
    network, label and image tags, so a running ``make lab`` is left as it is.
    """
    name = os.environ.get("LLMFLEET_LAB", "").strip() or DEFAULT_LAB
    if not name.replace("-", "").isalnum() or name != name.lower():
        raise ValueError(f"LLMFLEET_LAB = {name!r}: use lowercase letters, digits and '-' (for example lab-test)")
    return name


def lab_inventory() -> Path:
    """The inventory of the selected lab: ``inventories/<lab name>/hosts.yml``."""
    return repo_root() / "inventories" / lab_name() / "hosts.yml"
