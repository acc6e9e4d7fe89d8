#!/usr/bin/env bash
# `ansible-test sanity` and `ansible-test units` on the repository as the collection llmfleet.fleet
# (galaxy.yml at the root), offline but for the package indexes this machine's pip already uses.
#
#   scripts/sanity.sh sanity | units | all      (default: all)
#
# ansible-test wants the collection at a physical path .../ansible_collections/<namespace>/<name>/
# (it uses the real cwd, so the collections/ link of a clone does not do) with a git repository there
# (it lists the files through git). So the files a commit would take (tracked, plus untracked ones
# that are not ignored; not the collections/ link) are copied into a temporary tree, committed
# there, tested there, and the tree is removed afterwards (LLMFLEET_SANITY_KEEP=1 keeps it).
#
# ansible-test bootstraps pip into each virtual environment it makes with a get-pip script it
# downloads from a site these machines cannot reach, unless a copy is cached in
# ~/.ansible/test/cache/get_pip_<version>.py. When none is there, this script writes a stand-in: it
# runs `ensurepip`, then `pip install` with the arguments ansible-test passed (the pinned pip), and
# gives the new environment a pip.conf with this machine's pip settings (index, CA bundle,
# constraints), which ansible-test's clean environment would otherwise drop.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV_BIN=${LLMFLEET_VENV_BIN:-$REPO/.venv/bin}
export PATH="$VENV_BIN:$PATH"
PYTHON_VERSION=3.11
COLLECTION_PATH=ansible_collections/llmfleet/fleet
STANDIN_MARK="llm-fleet get-pip stand-in"

# Sanity tests not run, each with its reason (everything else ansible-test offers runs):
#   pylint      ansible-core's pylint settings forbid `_` as a throwaway name (disallowed-name: 65 of
#               its 67 findings here, measured 2026-12-01), the Python convention ruff and this
#               project follow; ruff (make lint) is the project's Python linter. It also takes ~75 s.
#   shellcheck  needs the shellcheck binary, which the bootstrap does not install.
#   pslint      PowerShell only; there is none here.
#   changelog   the collection keeps no changelogs/ fragments (antsibull-changelog is not used).
SKIP_TESTS=(pylint shellcheck pslint changelog)

T0=$(date +%s)
stage() { printf '\n==> [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

die() {
  echo "sanity.sh: $*" >&2
  exit 2
}

[[ -x $VENV_BIN/ansible-test ]] || die "no $VENV_BIN/ansible-test: run \`make venv\` first"

# The pip version ansible-test pins for the virtual environments it creates (24.2 for ansible-core 2.19).
pip_version() {
  "$VENV_BIN/python" - <<'EOF'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version="3.11"))["pip"])
EOF
}

# This machine's pip settings (environment, global, site and user files), as one [global] section.
pip_conf() {
  "$VENV_BIN/pip" config list | "$VENV_BIN/python" -c '
import ast, sys
values = {}
for line in sys.stdin:
    key, _, value = line.rstrip("\n").partition("=")
    section, _, name = key.rpartition(".")
    if section in (":env:", "global", "install") and name:
        values[name] = ast.literal_eval(value)
print("[global]")
for name, value in values.items():
    print(f"{name} = {value}")
'
}

write_standin() {
  local version cache conf
  version=$(pip_version)
  cache=$HOME/.ansible/test/cache/get_pip_${version//./_}.py
  if [[ -e $cache ]] && ! grep -q "$STANDIN_MARK" "$cache"; then
    echo "using the get-pip script already at $cache"
    return
  fi
  conf=$(pip_conf)
  mkdir -p "$(dirname "$cache")"
  local tmp
  tmp=$(mktemp "$cache.XXXXXX")
  cat >"$tmp" <<EOF
"""${STANDIN_MARK} (written by llm-fleet scripts/sanity.sh), in place of get-pip.py ${version}.

ansible-test runs this as __main__ with the new virtual environment's python and get-pip's arguments
(pip install arguments, plus --no-setuptools / --no-wheel). It installs pip with ensurepip, gives the
environment this machine's pip settings, then runs pip install with those arguments.
"""

import os
import subprocess
import sys

PIP_CONF = '''${conf}
'''


def main():
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    with open(os.path.join(sys.prefix, "pip.conf"), "w") as conf:
        conf.write(PIP_CONF)
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
    if "--no-setuptools" in sys.argv[1:]:
        # get-pip installs no setuptools when told so; ensurepip of Python < 3.12 brings it along.
        listed = subprocess.run([sys.executable, "-m", "pip", "show", "-q", "setuptools"], check=False)
        if listed.returncode == 0:
            subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "setuptools"])


main()
EOF
  if [[ -e $cache ]] && cmp -s "$tmp" "$cache"; then
    rm -f "$tmp"
  else
    mv "$tmp" "$cache"
    echo "wrote the get-pip stand-in $cache"
  fi
}

# Copy what a commit would take into <tmp>/ansible_collections/llmfleet/fleet and commit it there.
make_tree() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/llmfleet-sanity.XXXXXX")
  if [[ ${LLMFLEET_SANITY_KEEP:-0} == 1 ]]; then
    trap 'echo "kept $WORK"' EXIT
  else
    trap 'rm -rf "$WORK"' EXIT
  fi
  TREE=$WORK/$COLLECTION_PATH
  mkdir -p "$TREE"
  git ls-files -z --cached --others --exclude-standard -- . ':(exclude)collections' |
    while IFS= read -r -d '' f; do
      if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi # tracked but deleted in the work tree: skip
    done |
    tar --null -T - -cf - | tar -xf - -C "$TREE"
  git -C "$TREE" init -q
  git -C "$TREE" add -A
  git -C "$TREE" -c user.name=llm-fleet-sanity -c user.email=sanity@localhost -c commit.gpgsign=false \
    commit -q -m "snapshot for ansible-test"
}

# Run ansible-test in the tree; print how long it took and whether it passed; return its status.
ansible_test() {
  local name=$1 start rc=0
  shift
  start=$(date +%s)
  (cd "$TREE" && ansible-test "$@") || rc=$?
  if ((rc == 0)); then
    echo "ansible-test $name: passed in $(($(date +%s) - start))s"
  else
    echo "ansible-test $name: FAILED (exit $rc) after $(($(date +%s) - start))s" >&2
  fi
  return $rc
}

run_sanity() {
  local skip=() t
  for t in "${SKIP_TESTS[@]}"; do skip+=(--skip-test "$t"); done
  stage "ansible-test sanity --python $PYTHON_VERSION (skipping: ${SKIP_TESTS[*]})"
  ansible_test sanity sanity --python "$PYTHON_VERSION" --color no "${skip[@]}"
}

# ansible-test units runs tests/unit with its collection loader, in a virtual environment it
# makes with its own requirements (pytest, pytest-xdist, mock) plus tests/unit/requirements.txt.
run_units() {
  stage "ansible-test units --python $PYTHON_VERSION --venv --requirements (tests/unit)"
  ansible_test units units --python "$PYTHON_VERSION" --venv --requirements --color no
}

what=${1:-all}
case $what in
  sanity | units | all) ;;
  *) die "usage: scripts/sanity.sh [sanity|units|all]" ;;
esac
write_standin
make_tree
status=0
if [[ $what != units ]]; then run_sanity || status=1; fi
if [[ $what != sanity ]]; then run_units || status=1; fi # units run even after a sanity failure: both reports
if ((status != 0)); then
  stage "FAILED (see the ansible-test output above)"
  exit 1
fi
stage "done"
