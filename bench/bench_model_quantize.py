"""model_quantize's quantize stage against llama.cpp's own call on the same F16 GGUF; and three
formats in parallel against one after another.

    .venv/bin/python bench/bench_model_quantize.py --work DIR [--python PY] [--converter DIR]

DIR must hold a model_quantize output directory whose F16 GGUF exists (a previous run of the module,
name ``bench``); the module is run with ``ansible localhost -m llmfleet.fleet.model_quantize``
(force, stages [quantize]), the direct call is ``llama_cpp.llama_model_quantize`` in the same venv.
Prints JSON: seconds of each, the ratio (goal <= 1.05), and parallel vs serial.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIRECT = r"""
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def module(args: argparse.Namespace, quants: list[str], parallel: int) -> tuple[float, float, float]:
    """Seconds of the whole ansible call; of the longest quantize stage the module reported (the
    quantization plus its read-back verification and sha256, without ansible's start-up); and of the
    quantization itself in that stage (llama.cpp's quantize in its process, as the direct call)."""
    base = args.base
    margs = (
        f"python={args.python} name=bench base_model={base} converter_dir={args.converter} "
        f"output_dir={args.work} stages=quantize force=true parallel={parallel} threads={args.threads} "
        f"quantizations={','.join(quants)}"
    )
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-m",
            "llmfleet.fleet.model_quantize",
            "-a",
            margs,
            "-o",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    ).stdout
    took = time.perf_counter() - t0
    result = json.loads(out[out.index("{") :])
    stages = [s for s in result["stages"] if s["stage"] == "quantize"]
    return took, max(s.get("seconds", 0) for s in stages), max(s.get("quantize_seconds", 0) for s in stages)


def on_target(args: argparse.Namespace) -> tuple[float, float]:
    """The module run the way it runs on a target host: its file executed by python with its arguments in a
    JSON file, no ansible controller process beside it on these cores. Returns the stage's seconds and its
    quantize_seconds."""
    params = {
        "python": args.python, "name": "bench", "base_model": args.base, "converter_dir": args.converter,
        "output_dir": args.work, "stages": ["quantize"], "force": True, "parallel": 1, "threads": args.threads,
        "quantizations": ["Q4_K_M"],
    }  # fmt: skip
    argfile = Path(args.work).parent / "bench-module-args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    env = dict(os.environ, PYTHONPATH=str(REPO / "collections"))
    out = subprocess.run(
        [sys.executable, str(REPO / "plugins/modules/model_quantize.py"), str(argfile)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    result = json.loads(out[out.index("{") :])
    stages = [s for s in result["stages"] if s["stage"] == "quantize"]
    return max(s.get("seconds", 0) for s in stages), max(s.get("quantize_seconds", 0) for s in stages)


def direct(args: argparse.Namespace, qtype: str, ftype: int) -> float:
    src = Path(args.work) / "bench-F16.gguf"
    t0 = time.perf_counter()
    subprocess.run(
        [args.python, "-c", DIRECT, str(src), f"/tmp/bench-direct-{qtype}.gguf", str(ftype), str(args.threads)],
        check=True,
        capture_output=True,
    )
    took = time.perf_counter() - t0
    os.unlink(f"/tmp/bench-direct-{qtype}.gguf")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--base", required=True, help="the base model directory the work dir was built from")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--converter", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    runs, targets, directs = [], [], []
    for _ in range(args.repeat):  # interleaved, so that a slow minute of the machine hits each alike
        directs.append(direct(args, "Q4_K_M", 15))
        runs.append(module(args, ["Q4_K_M"], 1))
        targets.append(on_target(args))
    mod, stage, quant = (min(r[i] for r in runs) for i in range(3))
    t_stage, t_quant = (min(r[i] for r in targets) for i in range(2))
    dir_ = min(directs)
    three = ["Q4_K_M", "Q5_K_M", "Q8_0"]
    par = module(args, three, 0)[0]
    ser = module(args, three, 1)[0]
    print(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "load_avg_1m": os.getloadavg()[0],
                "module_q4_k_m_s": round(mod, 2),
                "module_stage_q4_k_m_s": round(stage, 2),
                "module_quantize_only_q4_k_m_s": round(quant, 2),
                "direct_q4_k_m_s": round(dir_, 2),
                "ratio_whole_call": round(mod / dir_, 3),
                "ratio_stage": round(stage / dir_, 3),
                "ratio_quantize_only": round(quant / dir_, 3),
                "on_target_stage_q4_k_m_s": round(t_stage, 2),
                "on_target_quantize_only_q4_k_m_s": round(t_quant, 2),
                "ratio_on_target_stage": round(t_stage / dir_, 3),
                "ratio_on_target_quantize_only": round(t_quant / dir_, 3),
                "three_parallel_s": round(par, 2),
                "three_serial_s": round(ser, 2),
                "parallel_speedup": round(ser / par, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
