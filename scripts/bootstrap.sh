#!/usr/bin/env bash
# Install what llm-fleet needs on the controller, idempotently:
#   system  Debian packages (docker.io only when no Docker daemon answers and dockerd is missing)
#   venv    .venv with the llmfleet package, Ansible (its PyPI package bundles the collections:
#           Galaxy is unreachable here), molecule, linters and the lab model's converters
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

system() {
  local want=(debootstrap rsync curl iproute2 git ca-certificates)
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

venv() {
  local stamp="$VENV/.llmfleet-stamp" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/llmfleet" ]; then return 0; fi
  echo "bootstrap: creating $VENV (pip wheels are cached in ~/.cache/pip: later runs are quick)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip wheel
  # torch is pinned to the CPU build (2.13.0); the lab model step needs it, nothing else does.
  "$VENV/bin/python" -m pip install -q -e '.[dev,model]'
  echo "$want" > "$stamp"
}

case "${1:-all}" in
  system) system ;;
  venv) venv ;;
  all) system; venv ;;
  *) echo "usage: $0 [system|venv|all]" >&2; exit 2 ;;
esac
