"""model_cache on the shared test lab: the systemd inference host copies the lab model over SSH
from the model_sources host (catalog source ``ssh``) and serves that copy.

Read-only tests (``lab``) look at what the converge left; the ``disruptive`` ones run the role
again through the real runner (tests/playbooks/model_cache_run.yml, limited to the
inference host): a flipped byte found by name (check mode repairs nothing) and repaired, and a
transfer killed half-way that the rerun resumes. None restarts the vLLM instances. A second run and
check mode changing nothing: make test's second converge and check mode of site.yml (see below).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import testinfra
from llmfleet import runner
from llmfleet_lab import containers as lab

PLAYBOOK = Path(__file__).resolve().parent.parent / "playbooks" / "model_cache_run.yml"
MODEL = "smollm2-135m"
CACHE = f"/var/cache/llmfleet/models/{MODEL}"
BIG = "model.safetensors"
HASHES = "cd %s && find . -type f ! -name .llmfleet-manifest.json -printf '%%P\\n' | sort | xargs -d '\\n' sha256sum"


@pytest.fixture(scope="module")
def hosts() -> dict:
    inventory = lab.read_inventory()
    syncing = [
        h
        for h in inventory
        if "inference_nodes" in h.groups
        and h.hostvars.get("model_cache_mode", "sync") == "sync"
        and h.hostvars.get("vllm_service_runtime", "systemd") == "systemd"
    ]
    sources = [h for h in inventory if "model_sources" in h.groups]
    if not syncing or not sources:
        pytest.fail(f"{lab.lab_inventory_path()} needs a systemd inference node in mode sync and a model_sources host")
    source_path = "/srv/llmfleet/models/smollm2-135m-instruct"
    return {
        "dest": syncing[0],
        "dest_host": testinfra.get_host(f"docker://{syncing[0].name}"),
        "source_host": testinfra.get_host(f"docker://{sources[0].name}"),
        "source_path": source_path,
    }


def _hashes(host, path: str) -> str:
    return host.check_output(HASHES, path)


def _pids(hosts) -> dict[str, str]:
    h = hosts["dest_host"]
    return {
        i["name"]: h.check_output("systemctl show -p MainPID --value vllm-%s.service", i["name"]).strip()
        for i in hosts["dest"].hostvars["vllm_service_instances"]
    }


def _run(hosts, tmp_path, check: bool = False, **extravars):
    req = runner.RunRequest(
        playbook=str(PLAYBOOK),
        inventory=str(lab.lab_inventory_path()),
        limit=hosts["dest"].name,
        check=check,
        extravars=extravars or None,
        summary_dir=tmp_path,
        quiet=True,
    )
    return runner.run(req)


def _results(hosts) -> list[dict]:
    return json.loads(hosts["dest_host"].file("/var/lib/llmfleet-test/model_cache.json").content_string)


# --------------------------------------------------------------------------------------- read-only
@pytest.mark.lab
def test_synced_cache_matches_the_source(hosts):
    manifest = json.loads(hosts["dest_host"].file(f"{CACHE}/.llmfleet-manifest.json").content_string)
    assert manifest["source"]["kind"] == "ssh"
    assert BIG in manifest["files"]
    assert _hashes(hosts["dest_host"], CACHE) == _hashes(hosts["source_host"], hosts["source_path"])


@pytest.mark.lab
def test_instances_serve_from_the_cache(hosts):
    for inst in hosts["dest"].hostvars["vllm_service_instances"]:
        unit = hosts["dest_host"].check_output("systemctl cat vllm-%s.service", inst["name"])
        env = hosts["dest_host"].run("cat /etc/vllm/%s.env", inst["name"]).stdout
        assert f"--model {CACHE}" in unit + env or f'"--model", "{CACHE}"' in unit + env, inst["name"]


# -------------------------------------------------------------------------------------- disruptive
# A second run and check mode of model_cache change nothing and restart no instance: make test's second
# converge of site.yml and its check-mode run (both --expect-changed 0; vllm_service includes
# model_cache on every inference host, this one included) are that test. Running the role twice more
# here cost 71 s of make test. On a dev lab: `llmfleet deploy site.yml ... --expect-changed 0`.


@pytest.mark.lab
@pytest.mark.disruptive
def test_flipped_byte_is_named_and_repaired(hosts, tmp_path):
    h = hosts["dest_host"]
    before = _pids(hosts)
    # Flip one byte, keeping size and mtime: only verify full can see it.
    h.check_output(
        "python3 -c %s",
        f"import os; p='{CACHE}/{BIG}'; st=os.stat(p); f=open(p,'r+b'); f.seek(1000); b=f.read(1); f.seek(1000); "
        "f.write(bytes([b[0] ^ 0xFF])); f.close(); os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))",
    )
    rc, summary, _ = _run(hosts, tmp_path / "check", check=True, model_cache_verify="full")
    assert rc == 0, summary["failed_tasks"]
    assert _hashes(h, CACHE) != _hashes(hosts["source_host"], hosts["source_path"]), "check mode repaired nothing"
    rc, summary, _ = _run(hosts, tmp_path / "repair", model_cache_verify="full")
    assert rc == 0, summary["failed_tasks"]
    result = _results(hosts)[0]
    assert [c["file"] for c in result["corrupted"]] == [BIG]
    size = int(h.check_output("stat -c %%s %s", f"{CACHE}/{BIG}"))
    assert size * 0.9 <= result["bytes_transferred"] <= size * 1.1, "about one file moved"
    assert _hashes(h, CACHE) == _hashes(hosts["source_host"], hosts["source_path"])
    assert _pids(hosts) == before


@pytest.mark.lab
@pytest.mark.disruptive
def test_killed_transfer_resumes(hosts, tmp_path):
    h = hosts["dest_host"]
    size = int(h.check_output("stat -c %%s %s", f"{CACHE}/{BIG}"))
    h.check_output("rm -f %s", f"{CACHE}/{BIG}")
    part = f"/var/cache/llmfleet/models/.{MODEL}.llmfleet/staging/{BIG}"
    outcome: dict = {}

    def slow_run():  # ~16 MB/s: the 270 MB file takes ~17 s, so "half-way" is reachable
        outcome["run"] = _run(hosts, tmp_path / "slow", model_cache_bwlimit_kbps=16384)

    thread = threading.Thread(target=slow_run)
    thread.start()
    killed = False
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline and not killed:
        got = h.run("stat -c %%s %s", part)
        if got.rc == 0 and int(got.stdout) > size // 3:
            pids = h.run("pgrep -x sftp || pgrep -x rsync").stdout.split()
            for pid in pids:  # the transfer this test started, by its process id
                h.run("kill %s", pid)
            killed = bool(pids)
        time.sleep(0.2)
    thread.join(180)
    assert killed, "the transfer was never seen half-way"
    rc, _, _ = outcome["run"]
    assert rc != 0, "the killed transfer must fail the run"
    partial = int(h.check_output("stat -c %%s %s", part))
    assert 0 < partial < size
    rc, summary, _ = _run(hosts, tmp_path / "resume")
    assert rc == 0, summary["failed_tasks"]
    result = _results(hosts)[0]
    assert result["bytes_transferred"] <= size - partial + (1 << 20), "only the rest was sent"
    assert result["bytes_transferred"] < size
    assert _hashes(h, CACHE) == _hashes(hosts["source_host"], hosts["source_path"])
