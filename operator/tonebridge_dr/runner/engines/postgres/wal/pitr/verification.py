"""Checking a recovered server: did recovery reach its plan, and what does SQL say."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.engines.postgres.wal.pitr.plan import Plan, Target
from tonebridge_dr.runner.engines.postgres.wal.pitr.server import Server

log = logging.getLogger(__name__)

ENDED_EARLY_MARKER = "TONEBRIDGE_DR_RECOVERY_ENDED_EARLY"


def recovery_shortfall(plan: Plan, target: Target, recovered_to_lsn: str | None) -> str | None:
    """Why recovery stopped short of its plan, or None when it reached it.

    PostgreSQL itself refuses to promote before a time or LSN target ("recovery ended
    before configured recovery target was reached"), but for the latest point the end of
    the archive is simply the first file restore_command did not deliver: a fetch error
    taken for "not found" promotes early without a word. So: the last replayed record
    must lie in (or end at) the plan's last segment, and at or past an LSN target. The
    one blind spot is a record that fills the whole last segment and continues into WAL
    nobody archived yet; its data is unrecoverable either way.
    """
    if recovered_to_lsn is None:
        return "the restored server reports no end of recovery (no new timeline history)"
    reached = naming.parse_lsn(recovered_to_lsn)
    if target.kind == "lsn" and target.lsn is not None and reached < target.lsn:
        return (
            f"recovery ended at LSN {recovered_to_lsn}, before the target LSN "
            f"{naming.format_lsn(target.lsn)}"
        )
    if target.kind != "latest" or plan.last_segment is None:
        return None
    size = plan.segment_size
    planned = naming.parse(plan.last_segment).segno(size)
    # An end exactly at a segment boundary belongs to the segment before it.
    if naming.segno_of_lsn(max(reached - 1, 0), size) >= planned:
        return None
    return (
        f"recovery ended at LSN {recovered_to_lsn}, in segment "
        f"{naming.segment_name(plan.timeline, naming.segno_of_lsn(reached, size), size)}, "
        f"but the archive holds WAL up to {plan.last_segment}: PostgreSQL promoted after "
        "a WAL file was not delivered"
    )


def mark_ended_early(server: Server, data_dir: Path, why: str) -> None:
    """Stop the server (nobody may write to a database that misses data), mark, raise."""
    try:
        server.stop()
    except errors.DRError as exc:
        log.warning("could not stop the restored server: %s", exc)
    text = (
        f"{why}.\nThis data directory misses committed transactions that are in the "
        "archive. Do not use it; restore again (overwrite) once the cause is fixed.\n"
    )
    (data_dir / ENDED_EARLY_MARKER).write_text(text)
    raise errors.RecoveryEndedEarly(
        f"{why}; the data directory was shut down and marked with {ENDED_EARLY_MARKER}"
    )


def verify_sql(dsn: str) -> dict[str, Any]:
    from tonebridge_dr.runner.engines.postgres import connection

    info = connection.ConnInfo.parse(dsn)
    with connection.connect(info, autocommit=True, purpose="restored server") as conn:
        row = conn.execute(
            "SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text, "
            "pg_walfile_name(pg_current_wal_lsn()), pg_last_xact_replay_timestamp()"
        ).fetchone()
    assert row is not None
    replayed = row[3] if isinstance(row[3], dt.datetime) else None
    return {
        "in_recovery": bool(row[0]),
        "wal_lsn": row[1],
        "timeline": int(row[2][:8], 16),
        "last_replayed_at": replayed,
    }

