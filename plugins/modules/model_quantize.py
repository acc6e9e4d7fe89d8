#!/usr/bin/python
# Copyright: llm-fleet contributors
# Apache-2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_quantize
short_description: Merge a LoRA adapter, convert to GGUF and quantize, each stage only when its inputs changed
description:
  - Runs up to three stages on the host. C(merge) loads the base model and the LoRA adapter with
    transformers and peft, calls C(merge_and_unload) and saves the merged model in 16 bits with safe
    serialization. C(convert) writes an F16 GGUF with llama.cpp's C(convert_hf_to_gguf.py) (the copy
    vendored in the llama-cpp-python sdist, with its C(gguf-py)). C(quantize) makes one GGUF per
    requested type through C(llama_cpp.llama_model_quantize), several at once as cores and memory allow.
  - The heavy steps run as subprocesses of O(python), the pipeline venv's interpreter. The module
    process itself uses only the standard library.
  - Each stage records the sha256 fingerprint of its inputs and options next to its output
    (C(<output>.llmfleet-inputs.json)). A stage whose inputs are unchanged and whose output is as it
    wrote it is skipped. O(force) redoes the stages in O(stages). These records are the checkpoints.
    A run killed during C(quantize) resumes with the quantizations not yet done.
  - Every quantized file is read back with the gguf reader. Its tensor types must be the ones the type
    asks for. K-quants fall back silently for tensors whose rows are not a multiple of 256 (C(Q4_K) to
    C(Q5_0), C(Q5_K) to C(Q5_1), C(Q6_K) to C(Q8_0)) while the header still names the file type. The
    result says how many tensors fell back and to what. A tensor of any other type fails the task.
  - Sizes and sha256 of every output go into C(<output_dir>/manifest.json). Progress goes to
    C(<output_dir>/.llmfleet-quantize/progress.json) and a log per stage to O(log_dir), both readable
    while the module runs with C(async).
version_added: "0.1.0"
author: llm-fleet maintainers (!UNKNOWN)
extends_documentation_fragment:
  - llmfleet.fleet.attributes
requirements:
  - python >= 3.8 on the target for the module (standard library only)
  - in the venv of O(python), torch, transformers, peft, safetensors (merge), the converter's
    requirements (convert), llama-cpp-python (quantize) and gguf (verification)
attributes:
  check_mode:
    support: full
    details: Computes the input fingerprints and reports which stages would run and why; writes nothing.
  diff_mode:
    support: none
options:
  python:
    description: The pipeline venv's python, which runs the stages.
    type: path
    required: true
  name:
    description: Base name of the GGUF files, C(<name>-F16.gguf) and C(<name>-<type>.gguf).
    type: str
    required: true
  output_dir:
    description: Where the merged model, the GGUF files, their records and the manifest go.
    type: path
    required: true
  base_model:
    description: Directory of the base model (Hugging Face layout, safetensors).
    type: path
    required: true
  adapter:
    description:
      - Directory of the LoRA adapter (C(adapter_config.json), C(adapter_model.safetensors)).
      - Without it, C(merge) is skipped and C(convert) converts O(base_model) itself.
    type: path
  adapter_base_names:
    description:
      - Names the adapter's C(base_model_name_or_path) may carry (its last path component is compared
        too, case-insensitively). An adapter trained on another base is refused before any stage runs.
      - Empty accepts any base.
    type: list
    elements: str
    default: []
  converter_dir:
    description:
      - llama.cpp's directory holding C(convert_hf_to_gguf.py), C(conversion/) and C(gguf-py/)
        (C(vendor/llama.cpp) of the llama-cpp-python sdist). Required for C(convert).
    type: path
  quantizations:
    description: Types to quantize to (llama.cpp names, such as C(Q4_K_M), C(Q5_K_M), C(Q8_0)).
    type: list
    elements: str
    default: [Q4_K_M, Q5_K_M, Q8_0]
  stages:
    description: The stages to run, in pipeline order whatever the order given.
    type: list
    elements: str
    choices: [merge, convert, quantize]
    default: [merge, convert, quantize]
  force:
    description: Redo the stages in O(stages) even when their inputs are unchanged.
    type: bool
    default: false
  dtype:
    description: Precision of the merge and of the merged model.
    type: str
    choices: [float16, bfloat16, float32]
    default: float16
  parallel:
    description:
      - Quantizations to run at once. C(0) chooses from the cores and the available memory.
    type: int
    default: 0
  threads:
    description: Cores the stages may use in all. C(0) means every core of the host.
    type: int
    default: 0
  cleanup_merged:
    description:
      - Remove the merged model once the F16 GGUF is written. Its record stays, so a rerun with the
        same inputs does not merge again.
    type: bool
    default: false
  log_dir:
    description: Directory for the per-stage logs. Defaults to C(<output_dir>/logs).
    type: path
"""

EXAMPLES = r"""
- name: Merge, convert and quantize the adapter
  llmfleet.fleet.model_quantize:
    python: /opt/llmfleet/pipeline/venv/bin/python
    name: smollm2-135m-support
    base_model: /var/lib/llmfleet/models/smollm2-135m
    adapter: /var/lib/llmfleet/adapters/support-lora
    adapter_base_names: [smollm2-135m, HuggingFaceTB/SmolLM2-135M-Instruct]
    converter_dir: /opt/llmfleet/pipeline/llama.cpp
    output_dir: /var/lib/llmfleet/pipeline/smollm2-135m-support
    quantizations: [Q4_K_M, Q5_K_M, Q8_0]
  async: 3600
  poll: 10
"""

RETURN = r"""
stages:
  description: >-
    Each stage, whether it ran (or would run, in check mode), why, and how long it took (seconds);
    a quantization also says how long llama.cpp's quantize itself took (quantize_seconds: its
    process, without the read-back verification and sha256 that follow).
  returned: always
  type: list
  elements: dict
  sample: [{"stage": "quantize", "item": "Q4_K_M", "run": true, "reason": "inputs changed", "seconds": 4.2,
            "quantize_seconds": 1.4}]
outputs:
  description: Path, size and sha256 of each output, and for GGUF files the verified tensor types.
  returned: success
  type: dict
  sample: {"Q4_K_M": {"path": "/x/m-Q4_K_M.gguf", "size": 105000000, "sha256": "ab...",
           "tensor_types": {"counts": {"Q5_0": 60, "Q4_K": 30}, "fallback_count": 60}}}
manifest:
  description: Path of the manifest.
  returned: success
  type: str
parallel:
  description: Quantizations run at once and threads each.
  returned: when quantize ran
  type: dict
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmfleet.fleet.plugins.module_utils.quantize import plan as q
from ansible_collections.llmfleet.fleet.plugins.module_utils.quantize import run as run


class Pipeline:
    """One run of the stages: plans them, runs what is out of date, verifies and records."""

    def __init__(self, module: AnsibleModule):
        self.m = module
        self.p = module.params
        self.out = self.p["output_dir"]
        self.work = os.path.join(self.out, ".llmfleet-quantize")
        self.log_dir = self.p["log_dir"] or os.path.join(self.out, "logs")
        self.merged = os.path.join(self.out, "merged")
        self.f16 = os.path.join(self.out, q.output_name(self.p["name"], "F16"))
        self.cache_path = os.path.join(self.work, "hash-cache.json")
        self.cache = q.read_json(self.cache_path) or {}
        self.report: list[dict] = []
        self.progress = {"status": "running", "pid": os.getpid(), "started": time.time(), "stages": {}}
        self.cpus = self.p["threads"] or os.cpu_count() or 1

    # ------------------------------------------------------------------------------- bookkeeping
    def set_progress(self, key: str, status: str, **extra) -> None:
        if self.m.check_mode:
            return
        self.progress["stages"][key] = dict(status=status, updated=time.time(), **extra)
        self.progress["updated"] = time.time()
        q.write_json(os.path.join(self.work, "progress.json"), self.progress)

    def record(self, output: str, inputs_fp: str, **extra) -> dict:
        value = dict(inputs=inputs_fp, output_stamp=q.output_stamp(output), completed=time.time(), **extra)
        q.write_json(q.record_path(output), value)
        return value

    def fail(self, msg: str, **extra) -> None:
        if not self.m.check_mode and os.path.isdir(self.work):
            self.progress["status"] = "failed"
            self.progress["error"] = msg
            q.write_json(os.path.join(self.work, "progress.json"), self.progress)
        self.m.fail_json(msg=msg, stages=self.report, **extra)

    def step(self, argv: list[str], log_name: str, pythonpath: str | None = None, threads: int | None = None) -> None:
        log_path = os.path.join(self.log_dir, log_name)
        proc = run.start(argv, log_path, pythonpath, threads)
        rc = run.finish(proc)
        if rc != 0:
            self.fail(f"{log_name} failed (exit {rc}); log {log_path}:\n{run.log_tail(log_path)}")

    # ------------------------------------------------------------------------------------ checks
    def check_inputs(self) -> None:
        bad = q.unknown_types(self.p["quantizations"])
        if bad:
            self.m.fail_json(
                msg="quantizations {}: llama.cpp knows no such type; allowed: {}".format(
                    bad, ", ".join(sorted(q.FTYPES))
                )
            )
        if not os.path.isdir(self.p["base_model"]):
            self.m.fail_json(msg="base_model {} is not a directory".format(self.p["base_model"]))
        adapter = self.p["adapter"]
        if adapter:
            config = q.read_json(os.path.join(adapter, "adapter_config.json"))
            if config is None:
                self.m.fail_json(msg=f"adapter {adapter} has no readable adapter_config.json")
            base = str(config.get("base_model_name_or_path") or "")
            names = self.p["adapter_base_names"]
            if names and not base_matches(base, names):
                self.m.fail_json(
                    msg="adapter {} was trained on base_model_name_or_path {!r}, not the configured base "
                    "(allowed: {}); refused before any stage runs".format(adapter, base, ", ".join(names))
                )
        if "convert" in self.p["stages"]:
            conv = self.p["converter_dir"]
            if not conv or not os.path.isfile(os.path.join(conv, "convert_hf_to_gguf.py")):
                self.m.fail_json(msg=f"converter_dir {conv!r} holds no convert_hf_to_gguf.py")

    # ------------------------------------------------------------------------------------ stages
    def run_merge(self, upstream_ran: bool) -> bool:
        adapter = self.p["adapter"]
        if not adapter:
            return False
        fp = q.fingerprint([self.p["base_model"], adapter], {"dtype": self.p["dtype"]}, self.cache)
        reason = q.stage_reason(self.merged, fp, self.p["force"] and "merge" in self.p["stages"])
        if reason and "merge" not in self.p["stages"]:
            if os.path.isdir(self.merged) or (q.read_json(q.record_path(self.merged)) or {}).get("cleaned"):
                reason = None  # not asked: use what is there
            else:
                self.fail(f"stage merge is not in stages, but its output {self.merged} is missing")
        entry = {"stage": "merge", "output": self.merged, "run": bool(reason), "reason": reason or "inputs unchanged"}
        self.report.append(entry)
        if not reason or self.m.check_mode:
            return bool(reason)
        self.set_progress("merge", "running")
        t0 = time.time()
        run_python = [self.p["python"], "-c", run.MERGE_SCRIPT, self.p["base_model"], adapter, self.merged]
        self.step([*run_python, self.p["dtype"]], "merge.log", threads=self.cpus)
        out_fp = q.fingerprint([self.merged], {}, self.cache)
        self.record(self.merged, fp, output_fingerprint=out_fp)
        entry["seconds"] = round(time.time() - t0, 1)
        self.set_progress("merge", "done", seconds=entry["seconds"])
        return True

    def convert_inputs(self) -> str:
        script = os.path.join(self.p["converter_dir"] or "", "convert_hf_to_gguf.py")
        opts = {"outtype": "f16", "converter": q.file_sha256(script, self.cache) if os.path.isfile(script) else None}
        if self.p["adapter"]:
            rec = q.read_json(q.record_path(self.merged)) or {}
            return q.fingerprint([], dict(opts, merged=rec.get("output_fingerprint")), self.cache)
        return q.fingerprint([self.p["base_model"]], opts, self.cache)

    def run_convert(self, upstream_ran: bool) -> bool:
        if upstream_ran and self.m.check_mode:
            reason = "its input is rebuilt by merge"
        else:
            reason = q.stage_reason(self.f16, self.convert_inputs(), self.p["force"] and "convert" in self.p["stages"])
        if reason and "convert" not in self.p["stages"]:
            if not os.path.isfile(self.f16):
                self.fail(f"stage convert is not in stages, but its output {self.f16} is missing")
            reason = None
        entry = {"stage": "convert", "output": self.f16, "run": bool(reason), "reason": reason or "inputs unchanged"}
        self.report.append(entry)
        if not reason or self.m.check_mode:
            return bool(reason)
        self.set_progress("convert", "running")
        t0 = time.time()
        src = self.merged if self.p["adapter"] else self.p["base_model"]
        conv = self.p["converter_dir"]
        tmp = self.f16 + ".tmp"
        argv = [
            self.p["python"],
            os.path.join(conv, "convert_hf_to_gguf.py"),
            src,
            "--outfile",
            tmp,
            "--outtype",
            "f16",
        ]
        self.step(argv, "convert.log", pythonpath=os.path.join(conv, "gguf-py") + os.pathsep + conv, threads=self.cpus)
        os.replace(tmp, self.f16)
        self.verify_and_record(self.f16, "F16", self.convert_inputs())
        entry["seconds"] = round(time.time() - t0, 1)
        self.set_progress("convert", "done", seconds=entry["seconds"])
        if self.p["cleanup_merged"] and self.p["adapter"] and os.path.isdir(self.merged):
            self.clean_merged()
        return True

    def clean_merged(self) -> None:
        import shutil

        rec = q.read_json(q.record_path(self.merged)) or {}
        shutil.rmtree(self.merged, ignore_errors=True)
        rec["cleaned"] = True
        q.write_json(q.record_path(self.merged), rec)

    def quantize_inputs(self, qtype: str) -> str:
        rec = q.read_json(q.record_path(self.f16)) or {}
        return q.fingerprint([], {"f16": rec.get("sha256"), "ftype": q.FTYPES[qtype]}, self.cache)

    def run_quantize(self, upstream_ran: bool) -> bool:
        todo = []
        for qtype in self.p["quantizations"]:
            path = os.path.join(self.out, q.output_name(self.p["name"], qtype))
            if upstream_ran and self.m.check_mode:
                reason = "its input is rebuilt by convert"
            else:
                force = self.p["force"] and "quantize" in self.p["stages"]
                reason = q.stage_reason(path, self.quantize_inputs(qtype), force)
            if reason and "quantize" not in self.p["stages"]:
                reason = None if os.path.isfile(path) else "skipped: quantize is not in stages"
                if reason:
                    self.report.append(
                        {"stage": "quantize", "item": qtype, "output": path, "run": False, "reason": reason}
                    )
                    continue
            self.report.append(
                {
                    "stage": "quantize",
                    "item": qtype,
                    "output": path,
                    "run": bool(reason),
                    "reason": reason or "inputs unchanged",
                }
            )
            if reason:
                todo.append((qtype, path, self.report[-1]))
        if not todo or self.m.check_mode:
            return bool(todo)
        f16_size = os.path.getsize(self.f16)
        jobs, threads = q.parallel_jobs(len(todo), self.cpus, mem_available(), 2 * f16_size, self.p["parallel"])
        self.parallel = {"jobs": jobs, "threads_each": threads}
        pending = list(todo)
        running: list = []
        while pending or running:
            while pending and len(running) < jobs:
                qtype, path, entry = pending.pop(0)
                argv = [self.p["python"], "-c", run.QUANTIZE_SCRIPT, self.f16, path, str(q.FTYPES[qtype]), str(threads)]
                proc = run.start(argv, os.path.join(self.log_dir, f"quantize-{qtype}.log"), threads=threads)
                running.append((proc, qtype, path, entry, time.time()))
                self.set_progress("quantize:" + qtype, "running", threads=threads, pid=proc.pid)
            time.sleep(0.01)  # also the resolution of quantize_seconds (a waitpid per process: cheap)
            for item in list(running):
                proc, qtype, path, entry, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                rc = run.finish(proc)
                log_path = os.path.join(self.log_dir, f"quantize-{qtype}.log")
                if rc != 0:
                    for other in running:
                        other[0].terminate()
                    self.fail(f"quantize {qtype} failed (exit {rc}); log {log_path}:\n{run.log_tail(log_path)}")
                entry["quantize_seconds"] = round(time.time() - t0, 2)
                self.verify_and_record(path, qtype, self.quantize_inputs(qtype))
                entry["seconds"] = round(time.time() - t0, 1)
                self.set_progress("quantize:" + qtype, "done", seconds=entry["seconds"])
        return True

    def verify_and_record(self, path: str, qtype: str, inputs_fp: str) -> None:
        gguf_py = os.path.join(self.p["converter_dir"], "gguf-py") if self.p["converter_dir"] else None
        try:
            info = run.read_gguf(self.p["python"], [path], gguf_py)[path]
        except RuntimeError as exc:
            self.fail(f"{path}: {exc}")
        check = q.check_tensor_types(qtype, info["tensors"], info["dims"])
        if not check["ok"]:
            self.fail(
                "{}: tensors of types {} does not ask for: {}".format(path, qtype, ", ".join(check["unexpected"][:20])),
                tensor_types=check,
            )
        check.pop("unexpected")
        check["file_type"] = info["file_type"]
        self.record(
            path, inputs_fp, sha256=q.file_sha256(path, self.cache), size=os.path.getsize(path), tensor_types=check
        )

    # -------------------------------------------------------------------------------------- main
    def outputs(self) -> dict:
        out = {}
        for qtype, path in [("F16", self.f16)] + [
            (t, os.path.join(self.out, q.output_name(self.p["name"], t))) for t in self.p["quantizations"]
        ]:
            rec = q.read_json(q.record_path(path))
            if rec and os.path.isfile(path):
                out[qtype] = {k: rec.get(k) for k in ("sha256", "size", "tensor_types")}
                out[qtype]["path"] = path
        rec = q.read_json(q.record_path(self.merged))
        if rec:
            out["merged"] = {
                "path": self.merged,
                "fingerprint": rec.get("output_fingerprint"),
                "cleaned": bool(rec.get("cleaned")),
            }
        return out

    def main(self) -> None:
        self.check_inputs()
        if not self.m.check_mode:
            for d in (self.out, self.work, self.log_dir):
                os.makedirs(d, exist_ok=True)
        ran_merge = self.run_merge(False)
        ran_convert = self.run_convert(ran_merge)
        ran_quant = self.run_quantize(ran_convert)
        changed = ran_merge or ran_convert or ran_quant
        result = {"changed": changed, "stages": self.report}
        if self.m.check_mode:
            self.m.exit_json(**result)
        outputs = self.outputs()
        manifest_path = os.path.join(self.out, "manifest.json")
        manifest = {
            "kind": "llmfleet.quantize",
            "name": self.p["name"],
            "base_model": self.p["base_model"],
            "adapter": self.p["adapter"],
            "dtype": self.p["dtype"],
            "outputs": outputs,
        }
        if q.read_json(manifest_path) != manifest:
            q.write_json(manifest_path, manifest)
        q.write_json(self.cache_path, self.cache)
        self.progress["status"] = "done"
        self.progress["updated"] = time.time()
        q.write_json(os.path.join(self.work, "progress.json"), self.progress)
        if getattr(self, "parallel", None):
            result["parallel"] = self.parallel
        self.m.exit_json(outputs=outputs, manifest=manifest_path, **result)


def base_matches(base: str, names: list[str]) -> bool:
    """Whether an adapter's base_model_name_or_path names one of the accepted bases."""
    wanted = {n.lower().rstrip("/") for n in names} | {n.lower().rstrip("/").rsplit("/", 1)[-1] for n in names}
    base = base.lower().rstrip("/")
    return base in wanted or base.rsplit("/", 1)[-1] in wanted


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 34


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            python=dict(type="path", required=True),
            name=dict(type="str", required=True),
            output_dir=dict(type="path", required=True),
            base_model=dict(type="path", required=True),
            adapter=dict(type="path"),
            adapter_base_names=dict(type="list", elements="str", default=[]),
            converter_dir=dict(type="path"),
            quantizations=dict(type="list", elements="str", default=["Q4_K_M", "Q5_K_M", "Q8_0"]),
            stages=dict(
                type="list",
                elements="str",
                choices=["merge", "convert", "quantize"],
                default=["merge", "convert", "quantize"],
            ),
            force=dict(type="bool", default=False),
            dtype=dict(type="str", choices=["float16", "bfloat16", "float32"], default="float16"),
            parallel=dict(type="int", default=0),
            threads=dict(type="int", default=0),
            cleanup_merged=dict(type="bool", default=False),
            log_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    Pipeline(module).main()


if __name__ == "__main__":
    main()
