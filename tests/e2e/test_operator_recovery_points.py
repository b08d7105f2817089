"""Honest RPO through the real operator: a policy whose repository holds only hot-table
dumps has no full recovery point (RPOMet=False, NoFullRecoveryPoint) and shows the dump
as `status.lastTableBackup`; a whole-database backup then meets the RPO and the
condition names it. Every wait is for a condition (with a timeout), never a fixed sleep.
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

SCHEDULES = [
    {"name": "hourly-hot", "cron": "0 * * * *", "tables": ["transformations", "analytics"]},
    {"name": "daily-full", "cron": "0 2 * * *"},
]


def test_hot_table_dumps_alone_miss_the_rpo_until_a_full_backup(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    s3_repo_url: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    _, dsn = sample_db(pg)
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": dsn}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        policy_doc("hot", repo_url=s3_repo_url, endpoint=moto_server, rpo="1h",
                   schedules=SCHEDULES),
    )
    op = operator_factory(namespace)
    wait_for(lambda: condition_is(sandbox, namespace, "hot", "RPOMet", "Unknown", "NoBackups"),
             60, message=lambda: op.log_tail())

    run_now(sandbox, namespace, "hot", "hourly-hot:one")
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "hot", "RPOMet", "False", "NoFullRecoveryPoint"),
        120, message=lambda: op.log_tail(),
    )
    (dump,) = backups_list(f"{s3_repo_url}/hot")
    assert dump["schedule"] == "hourly-hot"
    message = condition(policy, "RPOMet")["message"]  # type: ignore[index]
    assert message.startswith(
        "no full recovery point: only table dumps of public.analytics, public.transformations")
    status = policy["status"]
    assert status["lastTableBackup"]["id"] == dump["id"]
    assert status["lastTableBackup"]["tables"] == ["public.analytics", "public.transformations"]
    assert status["lastTableBackup"]["schedule"] == "hourly-hot"
    assert "recoveryPoint" not in status
    missed = [e for e in events_for(sandbox, namespace, "hot") if e["reason"] == "RPOMissed"]
    assert missed and "no full recovery point" in missed[0]["message"]

    run_now(sandbox, namespace, "hot", "daily-full:two")
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "hot", "RPOMet", "True", "ObjectiveMet"),
        120, message=lambda: op.log_tail(),
    )
    full = next(b for b in backups_list(f"{s3_repo_url}/hot") if b["schedule"] == "daily-full")
    message = condition(policy, "RPOMet")["message"]  # type: ignore[index]
    assert message.startswith(f"the newest recovery point, full logical backup {full['id']} at ")
    assert message.endswith("within the RPO of 1h")
    assert policy["status"]["recoveryPoint"] == full["finished_at"]
    assert policy["status"]["lastTableBackup"]["id"] == dump["id"]
