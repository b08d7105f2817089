"""The operator dies (SIGKILL) while a backup runs; the Job finishes while it is down; a
new operator records it exactly once, creates no duplicate Job and flaps no condition.

The backup is made slow deterministically: the test holds an ACCESS EXCLUSIVE lock on
a table, so pg_dump waits for it (visible in pg_stat_activity) until the test commits.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.fixtures.operator import (
    apply_docs,
    backups_list,
    condition,
    condition_is,
    events_for,
    get_json,
    get_policy,
    job_finished,
    jobs_of,
    policy_doc,
    run_now,
    s3_secrets,
    sample_db,
    secret_doc,
    wait_for,
)
from tests.fixtures.postgres import PgServer
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)


def _dump_waits_for_lock(pg: PgServer, dbname: str) -> bool:
    rows = pg.query(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
        "AND application_name = 'pg_dump' AND wait_event_type = 'Lock'",
        (dbname,),
    )
    return bool(rows[0][0])


def test_operator_killed_during_backup(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    s3_repo_url: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    dbname, dsn = sample_db(pg)
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": dsn}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        policy_doc("slow", repo_url=s3_repo_url, endpoint=moto_server, rpo="1h"),
    )
    op = operator_factory(namespace)
    wait_for(lambda: condition_is(sandbox, namespace, "slow", "Ready", "True"), 60,
             message=lambda: op.log_tail())

    with pg.connect(dbname) as lock:
        lock.execute("LOCK TABLE transformations IN ACCESS EXCLUSIVE MODE")
        run_now(sandbox, namespace, "slow", "while-locked")
        wait_for(lambda: _dump_waits_for_lock(pg, dbname), 120, message=lambda: op.log_tail())
        (job,) = jobs_of(sandbox, namespace, "slow")
        assert job_finished(job) is None
        op.kill()
        lock.commit()  # releases the lock: pg_dump goes on while no operator runs

    done = wait_for(lambda: [j for j in jobs_of(sandbox, namespace, "slow") if job_finished(j)],
                    120)
    assert job_finished(done[0]) == "Complete"
    listed = backups_list(f"{s3_repo_url}/slow")
    assert len(listed) == 1
    policy = get_policy(sandbox, namespace, "slow")
    assert condition(policy, "LastBackupSucceeded") is None  # nobody recorded it yet
    ready_before = condition(policy, "Ready")
    cronjob_before = get_json(sandbox, namespace, "cronjob", "slow-nightly")

    op.start()  # a new process: resume
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "slow", "LastBackupSucceeded", "True"), 60,
        message=lambda: op.log_tail(),
    )
    assert policy["status"]["lastBackup"]["id"] == listed[0]["id"]
    wait_for(lambda: jobs_of(sandbox, namespace, "slow")[0]["metadata"].get("annotations", {})
             .get("dr.tonebridge.io/recorded") == "succeeded", 30)
    policy = wait_for(lambda: condition_is(sandbox, namespace, "slow", "RPOMet", "True"), 60)
    start = op.metric("tonebridge_dr_catalog_reads_total", namespace, "slow") or 0.0
    wait_for(lambda: (op.metric("tonebridge_dr_catalog_reads_total", namespace, "slow") or 0)
             >= start + 3, 30)

    # No duplicates, no flapping: one Job, one BackupSucceeded Event, the run-now token
    # handled, the CronJob untouched, Ready not transitioned.
    assert len(jobs_of(sandbox, namespace, "slow")) == 1
    succeeded = [e for e in events_for(sandbox, namespace, "slow")
                 if e["reason"] == "BackupSucceeded"]
    assert len(succeeded) == 1
    started = [e for e in events_for(sandbox, namespace, "slow") if e["reason"] == "BackupStarted"]
    assert len(started) == 1
    policy = get_policy(sandbox, namespace, "slow")
    assert condition(policy, "Ready") == ready_before
    cronjob_after = get_json(sandbox, namespace, "cronjob", "slow-nightly")
    assert cronjob_after["metadata"]["resourceVersion"] == (
        cronjob_before["metadata"]["resourceVersion"]
    )
    assert policy["metadata"]["annotations"]["dr.tonebridge.io/run-now-handled"] == (
        "while-locked"
    )
