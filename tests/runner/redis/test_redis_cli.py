"""`tonebridge-dr backup redis` / `restore redis` through the real CLI, as a Job runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.redis import ADMIN_PASSWORD, POPULATED_KEYS, RedisFactory, populate, snapshot
from tonebridge_dr.runner import errors
from tonebridge_dr.runner.cli import main


def job_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "TONEBRIDGE_DR_")) or k == "TONEBRIDGE_DR_PG_BIN"
    }
    env.update(extra)
    return env


def run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from tonebridge_dr.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_backup_and_restore_through_the_cli_in_process(
    redis_factory: RedisFactory,
    file_repo_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TONEBRIDGE_DR_TERMINATION_LOG", str(tmp_path / "termination"))
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    server = redis_factory.start()
    populate(server)
    before = snapshot(server)
    assert main(["backup", "redis", "--url", server.url(), "--repo", file_repo_url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["engine"] == "redis"
    assert result["redis"]["keys"] == sum(POPULATED_KEYS.values())
    assert any("AOF is disabled" in w for w in result["warnings"])

    server.client().flushall()
    argv = ["restore", "redis", "--repo", file_repo_url, "--target-url", server.url(), "--json"]
    assert main(argv) == 0
    restored = json.loads(capsys.readouterr().out)
    assert restored["keys_restored"] == sum(POPULATED_KEYS.values())
    assert snapshot(server) == before


def test_job_style_run_with_secrets_in_env(redis_factory: RedisFactory, file_repo_url: str) -> None:
    server = redis_factory.start(password=ADMIN_PASSWORD, appendonly=True)
    server.client().set("k", "v")
    env = job_env(
        TONEBRIDGE_DR_REPO=file_repo_url,
        TONEBRIDGE_DR_REDIS_URL=server.url(),
        REDIS_PASSWORD=ADMIN_PASSWORD,
    )
    proc = run_cli("backup", "redis", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["warnings"] == []
    assert ADMIN_PASSWORD not in proc.stdout + proc.stderr

    env["REDIS_PASSWORD"] = "Wrong-Passw0rd"
    proc = run_cli("backup", "redis", "--json", env=env)
    assert proc.returncode == errors.AuthenticationError.exit_code
    assert "rejected the credentials of user 'default'" in proc.stderr
    assert "Wrong-Passw0rd" not in proc.stdout + proc.stderr

    data_dir = Path(file_repo_url.removeprefix("file://")).parent / "data"
    data_dir.mkdir()
    proc = run_cli("restore", "redis", "--data-dir", str(data_dir), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backup_id"] == result["id"]
    assert (data_dir / "dump.rdb").read_bytes().startswith(b"REDIS")
