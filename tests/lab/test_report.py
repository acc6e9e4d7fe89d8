"""`llmfleet report` on results measured against the lab's real vLLM: files render, PNGs are real images."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import pytest
from ansible_collections.llmfleet.fleet.plugins.module_utils.bench import (
    EvalEndpoint,
    LoadConfig,
    evaluate,
    load_items,
    run_load,
    synthetic_prompts,
)
from ansible_collections.llmfleet.fleet.plugins.module_utils.health.checks import run_health
from llmfleet import report
from PIL import Image

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory, vllm_url: str, vllm_model: str, vllm_api_key: str) -> Path:
    out = tmp_path_factory.mktemp("results")
    cfg = LoadConfig(url=vllm_url, api_key=vllm_api_key, model=vllm_model, output_len=8, ignore_eos=True, timeout=120)
    (out / "bench.json").write_text(json.dumps(run_load(cfg, synthetic_prompts(6, 24), [1, 3])))
    eval_set = REPO / "roles" / "model_pipeline" / "files" / "eval" / "basic_facts.jsonl"
    items = load_items(str(eval_set), need_expected=True)[:6]
    (out / "eval.json").write_text(
        json.dumps(evaluate([EvalEndpoint("lab-vllm", vllm_url, vllm_model, api_key=vllm_api_key)], items))
    )
    health = run_health({"url": vllm_url, "api_key": vllm_api_key, "model": vllm_model, "expect": "paris"})
    # the shape playbooks/runbooks/health_report.yml writes per host
    (out / "lab-host.json").write_text(
        json.dumps(
            {
                "host": "lab-host",
                "instances": [
                    {
                        "name": "smollm2",
                        "port": 8000,
                        "model": vllm_model,
                        **{k: health[k] for k in ("status", "reasons", "checks", "completion", "metrics")},
                    }
                ],
            }
        )
    )
    return out


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_renders(results_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert report.main([str(results_dir), "-o", str(out), "--title", "lab report"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed

    md = (out / "report.md").read_text()
    assert md.startswith("# lab report")
    for heading in ("## Health", "## Load benchmarks", "## Evaluation", "## Plots"):
        assert heading in md
    assert "| lab-host | smollm2 |" in md and "| healthy |" in md
    assert re.search(r"\| 1 \| inf \| 6 / 0 \|", md) and re.search(r"\| 3 \| inf \| 6 / 0 \|", md)
    assert "lab-vllm" in md

    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [
        "latency_distributions.png",
        "model_comparison.png",
        "throughput_vs_concurrency.png",
    ]
    for png in pngs:
        width, height = png_size(png.read_bytes())
        assert width >= 600 and height >= 300
        assert f"]({png.name})" in md

    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 3
    for data in embedded:
        png_size(base64.b64decode(data))
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: no external references

    with Image.open(out / "model_comparison.png") as img:
        img.verify()


def test_report_rejects_unknown_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"kind": "something.else"}))
    assert report.main([str(bad), "-o", str(tmp_path / "out")]) == 2
    assert "x.json: unknown result kind 'something.else'" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
