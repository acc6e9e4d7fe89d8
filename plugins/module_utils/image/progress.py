# Copyright: llm-fleet contributors
# Apache-2.0
"""Progress of a build, written to a JSON file while it runs and read back by anyone.

`BuildProgress` parses classic-builder (`Step 3/12 : RUN ...`) and BuildKit plain
(`#7 [venv 2/5] RUN ...`) lines into steps done / total / current step / last lines;
`ProgressSink` writes every line to a log file and, at most once a second, the progress JSON
(atomically, with `write_json_atomic`); `read_progress` reads it back for a later task or an operator.
"""

from __future__ import annotations

import collections
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.llmfleet.fleet.plugins.module_utils.image.error import ImageError

LAST_LINES = 20
PROGRESS_WRITE_INTERVAL_S = 1.0
# The classic builder colours a step's stderr (ESC[91m ... ESC[0m); logs and progress get plain text.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_CLASSIC_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_BUILDKIT_STEP = re.compile(r"^#(\d+) \[(?:([^\]\s]+) )?(\d+)/(\d+)\] (.*)$")
_BUILDKIT_DONE = re.compile(r"^#(\d+) (DONE|CACHED)\b")
_BUILDKIT_ERROR = re.compile(r"^#(\d+) ERROR: (.*)$")


@dataclass
class BuildProgress:
    """Progress of one build, fed line by line from the build output."""

    log_file: str = ""
    started_at: float = field(default_factory=time.time)
    state: str = "running"
    step: int = 0
    total: int = 0
    current: str = ""
    cached_steps: int = 0
    image_id: str = ""
    error: str = ""
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LAST_LINES))
    _bk_vertices: dict = field(default_factory=dict)  # vertex -> (stage, i, n, text)
    _bk_done: set = field(default_factory=set)
    _bk_stage_totals: dict = field(default_factory=dict)

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        self.lines.append(line)
        m = _CLASSIC_STEP.match(line)
        if m:
            self.step, self.total, self.current = int(m.group(1)), int(m.group(2)), m.group(3)
            return
        if line.strip() == "---> Using cache":
            self.cached_steps += 1
            return
        m = re.match(r"^Successfully built ([0-9a-f]+)$", line)
        if m:
            self.image_id = m.group(1)
            return
        m = _BUILDKIT_STEP.match(line)
        if m:
            vertex, stage, i, n, text = m.group(1), m.group(2) or "", int(m.group(3)), int(m.group(4)), m.group(5)
            self._bk_vertices[vertex] = (stage, i, n, text)
            self._bk_stage_totals[stage] = n
            self.total = sum(self._bk_stage_totals.values())
            self.current = f"[{stage} {i}/{n}] {text}" if stage else f"[{i}/{n}] {text}"
            return
        m = _BUILDKIT_DONE.match(line)
        if m and m.group(1) in self._bk_vertices:
            self._bk_done.add(m.group(1))
            if m.group(2) == "CACHED":
                self.cached_steps += 1
            self.step = len(self._bk_done)
            return
        m = _BUILDKIT_ERROR.match(line)
        if m:
            self.error = m.group(2)

    def failed_step(self) -> str:
        return self.current

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        return {
            "state": self.state,
            "steps_done": max(self.step - 1, 0) if self.state == "running" and self._is_classic() else self.step,
            "steps_total": self.total,
            "current_step": self.current,
            "cached_steps": self.cached_steps,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started_at)),
            "started_epoch": round(self.started_at, 3),
            "updated_epoch": round(now, 3),
            "elapsed_s": round(now - self.started_at, 1),
            "image_id": self.image_id,
            "error": self.error,
            "log_file": self.log_file,
            "last_lines": list(self.lines),
        }

    def _is_classic(self) -> bool:
        return not self._bk_vertices


def write_json_atomic(path: str, data: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".progress.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_progress(path: str) -> dict[str, Any]:
    """The progress a build (running or finished) wrote to `path`; a running build's elapsed time is brought up to now
    (a long silent step writes no line) and `silent_s` says how long since its last output."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise ImageError(f"no build progress at {path!r}: no build has started with this progress file") from exc
    except ValueError as exc:
        raise ImageError(f"build progress file {path!r} is not JSON: {exc}") from exc
    if data.get("state") == "running" and "started_epoch" in data:
        now = time.time()
        data["elapsed_s"] = round(now - data["started_epoch"], 1)
        data["silent_s"] = round(now - data.get("updated_epoch", now), 1)
    return data


class ProgressSink:
    """Writes build output to the log file and, at most once a second, the progress JSON."""

    def __init__(self, log_file: str, progress_file: str) -> None:
        self.progress = BuildProgress(log_file=log_file)
        self.progress_file = progress_file
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        if os.path.exists(log_file):
            os.replace(log_file, log_file + ".1")
        self.log = open(log_file, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()
        self._last_write = 0.0
        self._last_step = -1
        self.flush(force=True)

    def line(self, text: str) -> None:
        text = _ANSI.sub("", text)
        self.log.write(text if text.endswith("\n") else text + "\n")
        self.progress.feed(text)
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.time()
        if force or self.progress.step != self._last_step or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            write_json_atomic(self.progress_file, self.progress.as_dict())
            self._last_write, self._last_step = now, self.progress.step

    def close(self, state: str, error: str = "", image_id: str = "") -> dict[str, Any]:
        self.progress.state = state
        if error:
            self.progress.error = error
        if image_id:
            self.progress.image_id = image_id
        self.flush(force=True)
        self.log.close()
        return self.progress.as_dict()
