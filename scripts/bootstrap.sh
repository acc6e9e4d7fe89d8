#!/usr/bin/env bash
# Install what llm-fleet needs on the controller, idempotently:
#   system  Debian packages (docker.io only when no Docker daemon answers and dockerd is missing)
#   venv    .venv with the llmfleet package, Ansible (its PyPI package bundles the collections:
#           Galaxy is unreachable here), molecule, linters and the lab model's converters
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

system() {
  # openssh-server: the model_sync tests run sshd on 127.0.0.1 (rsync over ssh, the SFTP fallback).
  # prometheus, prometheus-alertmanager: promtool and amtool check the observability stack's files.
  local want=(debootstrap rsync curl iproute2 git ca-certificates openssh-server prometheus prometheus-alertmanager)
  if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then want+=(docker.io); fi
  local missing=()
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
      echo "bootstrap: missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
      exit 1
    fi
    echo "bootstrap: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# uv installs the venv's packages (about 25 s with an empty cache, seconds with a warm one, where pip
# spent 3-4 minutes on 2 cores resolving and unpacking); it is installed once into the cache with pip.
# Without it (no PyPI access to fetch it, LLMFLEET_NO_UV=1) pip does the same install.
uv_bin() {
  local tool="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}/tools/uv"
  if [ -z "${LLMFLEET_NO_UV:-}" ] && { [ -x "$tool/bin/uv" ] || {
    python3 -m venv "$tool" && "$tool/bin/python" -m pip install -q 'uv>=0.9,<1'; } >&2; }; then
    echo "$tool/bin/uv"
  fi
}

venv() {
  local stamp="$VENV/.llmfleet-stamp" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/llmfleet" ]; then return 0; fi
  echo "bootstrap: creating $VENV (wheels are cached in ~/.cache/uv or ~/.cache/pip: later runs are quick)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel
  # torch is pinned to the CPU build (2.13.0); the lab model step needs it, nothing else does. Where
  # this machine keeps wheels of its own (PIP_FIND_LINKS, /opt/wheels: the CPU torch), uv looks there
  # too, as pip does through PIP_FIND_LINKS.
  venv_install -e '.[dev,model]'
  echo "$want" > "$stamp"
}

# pip install into the venv, by uv where it can be had.
venv_install() {
  local uv links=() d
  uv=$(uv_bin || true)
  if [ -n "$uv" ]; then
    for d in ${PIP_FIND_LINKS:-} /opt/wheels; do if [ -d "$d" ]; then links+=(--find-links "$d"); fi; done
    "$uv" pip install -q --python "$VENV/bin/python" "${links[@]}" "$@"
  else
    "$VENV/bin/python" -m pip install -q "$@"
  fi
}

# llama.cpp's Python server (the llama.cpp side of llm_health's tests and the model pipeline):
# PyPI has only the sdist, which compiles for about 5 minutes on 2 cores; the wheel is built
# once into the cache and reinstalled from there in seconds. The sdist stays in the cache too:
# its vendored llama.cpp holds the GGUF converter the model pipeline unpacks on a workstation
# (model_pipeline_llama_cpp_sdist, /opt/llmfleet/wheels/ in the lab).
LLAMA_CPP=llama-cpp-python==0.3.36
llamacpp() {
  local cache="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}/wheels" whl sdist got
  sdist="$cache/llama_cpp_python-0.3.36.tar.gz"
  if [ ! -f "$sdist" ]; then
    mkdir -p "$cache"
    "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$cache" "$LLAMA_CPP"
    got=$(ls "$cache"/llama[-_]cpp[-_]python-0.3.36.tar.gz | head -n1)
    [ "$got" = "$sdist" ] || mv "$got" "$sdist"
  fi
  if "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then return 0; fi
  whl=$(ls "$cache"/llama_cpp_python-0.3.36-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    echo "bootstrap: building $LLAMA_CPP once (about 5 minutes; cached in $cache)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_USE_PREBUILT_UI=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=2 "$VENV/bin/python" -m pip wheel -q --no-deps -w "$cache" "$sdist"
    whl=$(ls "$cache"/llama_cpp_python-0.3.36-*.whl | head -n1)
  fi
  venv_install "llama-cpp-python[server] @ file://$whl"
}

case "${1:-all}" in
  system) system ;;
  venv) venv ;;
  llamacpp) llamacpp ;;
  all) system; venv; llamacpp ;;
  *) echo "usage: $0 [system|venv|llamacpp|all]" >&2; exit 2 ;;
esac
