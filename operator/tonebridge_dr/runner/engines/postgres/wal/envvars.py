"""Numbers from TONEBRIDGE_DR_WAL_* variables, checked: a typo is a usage error, not a
silent default. (The fast path in spool.py reads its few numbers leniently on purpose:
it must import nothing and may always fall back to the slow path, which checks.)"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from tonebridge_dr.runner import errors

N = TypeVar("N", int, float)
D = TypeVar("D", int, float, None)


def number(
    env: Mapping[str, str],
    name: str,
    default: D,
    *,
    parse: Callable[[str], N],
    what: str,
    minimum: N | None = None,
) -> N | D:
    """`env[name]` parsed with `parse` (`what` names it in the error), at least
    `minimum`; `default` when unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise errors.UsageError(f"{name} must be {what}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise errors.UsageError(f"{name} must be at least {minimum}, got {raw!r}")
    return value
