#!/usr/bin/env bash
# Everything CI runs (`make test`, called by .ci/run). From a fresh clone on a fresh Debian machine:
# installs what it needs, lints, runs the unit tests, starts a Docker daemon if none answers, runs
# the molecule scenarios and the lab end to end, and removes what it started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export LLMFLEET_CACHE=${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
export PYTHONUNBUFFERED=1
T0=$(date +%s)

stage() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

lint() {
  stage "lint: ruff"
  ruff check .
  stage "lint: yamllint"
  yamllint -s .
  stage "lint: ansible-lint (profile production)"
  ansible-lint
}

unit() {
  stage "unit tests (and integration tests that need no lab)"
  pytest -q tests/unit tests/integration -m "not lab"
}

cleanup() {
  local rc=$?
  stage "cleanup: lab containers, molecule instances, and dockerd if we started it"
  llmfleet lab down --stop-daemon || true
  exit $rc
}

molecule_all() {
  local scenarios
  scenarios=$(for f in molecule/*/molecule.yml; do basename "$(dirname "$f")"; done)
  for s in $scenarios; do
    stage "molecule test -s $s"
    molecule test -s "$s"
  done
}

lab_e2e() {
  stage "lab: converge site.yml"
  llmfleet deploy site.yml
  stage "lab: second converge must change nothing"
  llmfleet deploy site.yml --expect-changed 0
  stage "lab: check mode on the converged lab must report no change"
  llmfleet check site.yml --expect-changed 0
  stage "lab: endpoint health (a real completion must answer Paris)"
  llmfleet lab status
  local addr key
  addr=$(docker inspect -f '{{(index .NetworkSettings.Networks "llmfleet-lab").IPAddress}}' lab-inference-1)
  key=$(docker exec lab-inference-1 cat /etc/vllm/smollm2.apikey)
  stage "lab: integration tests against the lab's vLLM at $addr (and a llama.cpp server they start)"
  LLMFLEET_TEST_VLLM_URL="http://$addr:8000" LLMFLEET_TEST_VLLM_MODEL=smollm2-135m LLMFLEET_TEST_VLLM_API_KEY="$key" \
    pytest -q tests/integration -m lab
}

all() {
  stage "bootstrap: Debian packages and .venv"
  scripts/bootstrap.sh all
  lint
  unit
  trap cleanup EXIT
  stage "lab up: Docker daemon, images, wheelhouse, lab model, containers"
  llmfleet lab up
  molecule_all
  lab_e2e
  stage "all passed"
}

case "${1:-all}" in
  lint) lint ;;
  unit) unit ;;
  molecule) molecule_all ;;
  lab) lab_e2e ;;
  all) all ;;
  *) echo "usage: $0 [all|lint|unit|molecule|lab]" >&2; exit 2 ;;
esac
