"""Archive tiers on moto's S3 server: moving backups and WAL to GLACIER in place, what
moto then answers (InvalidObjectState on GET, the Restore header after RestoreObject),
`backups archive` / `backups list` / `backups rehydrate`, and file:// refusing it all.

Moto facts these tests rely on (checked here, so a moto upgrade that changes them fails
loudly): a GET of a GLACIER object answers 403 InvalidObjectState; RestoreObject answers
202 and the copy is readable at once (HEAD: `ongoing-request="false"`, never "true": moto
has no restore in progress); a second RestoreObject answers 200; CopyObject from an
unrestored GLACIER source answers ObjectNotInActiveTierError.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tonebridge_dr.runner import cli, errors
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.engines.postgres.wal import tiering as wal_tiering
from tonebridge_dr.runner.repository import manifest as manifests
from tonebridge_dr.runner.repository import tiering
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.runner.storage import base, open_storage
from tonebridge_dr.runner.storage.s3 import S3Storage

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _client(repo: Repository) -> Any:
    storage = repo.storage
    assert isinstance(storage, S3Storage) and storage.endpoint is not None
    return s3_fixtures.client(storage.endpoint)


def _classes(repo: Repository) -> dict[str, str]:
    """Every key under the repository prefix with the class moto lists for it."""
    storage = repo.storage
    assert isinstance(storage, S3Storage)
    answer = _client(repo).list_objects_v2(Bucket=storage.bucket, Prefix=f"{storage.prefix}/")
    return {
        item["Key"][len(storage.prefix) + 1 :]: item.get("StorageClass", "STANDARD")
        for item in answer.get("Contents", [])
    }


def _backup(
    repo: Repository, started: dt.datetime, *, objects: int = 2, method: str = "logical",
    wal: manifests.WalRange | None = None,
) -> manifests.Manifest:
    with repo.begin(
        engine="postgres", method=method, compression="none", now=started, heartbeat=0
    ) as writer:
        for n in range(objects):
            writer.put_object(f"part{n}.dump", [f"{started.isoformat()} {n}".encode() * 100])
        return writer.commit(
            databases=["app"], server_version="16.4", tools={}, wal=wal,
            finished_at=started + dt.timedelta(minutes=5),
        )


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- storage primitives ---------------------------------------------------------------------


def test_moto_archives_in_place_refuses_reads_and_rehydrates(s3_repo_url: str) -> None:
    storage = open_storage(s3_repo_url)
    assert isinstance(storage, S3Storage)
    storage.put_bytes("base/x/data", b"payload")
    assert storage.archive_state("base/x/data") == base.ArchiveState(
        "base/x/data", "STANDARD", readable=True
    )
    storage.change_storage_class("base/x/data", "GLACIER")
    info = storage.head("base/x/data")
    assert info is not None and info.storage_class == "GLACIER" and info.size == 7
    state = storage.archive_state("base/x/data")
    assert state is not None and not state.readable and not state.restoring
    with pytest.raises(errors.BackupArchived, match=r"base/x/data .*storage class GLACIER"):
        storage.get_bytes("base/x/data")
    with pytest.raises(errors.BackupArchived):  # S3 copies no unrestored archived object
        storage.change_storage_class("base/x/data", "STANDARD")

    assert storage.request_rehydration("base/x/data", days=2, tier="Bulk") == "requested"
    state = storage.archive_state("base/x/data")
    assert state is not None and state.readable and state.storage_class == "GLACIER"
    assert state.restored_until is not None
    assert storage.get_bytes("base/x/data") == b"payload"
    assert storage.request_rehydration("base/x/data", days=2, tier="Bulk") == "readable"
    storage.put_bytes("base/x/hot", b"h")
    assert storage.request_rehydration("base/x/hot", days=1, tier="Standard") == "readable"
    with pytest.raises(errors.UsageError, match="retrieval tier"):
        storage.request_rehydration("base/x/data", days=1, tier="Fast")
    assert storage.archive_state("base/x/none") is None


def test_large_objects_change_class_by_multipart_copy_keeping_bytes_and_sse(
    s3_repo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TONEBRIDGE_DR_S3_SSE", "AES256")
    storage = open_storage(s3_repo_url)
    assert isinstance(storage, S3Storage)
    data = random.Random(3).randbytes(2 * S3Storage.MIN_PART_SIZE + 12345)
    storage.put_bytes("big", data)
    storage.copy_limit = 1024 * 1024  # what S3 does above 5 GiB, with little data
    storage.copy_part_size = S3Storage.MIN_PART_SIZE
    storage.change_storage_class("big", "STANDARD_IA")
    head = _client(Repository(storage)).head_object(
        Bucket=storage.bucket, Key=f"{storage.prefix}/big"
    )
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ETag"].endswith('-3"')  # three copied parts
    assert hashlib.sha256(storage.get_bytes("big")).digest() == hashlib.sha256(data).digest()
    assert list(storage.list_leftovers()) == []


def test_file_storage_refuses_archive_operations_and_reads_everything(
    file_repo_url: str,
) -> None:
    repo = Repository.open(file_repo_url)
    old = _backup(repo, NOW - 40 * DAY)
    with pytest.raises(errors.UsageError, match="only s3:// repositories have storage classes"):
        tiering.archive_backups(repo, after=30 * DAY, now=NOW)
    with pytest.raises(errors.UsageError, match="only s3://"):
        repo.storage.request_rehydration(old.objects[0].key, days=1, tier="Standard")
    assert tiering.readability(repo, old).readable
    assert tiering.class_of(old, tiering.listing(repo)) is None


# -- archiving backups -------------------------------------------------------------------------


def test_backups_older_than_after_move_to_glacier_manifests_stay_and_a_rerun_moves_nothing(
    s3_repo_url: str,
) -> None:
    repo = Repository.open(s3_repo_url)
    old1 = _backup(repo, NOW - 40 * DAY)
    old2 = _backup(repo, NOW - 31 * DAY, objects=3)
    young = _backup(repo, NOW - 29 * DAY)

    dry = tiering.archive_backups(repo, after=30 * DAY, now=NOW, dry_run=True)
    assert (dry.moved, dry.objects) == ([old1.id, old2.id], 5)
    assert set(_classes(repo).values()) == {"STANDARD"}

    report = tiering.archive_backups(repo, after=30 * DAY, now=NOW)
    assert report.moved == [old1.id, old2.id] and report.already == []
    assert report.objects == 5
    assert report.bytes == old1.size_bytes + old2.size_bytes
    assert sorted(report.keys) == sorted(tiering.data_keys(old1) + tiering.data_keys(old2))
    classes = _classes(repo)
    for manifest in (old1, old2):
        assert {classes[key] for key in tiering.data_keys(manifest)} == {"GLACIER"}
        assert classes[manifest.key] == "STANDARD"
    assert {classes[key] for key in tiering.data_keys(young)} == {"STANDARD"}
    assert not any(".claim-" in key for key in classes)

    again = tiering.archive_backups(repo, after=30 * DAY, now=NOW)
    assert (again.moved, again.objects, again.already) == ([], 0, [old1.id, old2.id])
    assert _classes(repo) == classes
    # The catalog still lists all three (manifests stay readable).
    assert [m.id for m in repo.list_backups()] == [old1.id, old2.id, young.id]


def test_backups_list_and_archive_cli(
    s3_repo_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repository.open(s3_repo_url)
    now = dt.datetime.now(dt.UTC)  # the CLI's clock; days of margin either side
    old = _backup(repo, now - 40 * DAY)
    mixed = _backup(repo, now - 2 * DAY)
    repo.storage.change_storage_class(mixed.objects[0].key, "GLACIER")
    new = _backup(repo, now - DAY)

    code, out, err = _run(
        capsys, "backups", "archive", "--repo", s3_repo_url, "--after", "30d", "--json"
    )
    assert code == 0, err
    moved = json.loads(out)
    assert moved["moved"] == [old.id] and moved["objects"] == 2
    assert moved["storage_class"] == "GLACIER" and moved["dry_run"] is False

    code, out, err = _run(capsys, "backups", "list", "--repo", s3_repo_url, "--json")
    assert code == 0, err
    assert {row["id"]: row["current_storage_class"] for row in json.loads(out)} == {
        old.id: "GLACIER", mixed.id: tiering.MIXED, new.id: "STANDARD"
    }
    code, out, _ = _run(capsys, "backups", "list", "--repo", s3_repo_url)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[-1] == "CLASS"
    assert [line.split()[-1] for line in lines] == ["GLACIER", "mixed", "STANDARD"]


def test_rehydrate_cli_requests_every_object_once_and_waits_until_readable(
    s3_repo_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repository.open(s3_repo_url)
    old = _backup(repo, NOW - 40 * DAY, objects=3)
    tiering.archive_backups(repo, after=30 * DAY, now=NOW)
    found = tiering.readability(repo, old)
    assert (found.checked, len(found.unreadable), found.classes) == (3, 3, ["GLACIER"])
    with pytest.raises(errors.BackupArchived) as refused:
        tiering.require_readable(repo, old)
    assert str(refused.value).startswith(
        f"backup {old.id} is archived: 3 of 3 objects it needs are in storage class GLACIER "
        "and not readable; nothing was restored. Rehydrate first: tonebridge-dr backups "
        f"rehydrate {old.id} --repo {s3_repo_url}"
    )

    code, out, err = _run(
        capsys, "backups", "rehydrate", old.id, "--repo", s3_repo_url, "--days", "3",
        "--tier", "Bulk", "--wait", "--poll", "1", "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["requested"], report["pending"], report["ready"]) == (3, 0, True)
    # moto rehydrates at once: readable now, and a second call asks for nothing.
    tiering.require_readable(repo, old)
    code, out, err = _run(capsys, "backups", "rehydrate", old.id, "--repo", s3_repo_url, "--json")
    assert code == 0, err
    assert json.loads(out)["requested"] == 0 and json.loads(out)["readable"] == 3
    for entry in old.objects:
        assert b"".join(repo.read_object(old, entry.name)) == (
            f"{old.started_at.isoformat()} {entry.name[4]}".encode() * 100
        )


# -- WAL --------------------------------------------------------------------------------------

SEG = naming.DEFAULT_SEGMENT_SIZE


def _wal(repo: Repository, name: str) -> str:
    wal = naming.parse(name)
    key = naming.object_key(wal, hashlib.sha256(name.encode()).hexdigest(), "")
    repo.storage.put_bytes(key, name.encode())
    return key


def _physical(repo: Repository, started: dt.datetime, segno: int) -> manifests.Manifest:
    lsn = naming.format_lsn(segno * SEG + 0x28)
    stop = naming.format_lsn(segno * SEG + 0x100)
    return _backup(
        repo, started, objects=1, method="physical",
        wal=manifests.WalRange(start_lsn=lsn, stop_lsn=stop, timeline=1),
    )


def test_wal_before_the_oldest_readable_physical_backup_moves_history_never(
    s3_repo_url: str,
) -> None:
    repo = Repository.open(s3_repo_url)
    names = [naming.segment_name(1, n, SEG) for n in range(1, 9)]
    keys = {name: _wal(repo, name) for name in names}
    history = _wal(repo, "00000002.history")
    partial = _wal(repo, naming.segment_name(1, 2, SEG) + ".partial")

    nothing = wal_tiering.archive_wal(repo)
    assert nothing.moved == 0 and nothing.reason is not None and "no physical" in nothing.reason

    archived = _physical(repo, NOW - 40 * DAY, 2)  # starts in segment 2
    kept = _physical(repo, NOW - 10 * DAY, 5)  # starts in segment 5
    tiering.archive_backups(repo, after=30 * DAY, now=NOW)
    report = wal_tiering.archive_wal(repo, dry_run=True)
    assert report.oldest_readable_backup == kept.id
    assert report.cut_segment == names[4] and report.moved == 5  # segments 1-4 + the partial
    assert _classes(repo)[keys[names[0]]] == "STANDARD"  # dry run: nothing moved

    report = wal_tiering.archive_wal(repo)
    assert sorted(report.moved_names) == sorted([*names[:4], names[1] + ".partial"])
    classes = _classes(repo)
    assert [classes[keys[name]] for name in names] == ["GLACIER"] * 4 + ["STANDARD"] * 4
    assert classes[partial] == "GLACIER" and classes[history] == "STANDARD"
    assert wal_tiering.archive_wal(repo).moved == 0

    # A restore of the archived backup needs its WAL from its start on: segments 2-4 and
    # the partial of 2 are archived; the kept backup needs none of the archived ones.
    needed = {info.key for info in wal_tiering.restore_needs(repo, archived)}
    assert needed == {keys[names[1]], keys[names[2]], keys[names[3]], partial}
    assert wal_tiering.restore_needs(repo, kept) == []
    tiering.rehydrate(repo, archived, wal_tiering.restore_needs(repo, archived))
    tiering.require_readable(repo, archived, wal_tiering.restore_needs(repo, archived))
    assert repo.storage.get_bytes(keys[names[1]]) == names[1].encode()
    with pytest.raises(errors.BackupArchived):  # segment 1 was not needed, not rehydrated
        repo.storage.get_bytes(keys[names[0]])
