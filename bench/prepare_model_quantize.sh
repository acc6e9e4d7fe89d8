#!/usr/bin/env bash
# What bench_model_quantize.py needs, made from a fresh clone (bench/model_quantize.md, "How to run"):
# a venv with the lab workstation's pinned pipeline packages and llama-cpp-python (from the lab
# wheelhouse and the wheel scripts/bootstrap.sh builds), the llama.cpp converter from that wheel's
# sdist, the test LoRA adapter (tests/fixtures/pipeline/train_lora.py) on the lab model, and a
# model_quantize output directory named "bench" holding its merged model and F16 GGUF (the module's
# merge and convert stages). Needs `make venv`, and a `llmfleet lab up` of a lab with a model
# workstation (make test's) once, which fills the wheelhouse and the lab model. Idempotent.
#
#   bench/prepare_model_quantize.sh [OUT]     (default /tmp/llmfleet-bench-quantize)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/llmfleet-bench-quantize}
CACHE=${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}
BASE="$CACHE/models/smollm2-135m-instruct"
SDIST=$(ls "$CACHE"/wheels/llama_cpp_python-*.tar.gz | head -1)
mkdir -p "$OUT"
[[ -d $BASE ]] || { echo "no lab model at $BASE: run 'llmfleet lab up' once" >&2; exit 1; }

if [[ ! -x $OUT/venv/bin/python ]] || ! "$OUT/venv/bin/python" -c 'import llama_cpp, peft' 2>/dev/null; then
  echo "prepare: venv $OUT/venv from $CACHE/wheelhouse (a minute or two)"
  mapfile -t PKGS < <(.venv/bin/python -c '
import yaml
print("\n".join(yaml.safe_load(open("inventories/lab/group_vars/model_workstations/model_pipeline.yml"))["model_pipeline_pip_packages"]))')
  python3 -m venv "$OUT/venv"
  "$OUT/venv/bin/pip" install -q --no-index --find-links "$CACHE/wheelhouse" --find-links "$CACHE/wheels" \
    "${PKGS[@]}" llama-cpp-python
fi
if [[ ! -f $OUT/converter/convert_hf_to_gguf.py ]]; then
  top=$(basename "$SDIST" .tar.gz)
  mkdir -p "$OUT/converter"
  tar -xzf "$SDIST" -C "$OUT/converter" --strip-components=3 "$top/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "$top/vendor/llama.cpp/conversion" "$top/vendor/llama.cpp/gguf-py"
fi
if [[ ! -f $OUT/lora/adapter_config.json ]]; then
  .venv/bin/python tests/fixtures/pipeline/train_lora.py "$BASE" "$OUT/lora" --steps 4 --seed 0 \
    --base-name HuggingFaceTB/SmolLM2-135M-Instruct >/dev/null
fi
echo "prepare: merge and convert into $OUT/work (skipped when its inputs are unchanged)"
ANSIBLE_CONFIG=$PWD/ansible.cfg .venv/bin/ansible localhost -m llmfleet.fleet.model_quantize -o -a \
  "python=$OUT/venv/bin/python name=bench base_model=$BASE adapter=$OUT/lora \
   adapter_base_names=HuggingFaceTB/SmolLM2-135M-Instruct converter_dir=$OUT/converter output_dir=$OUT/work \
   stages=merge,convert quantizations=Q4_K_M" | cut -c1-300
ls -la "$OUT/work/bench-F16.gguf"
echo "then: .venv/bin/python bench/bench_model_quantize.py --work $OUT/work --base $BASE \\"
echo "        --converter $OUT/converter --python $OUT/venv/bin/python --repeat 3"
