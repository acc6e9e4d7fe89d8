"""The ``llmfleet`` command: run playbooks through ansible-runner, drive the container lab, report."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from llmfleet.paths import repo_root


def _log(message: str) -> None:
    print(message, flush=True)


def _extravars(items: list[str]) -> dict:
    out: dict = {}
    for item in items or []:
        if item.startswith("@"):
            import yaml

            out.update(yaml.safe_load(Path(item[1:]).read_text()) or {})
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"llmfleet: -e {item!r}: expected KEY=VALUE or @FILE")
        out[key] = value
    return out


def _run_playbook(args: argparse.Namespace, *, check: bool) -> int:
    from llmfleet import runner

    req = runner.RunRequest(
        playbook=args.playbook,
        inventory=args.inventory,
        check=check,
        diff=args.diff,
        limit=args.limit,
        tags=args.tags,
        skip_tags=args.skip_tags,
        extravars=_extravars(args.extra_vars),
        verbosity=args.verbose,
        summary_dir=Path(args.summary_dir) if args.summary_dir else None,
    )
    try:
        rc, summary, path = runner.run(req)
    except FileNotFoundError as exc:
        print(f"llmfleet: {exc}", file=sys.stderr)
        return 2
    runner.print_summary(summary, path)
    if args.expect_changed is not None and summary["totals"]["changed"] != args.expect_changed:
        print(
            f"llmfleet: expected changed={args.expect_changed}, got changed={summary['totals']['changed']}",
            file=sys.stderr,
        )
        return rc or 3
    return rc


def cmd_deploy(args: argparse.Namespace) -> int:
    return _run_playbook(args, check=False)


def cmd_check(args: argparse.Namespace) -> int:
    return _run_playbook(args, check=True)


def cmd_health(args: argparse.Namespace) -> int:
    from llmfleet import health

    return health.run_and_print(inventory=args.inventory, as_json=args.json)


def cmd_lab(args: argparse.Namespace) -> int:
    from llmfleet_lab import containers as lab
    from llmfleet_lab import docker_daemon, registry
    from llmfleet_lab import model as labmodel

    try:
        if args.action == "up":
            lab.up(_log, with_model=not args.no_model)
        elif args.action == "down":
            others = lab.other_labs()
            lab.down(_log, images=args.images and not others)
            if others and (args.stop_daemon or args.images):
                _log(f"lab: leaving dockerd, the registry and the images as they are: lab(s) {', '.join(others)} "
                     "still have containers here")
            elif args.stop_daemon:
                registry.stop_if_started(_log)
                docker_daemon.stop_if_started(_log)
        elif args.action == "status":
            from llmfleet import health

            return health.run_and_print(inventory=None, as_json=args.json)
        elif args.action == "images":
            docker_daemon.ensure(_log)
            lab.ensure_images(docker_daemon.client(), _log, docker_host=True)
        elif args.action == "model":
            model = labmodel.prepare(log=_log, force=args.force)
            _log(f"lab model: {model.hf_dir}\nlab model GGUF: {model.gguf}")
        elif args.action == "wheelhouse":
            hosts = lab.read_inventory()
            _log(f"wheelhouse: {lab.ensure_wheelhouse(lab.wheelhouse_requirements(hosts), _log)}")
        elif args.action == "registry":
            if args.stop:
                registry.stop_if_started(_log)
            else:
                registry.ensure(_log)
                _log(f"registry: {registry.url()} answers")
        elif args.action == "daemon":
            if args.stop:
                docker_daemon.stop_if_started(_log)
            else:
                started = docker_daemon.ensure(_log)
                _log("docker: started" if started else "docker: a daemon already answers")
    except (lab.LabError, docker_daemon.DaemonError, registry.RegistryError, RuntimeError) as exc:
        print(f"llmfleet lab {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from llmfleet import models

    if args.action in ("add", "remove") and not args.name:
        print(f"llmfleet models {args.action}: --name is required", file=sys.stderr)
        return 2
    if args.action == "add" and not args.backend_url:
        print("llmfleet models add: --backend-url is required (the backend's OpenAI API, .../v1)", file=sys.stderr)
        return 2
    return models.run(
        args.action, inventory=args.inventory, name=args.name or "", display_name=args.display_name,
        backend_url=args.backend_url or "", backend_model=args.backend_model, kind=args.kind,
        input_cost=args.input_cost, output_cost=args.output_cost, apply=not args.no_apply, as_json=args.json,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from llmfleet import report

    return report.main(args.report_args)


def _playbook_args(p: argparse.ArgumentParser, default: str | None) -> None:
    if default:
        p.add_argument("playbook", nargs="?", default=default, help=f"playbook (default {default})")
    else:
        p.add_argument("playbook", help="playbook: a path, or a name under playbooks/ or playbooks/runbooks/")
    p.add_argument("-i", "--inventory", help="inventory (default inventories/lab/hosts.yml)")
    p.add_argument("-l", "--limit")
    p.add_argument("-t", "--tags")
    p.add_argument("--skip-tags")
    p.add_argument("-e", "--extra-vars", action="append", default=[], help="KEY=VALUE or @FILE (repeatable)")
    p.add_argument("-D", "--diff", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--summary-dir", help="where the JSON run summary goes (default artifacts/runs)")
    p.add_argument("--expect-changed", type=int, help="fail unless exactly this many tasks changed (CI idempotence)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("deploy", help="apply a playbook (default site.yml) through ansible-runner")
    _playbook_args(p, "site.yml")
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("check", help="check mode + diff: what a deploy would change")
    _playbook_args(p, "site.yml")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("run", help="apply any playbook or runbook")
    _playbook_args(p, None)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "health", help="health of every endpoint of the fleet (vLLM, Slurm jobs, llama.cpp servers, the gateway)"
    )
    p.add_argument("-i", "--inventory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("lab", help="the container lab on this machine")
    p.add_argument("action", choices=["up", "down", "status", "images", "model", "wheelhouse", "registry", "daemon"])
    p.add_argument("--no-model", action="store_true", help="up: skip the lab model step")
    p.add_argument("--images", action="store_true", help="down: remove the lab images too")
    p.add_argument("--stop-daemon", action="store_true",
                   help="down: stop the registry and dockerd if llm-fleet started them")
    p.add_argument("--stop", action="store_true", help="daemon / registry: stop it if llm-fleet started it")
    p.add_argument("--force", action="store_true", help="model: rebuild even if cached")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("models", help="the gateway's model registry (model_mappings): list, add, remove")
    p.add_argument("action", choices=["list", "add", "remove"])
    p.add_argument("-i", "--inventory")
    p.add_argument("--name", help="add/remove: the model name clients ask for")
    p.add_argument("--display-name")
    p.add_argument("--backend-url", help="add: the backend's OpenAI API base URL (.../v1)")
    p.add_argument("--backend-model", help="add: the model name the backend serves (default --name)")
    p.add_argument("--kind", choices=["vllm", "openai", "llamacpp"], default="openai")
    p.add_argument("--input-cost", type=float, default=0.0, help="add: price per million input tokens")
    p.add_argument("--output-cost", type=float, default=0.0, help="add: price per million output tokens")
    p.add_argument("--no-apply", action="store_true", help="add/remove: do not converge the gateway afterwards")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("report", help="render results (llm_bench / llm_health JSON) as Markdown + HTML")
    p.add_argument("report_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    if not shutil.which("ansible-playbook") and not (Path(sys.executable).parent / "ansible-playbook").exists():
        print("llmfleet: ansible-playbook not found; run `make venv` first", file=sys.stderr)
        return 2
    _ = repo_root()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
