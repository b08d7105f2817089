"""How the runner reports: stdout (JSON or a readable table) and the pod termination message.

The termination message is what the operator reads from a finished Job's pod: a
compact JSON object, the result on success or `{"error": reason, "message": ...,
"exit_code": n}` on failure (added to the result when the failure has one, e.g. a
restore test whose checks failed), at most 4096 bytes (the kubelet's limit).
Writing it never fails the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from tonebridge_dr.runner.contract import runner_contract

TERMINATION_LOG_ENV = runner_contract.ENV_TERMINATION_LOG
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = runner_contract.TERMINATION_LIMIT

_SECRET_PATTERNS = (
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE), r"\1***"),
    (re.compile(r"(://[^/\s:@]*:)[^@\s/]*@"), r"\1***@"),
)


def scrub(text: str) -> str:
    """Mask anything that looks like a password in a DSN/URL, and $PGPASSWORD's value."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    for name in ("PGPASSWORD", "REDIS_PASSWORD"):
        secret = os.environ.get(name)
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


#: `compact` first cuts long strings: (inside lists and dicts, top-level), in turn.
_CUTS: tuple[tuple[int, int | None], ...] = ((256, None), (64, None), (64, 512), (24, 512))


def _cut(value: Any, length: int) -> Any:
    """`value` with every string in it longer than `length` cut to it (marked with `...`)."""
    if isinstance(value, str):
        return value if len(value) <= length else value[:length] + "..."
    if isinstance(value, list):
        return [_cut(item, length) for item in value]
    if isinstance(value, dict):
        return {key: _cut(item, length) for key, item in value.items()}
    return value


def _shorten(value: Any, nested: int, top: int | None) -> Any:
    if isinstance(value, list | dict):
        return _cut(value, nested)
    if isinstance(value, str) and top is not None:
        return _cut(value, top)
    return value


def compact(payload: Mapping[str, Any], limit: int = TERMINATION_LIMIT) -> bytes:
    """JSON of `payload` in at most `limit` bytes.

    In turn, until it fits: long strings inside lists and dicts are cut (so a restore
    test's `checks` survive with shortened values and messages), top-level strings
    are cut to 512 characters, bulky values are dropped (largest first, replaced by
    "(omitted)"), then long top-level strings, the message first, are cut to 64.
    """
    data = dict(payload)
    encoded = json.dumps(data, separators=(",", ":"), default=str).encode()
    if len(encoded) <= limit:
        return encoded
    for nested, top in _CUTS:
        cut = {key: _shorten(value, nested, top) for key, value in data.items()}
        encoded = json.dumps(cut, separators=(",", ":"), default=str).encode()
        if len(encoded) <= limit:
            return encoded
    data = cut
    bulky = sorted(
        (k for k, v in data.items() if isinstance(v, list | dict)),
        key=lambda k: -len(json.dumps(data[k], default=str)),
    )
    for key in bulky:
        data[key] = "(omitted)"
        encoded = json.dumps(data, separators=(",", ":"), default=str).encode()
        if len(encoded) <= limit:
            return encoded
    for key in ("message", *data):
        value = data.get(key)
        if isinstance(value, str) and len(value) > 64:
            data[key] = value[:64] + "..."
            encoded = json.dumps(data, separators=(",", ":"), default=str).encode()
            if len(encoded) <= limit:
                return encoded
    return encoded[:limit]


def write_termination(payload: Mapping[str, Any]) -> None:
    """Write the termination message when running in a pod (or when the env var asks).

    "In a pod" means the kubelet's `KUBERNETES_SERVICE_HOST` is set: a root shell on a
    laptop must not scribble into a host file that happens to exist at that path.
    """
    path = os.environ.get(TERMINATION_LOG_ENV)
    if not path:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return
        path = DEFAULT_TERMINATION_LOG
        if not os.path.exists(path) or not os.access(path, os.W_OK):
            return
    with contextlib.suppress(OSError), open(path, "wb") as handle:
        handle.write(compact(payload))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def human_size(size: Any) -> str:
    if not isinstance(size, int):
        return _cell(size)
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def print_mapping(result: Mapping[str, Any], out: TextIO) -> None:
    """`key  value` lines, aligned."""
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        shown = human_size(value) if key.endswith("size_bytes") else _cell(value)
        out.write(f"{key.ljust(width)}  {shown}\n")


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], out: TextIO
) -> None:
    """A plain aligned table; `columns` are (key, header)."""
    cells = [[header for _, header in columns]]
    for row in rows:
        cells.append(
            [
                human_size(row.get(k)) if k.endswith("size_bytes") else _cell(row.get(k))
                for k, _ in columns
            ]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, default=str) + "\n")
