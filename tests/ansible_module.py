"""Run a module's ``main()`` in-process, as community.general's unit tests do.

``exit_json`` / ``fail_json`` are intercepted, so a test gets the module's payload back with
``failed`` set, and asserts on it: what changed, what check mode said, which value a message named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args


class _ModuleExit(Exception):
    pass


def run_module(main: Callable[[], None], args: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Run ``main`` with ``args``; return its exit payload plus ``failed``."""

    def exit_json(self: basic.AnsibleModule, **kwargs: Any) -> None:
        raise _ModuleExit(False, kwargs)

    def fail_json(self: basic.AnsibleModule, **kwargs: Any) -> None:
        raise _ModuleExit(True, kwargs)

    if check_mode:
        args = {**args, "_ansible_check_mode": True}
    with (
        patch_module_args(args),
        mock.patch.multiple(basic.AnsibleModule, exit_json=exit_json, fail_json=fail_json),
    ):
        try:
            main()
        except _ModuleExit as exc:
            failed, payload = exc.args
            return {**payload, "failed": failed}
    raise AssertionError("module did not exit")


def run_through_ansible(
    module: str, args: dict[str, Any], workdir: Path, timeout: int = 300
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run a repository module on localhost with the real ``ansible`` command (AnsiballZ packaging,
    module_utils shipped with it); return the process and the module's result."""
    repo = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(repo / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_CACHE_PLUGIN_CONNECTION=str(workdir / "facts"),
    )
    cmd = [
        str(Path(sys.executable).with_name("ansible")),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        module if "." in module else f"llmfleet.fleet.{module}",
        "-a",
        json.dumps(args),
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
