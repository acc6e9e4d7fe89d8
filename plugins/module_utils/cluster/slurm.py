# Copyright: llm-fleet contributors
# Apache-2.0 (see pyproject.toml)
"""Slurm output parsing and small checks shared by the slurm_job module and the inventory checks.

Standard library only: this runs on login nodes.
"""

from __future__ import annotations

import re

# squeue format the module asks for: job id, name, state, reason, node list, user.
SQUEUE_FORMAT = "%i|%j|%T|%r|%N|%u"
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "RESIZING",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)
FAILED_STATES = frozenset(
    {
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "COMPLETED",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)

_TIME_FORMATS = (
    r"\d+",  # minutes
    r"\d+:\d{1,2}",  # minutes:seconds
    r"\d+:\d{1,2}:\d{1,2}",  # hours:minutes:seconds
    r"\d+-\d+",  # days-hours
    r"\d+-\d+:\d{1,2}",  # days-hours:minutes
    r"\d+-\d+:\d{1,2}:\d{1,2}",  # days-hours:minutes:seconds
)


def valid_walltime(value) -> bool:
    """True for a time limit sbatch --time accepts (the formats of sbatch(1), or UNLIMITED/INFINITE)."""
    text = str(value).strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return True
    return any(re.fullmatch(fmt, text) for fmt in _TIME_FORMATS)


def parse_squeue(text: str) -> list[dict]:
    """Lines of ``squeue -h -o SQUEUE_FORMAT`` as dicts (job_id, name, state, reason, nodes, user)."""
    jobs = []
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6 or not parts[0]:
            continue
        job_id, name, state, reason, nodes, user = parts
        jobs.append(
            {
                "job_id": job_id,
                "name": name,
                "state": state,
                "reason": reason,
                "nodelist": nodes,
                "nodes": expand_nodelist(nodes),
                "user": user,
            }
        )
    return jobs


def parse_scontrol(text: str) -> dict:
    """``scontrol show job -o <id>`` (one line of Key=Value words) as a dict.

    A value with spaces (Command=, Reason=) keeps the words that follow it up to the next Key=.
    """
    fields: dict[str, str] = {}
    last = None
    for word in (text or "").strip().split(" "):
        match = re.match(r"^([A-Za-z][A-Za-z0-9/:_]*)=(.*)$", word)
        if match:
            last = match.group(1)
            fields[last] = match.group(2)
        elif last is not None and word:
            fields[last] += " " + word
    return fields


def exit_code(value: str) -> tuple[int | None, int | None]:
    """``ExitCode=3:0`` -> (3, 0): the batch script's exit status and the signal that ended it."""
    match = re.fullmatch(r"(\d+):(\d+)", (value or "").strip())
    if not match:
        return None, None
    return int(match.group(1)), int(match.group(2))


def expand_nodelist(text: str) -> list[str]:
    """A Slurm host list (``node-[1-3,5],login``) as names, as ``scontrol show hostnames`` prints them."""
    text = (text or "").strip()
    if not text or text in ("(null)", "None"):
        return []
    names: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            names.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not high:
                names.append(f"{prefix}{low}{suffix}")
                continue
            width = len(low)
            for number in range(int(low), int(high) + 1):
                names.append(f"{prefix}{number:0{width}d}{suffix}")
    return names


def parse_sinfo(text: str) -> dict:
    """``sinfo -h -o '%P|%D|%G|%c|%m|%l'`` as {partition: {nodes, gres, cpus, memory_mb, time_limit, default}}."""
    partitions: dict[str, dict] = {}
    for line in (text or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6:
            continue
        name, nodes, gres, cpus, mem, limit = parts
        default = name.endswith("*")
        name = name.rstrip("*")
        entry = partitions.setdefault(
            name, {"nodes": 0, "gres": False, "cpus": 0, "memory_mb": 0, "time_limit": limit, "default": default}
        )
        entry["nodes"] += int(nodes or 0)
        entry["gres"] = entry["gres"] or gres not in ("(null)", "", "N/A")
        entry["cpus"] = max(entry["cpus"], int(re.sub(r"\D", "", cpus) or 0))
        entry["memory_mb"] = max(entry["memory_mb"], int(re.sub(r"\D", "", mem) or 0))
    return partitions


def tail(path: str, lines: int = 40) -> str:
    """The last lines of a file, or a line saying why it could not be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(data.splitlines()[-lines:])
