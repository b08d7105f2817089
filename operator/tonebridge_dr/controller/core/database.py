"""Asking a policy's database where its WAL is (read-only), for RPO as data at risk.

Only for PostgreSQL policies with `walArchive.mode: archive_command`: the server's own
archiver is then what moves WAL into the repository, and `pg_stat_archiver` says how far
it got. One short connection per monitoring round, with the policy's DSN Secret (the
role needs no privilege: `pg_stat_archiver` and `pg_current_wal_lsn()` are readable by
every role). `observe` never raises: a failure is `ArchiverState.error`, one sentence
without the DSN in it, and the RPO is then judged from the catalog alone.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg

from tonebridge_dr.api.backuppolicy import WalArchiveMode
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.controller.core.kube import ApiError, Kube
from tonebridge_dr.status.dataatrisk import ArchiverState

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5
QUERY = """
SELECT CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_current_wal_lsn() - '0/0'::pg_lsn END,
       last_archived_wal, last_archived_time, last_failed_wal, last_failed_time,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       (SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout')
FROM pg_stat_archiver
"""


def wanted(policy: BackupPolicy) -> bool:
    """Whether the policy's RPO is judged with the server's archiver."""
    postgres = policy.spec.target.postgres
    return (postgres is not None and postgres.wal_archive is not None
            and postgres.wal_archive.mode == WalArchiveMode.ARCHIVE_COMMAND)


def observe(policy: BackupPolicy, kube: Kube) -> ArchiverState | None:
    """The archiver state of the policy's database; None when the policy does not archive
    with archive_command (see `wanted`)."""
    if not wanted(policy):
        return None
    postgres = policy.spec.target.postgres
    assert postgres is not None
    ref = postgres.dsn_secret_ref
    namespace = policy.metadata.namespace or "default"
    try:
        data = kube.secret_data(namespace, ref.name)
    except ApiError as exc:
        return ArchiverState(error=f"cannot read Secret {ref.name}: {exc}")
    dsn = (data or {}).get(ref.key)
    if not dsn:
        return ArchiverState(error=f'Secret "{ref.name}" has no key "{ref.key}"')
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True,
                             application_name="tonebridge-dr-operator") as conn:
            row = conn.execute(QUERY).fetchone()
    except psycopg.Error as exc:
        # psycopg's message names host and port at most, never the password.
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ArchiverState(error=f"database: {text}")
    if row is None:
        return ArchiverState(error="pg_stat_archiver returned nothing")
    lsn, archived_wal, archived_at, failed_wal, failed_at, segment_size, timeout = row
    return ArchiverState(
        current_lsn=int(lsn) if lsn is not None else None,
        last_archived_wal=archived_wal,
        last_archived_time=archived_at,
        last_failed_wal=failed_wal,
        last_failed_time=failed_at,
        segment_size=int(segment_size),
        archive_timeout=timedelta(seconds=int(timeout or 0)),
    )
