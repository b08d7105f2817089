"""Where the PostgreSQL client tools are, and which version they are.

`pg_dump` must be at least as new as the server it dumps, so the tools are
taken from `$TONEBRIDGE_DR_PG_BIN` when set, else from the Debian layout
`/usr/lib/postgresql/<major>/bin` matching the server's major version (or the
newest installed), else from `$PATH`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import process

PG_BIN_ENV = "TONEBRIDGE_DR_PG_BIN"
_DEBIAN_ROOT = Path("/usr/lib/postgresql")


def _installed_majors() -> list[int]:
    try:
        return sorted(
            (int(p.name) for p in _DEBIAN_ROOT.iterdir() if p.name.isdigit()), reverse=True
        )
    except OSError:
        return []


def bin_dir(server_major: int | None = None) -> Path | None:
    """The folder to take tools from, or None to search `$PATH`."""
    configured = os.environ.get(PG_BIN_ENV)
    if configured:
        return Path(configured)
    majors = _installed_majors()
    if server_major is not None and server_major in majors:
        return _DEBIAN_ROOT / str(server_major) / "bin"
    newer = [m for m in majors if server_major is None or m >= server_major]
    if newer:
        return _DEBIAN_ROOT / str(newer[0]) / "bin"
    return None


def tool(name: str, server_major: int | None = None) -> str:
    """Absolute path of a PostgreSQL client tool; ToolError when it is not installed."""
    folder = bin_dir(server_major)
    if folder is not None:
        candidate = folder / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    where = f"{folder} or $PATH" if folder is not None else "$PATH"
    raise errors.ToolError(f"{name} is not installed (looked in {where}; set {PG_BIN_ENV})")


_versions: dict[str, str] = {}


def version(path: str) -> str:
    """`pg_dump --version` style output, e.g. "pg_dump (PostgreSQL) 15.18" (cached)."""
    if path not in _versions:
        _versions[path] = process.run([path, "--version"]).strip()
    return _versions[path]


class VersionProbe:
    """`version(path)` started now and read later, so the tool's few milliseconds of
    start-up overlap other work (a backup asks while its pg_dump already runs).

    Use as a context manager: leaving it early stops and reaps the tool.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tool: process.ToolProcess | None = None
        if path not in _versions:
            self._tool = process.ToolProcess([path, "--version"], stdout=process.PIPE)

    def result(self) -> str:
        """The version text; ToolError when the tool failed."""
        if self._tool is not None:
            with self._tool as tool:
                out = b"".join(tool.iter_stdout())
                tool.check()
            _versions[self.path] = out.decode("utf-8", "replace").strip()
            self._tool = None
        return _versions[self.path]

    def __enter__(self) -> VersionProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._tool is not None:
            self._tool.__exit__(*exc_info)  # type: ignore[arg-type]
            self._tool = None


def major_of(version_text: str) -> int | None:
    match = re.search(r"\b(\d+)(?:\.\d+)?", version_text.split(")")[-1])
    return int(match.group(1)) if match else None
