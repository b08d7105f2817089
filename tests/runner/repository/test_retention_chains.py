"""Retention keeps whole incremental chains (Repository.prune, the operator's too), on
a file:// and a moto S3 repository."""

from __future__ import annotations

import datetime as dt

import pytest

from tonebridge_dr.runner.repository import Manifest, Repository
from tonebridge_dr.runner.repository.retention import RetentionPolicy

T0 = dt.datetime(2026, 11, 1, 2, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["file", "s3"])
def repo(request: pytest.FixtureRequest) -> Repository:
    return Repository.open(str(request.getfixturevalue(f"{request.param}_repo_url")))


def backup(repo: Repository, day: int, kind: str, depends_on: list[str]) -> Manifest:
    now = T0 + dt.timedelta(days=day)
    with repo.begin(engine="postgres", method="physical", now=now, schedule="nightly") as w:
        w.put_object("chunks.bin" if depends_on else "base.tar", [f"data {day}".encode()])
        w.put_object("files.json", [b"{}"])
        return w.commit(
            databases=[], server_version="15.8", tools={}, finished_at=now,
            extra={"incremental": {"type": kind, "depends_on": depends_on}},
        )


def test_a_chain_is_kept_whole_until_a_newer_chain_replaces_it(repo: Repository) -> None:
    full = backup(repo, 0, "full", [])
    inc1 = backup(repo, 1, "incremental", [full.id])
    inc2 = backup(repo, 2, "incremental", [full.id, inc1.id])
    policy = RetentionPolicy(keep_last=1)
    report = repo.prune(policy, now=T0 + dt.timedelta(days=3))
    assert report.deleted == []
    assert set(report.kept) == {full.id, inc1.id, inc2.id}
    assert report.reasons[full.id] == [f"chain-of:{inc2.id}"]
    assert report.reasons[inc1.id] == [f"chain-of:{inc2.id}"]

    full2 = backup(repo, 7, "full", [])
    inc3 = backup(repo, 8, "incremental", [full2.id])
    report = repo.prune(policy, now=T0 + dt.timedelta(days=9))
    assert sorted(report.deleted) == sorted([full.id, inc1.id, inc2.id])
    assert set(report.kept) == {full2.id, inc3.id}
    assert [m.id for m in repo.list_backups()] == [full2.id, inc3.id]


def test_a_kept_middle_backup_keeps_only_what_it_needs(repo: Repository) -> None:
    full = backup(repo, 0, "full", [])
    inc1 = backup(repo, 1, "incremental", [full.id])
    inc2 = backup(repo, 2, "incremental", [full.id, inc1.id])
    # daily=2 keeps the two newest days' backups; inc1 needs full, nothing needs inc2's extra.
    report = repo.prune(
        RetentionPolicy(daily=2), now=T0 + dt.timedelta(days=3), dry_run=True
    )
    assert set(report.kept) == {full.id, inc1.id, inc2.id}
    assert report.reasons[full.id][0].startswith("chain-of:")
