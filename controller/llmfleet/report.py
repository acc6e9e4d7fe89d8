"""``llmfleet report RESULTS...``: Markdown and a self-contained HTML page from llm-fleet result JSON.

Reads what the modules and runbooks write:

* ``llm_bench`` load results (``kind: llmfleet.bench``): a table per endpoint and run, latency
  distributions, throughput vs concurrency;
* ``llm_bench`` eval results (``kind: llmfleet.eval``): per-model score, latency and throughput, a
  per-item answer matrix, a model comparison plot;
* health results: the per-host files of ``playbooks/runbooks/health_report.yml`` (``host`` +
  ``instances``) or a registered ``llm_health`` result (``status`` + ``checks``).

Arguments are files or directories (every ``*.json`` inside). Plots are PNGs drawn with matplotlib's Agg
backend, written next to ``report.md`` and embedded (base64) in ``report.html``, so the HTML page is one
file that can be mailed or attached to a CI run.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERCENTILE_COLUMNS = ("mean", "median", "p90", "p99")


class ReportError(Exception):
    """A results file that cannot be read or is of no known kind."""


@dataclass
class Results:
    bench: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)  # one row per endpoint

    def empty(self) -> bool:
        return not (self.bench or self.evals or self.health)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ReportError(f"{path} is a directory without *.json files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ReportError(f"{path} does not exist")
    return files


def health_rows(doc: dict[str, Any], source: str) -> list[dict[str, Any]]:
    if "instances" in doc and "host" in doc:
        return [{"host": doc["host"], **inst} for inst in doc["instances"]]
    if "status" in doc and "checks" in doc:  # one registered llm_health result
        return [{"host": doc.get("host", source), "name": doc.get("url", source), **doc}]
    if isinstance(doc.get("hosts"), dict):  # {hosts: {host: llm_health result}}
        return [{"host": host, "name": r.get("url", host), **r} for host, r in doc["hosts"].items()]
    raise ReportError(f"{source}: not a health result (no host/instances nor status/checks)")


def classify(doc: Any, source: str, results: Results) -> None:
    if isinstance(doc, list):
        for item in doc:
            classify(item, source, results)
        return
    if not isinstance(doc, dict):
        raise ReportError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if "results" in doc and isinstance(doc["results"], dict) and "kind" in doc["results"]:
        doc = doc["results"]  # a registered llm_bench result
    kind = doc.get("kind")
    if kind == "llmfleet.bench":
        results.bench.append((source, doc))
    elif kind == "llmfleet.eval":
        results.evals.append((source, doc))
    elif kind in (None, "llmfleet.health"):
        results.health.extend(health_rows(doc, source))
    else:
        raise ReportError(f"{source}: unknown result kind {kind!r}")


def load(paths: list[str]) -> Results:
    results = Results()
    for path in expand(paths):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"{path}: not readable JSON: {exc}") from exc
        classify(doc, path.name, results)
    if results.empty():
        raise ReportError("no results in " + ", ".join(paths))
    return results


# --------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: list[str], rows: list[list[Any]], classes: list[str | None] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{classes[n]}"' if classes and classes[n] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def run_label(doc: dict[str, Any], run: dict[str, Any]) -> str:
    model = doc["endpoint"]["model"]
    level = run.get("max_concurrency") or "unlimited"
    rate = run.get("request_rate", "inf")
    return f"{model} c={level}" + (f" rate={rate}" if rate not in ("inf", None) else "")


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_distributions(results: Results, out: Path) -> Path | None:
    series = []
    for _, doc in results.bench:
        for run in doc["runs"]:
            ok = [r for r in run.get("requests", []) if r.get("ok")]
            if ok:
                series.append((run_label(doc, run), ok))
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, title in zip(axes, ("ttft_s", "tpot_s", "latency_s"), ("TTFT", "TPOT", "E2E latency"), strict=True):
        for label, rows in series:
            values = sorted(r[key] * 1000.0 for r in rows if r.get(key) is not None)
            if values:
                ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=label)
        ax.set_title(f"{title} distribution")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_throughput_vs_concurrency(results: Results, out: Path) -> Path | None:
    curves = []
    for _, doc in results.bench:
        points = sorted((run["max_concurrency"], run["metrics"]) for run in doc["runs"] if run.get("max_concurrency"))
        if points:
            curves.append((f"{doc['endpoint']['model']} @ {doc['endpoint']['url']}", points))
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, points in curves:
        xs = [c for c, _ in points]
        axes[0].plot(xs, [m["output_throughput"] or 0 for _, m in points], marker="o", label=label)
        axes[1].plot(xs, [m["ttft_ms"]["median"] or 0 for _, m in points], marker="o", label=f"{label} TTFT p50")
        axes[1].plot(
            xs, [m["tpot_ms"]["median"] or 0 for _, m in points], marker="s", linestyle="--", label=f"{label} TPOT p50"
        )
    axes[0].set_title("Output throughput vs concurrency")
    axes[0].set_ylabel("output tokens/s")
    axes[1].set_title("Latency vs concurrency")
    axes[1].set_ylabel("ms")
    for ax in axes:
        ax.set_xlabel("max concurrency")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_model_comparison(results: Results, out: Path) -> Path | None:
    models = [m for _, doc in results.evals for m in doc["models"]]
    if not models:
        return None
    plt = _pyplot()
    names = [m["name"] for m in models]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].bar(names, [m["score"] for m in models], color="tab:green")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("Eval score")
    axes[1].bar(names, [m["metrics"]["e2el_ms"]["median"] or 0 for m in models], color="tab:blue")
    axes[1].set_title("Median E2E latency (ms)")
    axes[2].bar(names, [m["metrics"]["output_throughput"] or 0 for m in models], color="tab:orange")
    axes[2].set_title("Output tokens/s")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------
# Sections: (markdown, html)
# --------------------------------------------------------------------------------------------

HEALTH_HEADERS = ["host", "endpoint", "model", "status", "latency", "tokens/s", "answer / reasons"]


def health_section(rows: list[dict[str, Any]]) -> tuple[str, str]:
    table, classes = [], []
    for r in rows:
        comp = r.get("completion") or {}
        note = "; ".join(r.get("reasons") or []) or " ".join(str(comp.get("text", "")).split())[:80]
        latency = comp.get("latency_s")
        table.append(
            [
                r.get("host", "-"),
                r.get("name", "-"),
                r.get("model", "-"),
                r.get("status", "?"),
                f"{latency:.2f}s" if isinstance(latency, (int, float)) else "-",
                fmt(comp.get("tokens_per_s")),
                note,
            ]
        )
        classes.append(r.get("status"))
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in ("healthy", "degraded", "unhealthy")}
    line = ", ".join(f"{n} {s}" for s, n in counts.items())
    md = f"## Health\n\n{len(rows)} endpoints: {line}.\n\n{md_table(HEALTH_HEADERS, table)}\n"
    htm = (
        f"<h2>Health</h2><p>{len(rows)} endpoints: {html.escape(line)}.</p>{html_table(HEALTH_HEADERS, table, classes)}"
    )
    return md, htm


BENCH_HEADERS = ["concurrency", "rate", "ok / failed", "req/s", "output tok/s", "total tok/s", "goodput req/s"]


def latency_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2el_ms", "E2E")):
        stats = metrics[key]
        rows.append([name] + [fmt(stats.get(c)) for c in PERCENTILE_COLUMNS])
    return rows


def bench_section(results: Results) -> tuple[str, str]:
    md, htm = ["## Load benchmarks\n"], ["<h2>Load benchmarks</h2>"]
    for source, doc in results.bench:
        ep, cfg = doc["endpoint"], doc.get("config", {})
        title = f"{ep['model']} at {ep['url']} ({ep.get('api', 'completions')} API)"
        about = (
            f"{cfg.get('num_prompts', '?')} prompts, max_tokens {cfg.get('output_len', '?')}, "
            f"ignore_eos {fmt(cfg.get('ignore_eos'))}, source {source}, {doc.get('created', '')}"
        )
        table = []
        for run in doc["runs"]:
            m = run["metrics"]
            table.append(
                [
                    run.get("max_concurrency") or "unlimited",
                    run.get("request_rate", "inf"),
                    f"{m['completed']} / {m['failed']}",
                    fmt(m["request_throughput"], 2),
                    fmt(m["output_throughput"]),
                    fmt(m["total_token_throughput"]),
                    fmt(m.get("request_goodput"), 2),
                ]
            )
        md += [f"### {title}\n", about + "\n", md_table(BENCH_HEADERS, table) + "\n"]
        htm += [f"<h3>{html.escape(title)}</h3><p>{html.escape(about)}</p>", html_table(BENCH_HEADERS, table)]
        for run in doc["runs"]:
            label = f"Latency (ms), concurrency {run.get('max_concurrency') or 'unlimited'}"
            headers = ["metric", *PERCENTILE_COLUMNS]
            md += [f"**{label}**\n", md_table(headers, latency_rows(run["metrics"])) + "\n"]
            htm += [f"<h4>{html.escape(label)}</h4>", html_table(headers, latency_rows(run["metrics"]))]
            errors = run["metrics"].get("errors") or {}
            if errors:
                err_rows = [[n, e] for e, n in errors.items()]
                md += ["Errors:\n", md_table(["count", "error"], err_rows) + "\n"]
                htm += ["<p>Errors:</p>", html_table(["count", "error"], err_rows)]
    return "\n".join(md), "".join(htm)


EVAL_HEADERS = ["model", "endpoint", "score", "correct", "errors", "E2E p50 ms", "TTFT p50 ms", "output tok/s"]


def eval_section(results: Results) -> tuple[str, str]:
    md, htm = ["## Evaluation\n"], ["<h2>Evaluation</h2>"]
    for source, doc in results.evals:
        table = []
        for m in doc["models"]:
            met = m["metrics"]
            table.append(
                [
                    m["name"],
                    f"{m['model']} @ {m['url']}",
                    f"{m['score']:.2f}",
                    f"{m['correct']}/{m['total']}",
                    m["errors"],
                    fmt(met["e2el_ms"]["median"]),
                    fmt(met["ttft_ms"]["median"]),
                    fmt(met["output_throughput"]),
                ]
            )
        about = f"{doc['config'].get('items', '?')} items, source {source}, {doc.get('created', '')}"
        md += [about + "\n", md_table(EVAL_HEADERS, table) + "\n"]
        htm += [f"<p>{html.escape(about)}</p>", html_table(EVAL_HEADERS, table)]
        names = [m["name"] for m in doc["models"]]
        item_rows = []
        for n, item in enumerate(doc["models"][0]["items"] if doc["models"] else []):
            marks = []
            for m in doc["models"]:
                row = m["items"][n]
                marks.append(
                    ("ok " if row["correct"] else "MISS ")
                    + " ".join(str(row["answer"] or row["error"] or "").split())[:60]
                )
            item_rows.append([item["id"], " / ".join(item["expected"] or []), *marks])
        headers = ["item", "expected", *names]
        md += ["<details><summary>Answers per item</summary>\n", md_table(headers, item_rows) + "\n", "</details>\n"]
        htm += ["<details><summary>Answers per item</summary>", html_table(headers, item_rows), "</details>"]
    return "\n".join(md), "".join(htm)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.2rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} tr.healthy td:nth-child(4){color:#1a7f37;font-weight:600}
tr.degraded td:nth-child(4){color:#9a6700;font-weight:600} tr.unhealthy td:nth-child(4){color:#cf222e;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0} .meta{color:#666;font-size:.85rem}
"""


def render(results: Results, out_dir: Path, title: str) -> tuple[Path, Path, list[Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        ("Latency distributions", plot_latency_distributions(results, out_dir / "latency_distributions.png")),
        (
            "Throughput vs concurrency",
            plot_throughput_vs_concurrency(results, out_dir / "throughput_vs_concurrency.png"),
        ),
        ("Model comparison", plot_model_comparison(results, out_dir / "model_comparison.png")),
    ]
    plots_done = [(name, path) for name, path in plots if path is not None]
    md_parts = [f"# {title}\n"]
    html_parts = [f"<h1>{html.escape(title)}</h1>"]
    sections = []
    if results.health:
        sections.append(health_section(results.health))
    if results.bench:
        sections.append(bench_section(results))
    if results.evals:
        sections.append(eval_section(results))
    for md, htm in sections:
        md_parts.append(md)
        html_parts.append(htm)
    if plots_done:
        md_parts.append("## Plots\n")
        html_parts.append("<h2>Plots</h2>")
    for name, path in plots_done:
        md_parts.append(f"![{name}]({path.name})\n")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        html_parts.append(
            f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        )
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md_parts), encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>{''.join(html_parts)}</body></html>\n",
        encoding="utf-8",
    )
    return md_path, html_path, [p for _, p in plots_done]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmfleet report",
        description="Render llm_bench (load, eval) and llm_health JSON as Markdown + self-contained HTML with plots.",
    )
    parser.add_argument("results", nargs="+", help="result JSON files or directories of them")
    parser.add_argument("-o", "--output-dir", default="artifacts/report", help="where report.md/.html and PNGs go")
    parser.add_argument("--title", default="llm-fleet report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = load(args.results)
        md_path, html_path, pngs = render(results, Path(args.output_dir), args.title)
    except ReportError as exc:
        print(f"llmfleet report: {exc}", file=sys.stderr)
        return 2
    print(f"llmfleet report: {md_path}")
    print(f"llmfleet report: {html_path}")
    for png in pngs:
        print(f"llmfleet report: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
