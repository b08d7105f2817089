"""Backup ids: UTC timestamps that sort by time.

An id is `YYYYMMDDTHHMMSSZ` (the UTC second the backup started), e.g.
`20261129T024100Z`. When that id is already taken in a repository the writer
uses `20261129T024100Z-1`, `-2`, ... Plain string order is time order for the
base form and for suffixes up to `-9`; `sort_key` orders any id correctly (a
`-10` after a `-9`) and is what the catalog sorts by.
"""

from __future__ import annotations

import datetime as dt
import re

from tonebridge_dr.runner import errors

_ID_RE = re.compile(r"(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<n>[1-9]\d{0,5}))?", re.ASCII)
_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def new_backup_id(now: dt.datetime) -> str:
    """The base id for a backup started at `now` (an aware datetime, any zone)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("backup ids are made from timezone-aware datetimes")
    return now.astimezone(dt.UTC).strftime(_STAMP_FORMAT)


def with_suffix(base_id: str, n: int) -> str:
    """The `n`-th alternative of `base_id` (`n == 0` is `base_id` itself)."""
    return base_id if n == 0 else f"{base_id}-{n}"


def is_backup_id(value: str) -> bool:
    """True for a well-formed id naming a real UTC second (the literal "latest" is not an id)."""
    match = _ID_RE.fullmatch(value)
    if match is None:
        return False
    try:
        dt.datetime.strptime(match.group("stamp"), _STAMP_FORMAT)
    except ValueError:
        return False
    return True


def check_backup_id(value: str) -> str:
    """Return `value` when it is an id, else raise a UsageError saying what an id looks like."""
    if not is_backup_id(value):
        raise errors.UsageError(
            f"invalid backup id {value!r}: expected YYYYMMDDTHHMMSSZ[-N] "
            "(e.g. 20261129T024100Z) or 'latest'"
        )
    return value


def sort_key(backup_id: str) -> tuple[str, int]:
    """Orders ids by time, then by collision suffix (`X` < `X-1` < `X-9` < `X-10`)."""
    match = _ID_RE.fullmatch(backup_id)
    if match is None:
        raise ValueError(f"not a backup id: {backup_id!r}")
    return match.group("stamp"), int(match.group("n") or 0)


def id_time(backup_id: str) -> dt.datetime:
    """The UTC second encoded in an id."""
    stamp, _ = sort_key(backup_id)
    return dt.datetime.strptime(stamp, _STAMP_FORMAT).replace(tzinfo=dt.UTC)
