# Copyright: llm-fleet contributors
# Apache-2.0
"""Image references as Docker reads them: `repo[:tag]`, the registry a repository lives on, a file-name slug."""

from __future__ import annotations

import re

from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError


def slug(text: str) -> str:
    """A file-name-safe form of an image reference: `127.0.0.1:5000/a/b:t` -> `127.0.0.1_5000_a_b_t`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def split_reference(ref: str) -> tuple[str, str]:
    """Split `repo[:tag]` (the repo may hold a registry port) into (repo, tag); tag defaults to latest."""
    if "@" in ref:
        raise ImageError(f"image reference {ref!r} pins a digest; give a tag instead")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def registry_of(repository: str) -> str:
    """The registry host of a repository name, as Docker reads it (`docker.io` when none)."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
