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
