"""`restore-test redis`: a real Redis backup (tests/fixtures/redis.py populate) loaded into a
private scratch redis-server, checked with the Redis check language, stopped and removed,
whatever happens (failed checks, a corrupt snapshot, SIGTERM)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import procs
from tests.fixtures.postgres import Cli, CliResult, clean_env
from tests.fixtures.redis import RedisFactory, RedisServer, populate
from tests.runner.redis.test_redis_restore import make_backup, stored_path
from tonebridge_dr.runner.repository import reports
from tonebridge_dr.runner.storage import open_storage

pytestmark = pytest.mark.timeout(300)

CHECKS: list[dict[str, Any]] = [
    {"name": "db7-size", "query": "db 7 DBSIZE", "expect": {"equals": "1200"}},
    {"name": "db7-count", "query": "db 7 COUNT db7:k1*", "expect": {"min": 300, "max": 400}},
    {"name": "greeting", "query": "GET str", "expect": {"equals": "hello"}},
    {"name": "hash-type", "query": "TYPE hash:big", "expect": {"equals": "hash"}},
    {"name": "hash-len", "query": "hlen hash:big", "expect": {"equals": "800"}},
    {"name": "list-len", "query": "LLEN list:big", "expect": {"min": 3000}},
    {"name": "db1-key", "query": "db 1 EXISTS db1:key", "expect": {"equals": "1"}},
]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> Cli:
    for name in ("TONEBRIDGE_DR_REPO", "TONEBRIDGE_DR_CHECKS", "TONEBRIDGE_DR_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    log = tmp_path / "termination-log"
    monkeypatch.setenv("TONEBRIDGE_DR_TERMINATION_LOG", str(log))
    return Cli(capsys, log)


@pytest.fixture
def backup_id(redis_factory: RedisFactory, file_repo_url: str) -> str:
    server: RedisServer = redis_factory.start()
    populate(server)
    return make_backup(server, file_repo_url)


def restore_test(cli: Cli, repo: str, folder: Path, checks: list[dict[str, Any]],
                 *args: str) -> CliResult:
    return cli("restore-test", "redis", "--repo", repo, "--scratch-instance", str(folder),
               "--checks-json", json.dumps(checks), "--json", *args)


def test_a_redis_backup_passes_its_checks_and_leaves_nothing(
    cli: Cli, file_repo_url: str, backup_id: str, tmp_path: Path
) -> None:
    folder = tmp_path / "scratch"
    res = restore_test(cli, file_repo_url, folder, CHECKS, "--rto", "10m", "--name", "cache")
    assert res.code == 0, res.err
    out = res.json
    assert list(out) == list(reports.runner_contract.RestoreTestResult.__annotations__)
    assert out["engine"] == "redis" and out["method"] == "rdb"
    assert out["backup_id"] == backup_id and out["passed"] is True and out["rto_met"] is True
    values = {c["name"]: c["value"] for c in out["checks"]}
    assert values == {"db7-size": "1200", "db7-count": "311", "greeting": "hello",
                      "hash-type": "hash", "hash-len": "800", "list-len": "3000", "db1-key": "1"}
    assert all(c["passed"] for c in out["checks"])
    assert out["restore_duration_seconds"] > 0
    assert not folder.exists()  # the test made it, the test removed it
    assert procs.mentioning(str(folder)) == []
    [report] = reports.list_reports(open_storage(file_repo_url))
    assert report.checksum == reports.CHECKSUM_OK and report.key == out["report_key"]
    assert report.data is not None and report.data["details"]["cleaned_up"] is True
    assert report.data["details"]["rdb"]["checksum"] == "ok"


def test_a_failing_check_exits_15_with_the_values(
    cli: Cli, file_repo_url: str, backup_id: str, tmp_path: Path
) -> None:
    folder = tmp_path / "scratch"
    folder.mkdir()
    checks = [*CHECKS[:2],
              {"name": "missing", "query": 'GET "no such key"', "expect": {"nonEmpty": True}},
              {"name": "too-few", "query": "SCARD set:str", "expect": {"min": 1000}}]
    res = restore_test(cli, file_repo_url, folder, checks)
    assert res.code == 15, res.err
    out = res.json
    assert out["error"] == "ChecksFailed" and out["passed"] is False
    by_name = {c["name"]: c for c in out["checks"]}
    assert by_name["missing"] == {"name": "missing", "passed": False, "value": None,
                                  "message": "expected a value, got nil"}
    assert by_name["too-few"]["value"] == "600"
    assert by_name["too-few"]["message"] == "expected at least 1000, got 600"
    assert by_name["db7-size"]["passed"] is True
    assert cli.termination()["exit_code"] == 15
    assert list(folder.iterdir()) == [] and procs.mentioning(str(folder)) == []


def test_a_corrupt_snapshot_exits_7_and_leaves_nothing(
    cli: Cli, file_repo_url: str, backup_id: str, tmp_path: Path
) -> None:
    path = stored_path(file_repo_url, backup_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    folder = tmp_path / "scratch"
    folder.mkdir()
    res = restore_test(cli, file_repo_url, folder, CHECKS)
    assert res.code == 7, res.err
    assert res.json["error"] == "IntegrityCheckFailed"
    assert res.json["restore_duration_seconds"] is None
    assert list(folder.iterdir()) == [] and procs.mentioning(str(folder)) == []
    [report] = reports.list_reports(open_storage(file_repo_url))
    assert report.data is not None and report.data["exit_code"] == 7


@pytest.mark.parametrize(
    ("query", "problem"),
    [("FLUSHALL", "'FLUSHALL' is not allowed"), ("GET", "GET takes one argument"),
     ("db x DBSIZE", "db 'x'")],
)
def test_a_check_outside_the_language_is_a_usage_error_before_anything_is_read(
    cli: Cli, file_repo_url: str, tmp_path: Path, query: str, problem: str
) -> None:
    folder = tmp_path / "scratch"
    res = restore_test(cli, file_repo_url, folder,
                       [{"name": "bad", "query": query, "expect": {"min": 1}}])
    assert res.code == 2
    assert f"check bad: {problem}" in res.err
    assert not folder.exists()


def test_a_folder_in_use_is_refused_untouched(
    cli: Cli, file_repo_url: str, backup_id: str, tmp_path: Path
) -> None:
    folder = tmp_path / "scratch"
    folder.mkdir()
    (folder / "keep").write_text("x")
    res = restore_test(cli, file_repo_url, folder, CHECKS)
    assert res.code == 11, res.err
    assert [p.name for p in folder.iterdir()] == ["keep"]


def _stalling_server(folder: Path) -> Path:
    """A redis-server that first touches $STALL_MARK and waits (SIGTERM ends it cleanly)."""
    folder.mkdir()
    wrapper = folder / "redis-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        "trap 'kill $child; exit 143' TERM\n"
        ': > "$STALL_MARK"\n'
        "sleep 600 & child=$!\n"
        'wait "$child"\n'
        'exec redis-server "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_sigterm_mid_restore_exits_143_and_leaves_nothing(
    file_repo_url: str, backup_id: str, tmp_path: Path
) -> None:
    folder = tmp_path / "scratch"
    folder.mkdir()
    mark = tmp_path / "stalled"
    termination = tmp_path / "termination-log"
    env = clean_env(STALL_MARK=str(mark), TONEBRIDGE_DR_TERMINATION_LOG=str(termination))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tonebridge_dr.cli", "restore-test", "redis", "--repo",
         file_repo_url, "--scratch-instance", str(folder), "--name", "sigterm",
         "--redis-server", str(_stalling_server(tmp_path / "bin")),
         "--checks-json", json.dumps(CHECKS[:1])],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the scratch server never started"
            time.sleep(0.05)
        assert procs.mentioning(str(folder)), "the scratch server should be starting"
        assert (folder / "redis" / "dump.rdb").exists()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err.decode()
    assert json.loads(termination.read_text())["exit_code"] == 143
    assert procs.mentioning(str(folder)) == []
    assert list(folder.iterdir()) == []
    [report] = reports.list_reports(open_storage(file_repo_url))
    assert report.data is not None and report.data["error"] == "Cancelled"
    assert report.data["details"]["cleaned_up"] is True
