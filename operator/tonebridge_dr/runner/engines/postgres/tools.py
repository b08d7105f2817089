"""Where the PostgreSQL client tools are, and which version they are.

`pg_dump` must be at least as new as the server it dumps, so the tools are
taken from `$TONEBRIDGE_DR_PG_BIN` when set, else from the Debian layout
`/usr/lib/postgresql/<major>/bin` matching the server's major version (or the
newest installed), else from `$PATH`.
"""

from __future__ import annotations

import functools
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


@functools.cache
def version(path: str) -> str:
    """`pg_dump --version` style output, e.g. "pg_dump (PostgreSQL) 15.18"."""
    return process.run([path, "--version"]).strip()


def major_of(version_text: str) -> int | None:
    match = re.search(r"\b(\d+)(?:\.\d+)?", version_text.split(")")[-1])
    return int(match.group(1)) if match else None
