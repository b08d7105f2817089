"""The BackupPolicy controller end to end: sandbox control plane (real Job / CronJob
controllers, node agent running the runner), real PostgreSQL, moto S3, the operator as
a real process.

- apply a policy -> CronJobs with the expected spec; run-now -> Job -> runner -> backup
  in the repository -> status names the same backup as `backups list`; metrics.
- a failing backup (wrong password) -> readable condition, Event, ONE notification;
  no secret value anywhere in logs, Events or status.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.fixtures.operator import (
    WebhookReceiver,
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

@pytest.fixture
def s3_writer_secret() -> str:
    return f"writer-{uuid.uuid4().hex}"


def test_policy_cronjobs_and_run_now_backup(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    s3_repo_url: str,
    moto_server: str,
    s3_writer_secret: str,
    operator_factory: Any,
) -> None:
    _, dsn = sample_db(pg)
    reader_secret = f"reader-{uuid.uuid4().hex}"
    schedules = [
        {"name": "daily-full", "cron": "0 2 * * *", "timeZone": "Asia/Tokyo"},
        {"name": "hourly-hot", "cron": "15 * * * *", "tables": ["transformations"]},
    ]
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": dsn}),
        *s3_secrets(s3_writer_secret, reader_secret),
        policy_doc("pg", repo_url=s3_repo_url, endpoint=moto_server, schedules=schedules,
                   rpo="1h"),
    )
    op = operator_factory(namespace)

    # Reconciled: one CronJob per schedule, owned by the policy, with the runner's args.
    policy = wait_for(lambda: condition_is(sandbox, namespace, "pg", "Ready", "True"),
                      60, message=lambda: op.log_tail())
    uid = policy["metadata"]["uid"]
    assert policy["status"]["target"] == "postgres/tonebridge_db"
    assert policy["status"]["schedules"] == "daily-full,hourly-hot"
    cronjobs = {c["metadata"]["name"]: c for c in get_json(sandbox, namespace, "cronjobs")["items"]}
    assert sorted(cronjobs) == ["pg-daily-full", "pg-hourly-hot"]
    daily = cronjobs["pg-daily-full"]
    assert daily["spec"]["schedule"] == "0 2 * * *"
    assert daily["spec"]["timeZone"] == "Asia/Tokyo"
    assert daily["spec"]["suspend"] is False
    assert daily["spec"]["concurrencyPolicy"] == "Forbid"
    assert [o["uid"] for o in daily["metadata"]["ownerReferences"]] == [uid]
    container = daily["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:4] == ["backup", "postgres", "--method", "logical"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TONEBRIDGE_DR_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "db-dsn",
                                                                    "key": "dsn"}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == moto_server
    hot = cronjobs["pg-hourly-hot"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "--table" in hot["containers"][0]["args"]

    # run-now with a schedule prefix: one Job from that schedule.
    run_now(sandbox, namespace, "pg", "daily-full:first")
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "pg", "LastBackupSucceeded", "True"),
        120, message=lambda: op.log_tail(),
    )
    jobs = jobs_of(sandbox, namespace, "pg")
    assert len(jobs) == 1
    assert jobs[0]["metadata"]["labels"]["dr.tonebridge.io/schedule"] == "daily-full"
    listed = backups_list(f"{s3_repo_url}/pg")
    assert len(listed) == 1
    backup_id = listed[0]["id"]
    assert policy["status"]["lastBackup"]["id"] == backup_id
    assert policy["status"]["lastBackup"]["schedule"] == "daily-full"
    assert policy["metadata"]["annotations"]["dr.tonebridge.io/run-now-handled"] == (
        "daily-full:first"
    )
    run = policy["status"]["runNow"]
    assert (run["token"], run["phase"], run["backupId"]) == (
        "daily-full:first", "Succeeded", backup_id)
    assert run["job"] == jobs[0]["metadata"]["name"]

    # The monitor reads the catalog with the reader credentials: RPO met, counters set.
    policy = wait_for(lambda: condition_is(sandbox, namespace, "pg", "RPOMet", "True"), 60,
                      message=lambda: op.log_tail())
    status = policy["status"]
    assert status["lastSuccessfulBackup"]["id"] == backup_id
    assert status["backupCount"] == 1
    assert status["totalSizeBytes"] == listed[0]["size_bytes"] > 0
    assert condition(policy, "BackupStale")["status"] == "False"  # type: ignore[index]

    reasons = [e["reason"] for e in events_for(sandbox, namespace, "pg")]
    assert "BackupStarted" in reasons and "BackupSucceeded" in reasons

    assert wait_for(lambda: op.metric("tonebridge_dr_backups", namespace, "pg") == 1.0, 30)
    last = op.metric("tonebridge_dr_backup_last_success_timestamp_seconds", namespace, "pg")
    assert last is not None and last > 0
    size = op.metric("tonebridge_dr_backup_last_size_bytes", namespace, "pg")
    assert size == listed[0]["size_bytes"]
    assert op.metric("tonebridge_dr_backup_failures_total", namespace, "pg") == 0.0
    assert op.metric("tonebridge_dr_rpo_age_seconds", namespace, "pg") is not None

    # The same token again starts nothing; a plain token runs the first schedule, and
    # `kubectl wait` on status.runNow waits for THAT backup (LastBackupSucceeded is still
    # True from the first one, so waiting on it would return at once).
    sandbox.kubectl("annotate", "-n", namespace, "backuppolicy/pg", "unrelated=1")
    run_now(sandbox, namespace, "pg", "daily-full:first")
    run_now(sandbox, namespace, "pg", "second")
    wait_for(lambda: (get_policy(sandbox, namespace, "pg")["status"].get("runNow") or {}).get(
        "token") == "second", 30, message=lambda: op.log_tail())
    sandbox.kubectl("wait", "-n", namespace, "bp/pg", "--timeout=120s",
                    "--for=jsonpath={.status.runNow.phase}=Succeeded", timeout=130)
    assert len(backups_list(f"{s3_repo_url}/pg")) == 2
    second = get_policy(sandbox, namespace, "pg")["status"]["runNow"]
    assert second["backupId"] == backups_list(f"{s3_repo_url}/pg")[-1]["id"] != backup_id
    jobs = jobs_of(sandbox, namespace, "pg")
    assert len(jobs) == 2
    assert sorted(j["metadata"]["labels"]["dr.tonebridge.io/schedule"] for j in jobs) == [
        "daily-full", "daily-full"
    ]
    newest = backups_list(f"{s3_repo_url}/pg")[-1]["id"]
    wait_for(lambda: get_policy(sandbox, namespace, "pg")["status"]["lastBackup"]["id"] == newest,
             60, message=lambda: op.log_tail())

    # Secrets stay secret: not in the operator log, the Events or the status.
    leaked = [dsn.split("password=")[1], s3_writer_secret, reader_secret]
    texts = [op.log(), json.dumps(events_for(sandbox, namespace, "pg")),
             json.dumps(get_policy(sandbox, namespace, "pg"))]
    for secret in leaked:
        for text in texts:
            assert secret not in text


def test_failing_backup_is_reported_once(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    tmp_path: Any,
    webhook: WebhookReceiver,
    operator_factory: Any,
) -> None:
    _, dsn = sample_db(pg)
    wrong_password = f"Wr0ng-{uuid.uuid4().hex}"
    bad_dsn = dsn.rsplit("password=", 1)[0] + f"password={wrong_password}"
    repo = tmp_path / "repo"
    repo.mkdir()
    repo.chmod(0o777)
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": bad_dsn}),
        secret_doc("hook", {"url": webhook.url}),
        policy_doc("bad", repo_url=repo.as_uri(), webhook=True, rpo="1h"),
    )
    op = operator_factory(namespace)
    wait_for(lambda: condition_is(sandbox, namespace, "bad", "Ready", "True"), 60,
             message=lambda: op.log_tail())
    run_now(sandbox, namespace, "bad", "try-1")

    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "bad", "LastBackupSucceeded", "False"),
        120, message=lambda: op.log_tail(),
    )
    failed = condition(policy, "LastBackupSucceeded")
    assert failed is not None
    assert failed["reason"] == "AuthenticationFailed"
    assert "password authentication failed" in failed["message"]
    assert policy["status"]["lastFailure"]["reason"] == "AuthenticationFailed"
    (job,) = jobs_of(sandbox, namespace, "bad")
    assert job_finished(job) == "Failed"

    events = wait_for(
        lambda: [e for e in events_for(sandbox, namespace, "bad") if e["reason"] == "BackupFailed"],
        30,
    )
    assert events[0]["type"] == "Warning"
    assert "AuthenticationFailed" in events[0]["message"]

    # The Job is marked recorded; several monitor ticks later still ONE notification.
    wait_for(lambda: jobs_of(sandbox, namespace, "bad")[0]["metadata"].get("annotations", {})
             .get("dr.tonebridge.io/recorded") == "failed", 30)
    notified = wait_for(lambda: webhook.payloads("BackupFailed"), 30)
    assert notified[0]["policy"] == "bad" and notified[0]["namespace"] == namespace
    assert notified[0]["state"] == "Failed"
    assert "AuthenticationFailed" in notified[0]["message"]
    assert notified[0]["text"].startswith(":rotating_light:")
    assert webhook.paths[0] == f"/hooks/{webhook.token}"
    reads = op.metric("tonebridge_dr_catalog_reads_total", namespace, "bad") or 0.0
    wait_for(lambda: (op.metric("tonebridge_dr_catalog_reads_total", namespace, "bad") or 0)
             >= reads + 3, 30)
    assert len(webhook.payloads("BackupFailed")) == 1
    assert op.metric("tonebridge_dr_backup_failures_total", namespace, "bad") == 1.0

    # No secret value anywhere: operator log, Events, status, notifications.
    texts = [op.log(), json.dumps(events_for(sandbox, namespace, "bad")),
             json.dumps(get_policy(sandbox, namespace, "bad")), json.dumps(webhook.payloads())]
    for text in texts:
        assert wrong_password not in text
        assert webhook.token not in text
