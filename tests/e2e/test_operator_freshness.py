"""The freshness monitor on real repositories: RPOMet / BackupStale follow the catalog,
one notification per change, an unreachable repository is a condition.

Time is real here: a backup ages past a small RPO (20 s) while the monitor ticks every
second. Every wait is for a condition (with a timeout), never a fixed sleep.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.operator import (
    OperatorProcess,
    WebhookReceiver,
    apply_docs,
    backups_list,
    condition,
    condition_is,
    events_for,
    get_policy,
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

RPO = "20s"


def _reads(op: OperatorProcess, namespace: str, name: str) -> float:
    return op.metric("tonebridge_dr_catalog_reads_total", namespace, name) or 0.0


def _more_ticks(op: OperatorProcess, namespace: str, name: str, count: int = 3) -> None:
    start = _reads(op, namespace, name)
    wait_for(lambda: _reads(op, namespace, name) >= start + count, 30)


def test_stale_backup_misses_rpo_and_a_fresh_one_restores_it(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    s3_repo_url: str,
    moto_server: str,
    webhook: WebhookReceiver,
    operator_factory: Any,
) -> None:
    _, dsn = sample_db(pg)
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": dsn}),
        secret_doc("hook", {"url": webhook.url}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        policy_doc("fresh", repo_url=s3_repo_url, endpoint=moto_server, rpo=RPO, webhook=True),
    )
    op = operator_factory(namespace)

    # Empty repository: a clear condition, no notification.
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "fresh", "RPOMet", "Unknown", "NoBackups"),
        60, message=lambda: op.log_tail(),
    )
    assert condition(policy, "BackupStale")["reason"] == "NoBackups"  # type: ignore[index]

    run_now(sandbox, namespace, "fresh", "one")
    policy = wait_for(lambda: condition_is(sandbox, namespace, "fresh", "RPOMet", "True"),
                      120, message=lambda: op.log_tail())
    first = backups_list(f"{s3_repo_url}/fresh")
    assert policy["status"]["lastSuccessfulBackup"]["id"] == first[-1]["id"]
    assert condition(policy, "BackupStale")["status"] == "False"  # type: ignore[index]
    assert webhook.payloads() == []  # Unknown -> True is not news

    # The backup ages past the RPO: RPOMet False, BackupStale True, ONE notification.
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "fresh", "RPOMet", "False", "ObjectiveMissed"),
        90, message=lambda: op.log_tail(),
    )
    stale = wait_for(
        lambda: condition_is(sandbox, namespace, "fresh", "BackupStale", "True", "BackupTooOld"),
        30,
    )
    assert "older than 20s" in condition(stale, "BackupStale")["message"]  # type: ignore[index]
    assert policy["status"]["rpoAgeSeconds"] >= 20
    missed = wait_for(lambda: webhook.payloads("RPOMissed"), 30)
    assert missed[0]["state"] == "Missed" and missed[0]["policy"] == "fresh"
    assert "beyond the RPO of 20s" in missed[0]["message"]
    _more_ticks(op, namespace, "fresh")
    assert len(webhook.payloads()) == 1
    warnings = [e for e in events_for(sandbox, namespace, "fresh") if e["reason"] == "RPOMissed"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    age = op.metric("tonebridge_dr_rpo_age_seconds", namespace, "fresh")
    assert age is not None and age > 20

    # A fresh backup: RPOMet True again, one "resolved" notification.
    run_now(sandbox, namespace, "fresh", "two")
    policy = wait_for(lambda: condition_is(sandbox, namespace, "fresh", "RPOMet", "True"),
                      120, message=lambda: op.log_tail())
    second = backups_list(f"{s3_repo_url}/fresh")
    assert len(second) == 2
    assert policy["status"]["lastSuccessfulBackup"]["id"] == second[-1]["id"]
    assert policy["status"]["backupCount"] == 2
    resolved = wait_for(lambda: [p for p in webhook.payloads() if p["state"] == "Resolved"], 30)
    assert resolved[0]["event"] == "RPOMissed"
    _more_ticks(op, namespace, "fresh")
    assert len(webhook.payloads()) == 2


def test_unreachable_repository_is_a_condition(
    sandbox: Sandbox,
    namespace: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    reader_secret = f"r-{uuid.uuid4().hex}"
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": "host=127.0.0.1 dbname=x"}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", reader_secret),
        policy_doc("gone", repo_url=f"s3://{bucket}/repo", endpoint=moto_server, rpo="1h"),
    )
    op = operator_factory(namespace)
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "gone", "RPOMet", "Unknown",
                             "RepositoryUnreachable"),
        60, message=lambda: op.log_tail(),
    )
    message = condition(policy, "RPOMet")["message"]  # type: ignore[index]
    assert f"bucket {bucket} does not exist" in message
    assert condition(policy, "Ready")["status"] == "True"  # type: ignore[index]
    assert wait_for(
        lambda: op.metric("tonebridge_dr_repository_up", namespace, "gone") == 0.0, 30
    )
    _more_ticks(op, namespace, "gone")
    assert op.running
    unreachable = [e for e in events_for(sandbox, namespace, "gone")
                   if e["reason"] == "RepositoryUnreachable"]
    assert len(unreachable) <= 1  # the first assessment is not a change: at most one

    # The bucket appears: an empty repository, the operator recovers by itself.
    s3_fixtures.client(moto_server).create_bucket(Bucket=bucket)
    wait_for(lambda: condition_is(sandbox, namespace, "gone", "RPOMet", "Unknown", "NoBackups"),
             60, message=lambda: op.log_tail())
    assert wait_for(
        lambda: op.metric("tonebridge_dr_repository_up", namespace, "gone") == 1.0, 30
    )
    for text in (op.log(), json.dumps(get_policy(sandbox, namespace, "gone")),
                 json.dumps(events_for(sandbox, namespace, "gone"))):
        assert reader_secret not in text
