"""Shared pytest setup: make the repository's Ansible plugins importable the way Ansible imports them.

The repository is the collection ``llmfleet.fleet``: modules import their shared code as
``ansible_collections.llmfleet.fleet.plugins.module_utils.<name>``. Here ``collections/`` (where
``ansible_collections/llmfleet/fleet`` links back to the repository) goes on ``sys.path``, and
``plugins/modules`` too, so tests can import modules by name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "collections"))
sys.path.insert(0, str(REPO / "plugins" / "modules"))
sys.path.insert(0, str(REPO / "plugins" / "filter"))
sys.path.insert(0, str(REPO / "library"))
sys.path.insert(0, str(REPO / "tests"))


def _lab_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(
            f"{name} is not set: lab tests need the converged container lab "
            "(run them through `make test`, or `make lab` and export the variable)",
        )
    return value


@pytest.fixture(scope="session")
def vllm_url() -> str:
    """Base URL of the lab's real vLLM endpoint (set by `make test` after the lab converge)."""
    return _lab_env("LLMFLEET_TEST_VLLM_URL")


@pytest.fixture(scope="session")
def vllm_model() -> str:
    """Served model name of the lab's real vLLM endpoint."""
    return _lab_env("LLMFLEET_TEST_VLLM_MODEL")


@pytest.fixture(scope="session")
def vllm_api_key() -> str:
    """The lab endpoint's API key (LLMFLEET_TEST_VLLM_API_KEY; empty for a server without one)."""
    return os.environ.get("LLMFLEET_TEST_VLLM_API_KEY", "")
