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
sys.path.insert(0, str(REPO / "controller"))
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


# Where a pytest test lives says what it needs, and make test picks the folders by that:
#   tests/unit    pure Python, no server;
#   tests/system  real servers and the real runner that the test starts itself (no lab);
#   tests/lab     the converged test lab (marked `lab`; the ones that restart or kill its
#                 servers also `disruptive`, run last).
# A test whose marker disagrees with its folder would be run in the wrong stage, or in none.
def pytest_collection_modifyitems(config, items):
    wrong = []
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        marked = item.get_closest_marker("lab") is not None
        if (folder == "lab") != marked and folder in ("lab", "system", "unit"):
            wrong.append(f"{item.nodeid}: in tests/{folder}, {'marked' if marked else 'not marked'} lab")
        if item.get_closest_marker("disruptive") is not None and not marked:
            wrong.append(f"{item.nodeid}: disruptive but not marked lab")
    if wrong:
        raise pytest.UsageError("tests in the wrong folder for their marker:\n  " + "\n  ".join(wrong))
