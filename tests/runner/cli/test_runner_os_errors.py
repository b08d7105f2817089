"""Every failure has its documented exit code: OS errors of the repository (disk full,
permission denied) are storage errors (4), hostile repository URLs configuration errors
(3), never "internal error" (1)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.filesystems import tiny_filesystem
from tests.fixtures.pg_wal import SMALL_SEGMENT, WAL_COMMAND, write_segment
from tests.fixtures.postgres import Cli, PgServer, _as_postgres, populate_sample
from tonebridge_dr.runner import cli as runner_cli
from tonebridge_dr.runner.engines.postgres.wal import naming
from tonebridge_dr.runner.repository import Repository


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///x%00y", "control character"),
        ("file:///", "filesystem root"),
        ("file:////", "filesystem root"),
        ("file:///tmp/a/../../etc", "'..'"),
        ("s3://bucket/a/../b", "'..'"),
        ("ftp://host/x", "unknown repository scheme"),
    ],
)
def test_hostile_repository_urls_are_configuration_errors(
    url: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner_cli.main(["backups", "list", "--repo", url]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "internal error" not in err


def test_disk_full_during_wal_push_is_a_storage_error(tmp_path: Path) -> None:
    name = naming.segment_name(1, 1, SMALL_SEGMENT)
    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    segment = write_segment(pg_wal, name)
    header = segment.read_bytes()[:64]
    segment.write_bytes(header + os.urandom(SMALL_SEGMENT - len(header)))  # incompressible
    with tiny_filesystem(tmp_path / "repo") as repo:
        proc = subprocess.run(
            [WAL_COMMAND, "wal-push", "--repo", repo.as_uri(), str(segment)],
            capture_output=True, text=True, check=False,
            env={"PATH": "/usr/bin:/bin", "TONEBRIDGE_DR_WAL_PUSH_AHEAD": "1"},
        )
    assert proc.returncode == 4, proc.stderr
    assert "No space left on device" in proc.stderr and "internal error" not in proc.stderr


def test_disk_full_during_a_backup_is_a_storage_error_and_leaves_nothing(
    pg: PgServer, cli: Cli, tmp_path: Path
) -> None:
    dsn = pg.create_database("diskfull")
    populate_sample(pg, dsn.rsplit("dbname=", 1)[1], rows=3000)
    with tiny_filesystem(tmp_path / "repo", size="12k") as repo:
        result = cli("backup", "postgres", "--dsn", dsn, "--repo", repo.as_uri(), "--json")
        assert result.code == 4, result.err
        assert "No space left on device" in result.err
        assert json.loads(cli.termination_log.read_text())["exit_code"] == 4
        assert Repository.open(repo.as_uri()).list_backups() == []
        # temp file and claim gone; what is left is the audit record of the failure (when
        # the full disk had room for it: the record is best effort and never changes the
        # exit code)
        left = [p for p in repo.rglob("*") if p.is_file()]
        assert all(p.relative_to(repo).parts[0] == "audit" for p in left), left
        for record in left:
            data = json.loads(record.read_text())
            assert (data["operation"], data["outcome"], data["exit_code"]) == (
                "backup", "failed", 4)


def test_an_unreadable_repository_is_a_storage_error(tmp_path: Path) -> None:
    """EACCES for real: user postgres lists a repository folder only root may enter."""
    root = tmp_path / "repo"
    (root / "base" / "20261205T010203Z").mkdir(parents=True)
    root.chmod(0o700)
    tmp_path.chmod(0o755)
    proc = subprocess.run(
        [WAL_COMMAND, "backups", "list", "--repo", root.as_uri()],
        capture_output=True, text=True, check=False, **_as_postgres(),
    )
    assert proc.returncode == 4, proc.stderr
    assert "Permission denied" in proc.stderr and "internal error" not in proc.stderr


def test_a_manifest_whose_keys_leave_its_folder_is_not_a_backup(tmp_path: Path) -> None:
    repo = Repository.open((tmp_path / "repo").as_uri())
    with repo.begin(engine="postgres", method="logical", heartbeat=0) as writer:
        writer.put_object("database.dump", [b"data"])
        manifest = writer.commit(databases=["app"], server_version="15", tools={})
    raw = json.loads(repo.storage.get_bytes(manifest.key))
    for hostile in (f"base/{manifest.id}/../other/database.dump.zst",
                    f"base/{manifest.id}/sub/database.dump.zst", f"base/{manifest.id}/.."):
        raw["objects"][0]["key"] = hostile
        repo.storage.put_bytes(manifest.key, json.dumps(raw).encode())
        assert repo.list_backups() == [], hostile
