"""No secret of the lab appears in what Ansible prints at its most verbose.

``make test`` runs check mode (``--check --diff``) of site.yml over the converged lab at ``-vvv``
and keeps its output (``LLMFLEET_TEST_CHECK_LOG``). Every secret the fleet holds is gathered from
where it really lives: the files only root may read (mode 0600) on every lab host (vLLM API keys,
the gateway's kept keys and its keys.json / backend_keys.json, the Slurm job's key, the
observability stack's generated secrets, ...) and the secrets the inventory gives (the variables
whose argument spec says ``no_log``). None may be in that output.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from llmfleet_lab import containers as lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
# Where the roles keep what they generate (files of at most 2 KiB, mode 0600, on each host).
ROOTS = ["/etc", "/opt", "/srv", "/var/lib/llmfleet", "/root", "/home", "/projects", "/shared"]
MIN_LEN = 16  # shorter values (ports, names) are not secrets, and would match by chance


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, errors="replace", check=False).stdout


SECRET_KEYS = ("key", "master", "password", "token", "secret")


def _strings(value, secret: bool = False) -> list[str]:
    """The strings inside a JSON value held under a key that names a secret (key, master, password ...)."""
    if isinstance(value, str):
        return [value] if secret else []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, any(w in str(k).lower() for w in SECRET_KEYS))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, secret)]
    return []


def _host_secrets(container: str) -> dict[str, str]:
    """{secret: where} from the host's small root-only files: one-line values, and the strings of JSON ones."""
    script = (
        "for d in " + " ".join(ROOTS) + '; do [ -d "$d" ] && find "$d" -type f -perm 0600 -size -3k '
        "-not -path '*/ssh/*' -not -name '*.pem' -not -name '*.key.pub' -print0; done "
        '| xargs -0 -r -I{} sh -c \'printf "==> %s\\n" "{}"; cat "{}"; printf "\\n"\''
    )
    out = _docker("exec", container, "sh", "-c", script)
    found: dict[str, str] = {}
    for chunk in out.split("==> ")[1:]:
        path, _, body = chunk.partition("\n")
        body = body.strip()
        try:
            values = _strings(json.loads(body))
        except ValueError:
            values = [body] if "\n" not in body and " " not in body else []
        for value in values:
            value = value.strip()
            if len(value) >= MIN_LEN and "/" not in value and value.isascii() and value.isprintable():
                found.setdefault(value, f"{container}:{path}")
    return found


def _no_log_options(spec: dict, prefix: str = "") -> set[str]:
    names = set()
    for name, option in (spec or {}).items():
        if not isinstance(option, dict):
            continue
        if option.get("no_log"):
            names.add(name)
        names |= _no_log_options(option.get("options") or {}, prefix + name + ".")
    return names


def _inventory_secrets(hosts: list[lab.LabHost]) -> dict[str, str]:
    """{secret: where} of the values the inventory gives for options the roles' specs mark no_log."""
    secret_names: set[str] = set()
    for spec_file in (REPO / "roles").glob("*/meta/argument_specs.yml"):
        for entry in (yaml.safe_load(spec_file.read_text()).get("argument_specs") or {}).values():
            secret_names |= _no_log_options(entry.get("options") or {})

    def walk(value, where: str, found: dict[str, str]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in secret_names and isinstance(item, str) and len(item) >= MIN_LEN and "{{" not in item:
                    found.setdefault(item, where + "." + key)
                walk(item, where + "." + str(key), found)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]", found)

    found: dict[str, str] = {}
    for host in hosts:
        walk(host.hostvars, host.name, found)
    return found


@pytest.fixture(scope="module")
def check_output() -> str:
    path = os.environ.get("LLMFLEET_TEST_CHECK_LOG", "")
    if not path or not Path(path).is_file():
        pytest.fail("LLMFLEET_TEST_CHECK_LOG names no file: make test keeps the -vvv check output of site.yml there")
    text = Path(path).read_text(errors="replace")
    assert "ESTABLISH" in text and "PLAY RECAP" in text, f"{path} is not the output of a -vvv run of site.yml"
    return text


def test_no_secret_of_the_lab_is_in_the_verbose_check_output(check_output: str) -> None:
    hosts = lab.read_inventory()
    running = set(_docker("ps", "--format", "{{.Names}}").split())
    secrets: dict[str, str] = {}
    for host in hosts:
        if host.name in running:
            secrets.update(_host_secrets(host.name))
    secrets.update(_inventory_secrets(hosts))
    # The lab has secrets to find: the vLLM keys, the gateway's keys, the Slurm job's key at least.
    assert len(secrets) >= 5, f"found only {sorted(secrets.values())}: the search looks in the wrong places"
    leaked = sorted(where for secret, where in secrets.items() if secret in check_output)
    assert not leaked, f"{len(leaked)} secret(s) of {len(secrets)} printed by site.yml -vvv --check --diff: {leaked}"
