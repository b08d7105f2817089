"""Restore planning without a server: which backup, which timeline, which WAL is needed.

The catalog only looks at keys and manifests, so backups and archived WAL are
laid out synthetically (a `base.tar` placeholder, objects under their keys).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.postgres.wal import naming, pitr
from tonebridge_dr.runner.repository import Repository, WalRange

MB16 = 16 * 1024 * 1024


def _put(repo: Repository, name: str, content: bytes = b"x") -> None:
    import hashlib

    sha = hashlib.sha256(content + name.encode()).hexdigest()
    repo.storage.put_bytes(naming.object_key(naming.parse(name), sha, ""), content)


def _history(repo: Repository, timeline: int, text: str) -> None:
    import hashlib

    data = text.encode()
    key = naming.object_key(
        naming.parse(f"{timeline:08X}.history"), hashlib.sha256(data).hexdigest(), ""
    )
    repo.storage.put_bytes(key, data)


def _backup(repo: Repository, start: int, stop: int, timeline: int = 1) -> str:
    with repo.begin(engine="postgres", method="physical") as writer:
        writer.put_object("base.tar", [b"tar"])
        manifest = writer.commit(
            databases=[], server_version="15.0", tools={},
            wal=WalRange(
                start_lsn=naming.format_lsn(start), stop_lsn=naming.format_lsn(stop),
                timeline=timeline,
                start_wal_file=naming.segment_name(timeline, start // MB16, MB16),
                stop_wal_file=naming.segment_name(timeline, (stop - 1) // MB16, MB16),
            ),
            extra={"wal_segment_size": MB16, "wal_method": "fetch"},
        )
    return manifest.id


def _seg(timeline: int, segno: int) -> str:
    return naming.segment_name(timeline, segno, MB16)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.open((tmp_path / "repo").as_uri())


def _plan(repo: Repository, target: pitr.Target, **options: object) -> pitr.Plan:
    return pitr.plan_restore(repo, pitr.RestoreOptions(Path("/nonexistent"), target, **options))


def test_no_physical_backup(repo: Repository) -> None:
    with pytest.raises(pitr.RecoveryTargetUnreachable, match="no physical PostgreSQL base"):
        _plan(repo, pitr.Target("latest"))


def test_latest_walks_from_after_the_backup_to_the_end(repo: Repository) -> None:
    backup = _backup(repo, 2 * MB16 + 0x28, 2 * MB16 + 0x2000)
    for segno in range(1, 9):
        _put(repo, _seg(1, segno))
    plan = _plan(repo, pitr.Target("latest"))
    assert plan.backup.id == backup and plan.timeline == 1
    assert (plan.first_segment, plan.last_segment, plan.segments) == (_seg(1, 3), _seg(1, 8), 6)
    assert plan.ends_with_partial is False


def test_a_gap_before_later_wal_is_refused(repo: Repository) -> None:
    _backup(repo, 2 * MB16 + 0x28, 2 * MB16 + 0x2000)
    for segno in (3, 4, 6, 7):
        _put(repo, _seg(1, segno))
    with pytest.raises(pitr.RecoveryTargetUnreachable, match=f"{_seg(1, 5)} is missing"):
        _plan(repo, pitr.Target("latest"))
    with pytest.raises(pitr.RecoveryTargetUnreachable, match=f"{_seg(1, 5)} is missing"):
        _plan(repo, pitr.Target("lsn", lsn=6 * MB16 + 5))
    plan = _plan(repo, pitr.Target("lsn", lsn=4 * MB16 + 5))  # before the gap: fine
    assert plan.last_segment == _seg(1, 4)


def test_a_partial_ends_the_archive(repo: Repository) -> None:
    _backup(repo, 2 * MB16 + 0x28, 2 * MB16 + 0x2000)
    _put(repo, _seg(1, 3))
    _put(repo, _seg(1, 4) + ".partial")
    plan = _plan(repo, pitr.Target("latest"))
    assert plan.last_segment == _seg(1, 4) and plan.ends_with_partial is True
    assert _plan(repo, pitr.Target("lsn", lsn=4 * MB16 + 100)).ends_with_partial is True
    with pytest.raises(pitr.RecoveryTargetUnreachable, match="after the newest archived WAL"):
        _plan(repo, pitr.Target("lsn", lsn=5 * MB16 + 100))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    with pytest.raises(pitr.RecoveryTargetUnreachable, match="after the newest archived WAL"):
        _plan(repo, pitr.Target("time", time=later))


def test_segments_are_named_by_the_timeline_history(repo: Repository) -> None:
    backup = _backup(repo, 2 * MB16 + 0x28, 2 * MB16 + 0x2000)
    fork = 5 * MB16 + 0x1234  # timeline 2 begins inside segment 5
    _history(repo, 2, f"1\t{naming.format_lsn(fork)}\tno recovery target specified\n")
    for segno in range(3, 10):
        _put(repo, _seg(1, segno))  # the old timeline went on after the fork
    _put(repo, _seg(1, 5) + ".partial")
    for segno in (5, 6):
        _put(repo, _seg(2, segno))
    plan = _plan(repo, pitr.Target("latest"))
    assert plan.timeline == 2 and plan.backup.id == backup
    assert (plan.first_segment, plan.last_segment, plan.segments) == (_seg(1, 3), _seg(2, 6), 4)
    # Following timeline 1 instead reads its own segments to its end.
    assert _plan(repo, pitr.Target("latest"), target_timeline=1).last_segment == _seg(1, 9)
    # PostgreSQL asks for the timeline-2 name of segment 5: timeline 1's does not do.
    repo.storage.delete(
        next(i.key for i in repo.storage.list("wal/0000000200000000/") if _seg(2, 5) in i.key)
    )
    with pytest.raises(pitr.RecoveryTargetUnreachable, match=f"{_seg(2, 5)} is missing"):
        _plan(repo, pitr.Target("lsn", lsn=6 * MB16))
    assert _plan(repo, pitr.Target("lsn", lsn=4 * MB16)).last_segment == _seg(1, 4)
    # Without any timeline-2 segment, nothing beyond the fork is archived on that path.
    repo.storage.delete(
        next(i.key for i in repo.storage.list("wal/0000000200000000/") if _seg(2, 6) in i.key)
    )
    with pytest.raises(pitr.RecoveryTargetUnreachable, match="after the newest archived WAL"):
        _plan(repo, pitr.Target("lsn", lsn=6 * MB16))


def test_backups_off_the_recovery_history_are_skipped(repo: Repository) -> None:
    old = _backup(repo, 2 * MB16 + 0x28, 2 * MB16 + 0x2000)
    for segno in range(3, 12):
        _put(repo, _seg(1, segno))
    _backup(repo, 8 * MB16 + 0x28, 8 * MB16 + 0x2000)  # taken on timeline 1 after the fork
    _history(repo, 2, f"1\t{naming.format_lsn(5 * MB16)}\tbranch\n")
    for segno in (5, 6):
        _put(repo, _seg(2, segno))
    assert _plan(repo, pitr.Target("latest")).backup.id == old
    newest = _plan(repo, pitr.Target("latest"), target_timeline=1)
    assert newest.backup.id != old and newest.last_segment == _seg(1, 11)


def test_times_choose_the_newest_backup_that_ends_before_them(repo: Repository) -> None:
    first = _backup(repo, 2 * MB16 + 0x28, 2 * MB16 + 0x2000)
    for segno in range(3, 6):
        _put(repo, _seg(1, segno))
    manifest = repo.get(first)
    just_after = manifest.finished_at + dt.timedelta(microseconds=1)
    assert _plan(repo, pitr.Target("time", time=just_after)).backup.id == first
    with pytest.raises(pitr.RecoveryTargetUnreachable, match="before the end of the oldest"):
        _plan(repo, pitr.Target("time", time=manifest.started_at - dt.timedelta(seconds=1)))


def test_storage_times_count_in_whole_seconds(repo: Repository, tmp_path: Path) -> None:
    """S3 keeps Last-Modified in whole seconds: a segment stored in the target's second
    may hold WAL from after the target, so it reaches a target within that second."""
    import os

    _backup(repo, 2 * MB16 + 0x28, 2 * MB16 + 0x2000)
    _put(repo, _seg(1, 3))
    stored = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=10)
    (key,) = [info.key for info in repo.storage.list("wal/")]
    os.utime(tmp_path / "repo" / key, (stored.timestamp(), stored.timestamp()))
    target = stored + dt.timedelta(milliseconds=400)
    assert _plan(repo, pitr.Target("time", time=target)).last_segment == _seg(1, 3)
    with pytest.raises(pitr.RecoveryTargetUnreachable, match="after the newest archived WAL"):
        _plan(repo, pitr.Target("time", time=stored + dt.timedelta(seconds=1)))


def test_parse_target_and_time() -> None:
    assert pitr.parse_target(None, None, True) == pitr.Target("latest")
    assert pitr.parse_target(None, "0/3000060", False).lsn == 0x3000060
    moment = pitr.parse_target("2026-11-29 02:41:00.5+09", None, False).time
    assert moment == dt.datetime(2026, 11, 28, 17, 41, 0, 500000, tzinfo=dt.UTC)
    utc = dt.datetime(2026, 11, 29, 2, 41, tzinfo=dt.UTC)
    assert pitr.parse_time("2026-11-29T02:41:00Z") == utc
    assert pitr.parse_time("2026-11-29 02:41:00") == utc  # naive means UTC
    for given in ((None, None, False), ("2026-11-29", "0/1", False), ("2026-11-29", None, True)):
        with pytest.raises(errors.UsageError, match="exactly one"):
            pitr.parse_target(*given)
    with pytest.raises(errors.UsageError, match="invalid target time"):
        pitr.parse_time("yesterday")


# -- the temporary run and the data directory it leaves ----------------------------------


def _options(**options: object) -> pitr.RestoreOptions:
    return pitr.RestoreOptions(Path("/nonexistent"), pitr.Target("latest"), **options)


def test_the_run_gets_a_private_socket_folder_and_no_tcp_by_default() -> None:
    options = _options()
    assert pitr.needs_private_socket_dir(options)
    run = pitr.run_settings(options, Path("/tmp/tbdr-pg-x"))
    assert run == {
        "unix_socket_directories": "/tmp/tbdr-pg-x",
        "listen_addresses": "",
        "port": "5432",
        "logging_collector": "off",
        "log_destination": "stderr",
        "lc_messages": "C",
    }
    assert pitr.postmaster_options(run) == (
        "-c unix_socket_directories=/tmp/tbdr-pg-x -c listen_addresses= -c port=5432 "
        "-c logging_collector=off -c log_destination=stderr -c lc_messages=C"
    )


def test_the_run_listens_where_the_verification_dsn_connects() -> None:
    tcp = _options(dsn="host=127.0.0.1 port=6543 user=postgres dbname=postgres")
    run = pitr.run_settings(tcp, Path("/tmp/p"))
    assert (run["listen_addresses"], run["port"]) == ("127.0.0.1", "6543")
    assert run["unix_socket_directories"] == "/tmp/p"
    socket = _options(dsn="postgresql://postgres@%2Fvar%2Frun%2Fmy%20pg:5433/postgres")
    assert not pitr.needs_private_socket_dir(socket)
    run = pitr.run_settings(socket, None)
    assert run["unix_socket_directories"] == '"/var/run/my pg"'
    assert (run["listen_addresses"], run["port"]) == ("", "5433")
    assert "-c 'unix_socket_directories=\"/var/run/my pg\"'" in pitr.postmaster_options(run)
    with pytest.raises(errors.UsageError, match="invalid database DSN"):
        pitr.run_settings(_options(dsn="host='unterminated"), None)


def test_settings_given_stay_in_auto_conf_and_off_the_command_line() -> None:
    options = _options(settings={"port": "5433", "unix_socket_directories": "/srv/pg"})
    assert not pitr.needs_private_socket_dir(options)
    run = pitr.run_settings(options, None)
    assert "port" not in run and "unix_socket_directories" not in run
    assert run["listen_addresses"] == ""


def test_recovery_settings_are_removed_from_a_promoted_data_directory(tmp_path: Path) -> None:
    conf = tmp_path / "postgresql.auto.conf"
    source = (
        "# Do not edit this file manually!\n"
        "work_mem = '8MB'\n"
        "restore_command = 'cp /old/%f %p'\n"  # the source cluster's own
        "\n# tonebridge-dr: point-in-time restore of backup b1 to the end of the archive\n"
        "restore_command = 'tonebridge-dr wal-fetch --repo file:///r --allow-partial %f %p'\n"
        "recovery_target_time = '2026-11-29 02:41:00+00:00'\n"
        "Recovery_Target_Action 'promote'\n"
        "recovery_target_timeline = 'latest'\n"
        "archive_mode = 'off'\n"
        "port = '5433'"
    )
    conf.write_text(source)
    conf.chmod(0o600)
    removed = pitr.neutralise_recovery_settings(tmp_path)
    assert removed == [
        "recovery_target_action", "recovery_target_time", "recovery_target_timeline",
        "restore_command",
    ]
    text = conf.read_text()
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert settings == ["work_mem = '8MB'", "archive_mode = 'off'", "port = '5433'"]
    assert text.splitlines()[-1].startswith("# tonebridge-dr: recovery finished")
    assert conf.stat().st_mode & 0o777 == 0o600
    assert pitr.neutralise_recovery_settings(tmp_path) == []  # idempotent
    assert conf.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["postgresql.auto.conf"]
