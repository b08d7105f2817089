"""Point-in-time recovery end to end: real PostgreSQL 15, real archive/restore commands.

One archiving cluster per module (archive_command = wal-push as OS user
postgres, into a file:// repository): two physical base backups, five batches
of rows committed with their commit times and LSNs recorded, the last segment
switched and archived. Each test restores into a new data directory with
`restore --start` (restore_command = wal-fetch, also as postgres) and checks
exactly which batches exist.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import procs
from tests.fixtures.pg_wal import (
    WAL_COMMAND,
    attach_restored,
    batches,
    commit_batch,
    restore_started,
    start_archiving,
    switch_wal,
    wait_archived,
    wait_for,
)
from tests.fixtures.postgres import ADMIN_PASSWORD, PgFactory, PgServer, _free_port, chown_postgres
from tonebridge_dr.builders import restore as restore_builders
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.engines.postgres.wal import catalog, naming, pitr, retention
from tonebridge_dr.runner.repository import Manifest, Repository

pytestmark = pytest.mark.timeout(900)

ROWS = 10


@dataclasses.dataclass
class World:
    server: PgServer
    repo_url: str
    backups: list[Manifest]
    after: dict[int, tuple[dt.datetime, str]]  # batch -> (time, insert LSN) right after commit
    last_segment: str

    @property
    def repo(self) -> Repository:
        return Repository.open(self.repo_url, create=False)


def _commit_batch(server: PgServer, batch: int) -> tuple[dt.datetime, str]:
    moment, lsn = commit_batch(server, batch, ROWS)
    time.sleep(0.3)  # a gap, so that a target between batches lies between their commits
    return moment, lsn


@pytest.fixture(scope="module")
def world(pg_factory: PgFactory, postgres_runs_cli: None) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PGPASSWORD", ADMIN_PASSWORD)
        repo_dir = pg_factory.new_root("pitr-repo") / "repo"
        repo_dir.mkdir()
        chown_postgres(repo_dir)
        url = repo_dir.as_uri()
        server = start_archiving(pg_factory, "pitr", url)
        server.execute("postgres", "CREATE TABLE t (batch int NOT NULL, i int NOT NULL)")
        repo = Repository.open(url)
        options = basebackup.PhysicalBackupOptions()
        backups = [basebackup.backup_physical(repo, server.dsn(), options)]
        after = {}
        for batch in (1, 2, 3):
            after[batch] = _commit_batch(server, batch)
        backups.append(basebackup.backup_physical(repo, server.dsn(), options))
        for batch in (4, 5):
            after[batch] = _commit_batch(server, batch)
        last = switch_wal(server)
        wait_archived(server, last)
        yield World(server, url, backups, after, last)


_restore = restore_started
_batches = batches


def _expect(*batches: int) -> list[tuple[int, int]]:
    return [(batch, ROWS) for batch in batches]


def test_restore_to_a_time_between_two_batches(world: World, pg_factory: PgFactory) -> None:
    target = pitr.Target("time", time=world.after[2][0])
    server, result = _restore(pg_factory, world.repo, "pitr-time", target)
    try:
        assert _batches(server) == _expect(1, 2)
        assert result["backup_id"] == world.backups[0].id  # the newest ending before the target
        assert result["in_recovery"] is False and result["started"] is True
        assert result["new_timeline"] == 2 and result["timeline"] == 2
        assert result["wal_segments"] >= 1
        # With a DSN: pg_last_xact_replay_timestamp(), the commit of batch 2.
        recovered = pitr.parse_time(result["recovered_to_time"])
        assert world.after[1][0] < recovered <= world.after[2][0]
    finally:
        server.stop()


def test_restore_to_an_lsn(world: World, pg_factory: PgFactory) -> None:
    target = pitr.Target("lsn", lsn=naming.parse_lsn(world.after[3][1]))
    server, result = _restore(pg_factory, world.repo, "pitr-lsn", target)
    try:
        assert _batches(server) == _expect(1, 2, 3)
        assert result["backup_id"] == world.backups[0].id
    finally:
        server.stop()


def test_restore_to_latest_from_the_newest_backup(world: World, pg_factory: PgFactory) -> None:
    server, result = _restore(
        pg_factory, world.repo, "pitr-latest", pitr.Target("latest"), stop_after=True
    )
    assert result["backup_id"] == world.backups[1].id
    assert result["wal_to"] == world.last_segment and result["stopped"] is True
    assert server.postmaster_pid() is None  # shut down cleanly
    server.start()
    try:
        assert _batches(server) == _expect(1, 2, 3, 4, 5)
    finally:
        server.stop()


def test_a_restore_pod_run_leaves_a_clean_promoted_volume(
    world: World, pg_factory: PgFactory
) -> None:
    # As a RestoreRequest runs it: no --set, no DSN, and the backed-up cluster's socket
    # folder is gone (in a pod it never existed).
    source_sockets = world.server.sockdir
    hidden = source_sockets.with_name("sock-hidden")
    root = pg_factory.new_root("pitr-pod")
    data_dir = root / "data"
    target = pitr.Target("time", time=world.after[2][0])
    source_sockets.rename(hidden)
    try:
        result = pitr.restore_physical(
            world.repo,
            pitr.RestoreOptions(data_dir, target, start=True, stop_after=True, timeout=300),
        )
    finally:
        hidden.rename(source_sockets)
    assert result["stopped"] is True and result["method"] == "physical"
    assert result["server_version_major"] == 15
    assert str(result["server_version"]).startswith("15")
    assert restore_builders.server_major(result) == 15  # the instance image's default
    # Where it recovered to: the last transaction replayed is batch 2 (read from the log).
    recovered = pitr.parse_time(result["recovered_to_time"])
    assert world.after[1][0] < recovered <= world.after[2][0]
    lsn = naming.parse_lsn(result["recovered_to_lsn"])
    assert naming.parse_lsn(world.after[1][1]) < lsn < naming.parse_lsn(world.after[3][1])
    history = data_dir / "pg_wal" / f"{result['new_timeline']:08X}.history"
    last = [line for line in history.read_text().splitlines() if line.strip()][-1]
    assert naming.parse_lsn(last.split()[1]) == lsn  # where the new timeline branched off
    # Shut down cleanly, promoted, and nothing of the run or of recovery sticks.
    assert pitr.controldata(data_dir, 15)["Database cluster state"] == "shut down"
    for leftover in ("recovery.signal", "standby.signal", "postmaster.pid", "postmaster.opts"):
        assert not (data_dir / leftover).exists()
    auto = (data_dir / "postgresql.auto.conf").read_text()
    active = {
        line.split("=", 1)[0].strip()
        for line in auto.splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert active == {"archive_mode"}
    assert result["removed_settings"] == [
        "recovery_target_action", "recovery_target_time", "recovery_target_timeline",
        "restore_command",
    ]
    log = (data_dir / "log" / "tonebridge-dr-restore.log").read_text()
    sockets = re.findall(r'listening on Unix socket "(.+)/\.s\.PGSQL\.5432"', log)
    assert len(sockets) == 1 and not Path(sockets[0]).exists()  # private, removed after
    assert "IPv4" not in log and "IPv6" not in log  # no TCP while recovering
    # The next server started on the volume uses its own settings and recovers nothing.
    server = pg_factory.start_datadir("pitr-pod", data_dir)
    try:
        assert _batches(server) == _expect(1, 2)
        assert server.query("postgres", "SELECT pg_is_in_recovery()") == [(False,)]
    finally:
        server.stop()


def test_restore_with_a_given_backup(world: World, pg_factory: PgFactory) -> None:
    server, result = _restore(
        pg_factory, world.repo, "pitr-given", pitr.Target("latest"), backup_id=world.backups[0].id
    )
    try:
        assert result["backup_id"] == world.backups[0].id
        assert _batches(server) == _expect(1, 2, 3, 4, 5)
    finally:
        server.stop()


@pytest.mark.parametrize("case", ["before-backups", "after-archive", "lsn-after-archive",
                                  "given-backup-too-new"])
def test_unreachable_targets_fail_before_anything_is_written(
    world: World, tmp_path: Path, case: str
) -> None:
    first = world.backups[0]
    options: dict[str, Any] = {}
    if case == "before-backups":
        target = pitr.Target("time", time=first.started_at - dt.timedelta(hours=1))
        message = "before the end of the oldest base backup"
    elif case == "after-archive":
        target = pitr.Target("time", time=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        message = "after the newest archived WAL"
    elif case == "lsn-after-archive":
        target = pitr.Target("lsn", lsn=naming.parse_lsn("FF/0"))
        message = "after the newest archived WAL"
    else:
        target = pitr.Target("time", time=world.after[1][0])
        options["backup_id"] = world.backups[1].id
        message = "ends after the target"
    data_dir = tmp_path / "data"
    with pytest.raises(pitr.RecoveryTargetUnreachable, match=message):
        pitr.restore_physical(world.repo, pitr.RestoreOptions(data_dir, target, **options))
    assert not data_dir.exists()


def _copy_repo(world: World, pg_factory: PgFactory, name: str) -> Repository:
    copy = pg_factory.new_root(name) / "repo"
    shutil.copytree(Path(world.repo_url.removeprefix("file://")), copy)
    chown_postgres(copy)
    return Repository.open(copy.as_uri(), create=False)


def _segment_after_backup(repo: Repository, backup: Manifest) -> catalog.ArchivedObject:
    assert backup.wal is not None and backup.wal.stop_wal_file is not None
    name = naming.next_segment(backup.wal.stop_wal_file, naming.DEFAULT_SEGMENT_SIZE)
    return catalog.WalArchive(repo.storage).find(name)


def test_a_missing_segment_between_backup_and_target_is_refused(
    world: World, pg_factory: PgFactory, tmp_path: Path
) -> None:
    repo = _copy_repo(world, pg_factory, "pitr-gap")
    gap = _segment_after_backup(repo, world.backups[0])
    repo.storage.delete(gap.key)
    target = pitr.Target("lsn", lsn=naming.parse_lsn(world.after[3][1]))
    with pytest.raises(pitr.RecoveryTargetUnreachable, match=f"WAL segment {gap.name} is missing"):
        pitr.restore_physical(repo, pitr.RestoreOptions(tmp_path / "d", target))
    with pytest.raises(pitr.RecoveryTargetUnreachable, match=f"{gap.name} is missing"):
        pitr.restore_physical(
            repo,
            pitr.RestoreOptions(tmp_path / "d", pitr.Target("latest"),
                                backup_id=world.backups[0].id),
        )
    assert not (tmp_path / "d").exists()


def test_a_corrupt_segment_stops_recovery_loudly(
    world: World, pg_factory: PgFactory
) -> None:
    repo = _copy_repo(world, pg_factory, "pitr-corrupt")
    bad = _segment_after_backup(repo, world.backups[0])
    stored = repo.storage.get_bytes(bad.key)
    repo.storage.put_bytes(bad.key, stored[:100] + bytes([stored[100] ^ 1]) + stored[101:])
    chown_postgres(Path(repo.url.removeprefix("file://")))
    root = pg_factory.new_root("pitr-corrupt-data")
    port = _free_port()
    with pytest.raises(errors.ToolError, match="exit code 255"):
        pitr.restore_physical(
            repo,
            pitr.RestoreOptions(
                root / "data", pitr.Target("latest"), backup_id=world.backups[0].id,
                start=True, wal_command=WAL_COMMAND, timeout=300,
                settings={"port": str(port), "unix_socket_directories": str(root)},
            ),
        )
    log = (root / "data" / "log" / "tonebridge-dr-restore.log").read_text()
    assert "is corrupt" in log and bad.key in log and "recovery stops here" in log


def test_non_empty_data_directory_is_refused(world: World, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("15\n")
    with pytest.raises(errors.TargetNotEmpty, match="--overwrite"):
        pitr.restore_physical(world.repo, pitr.RestoreOptions(data_dir, pitr.Target("latest")))
    assert (data_dir / "PG_VERSION").read_text() == "15\n"
    result = pitr.restore_physical(
        world.repo, pitr.RestoreOptions(data_dir, pitr.Target("latest"), overwrite=True)
    )
    assert result["started"] is False
    assert (data_dir / "recovery.signal").exists() and (data_dir / "backup_label").exists()
    conf = (data_dir / "postgresql.auto.conf").read_text()
    assert "restore_command = " in conf and "wal-fetch --repo" in conf
    assert "recovery_target_timeline = 'latest'" in conf and "archive_mode = 'off'" in conf


def test_timelines_restore_promote_archive_and_restore_again(
    world: World, pg_factory: PgFactory
) -> None:
    # Restore to just after batch 2 and keep archiving: the copy becomes timeline 2.
    first, result = _restore(
        pg_factory, world.repo, "pitr-tli2", pitr.Target("time", time=world.after[2][0]),
        keep_archiving=True,
    )
    try:
        assert result["new_timeline"] == 2
        assert _batches(first) == _expect(1, 2)
        tli2_after_12 = _commit_batch(first, 12)
        _commit_batch(first, 13)
        last = switch_wal(first)
        assert last.startswith("00000002")
        wait_archived(first, last)
    finally:
        first.stop()
    status = catalog.archive_status(world.repo)
    assert 2 in status.timelines
    # Restore again, to a point on timeline 2: the base backup is on timeline 1, the
    # history file leads recovery onto timeline 2; batches 3-5 (timeline 1 after the
    # fork, written by the original server) must not appear.
    second, result = _restore(
        pg_factory, world.repo, "pitr-tli2-again", pitr.Target("time", time=tli2_after_12[0])
    )
    try:
        assert result["recovery_timeline"] == 2
        assert result["backup_id"] == world.backups[0].id  # the newer one is off this history
        assert _batches(second) == _expect(1, 2, 12)
        assert result["new_timeline"] == 3
    finally:
        second.stop()


def _older_than(names: set[str], backup: Manifest) -> set[str]:
    assert backup.wal is not None and backup.wal.start_wal_file is not None
    cut = naming.parse(backup.wal.start_wal_file).segno(naming.DEFAULT_SEGMENT_SIZE)
    return {
        name for name in names
        if naming.parse(name).kind != naming.HISTORY
        and naming.parse(name).segno(naming.DEFAULT_SEGMENT_SIZE) < cut
    }


def test_prune_keeps_what_the_retained_backups_need(
    world: World, pg_factory: PgFactory
) -> None:
    repo = _copy_repo(world, pg_factory, "pitr-prune")
    archive = catalog.WalArchive(repo.storage)
    before = {obj.name for obj in archive.all_objects()}
    oldest, newest = world.backups
    dry = retention.prune_wal(repo, dry_run=True)
    assert dry.oldest_backup == oldest.id
    assert set(dry.deleted_names) == _older_than(before, oldest)
    assert {obj.name for obj in archive.all_objects()} == before  # a dry run deletes nothing
    repo.delete_backup(oldest.id)  # base-backup retention dropped the oldest backup
    report = retention.prune_wal(repo)
    after = {obj.name for obj in archive.all_objects()}
    expected_gone = _older_than(before, newest)
    assert expected_gone > _older_than(before, oldest)
    assert report.deleted == len(expected_gone) and after == before - expected_gone
    assert newest.wal is not None and report.cut_segment == newest.wal.start_wal_file
    assert any(name.endswith(".backup") for name in after)  # the newest backup's label stays
    # Timeline 1 explicitly: when the timeline test ran first, the archive also holds the
    # history of timeline 2, which branched off before the retained backup.
    server, result = _restore(
        pg_factory, repo, "pitr-after-prune", pitr.Target("latest"), target_timeline=1
    )
    try:
        assert result["backup_id"] == newest.id
        assert _batches(server) == _expect(1, 2, 3, 4, 5)
    finally:
        server.stop()
    # A time inside the window (after the retained backup, before the newest WAL) too.
    server, result = _restore(
        pg_factory, repo, "pitr-after-prune-time", pitr.Target("time", time=world.after[4][0]),
        target_timeline=1,
    )
    try:
        assert result["backup_id"] == newest.id
        assert _batches(server) == _expect(1, 2, 3, 4)
    finally:
        server.stop()


def _restore_latest_from_first_backup(
    world: World, pg_factory: PgFactory, repo: Repository, name: str, **options: Any
) -> tuple[Path, dict[str, Any]]:
    root = pg_factory.new_root(name)
    port = _free_port()
    # Timeline 1 explicitly: the timeline test may have added timeline 2 to the archive.
    options = {
        "backup_id": world.backups[0].id, "target_timeline": 1, "start": True, "timeout": 300,
        "settings": {"port": str(port), "unix_socket_directories": str(root)}, **options,
    }
    return root / "data", options


def test_an_unreadable_segment_aborts_recovery_instead_of_promoting_early(
    world: World, pg_factory: PgFactory
) -> None:
    """The silent data loss of the old wal-fetch: a segment restore_command could not read
    (EACCES) was answered with exit 1, taken for the end of the archive, and the restore
    promoted and reported success with the later batches missing."""
    repo = _copy_repo(world, pg_factory, "pitr-eacces")
    bad = _segment_after_backup(repo, world.backups[0])
    stored = Path(repo.url.removeprefix("file://")) / bad.key
    stored.chmod(0)  # user postgres, who runs restore_command, cannot read it
    data_dir, options = _restore_latest_from_first_backup(world, pg_factory, repo, "pitr-eacces-d")
    with pytest.raises(errors.ToolError, match="exited with exit code 255"):
        pitr.restore_physical(repo, pitr.RestoreOptions(data_dir, pitr.Target("latest"),
                                                        **options))
    log = (data_dir / "log" / "tonebridge-dr-restore.log").read_text()
    assert "exit code 255" in log and "Permission denied" in log
    assert "recovery stops here" in log and "database system is ready" not in log
    assert (data_dir / "recovery.signal").exists()  # never promoted
    assert procs.mentioning(str(data_dir)) == []  # no prefetcher, no server left behind
    # The cause fixed, the same data directory recovers everything: nothing was lost.
    stored.chmod(0o644)
    chown_postgres(data_dir)
    (data_dir / "postmaster.pid").unlink(missing_ok=True)
    server = attach_restored(pg_factory, "pitr-eacces-d", data_dir,
                             int(options["settings"]["port"]))
    server.start()
    try:
        wait_for(lambda: not (data_dir / "recovery.signal").exists(), "promotion")
        wait_for(lambda: _batches(server) == _expect(1, 2, 3, 4, 5), "all batches")
    finally:
        server.stop()


def test_a_restore_that_promotes_before_the_planned_end_fails_and_is_marked(
    world: World, pg_factory: PgFactory
) -> None:
    """Any restore_command that answers "not found" for WAL the archive holds (here one
    that lies for one segment, like the old wal-fetch on an error) ends recovery early:
    restore_physical compares where recovery ended with its plan and fails loudly."""
    repo = _copy_repo(world, pg_factory, "pitr-early")
    skipped = _segment_after_backup(repo, world.backups[0])
    root = pg_factory.new_root("pitr-early-cmd")
    lying = root / "lying-restore-command"
    lying.write_text(
        "#!/bin/sh\n"
        f'[ "$5" = "{skipped.name}" ] && exit 1\n'
        f'exec {WAL_COMMAND} "$@"\n'
    )
    lying.chmod(0o755)
    chown_postgres(root)
    data_dir, options = _restore_latest_from_first_backup(world, pg_factory, repo, "pitr-early-d")
    with pytest.raises(errors.RecoveryEndedEarly, match="archive holds WAL up to") as caught:
        pitr.restore_physical(repo, pitr.RestoreOptions(
            data_dir, pitr.Target("latest"), wal_command=str(lying), **options))
    assert caught.value.exit_code == 14 and caught.value.reason == "RecoveryEndedEarly"
    assert world.last_segment in str(caught.value)
    marker = data_dir / pitr.ENDED_EARLY_MARKER
    assert "misses committed transactions" in marker.read_text()
    assert procs.mentioning(str(data_dir)) == []  # server stopped, prefetcher gone
