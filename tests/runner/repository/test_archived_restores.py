"""Restoring an archived (GLACIER) backup from moto S3: refused with exit 17 before the
target is touched, with the fix in the message; after `backups rehydrate` the same restore
works and gives back exactly what was backed up. Redis restores refuse the same way."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.fixtures.postgres import Cli, PgServer, table_checksums, user_table_names
from tests.fixtures.redis import RedisFactory, populate, snapshot
from tests.runner.postgres.test_postgres_restore import backup, dbname_of, restore, sample_db
from tests.runner.redis.test_redis_restore import make_backup as redis_backup
from tests.runner.redis.test_redis_restore import run_restore as redis_restore
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.repository import tiering
from tonebridge_dr.runner.repository.catalog import Repository


def _archive_all(repo_url: str) -> None:
    report = tiering.archive_backups(
        Repository.open(repo_url), after=dt.timedelta(0), now=dt.datetime.now(dt.UTC)
    )
    assert report.objects > 0


def test_archived_logical_backup_is_refused_then_rehydrated_and_restored_exactly(
    pg: PgServer, cli: Cli, s3_repo_url: str
) -> None:
    src = sample_db(pg)
    backup_id = backup(cli, src, s3_repo_url)
    _archive_all(s3_repo_url)
    target = pg.create_database("archived")

    refused = restore(cli, s3_repo_url, backup_id, target)
    assert refused.code == 17
    assert refused.err_lines == [
        f"error: backup {backup_id} is archived: 2 of 2 objects it needs are in storage class "
        "GLACIER and not readable; nothing was restored. Rehydrate first: tonebridge-dr backups "
        f"rehydrate {backup_id} --repo {s3_repo_url} [--days N] [--tier "
        "Standard|Bulk|Expedited] [--wait]"
    ]
    assert cli.termination()["error"] == "BackupArchived"
    assert user_table_names(pg, dbname_of(target)) == []
    latest = cli("restore", "postgres", "--repo", s3_repo_url, "--backup", "latest",
                 "--target-dsn", target)  # fmt: skip
    assert latest.code == 17

    rehydrated = cli("backups", "rehydrate", backup_id, "--repo", s3_repo_url, "--wait", "--json")
    assert rehydrated.code == 0, rehydrated.err
    assert rehydrated.json["requested"] == 2 and rehydrated.json["ready"] is True
    done = restore(cli, s3_repo_url, backup_id, target)
    assert done.code == 0, done.err
    assert table_checksums(pg, dbname_of(target)) == table_checksums(pg, dbname_of(src))
    verified = cli("backups", "verify", backup_id, "--repo", s3_repo_url, "--json")
    assert verified.code == 0 and verified.json["ok"] is True


def test_archived_redis_backup_is_refused_before_the_target_is_touched(
    redis_factory: RedisFactory, s3_repo_url: str
) -> None:
    source = redis_factory.start()
    populate(source)
    backup_id = redis_backup(source, s3_repo_url)
    _archive_all(s3_repo_url)
    target = redis_factory.start()
    target.client().set("keep", "me")
    with pytest.raises(errors.BackupArchived, match=f"backup {backup_id} is archived"):
        redis_restore("--repo", s3_repo_url, "--target-url", target.url())
    assert target.client().dbsize() == 1

    tiering.rehydrate(Repository.open(s3_repo_url), Repository.open(s3_repo_url).get(backup_id))
    redis_restore("--repo", s3_repo_url, "--target-url", target.url())
    restored = snapshot(target)
    assert {db: {k: v for k, v in keys.items() if k not in ("keep", b"keep")}
            for db, keys in restored.items()} == snapshot(source)  # fmt: skip
