# Copyright: llm-fleet contributors
# Apache-2.0
"""The steps model_quantize runs in the pipeline venv's python, and how it runs them.

The scripts below are passed to ``<venv>/bin/python -c`` so the module process itself needs only
the standard library; they import torch / peft / llama_cpp / gguf there. Each writes its output
to a temporary path and renames it into place only when complete, so an interrupted run leaves
the previous output (or none), never half of one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

MERGE_SCRIPT = r"""
import json, os, shutil, sys, time
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter, out, dtype = sys.argv[1:5]
tmp = out.rstrip('/') + '.tmp'
shutil.rmtree(tmp, ignore_errors=True)
t0 = time.time()
print('loading base', base, flush=True)
model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
print('loading adapter', adapter, flush=True)
model = PeftModel.from_pretrained(model, adapter)
model = model.merge_and_unload()
print('merged in %.1fs; saving' % (time.time() - t0), flush=True)
model.save_pretrained(tmp, safe_serialization=True)
src = adapter if os.path.exists(os.path.join(adapter, 'tokenizer_config.json')) else base
AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
for name in ('chat_template.jinja', 'generation_config.json'):
    if os.path.exists(os.path.join(base, name)) and not os.path.exists(os.path.join(tmp, name)):
        shutil.copy2(os.path.join(base, name), os.path.join(tmp, name))
old = out.rstrip('/') + '.old'
shutil.rmtree(old, ignore_errors=True)
if os.path.exists(out):
    os.rename(out, old)
os.rename(tmp, out)
shutil.rmtree(old, ignore_errors=True)
print('saved', out, 'in %.1fs' % (time.time() - t0), flush=True)
"""

QUANTIZE_SCRIPT = r"""
import ctypes, os, sys, time
import llama_cpp
src, dst, ftype, nthread = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tmp = dst + '.tmp'
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftype
params.nthread = nthread
t0 = time.time()
print('quantizing', src, '->', dst, 'ftype', ftype, 'threads', nthread, flush=True)
rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
if rc != 0:
    print('llama_model_quantize returned', rc, flush=True)
    sys.exit(2)
os.replace(tmp, dst)
print('done in %.1fs' % (time.time() - t0), flush=True)
"""

# Reads every file's tensor types and dimensions with the gguf package's reader (the vendored
# gguf-py on PYTHONPATH when given, else the venv's gguf).
READ_SCRIPT = r"""
import json, sys
from gguf import GGUFReader
out = {}
for path in sys.argv[1:]:
    reader = GGUFReader(path)
    tensors = {t.name: t.tensor_type.name for t in reader.tensors}
    dims = {t.name: int(len([d for d in t.shape if int(d) > 1]) or 1) for t in reader.tensors}
    field = reader.fields.get('general.file_type')
    ftype = int(field.parts[field.data[0]][0]) if field is not None else None
    out[path] = {'tensors': tensors, 'dims': dims, 'file_type': ftype}
print(json.dumps(out))
"""


def _env(pythonpath: str | None, threads: int | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(argv: list[str], log_path: str, pythonpath: str | None = None, threads: int | None = None):
    """Start one step, its stdout and stderr appended to ``log_path`` (readable while it runs)."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by finish() when the step ends
    log.write(("=== {} {}\n".format(time.strftime("%Y-%m-%dT%H:%M:%S"), " ".join(argv[:2]))).encode())
    log.flush()
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env(pythonpath, threads)
    )
    proc.llmfleet_log = log  # closed by finish()
    return proc


def finish(proc) -> int:
    """Wait for a step started with start(); its exit status."""
    rc = proc.wait()
    proc.llmfleet_log.close()
    return rc


def log_tail(path: str, size: int = 2000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def read_gguf(python: str, paths: list[str], gguf_py: str | None) -> dict:
    """Tensor types, dimensions and file type of GGUF files, read in the venv."""
    result = subprocess.run(
        [python, "-c", READ_SCRIPT, *paths],
        capture_output=True,
        text=True,
        env=_env(gguf_py),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reading GGUF tensor types failed: {result.stderr.strip()[-1500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
