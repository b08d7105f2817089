"""RPO as data at risk, end to end: a real PostgreSQL archiving with `archive_command`
into moto S3, a physical base backup, the operator as a real process asking the server's
archiver every second.

- idle and fully archived: RPOMet stays True long after the newest archived segment is
  older than the RPO (the old false alarm of an idle night). The segments are archived
  within a second or two of the backup: the recovery point is the WAL after it even when
  the store's whole-second LastModified makes them look older than the backup;
- archiving breaks and a change is written: RPOMet turns False once it is older than the
  RPO, the message says archiving fails, WALArchiving turns False (ArchivingFailing);
- archiving repaired and the segment archived: both are True again;
- a policy without any backup turns RPOMet False (NoBackupYet) once it is older than its
  RPO instead of staying Unknown.

Every wait is for a condition (with a timeout), never a fixed sleep.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.operator import (
    apply_docs,
    condition,
    condition_is,
    get_policy,
    policy_doc,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tests.fixtures.pg_wal import start_archiving, switch_wal, wait_archived
from tests.fixtures.postgres import ADMIN_PASSWORD, PgFactory
from tonebridge_dr.runner.engines.postgres import basebackup
from tonebridge_dr.runner.repository import Repository
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

RPO = dt.timedelta(seconds=8)


def test_an_idle_fully_archived_server_meets_its_rpo_and_unarchived_changes_miss_it(
    sandbox: Sandbox, namespace: str, pg_factory: PgFactory, moto_server: str,
    monkeypatch: pytest.MonkeyPatch, postgres_runs_cli: None, operator_factory: Any,
) -> None:
    s3_fixtures.s3_env(monkeypatch, moto_server)
    monkeypatch.setenv("PGPASSWORD", ADMIN_PASSWORD)
    bucket = s3_fixtures.new_bucket(moto_server)
    repo_url = f"s3://{bucket}/pg"
    server = start_archiving(pg_factory, "rpo-risk", f"{repo_url}/db", archive_timeout="'5s'")
    server.execute("postgres", "CREATE TABLE t (i int)")
    basebackup.backup_physical(Repository.open(f"{repo_url}/db"), server.dsn(),
                               basebackup.PhysicalBackupOptions())
    # Two segments after the backup, so the WAL chain certainly begins (a backup that
    # carries its own WAL needs the archive only from the segment after its stop segment).
    for _ in range(2):
        server.execute("postgres", "INSERT INTO t VALUES (0)")
        wait_archived(server, switch_wal(server))
    dsn = (f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres "
           f"password={server.password}")
    target = {"postgres": {"database": "postgres",
                           "dsnSecretRef": {"name": "db-dsn", "key": "dsn"},
                           "walArchive": {"mode": "archive_command"}}}
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": dsn}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        policy_doc("db", repo_url=repo_url, endpoint=moto_server, rpo="8s", target=target),
        policy_doc("empty", repo_url=f"s3://{bucket}/none", endpoint=moto_server, rpo="1s"),
    )
    op = operator_factory(namespace, interval=1)

    def archived_older_than_rpo() -> dict[str, Any] | None:
        policy = get_policy(sandbox, namespace, "db")
        point = (policy.get("status") or {}).get("recoveryPoint")
        if point is None:
            return None
        age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(point.replace("Z", "+00:00"))
        # past the RPO, and past archive_timeout (5 s) + the upload slack (10 s)
        return policy if age > dt.timedelta(seconds=18) else None

    policy = wait_for(archived_older_than_rpo, 60, message=op.log_tail)
    rpo = condition(policy, "RPOMet")
    assert rpo is not None and rpo["status"] == "True", rpo
    assert rpo["message"].startswith("every change is archived"), rpo
    assert policy["status"]["recoveryWindowStart"]

    # Archiving breaks: a change that only the server has is at risk, beyond the RPO.
    server.execute("postgres", "ALTER SYSTEM SET archive_command = 'false'",
                   "SELECT pg_reload_conf()")
    server.execute("postgres", "INSERT INTO t VALUES (1)")
    switch_wal(server)
    missed = wait_for(lambda: condition_is(sandbox, namespace, "db", "RPOMet", "False",
                                           "ObjectiveMissed"), 60, message=op.log_tail)
    assert condition(missed, "RPOMet")["message"].startswith(  # type: ignore[index]
        "archiving fails")
    failing = wait_for(lambda: condition_is(sandbox, namespace, "db", "WALArchiving", "False",
                                            "ArchivingFailing"), 60, message=op.log_tail)
    assert "check --archive-command" in condition(failing, "WALArchiving")[  # type: ignore[index]
        "message"]

    # Archiving works again: nothing at risk.
    server.execute("postgres", "ALTER SYSTEM RESET archive_command", "SELECT pg_reload_conf()")
    wait_archived(server, switch_wal(server))
    met = wait_for(lambda: condition_is(sandbox, namespace, "db", "RPOMet", "True"), 60,
                   message=op.log_tail)
    assert condition(met, "RPOMet")["message"].startswith(  # type: ignore[index]
        "every change is archived")
    wait_for(lambda: condition_is(sandbox, namespace, "db", "WALArchiving", "True",
                                  "Archiving"), 60, message=op.log_tail)

    # A policy that never produced a backup misses its RPO once it is older than it.
    empty = wait_for(lambda: condition_is(sandbox, namespace, "empty", "RPOMet", "False",
                                          "NoBackupYet"), 60, message=op.log_tail)
    assert "no backup yet" in condition(empty, "RPOMet")["message"]  # type: ignore[index]
