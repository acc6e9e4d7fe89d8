# Copyright: llm-fleet contributors
# Apache-2.0
"""Read a Dockerfile without building it: the external base images, the stage names, BuildKit features.

Global `ARG`s and build args are substituted into `FROM` lines the way the builder does, so the
base images (and their digests, which the content hash covers) are the ones a build would use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

_ARG_RE = re.compile(r"^\s*ARG\s+(.+)$", re.IGNORECASE)
_FROM_RE = re.compile(r"^\s*FROM\s+(.+)$", re.IGNORECASE)
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+]([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_BUILDKIT_RE = re.compile(
    r"^\s*RUN\s+(--mount|--network|--security)|<<-?\s*[\"']?[A-Za-z_]+|^\s*#\s*syntax\s*=", re.IGNORECASE | re.MULTILINE
)


def _logical_lines(text: str) -> Iterator[str]:
    """Dockerfile lines with backslash continuations joined and comments dropped."""
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            yield buf.strip()
        buf = ""
    if buf.strip():
        yield buf.strip()


def _substitute(value: str, env: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in env and env[name] != "":
            return env[name]
        return m.group(2) or ""

    return _VAR_RE.sub(repl, value)


def _parse_arg(spec: str, env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    out = []
    for part in spec.split():
        if "=" in part:
            k, v = part.split("=", 1)
            out.append((k, _substitute(v.strip("\"'"), env)))
        else:
            out.append((part, None))
    return out


def dockerfile_base_images(text: str, build_args: Mapping[str, str] | None = None) -> list[str]:
    """External images the Dockerfile's FROM lines name, with global ARGs and build args substituted.

    Stage names defined earlier (`FROM base AS build` ... `FROM build`) and `scratch` are skipped.
    """
    build_args = dict(build_args or {})
    env: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False
    for line in _logical_lines(text):
        m = _ARG_RE.match(line)
        if m and not seen_from:
            for name, default in _parse_arg(m.group(1), env):
                env[name] = build_args.get(name, default if default is not None else env.get(name, ""))
            continue
        m = _FROM_RE.match(line)
        if not m:
            continue
        seen_from = True
        words = [w for w in m.group(1).split() if not w.startswith("--")]
        if not words:
            continue
        image = _substitute(words[0], env)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() in stages or image == "scratch" or image in images:
            continue
        images.append(image)
    return images


def dockerfile_stages(text: str) -> list[str]:
    """The stage names (`FROM ... AS name`) in order."""
    names = []
    for line in _logical_lines(text):
        m = _FROM_RE.match(line)
        if m:
            words = [w for w in m.group(1).split() if not w.startswith("--")]
            if len(words) >= 3 and words[1].lower() == "as":
                names.append(words[2])
    return names


def needs_buildkit(text: str) -> str | None:
    """The first line that needs BuildKit (RUN --mount, heredocs, `# syntax=`), or None."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if _BUILDKIT_RE.search(line):
            return f"line {lineno}: {line.strip()[:100]}"
    return None
