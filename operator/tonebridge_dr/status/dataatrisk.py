"""RPO as data at risk: how old the oldest change is that the repository does not hold yet.

For a policy whose database archives WAL with `archive_command`, the operator asks the
server (`pg_stat_archiver` and `pg_current_wal_lsn()`, read-only) where its WAL is and
what it archived last (`ArchiverState`). `data_at_risk` then says:

* archiving fails (`last_failed_time` after `last_archived_time`): the changes since the
  last archived segment are at risk, their age counted from when it was archived.
* the server's WAL position lies within the last archived segment (or at its end): every
  change is in the repository, nothing is at risk, however old that segment is.
* the server wrote past the last archived segment, longer ago than its `archive_timeout`
  (plus ARCHIVE_SLACK for the upload): an idle server still writes a little bookkeeping
  WAL (running-transaction snapshots, checkpoints), which PostgreSQL marks unimportant and
  never switches a segment for; a real change would have made it switch and archive
  within `archive_timeout`. Nothing is at risk: an idle night meets any RPO.
* otherwise (within `archive_timeout` of the last archive, or `archive_timeout` off): the
  changes past the last archived segment are only on the server; their age is counted
  from when that segment was archived (a lower bound: the oldest may be up to one
  `archive_timeout` older). With `archive_timeout` off an idle server cannot be told from
  one with unarchived changes: the sentence says to set it.

Pure: the controller (controller/core/database.py) observes, this module decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["ArchiverState", "DataAtRisk", "data_at_risk", "segment_end"]

_SEGMENT_NAME_LENGTH = 24
#: How long an archive_command may take after a segment switch, on top of archive_timeout.
ARCHIVE_SLACK = timedelta(seconds=10)


@dataclass(frozen=True)
class ArchiverState:
    """What the database says about its WAL and its archiver (None fields: unknown)."""

    current_lsn: int | None = None
    last_archived_wal: str | None = None
    last_archived_time: datetime | None = None
    last_failed_wal: str | None = None
    last_failed_time: datetime | None = None
    segment_size: int = 16 * 1024 * 1024
    archive_timeout: timedelta = timedelta(0)
    """The server's archive_timeout (0: off)."""
    error: str | None = None
    """Why the server could not be asked (unreachable, refused): then nothing is judged."""


@dataclass(frozen=True)
class DataAtRisk:
    age: timedelta
    """How old the oldest change not in the repository is (zero: nothing at risk)."""
    sentence: str
    """What the RPOMet message says about it."""


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def segment_end(name: str, segment_size: int) -> int | None:
    """The WAL position right after segment `name` (000000010000000A0000003F), or None for
    anything that is no segment name (a history file, a `.partial`, a `.backup` label)."""
    if len(name) != _SEGMENT_NAME_LENGTH:
        return None
    try:
        log, low = int(name[8:16], 16), int(name[16:24], 16)
    except ValueError:
        return None
    per_log = 0x100000000 // segment_size
    return (log * per_log + low + 1) * segment_size


def data_at_risk(state: ArchiverState, now: datetime) -> DataAtRisk | None:
    """The age of the changes not archived yet (module docstring); None when the server
    could not tell (unreachable, never archived anything, a standby without a position)."""
    if state.error is not None or state.current_lsn is None:
        return None
    if state.last_archived_wal is None or state.last_archived_time is None:
        return None
    end = segment_end(state.last_archived_wal, state.segment_size)
    if end is None:
        return None
    archived = f"segment {state.last_archived_wal} archived at {_time(state.last_archived_time)}"
    position = _lsn_text(state.current_lsn)
    age = max(now - state.last_archived_time, timedelta(0))
    failing = (state.last_failed_time is not None
               and state.last_failed_time > state.last_archived_time)
    if failing:
        assert state.last_failed_time is not None
        return DataAtRisk(age, (
            f"archiving fails: {state.last_failed_wal or 'a segment'} failed at "
            f"{_time(state.last_failed_time)}; changes after {_time(state.last_archived_time)} "
            f"are not archived (the server is at WAL position {position}, the newest {archived})"
        ))
    if state.current_lsn <= end:
        return DataAtRisk(timedelta(0), f"every change is archived (the server is at WAL "
                                        f"position {position}, {archived})")
    timeout = state.archive_timeout
    if timeout > timedelta(0) and age > timeout + ARCHIVE_SLACK:
        return DataAtRisk(timedelta(0), (
            f"every change is archived (the server is at WAL position {position}, {archived}; "
            f"what followed is bookkeeping WAL: archive_timeout "
            f"{int(timeout.total_seconds())}s would have archived any change)"))
    sentence = (f"changes after {_time(state.last_archived_time)} may not be archived yet (the "
                f"server is at WAL position {position}, the newest {archived})")
    if timeout <= timedelta(0):
        sentence += ("; archive_timeout is off, so an idle server cannot be told from one "
                     "with unarchived changes: set archive_timeout")
    return DataAtRisk(age, sentence)
