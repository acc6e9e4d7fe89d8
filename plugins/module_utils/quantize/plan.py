# Copyright: llm-fleet contributors
# Apache-2.0
"""Pure logic of model_quantize: quantization types, input fingerprints, stage plans, tensor checks.

Standard library only: this runs in the module process on the workstation. The heavy steps
(merge, convert, quantize, reading GGUF tensor types) run as subprocesses of the pipeline venv's
python (quantize/run.py).
"""

from __future__ import annotations

import hashlib
import json
import os

STAGES = ("merge", "convert", "quantize")

# llama.cpp's llama_ftype values (include/llama.h, LLAMA_FTYPE_MOSTLY_*) for the types it can
# quantize a F16 GGUF to with llama_model_quantize.
FTYPES = {
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "BF16": 32,
}

# The tensor types (ggml_type names) a file of each type holds in its 2-D weights, as llama.cpp's
# quantizer chooses them (src/llama-quant.cpp: the _M mixes put some attn_v / ffn_down / output
# tensors one step higher).
INTENDED_TYPES = {
    "F16": {"F16"},
    "BF16": {"BF16"},
    "Q4_0": {"Q4_0", "Q6_K", "Q8_0"},
    "Q4_1": {"Q4_1", "Q6_K", "Q8_0"},
    "Q5_0": {"Q5_0", "Q6_K", "Q8_0"},
    "Q5_1": {"Q5_1", "Q6_K", "Q8_0"},
    "Q8_0": {"Q8_0"},
    "Q2_K": {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"},
    "Q3_K_S": {"Q3_K", "Q6_K"},
    "Q3_K_M": {"Q3_K", "Q4_K", "Q5_K", "Q6_K"},
    "Q3_K_L": {"Q3_K", "Q5_K", "Q6_K"},
    "Q4_K_S": {"Q4_K", "Q5_K", "Q6_K"},
    "Q4_K_M": {"Q4_K", "Q6_K"},
    "Q5_K_S": {"Q5_K", "Q6_K"},
    "Q5_K_M": {"Q5_K", "Q6_K"},
    "Q6_K": {"Q6_K"},
}

# What llama.cpp quantizes a tensor to instead when its rows are not a multiple of the K-quant
# block (256): silently, while the header keeps the file type (llama-quant.cpp, "fallback").
K_FALLBACKS = {
    "Q2_K": "IQ4_NL",
    "Q3_K": "IQ4_NL",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}

# Types any file may keep for tensors it does not quantize (norms, biases: 1-D, kept in F32).
UNQUANTIZED = {"F32", "F16", "BF16"}


def unknown_types(types: list[str]) -> list[str]:
    """The requested quantization types llama_model_quantize has no ftype for."""
    return [t for t in types if t not in FTYPES]


def output_name(name: str, qtype: str) -> str:
    """The GGUF file name of one quantization (LM Studio and llama.cpp read any name)."""
    return f"{name}-{qtype}.gguf"


def parallel_jobs(count: int, cpus: int, mem_available: int, job_bytes: int, parallel: int = 0) -> tuple[int, int]:
    """How many quantizations to run at once and threads for each.

    ``parallel`` > 0 is taken as asked (capped at ``count``). Otherwise as many as the cores
    allow (one core each at least) and memory allows (each job maps its input and writes its
    output: ``job_bytes`` is charged per job)."""
    if count <= 0:
        return 0, max(1, cpus)
    if parallel > 0:
        jobs = min(parallel, count)
    else:
        by_mem = mem_available // job_bytes if job_bytes > 0 else count
        jobs = max(1, min(count, max(1, cpus), by_mem))
    return jobs, max(1, cpus // jobs)


def check_tensor_types(qtype: str, tensors: dict[str, str], dims: dict[str, int]) -> dict:
    """Compare the tensor types a GGUF file really holds with what ``qtype`` asks for.

    ``tensors`` maps tensor name -> ggml type name, ``dims`` tensor name -> number of dimensions.
    Returns counts per type, the tensors that fell back (K-quant rows not a multiple of 256) and
    to what, and the tensors of a type the file should not hold at all (``unexpected``)."""
    intended = INTENDED_TYPES.get(qtype, {qtype})
    fallback_of = {K_FALLBACKS[t]: t for t in intended if t in K_FALLBACKS}
    counts: dict[str, int] = {}
    fell_back: dict[str, int] = {}
    unexpected: list[str] = []
    for name in sorted(tensors):
        ttype = tensors[name]
        counts[ttype] = counts.get(ttype, 0) + 1
        if ttype in intended:
            continue
        if ttype in fallback_of:
            key = f"{fallback_of[ttype]}->{ttype}"
            fell_back[key] = fell_back.get(key, 0) + 1
            continue
        if ttype in UNQUANTIZED and dims.get(name, 2) < 2:
            continue
        if ttype == "F32" and qtype not in ("F16", "BF16"):
            # llama.cpp keeps some small 2-D tensors in F32 (position embeddings, gates).
            continue
        unexpected.append(f"{name}:{ttype}")
    quantized = sum(1 for n in tensors if dims.get(n, 2) >= 2)
    return {
        "type": qtype,
        "counts": counts,
        "fallbacks": fell_back,
        "fallback_count": sum(fell_back.values()),
        "quantized_tensors": quantized,
        "unexpected": unexpected,
        "ok": not unexpected,
    }


# ------------------------------------------------------------------------------------- fingerprints
def file_sha256(path: str, cache: dict | None = None) -> str:
    """sha256 of a file, reused from ``cache`` while its size and mtime are those recorded."""
    st = os.stat(path)
    key = os.path.realpath(path)
    stamp = [st.st_size, st.st_mtime_ns]
    if cache is not None and key in cache and cache[key].get("stamp") == stamp:
        return cache[key]["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if cache is not None:
        cache[key] = {"stamp": stamp, "sha256": value}
    return value


def tree_files(path: str) -> list[str]:
    """Files under ``path`` (or ``path`` itself), relative, sorted; llmfleet bookkeeping left out."""
    if os.path.isfile(path):
        return [""]
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".llmfleet") and not d.endswith(".llmfleet"))
        for name in files:
            if name.startswith(".llmfleet"):
                continue
            out.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(out)


def fingerprint(paths: list[str], options: dict, cache: dict | None = None) -> str:
    """One sha256 over the contents of every input file and the stage's options."""
    digest = hashlib.sha256()
    for base in paths:
        for rel in tree_files(base):
            full = os.path.join(base, rel) if rel else base
            digest.update((f"{rel}\0{file_sha256(full, cache)}\n").encode())
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- records
def record_path(output: str) -> str:
    """Where a stage records its inputs next to its output."""
    return output.rstrip("/") + ".llmfleet-inputs.json"


def read_json(path: str) -> dict | None:
    try:
        with open(path) as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value: dict, mode: int = 0o644) -> None:
    """Write JSON atomically (a reader sees the old or the new file, never half of one)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def output_stamp(output: str) -> list | None:
    """Size and mtime of an output (a directory: of its files), to notice it was changed or removed."""
    if not os.path.exists(output):
        return None
    if os.path.isfile(output):
        st = os.stat(output)
        return [st.st_size, st.st_mtime_ns]
    stamp = []
    for rel in tree_files(output):
        st = os.stat(os.path.join(output, rel))
        stamp.append([rel, st.st_size, st.st_mtime_ns])
    return stamp


def stage_reason(output: str, inputs_fp: str, force: bool) -> str | None:
    """Why a stage must run (None: its output is current for these inputs)."""
    if force:
        return "force"
    record = read_json(record_path(output))
    if record is None:
        return "no record of a previous run"
    if record.get("inputs") != inputs_fp:
        return "inputs changed"
    if record.get("cleaned"):
        return None
    stamp = output_stamp(output)
    if stamp is None:
        return "output missing"
    if record.get("output_stamp") != stamp:
        return "output changed since it was written"
    return None
