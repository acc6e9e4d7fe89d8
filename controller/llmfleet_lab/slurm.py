"""A real Slurm cluster in the container lab: controller, compute nodes and login hosts.

Hosts with ``lab_image: slurm`` get an image built on the lab's systemd image with Debian's
``slurm-wlm``, ``munge`` and ``openssh-server`` (built once, cached by its recipe digest like the other
lab images). The munge key is made when the image is built, so every Slurm container shares it.
``slurm.conf`` is rendered from the inventory: the host in ``lab_slurm_controller`` runs slurmctld,
the hosts in ``lab_slurm_compute`` run slurmd (hostname = NodeName, on the lab's user-defined
network), and the login hosts (``slurm_login``) get munge and the client commands. A Docker named
volume labelled with the lab's label is mounted at the same path on every Slurm host (shared storage,
as /projects or /scratch on a real cluster); ``llmfleet lab down`` removes it.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from docker.errors import DockerException

Log = Callable[[str], None]

SLURM_IMAGE = "llmfleet/slurm:bookworm"
CONTROLLER_GROUP = "lab_slurm_controller"
COMPUTE_GROUP = "lab_slurm_compute"
LOGIN_GROUP = "slurm_login"
SHARED_PATH = "/shared"
# What a compute container declares to Slurm (slurmd uses these, not the hardware: config_overrides).
DEFAULT_CPUS = 2
DEFAULT_REAL_MEMORY_MB = 3072
DEFAULT_PARTITION = "lab"

DOCKERFILE = """\
ARG BASE_IMAGE=llmfleet/systemd:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# munge's postinst makes /etc/munge/munge.key: every container of this image shares it.
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends slurm-wlm munge openssh-server openssh-client rsync \\
 && apt-get clean \\
 && mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm \\
 && chown slurm:slurm /var/spool/slurmctld /var/log/slurm \\
 && systemctl disable slurmctld.service slurmd.service \\
 && systemctl enable munge.service ssh.service
"""


def is_slurm(host) -> bool:
    return host.hostvars.get("lab_image") == "slurm"


def shared_volume_name(lab: str) -> str:
    return f"llmfleet-{lab}-slurm-shared"


def shared_path(host) -> str:
    return str(host.hostvars.get("lab_slurm_shared_path", SHARED_PATH))


def build_image(client, log: Log, systemd_image: str, recipe_of, digest, recipe_label: str) -> bool:
    """The Slurm image on the systemd image; rebuilt only when its recipe changes."""
    recipe = digest("slurm", recipe_of(client, systemd_image) or "", DOCKERFILE)
    if recipe_of(client, SLURM_IMAGE) == recipe:
        return False
    log(f"images: building {SLURM_IMAGE} (slurm-wlm, munge; about 90 s)")
    with tempfile.TemporaryDirectory(prefix="llmfleet-slurm-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(DOCKERFILE)
        try:
            _, logs = client.images.build(
                path=ctx,
                tag=SLURM_IMAGE,
                rm=True,
                forcerm=True,
                pull=False,
                buildargs={"BASE_IMAGE": systemd_image},
                labels={recipe_label: recipe},
            )
            for _ in logs:
                pass
        except DockerException as exc:
            raise RuntimeError(f"building {SLURM_IMAGE} failed: {exc}") from exc
    log(f"images: {SLURM_IMAGE} built")
    return True


def container_volumes(host, lab: str) -> dict:
    """The shared-storage volume, for a Slurm host's container spec."""
    if not is_slurm(host):
        return {}
    return {shared_volume_name(lab): {"bind": shared_path(host), "mode": "rw"}}


def ensure_volume(client, lab: str, label: str) -> None:
    name = shared_volume_name(lab)
    existing = [v for v in client.volumes.list(filters={"label": f"{label}={lab}"}) if v.name == name]
    if not existing:
        client.volumes.create(name=name, labels={label: lab})


def remove_volumes(client, lab: str, label: str, log: Log) -> None:
    for volume in client.volumes.list(filters={"label": f"{label}={lab}"}):
        volume.remove(force=True)
        log(f"lab: removed volume {volume.name}")


def _node_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise ValueError(f"lab Slurm host {name!r}: a NodeName must be letters, digits and '-'")
    return name


def render_conf(hosts, lab: str) -> str:
    """slurm.conf for the lab's Slurm hosts (raises ValueError when the groups do not make a cluster)."""
    controllers = [h for h in hosts if CONTROLLER_GROUP in h.groups]
    computes = [h for h in hosts if COMPUTE_GROUP in h.groups]
    if len(controllers) != 1:
        raise ValueError(f"a lab Slurm cluster needs exactly one host in {CONTROLLER_GROUP}, found {len(controllers)}")
    if not computes:
        raise ValueError(f"a lab Slurm cluster needs hosts in {COMPUTE_GROUP}")
    cluster = re.sub(r"[^a-z0-9]", "", lab.lower())[:20] or "lab"
    lines = [
        "# Rendered by llmfleet lab up (controller/llmfleet_lab/slurm.py) from the lab inventory.",
        f"ClusterName={cluster}",
        f"SlurmctldHost={_node_name(controllers[0].name)}",
        "AuthType=auth/munge",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "SlurmdParameters=config_overrides",
        "MinJobAge=600",
        "StateSaveLocation=/var/spool/slurmctld",
        "SlurmdSpoolDir=/var/spool/slurmd",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd.pid",
    ]
    partitions: dict[str, list[str]] = {}
    for host in computes:
        cpus = int(host.hostvars.get("lab_slurm_cpus", DEFAULT_CPUS))
        mem = int(host.hostvars.get("lab_slurm_real_memory_mb", DEFAULT_REAL_MEMORY_MB))
        lines.append(f"NodeName={_node_name(host.name)} CPUs={cpus} RealMemory={mem} State=UNKNOWN")
        partitions.setdefault(str(host.hostvars.get("lab_slurm_partition", DEFAULT_PARTITION)), []).append(host.name)
    for index, (part, nodes) in enumerate(sorted(partitions.items())):
        default = "YES" if index == 0 else "NO"
        lines.append(f"PartitionName={part} Nodes={','.join(nodes)} Default={default} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _put_file(container, path: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(Path(path).name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    container.put_archive(str(Path(path).parent), buf.getvalue())


def _exec(container, cmd: list[str]) -> tuple[int, str]:
    code, out = container.exec_run(cmd)
    return code, out.decode(errors="replace")


def configure(client, hosts, lab: str, log: Log, timeout_s: float = 90.0) -> None:
    """Write slurm.conf everywhere, start munge + slurmctld/slurmd, wait for idle compute nodes."""
    slurm_hosts = [h for h in hosts if is_slurm(h)]
    if not slurm_hosts:
        return
    conf = render_conf(slurm_hosts, lab)
    digest = hashlib.sha256(conf.encode()).hexdigest()[:16]
    for host in slurm_hosts:
        container = client.containers.get(host.name)
        _, current = _exec(container, ["cat", "/etc/slurm/slurm.conf"])
        changed = current != conf
        if changed:
            _put_file(container, "/etc/slurm/slurm.conf", conf)
        _exec(container, ["mkdir", "-p", shared_path(host)])
        _exec(container, ["chmod", "1777", shared_path(host)])
        _exec(container, ["systemctl", "start", "munge"])
        units = []
        if CONTROLLER_GROUP in host.groups:
            units.append("slurmctld")
        if COMPUTE_GROUP in host.groups:
            units.append("slurmd")
        for unit in units:
            verb = "restart" if changed else "start"
            code, out = _exec(container, ["systemctl", verb, unit])
            if code != 0:
                _, logs = _exec(container, ["journalctl", "-u", unit, "-n", "30", "--no-pager"])
                raise RuntimeError(f"lab host {host.name}: systemctl {verb} {unit} failed: {out}{logs[-1500:]}")
    controller = next(h for h in slurm_hosts if CONTROLLER_GROUP in h.groups)
    computes = sorted(h.name for h in slurm_hosts if COMPUTE_GROUP in h.groups)
    container = client.containers.get(controller.name)
    deadline = time.monotonic() + timeout_s
    states = ""
    while time.monotonic() < deadline:
        code, states = _exec(container, ["sinfo", "-h", "-N", "-o", "%N %T"])
        idle = {
            line.split()[0]
            for line in states.splitlines()
            if len(line.split()) == 2 and line.split()[1] in ("idle", "mixed", "allocated")
        }
        if code == 0 and set(computes) <= idle:
            log(f"lab: slurm cluster up (conf {digest}): {', '.join(computes)} idle")
            return
        for line in states.splitlines():
            words = line.split()
            if len(words) == 2 and words[1].rstrip("*~#") in ("down", "drained", "draining", "unknown"):
                _exec(container, ["scontrol", "update", f"NodeName={words[0]}", "State=RESUME"])
        time.sleep(2)
    raise RuntimeError(f"lab Slurm cluster: compute nodes not idle after {timeout_s:.0f} s; sinfo: {states.strip()}")
