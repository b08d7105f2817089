"""Honest recovery points read from real repositories by the controller's catalog reader.

Logical backups are real pg_dump runs of a real PostgreSQL into moto S3 (a hot-table dump
and a whole-database dump), so what decides "table subset" is what the runner really
writes. Physical base backups and archived WAL are laid out through the repository API
and the archive's key layout (their content is irrelevant to the catalog); a storage
wrapper records which keys the reader listed, to show it reads only the WAL after the
newest physical backup's start and stops at the first gap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

from tests.controller.test_operator_units import _policy, _Secrets
from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.postgres import PgServer, populate_sample
from tonebridge_dr.api.common import Objectives
from tonebridge_dr.api.conditions import Condition
from tonebridge_dr.controller.core import catalog
from tonebridge_dr.runner.engines.postgres import dump
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.repository import Repository, WalRange
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.storage import S3Config, Storage, open_storage
from tonebridge_dr.runner.storage.base import ObjectInfo
from tonebridge_dr.status import conditions, freshness, recoverypoint

MB16 = 16 * 1024 * 1024
HOUR = Objectives(rpo=dt.timedelta(hours=1))


def _rpo(summary: freshness.CatalogSummary, now: dt.datetime) -> Condition:
    status, _ = freshness.assess_freshness(None, summary, HOUR, generation=1, now=now)
    found = conditions.get_condition(status.conditions, conditions.RPO_MET)
    assert found is not None
    return found


def _s3_policy(moto_server: str, bucket: str, *, wal: bool = False) -> tuple[Any, Any]:
    postgres: dict[str, Any] = {"database": "db", "dsnSecretRef": {"name": "d", "key": "k"}}
    if wal:
        postgres["walArchive"] = {"mode": "archive_command"}
    policy = _policy({
        "target": {"postgres": postgres},
        "repository": {"url": f"s3://{bucket}/repo", "endpoint": moto_server,
                       "credentialsSecretRef": {"name": "reader"}},
    })
    secrets = _Secrets({"reader": {"AWS_ACCESS_KEY_ID": "AKIAREAD",
                                   "AWS_SECRET_ACCESS_KEY": "read-secret"}})
    return policy, secrets


def test_a_real_hot_table_dump_is_no_recovery_point_and_a_full_dump_is(
    pg: PgServer, moto_server: str
) -> None:
    dsn = pg.create_database("rpo")
    dbname = dsn.rsplit("dbname=", 1)[1]
    populate_sample(pg, dbname, rows=20)
    source = f"{dsn} password={pg.password}"
    bucket = s3_fixtures.new_bucket(moto_server)
    config = S3Config("AKIAWRITE", "write-secret", endpoint_url=moto_server)
    repo = Repository(open_storage(f"s3://{bucket}/repo/p", s3=config))  # policy "p"
    policy, secrets = _s3_policy(moto_server, bucket)
    reader = catalog.CatalogReader()

    hot = dump.backup_logical(repo, source, dump.LogicalBackupOptions(
        tables=("transformations", "analytics"), schedule="hourly-hot", include_globals=False))
    summary = reader.read(policy, secrets).summary
    assert summary.error is None and summary.newest_backup_id == hot.id
    (record,) = summary.backups
    assert record.id == hot.id and record.schedule == "hourly-hot"
    assert record.tables is not None
    assert sorted(record.tables) == ["public.analytics", "public.transformations"]
    assert freshness.recovery_point(summary) is None
    rpo = _rpo(summary, hot.finished_at + dt.timedelta(minutes=1))
    assert (rpo.status, rpo.reason) == ("False", "NoFullRecoveryPoint")
    assert rpo.message.startswith(
        "no full recovery point: only table dumps of public.analytics, public.transformations")

    full = dump.backup_logical(repo, source, dump.LogicalBackupOptions(
        schedule="daily-full", include_globals=False))
    assert len(full.extra["tables"]) >= 5  # a whole-database dump lists every table too
    summary = reader.read(policy, secrets).summary
    by_id = {r.id: r for r in summary.backups}
    assert by_id[full.id].tables is None and by_id[hot.id].tables is not None
    assert freshness.recovery_point(summary) == full.finished_at
    rpo = _rpo(summary, full.finished_at + dt.timedelta(minutes=1))
    assert (rpo.status, rpo.reason) == ("True", "ObjectiveMet")
    assert f"full logical backup {full.id} at " in rpo.message

    # a newer hot-table dump does not move the recovery point
    newer = dump.backup_logical(repo, source, dump.LogicalBackupOptions(
        tables=("transformations",), schedule="hourly-hot", include_globals=False))
    summary = reader.read(policy, secrets).summary
    assert summary.newest_backup_id == newer.id
    assert freshness.recovery_point(summary) == full.finished_at
    assert dump.DATABASE_OBJECT == manifests.WHOLE_DATABASE_OBJECT


class RecordingStorage(Storage):
    """Delegates to a real backend and records every key its listings returned."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.listed: list[str] = []

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, storage_class: str | None = None
    ) -> int:
        return self.inner.put_stream(key, chunks, storage_class=storage_class)

    def get_stream(self, key: str) -> Iterator[bytes]:
        return self.inner.get_stream(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for info in self.inner.list(prefix):
            self.listed.append(info.key)
            yield info

    def list_after(
        self, prefix: str = "", start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        for info in self.inner.list_after(prefix, start_after, limit):
            self.listed.append(info.key)
            yield info

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def _physical(repo: Repository, start_lsn: str, stop_lsn: str, timeline: int = 1,
              wal_method: str | None = "fetch") -> str:
    """A physical base backup that finished an hour ago (so WAL stored now follows it)."""
    start, stop = naming.parse_lsn(start_lsn), naming.parse_lsn(stop_lsn)
    then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with repo.begin(engine="postgres", method="physical", now=then) as writer:
        writer.put_object("base.tar", [b"tar"])
        manifest = writer.commit(
            databases=[], server_version="16.0", tools={},
            wal=WalRange(start_lsn=start_lsn, stop_lsn=stop_lsn, timeline=timeline,
                         start_wal_file=naming.segment_name(timeline, start // MB16, MB16),
                         stop_wal_file=naming.segment_name(timeline, stop // MB16, MB16)),
            extra={"wal_segment_size": MB16, "wal_method": wal_method},
            finished_at=then + dt.timedelta(seconds=1),
        )
    return manifest.id


def _segment(storage: Storage, timeline: int, segno: int, suffix: str = "") -> str:
    name = naming.segment_name(timeline, segno, MB16) + suffix
    storage.put_bytes(naming.object_key(naming.parse(name), "0" * 64, ".zst"), b"wal")
    return name


def test_wal_counts_only_gap_free_after_the_newest_physical_backup(
    s3_repo_url: str, moto_server: str
) -> None:
    bucket = s3_repo_url.removeprefix("s3://").split("/", 1)[0]
    config = S3Config("AKIAWRITE", "write-secret", endpoint_url=moto_server)
    storage = open_storage(f"s3://{bucket}/repo/p", s3=config)
    repo = Repository(storage)
    policy, secrets = _s3_policy(moto_server, bucket, wal=True)
    reader = catalog.CatalogReader()

    # WAL archived before any physical backup (segments 1..0x20 across the first folder)
    for segno in range(1, 0x21):
        _segment(storage, 1, segno)
    then = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with repo.begin(engine="postgres", method="logical", now=then) as writer:
        writer.put_object("database.dump", [b"dump"])
        only_logical = writer.commit(databases=["db"], server_version="16.0", tools={},
                                     finished_at=then + dt.timedelta(seconds=1))
    summary = reader.read(policy, secrets).summary
    assert summary.newest_wal_segment == naming.segment_name(1, 0x20, MB16)  # shown...
    assert summary.wal_chain is None  # ...but WAL without a physical backup counts for nothing
    assert freshness.recovery_point(summary) == only_logical.finished_at

    # A physical backup from segment 0x10 to 0x11 (its own WAL inside: fetch): the chain
    # needs 0x12 on; 0x12..0x20 exist, then a gap at 0x21, then 0x22..0x24 and a timeline 2.
    base = _physical(repo, "0/10000028", "0/11000100")
    for segno in (0x22, 0x23, 0x24):
        _segment(storage, 1, segno)
    for segno in range(0x12, 0x30):
        _segment(storage, 2, segno)
    _segment(storage, 2, 0x30, ".partial")
    summary = reader.read(policy, secrets).summary
    assert summary.wal_chain is not None
    assert summary.wal_chain.backup_id == base
    assert summary.wal_chain.segment == naming.segment_name(1, 0x20, MB16)
    point = freshness.find_recovery_point_of(summary)
    assert point is not None and point.source == "wal"
    assert freshness.recovery_point(summary) == summary.wal_chain.time
    rpo = _rpo(summary, summary.wal_chain.time + dt.timedelta(minutes=5))
    assert (rpo.status, rpo.reason) == ("True", "ObjectiveMet")
    assert rpo.message.startswith(
        f"the newest recovery point, WAL up to segment {naming.segment_name(1, 0x20, MB16)}"
        " at ")
    assert f"after physical backup {base}, is 5m old" in rpo.message

    # The listing starts at the first segment the backup needs and stops at the gap.
    recording = RecordingStorage(storage)
    start = catalog.backup_record(repo.get(base)).wal
    assert start is not None and start.first_segno == 0x12 and start.timeline == 1
    chain = recoverypoint.wal_chain_end(
        catalog.backup_record(repo.get(base)), catalog.wal_objects(recording, start))
    assert chain is not None and chain.segment == summary.wal_chain.segment
    listed = [naming.parse_key(key) for key in recording.listed]
    assert all(ref is not None and ref.wal.timeline == 1 for ref in listed)
    # nothing before the backup's first needed segment, nothing after the gap's witness
    assert [ref.wal.segno(MB16) for ref in listed if ref is not None] == [
        *range(0x12, 0x21), 0x22]

    # Filling the gap extends the chain; a .partial at the end counts as its last piece.
    _segment(storage, 1, 0x21)
    _segment(storage, 1, 0x25, ".partial")
    summary = reader.read(policy, secrets).summary
    assert summary.wal_chain is not None
    assert summary.wal_chain.segment == naming.segment_name(1, 0x25, MB16) + ".partial"

    # A backup on timeline 2 becomes the newest: only timeline 2 WAL follows it.
    on_two = _physical(repo, "0/20000028", "0/20000100", timeline=2, wal_method=None)
    summary = reader.read(policy, secrets).summary
    assert summary.wal_chain is not None and summary.wal_chain.backup_id == on_two
    assert summary.wal_chain.segment == naming.segment_name(2, 0x30, MB16) + ".partial"


def test_a_missing_first_segment_leaves_the_physical_backup_itself(
    s3_repo_url: str, moto_server: str
) -> None:
    bucket = s3_repo_url.removeprefix("s3://").split("/", 1)[0]
    config = S3Config("AKIAWRITE", "write-secret", endpoint_url=moto_server)
    storage = open_storage(f"s3://{bucket}/repo/p", s3=config)
    repo = Repository(storage)
    policy, secrets = _s3_policy(moto_server, bucket, wal=True)
    base = _physical(repo, "0/5000028", "0/5000100", wal_method=None)  # needs segment 5 on
    for segno in (6, 7, 8):
        _segment(storage, 1, segno)
    summary = catalog.CatalogReader().read(policy, secrets).summary
    assert summary.wal_chain is None
    point = freshness.find_recovery_point_of(summary)
    assert point is not None and (point.source, point.backup.id) == ("backup", base)
    rpo = _rpo(summary, point.time + dt.timedelta(minutes=2))
    assert f"physical backup {base} at " in rpo.message


def test_wal_archived_right_after_a_backup_follows_it_whatever_the_store_clock_says(
    s3_repo_url: str, moto_server: str
) -> None:
    """moto (like S3) reports LastModified in whole seconds, from its own clock: a backup
    whose host clock runs ahead finishes "after" the WAL archived behind it. The chain past
    the backup's own WAL is still the recovery point, never older than the backup."""
    bucket = s3_repo_url.removeprefix("s3://").split("/", 1)[0]
    config = S3Config("AKIAWRITE", "write-secret", endpoint_url=moto_server)
    storage = open_storage(f"s3://{bucket}/repo/p", s3=config)
    repo = Repository(storage)
    policy, secrets = _s3_policy(moto_server, bucket, wal=True)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2.5)
    with repo.begin(engine="postgres", method="physical", now=ahead) as writer:
        writer.put_object("base.tar", [b"tar"])
        base = writer.commit(
            databases=[], server_version="16.0", tools={},
            wal=WalRange(start_lsn="0/3000028", stop_lsn="0/3000100", timeline=1,
                         start_wal_file=naming.segment_name(1, 3, MB16),
                         stop_wal_file=naming.segment_name(1, 3, MB16)),
            extra={"wal_segment_size": MB16, "wal_method": None},
            finished_at=ahead,
        )
    _segment(storage, 1, 3)  # the backup's own WAL: consistency only
    summary = catalog.CatalogReader().read(policy, secrets).summary
    assert summary.wal_chain is not None and not summary.wal_chain.extends_backup
    point = freshness.find_recovery_point_of(summary)
    assert point is not None and point.source == "backup"

    following = _segment(storage, 1, 4)
    summary = catalog.CatalogReader().read(policy, secrets).summary
    assert summary.wal_chain is not None and summary.wal_chain.segment == following
    assert summary.newest_wal_time is not None and summary.newest_wal_time < ahead
    point = freshness.find_recovery_point_of(summary)
    assert point is not None and (point.source, point.backup.id) == ("wal", base.id)
    assert point.time == base.finished_at
