"""A hung S3 endpoint (it accepts connections and never answers: here the moto server
stopped with SIGSTOP) fails a backup in about TONEBRIDGE_DR_STORAGE_TIMEOUT, with exit 4,
instead of 30 s x 3 attempts for every part, abort and delete (527 s were measured).

The bounds below are generous correctness bounds on a deadline (four times it, plus
start-up), not performance measurements."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.repository import Repository
from tonebridge_dr.runner.repository.retention import RetentionPolicy

TIMEOUT = 6


@pytest.fixture
def hung_later(start_moto: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    server = start_moto()
    s3_fixtures.s3_env(monkeypatch, server.url)
    monkeypatch.setenv("TONEBRIDGE_DR_STORAGE_TIMEOUT", str(TIMEOUT))
    try:
        yield server
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_a_hung_endpoint_fails_a_multipart_backup_within_the_deadline(hung_later: Any) -> None:
    url = f"s3://{s3_fixtures.new_bucket(hung_later.url)}/repo"
    repo = Repository.open(url)
    stopped: list[float] = []

    def data() -> Iterator[bytes]:
        for index in range(24):  # 24 MiB: three parts
            if index == 12:
                os.kill(hung_later.process.pid, signal.SIGSTOP)  # part two hangs
                stopped.append(time.monotonic())
            yield os.urandom(1024 * 1024)

    with pytest.raises(errors.StorageError) as caught:  # noqa: SIM117
        with repo.begin(engine="postgres", method="logical", heartbeat=0) as writer:
            writer.put_object("database.dump", data())
    took = time.monotonic() - stopped[0]
    assert caught.value.exit_code == 4
    assert took < 4 * TIMEOUT + 10, f"{took:.0f} s"
    # The endpoint answers again: what the failed backup left is not a backup, and prune
    # (past the grace) removes the claim folder and the unfinished upload.
    os.kill(hung_later.process.pid, signal.SIGCONT)
    repo = Repository.open(url)  # a later run (this one holds back clean-up calls a while)
    assert repo.list_backups() == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    report = repo.prune(RetentionPolicy(keep_last=10), now=later)
    assert report.orphans == [writer.id]
    assert set(report.leftovers) == {f"base/{writer.id}/database.dump.zst"}
    assert list(repo.storage.list("")) == [] and list(repo.storage.list_leftovers()) == []


def test_a_hung_endpoint_fails_a_listing_within_the_deadline(hung_later: Any) -> None:
    url = f"s3://{s3_fixtures.new_bucket(hung_later.url)}/repo"
    repo = Repository.open(url)
    os.kill(hung_later.process.pid, signal.SIGSTOP)
    began = time.monotonic()
    with pytest.raises(errors.StorageError, match="cannot reach S3 endpoint"):
        repo.list_backups()
    assert time.monotonic() - began < 4 * TIMEOUT + 10


def test_the_deadline_must_be_a_number(monkeypatch: pytest.MonkeyPatch, s3_repo_url: str) -> None:
    monkeypatch.setenv("TONEBRIDGE_DR_STORAGE_TIMEOUT", "soon")
    with pytest.raises(errors.UsageError, match="TONEBRIDGE_DR_STORAGE_TIMEOUT"):
        Repository.open(s3_repo_url)


def test_the_storage_timeout_option_bounds_a_cli_run(
    hung_later: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tonebridge_dr.runner import cli as runner_cli

    monkeypatch.setenv("TONEBRIDGE_DR_STORAGE_TIMEOUT", "600")  # the option wins
    url = f"s3://{s3_fixtures.new_bucket(hung_later.url)}/repo"
    os.kill(hung_later.process.pid, signal.SIGSTOP)
    began = time.monotonic()
    code = runner_cli.main(["--storage-timeout", str(TIMEOUT), "backups", "list", "--repo", url])
    assert code == 4 and time.monotonic() - began < 4 * TIMEOUT + 10
    assert "cannot reach S3 endpoint" in capsys.readouterr().err
    assert runner_cli.main(["--storage-timeout", "0", "backups", "list", "--repo", url]) == 2
