"""Retention run by the operator, end to end: sandbox control plane, the operator as a real
process, moto S3, real PostgreSQL for the backups the Jobs make.

Backdated backups are written into the policy's repository through the repository API
(what years of scheduled runs would have left), then:

- the operator's first monitor tick applies the rules (trigger `schedule`): each schedule
  by its own rule, in its own time zone; backups without a schedule by `spec.retention`
  (`minAge` keeps the young ones); a RestoreRequest that is not finished protects the
  backup it names;
- a real run-now backup applies them again (trigger `backup`): exactly the set the rules
  choose survives, 7 yearlies among them; the protected backup goes once its request is
  gone; status.retention, RetentionApplied and a BackupsPruned Event say what happened.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.operator import (
    apply_docs,
    backups_list,
    condition,
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
from tonebridge_dr.runner.repository import audit, retention
from tonebridge_dr.runner.repository.catalog import Repository, candidate_of
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

TOKYO = retention.zone("Asia/Tokyo")
DAILY = {"daily": 3, "monthly": 2, "yearly": 7}
HOURLY = {"hourly": 2}
DEFAULT = {"keepLast": 1, "minAge": "3d"}


def _inject(repo: Repository, when: dt.datetime, schedule: str | None,
            tables: list[str] | None = None) -> str:
    with repo.begin(engine="postgres", method="logical", schedule=schedule,
                    now=when, heartbeat=0) as writer:
        writer.put_object("database.dump", iter([b"backdated " + when.isoformat().encode()]))
        extra = ({"scope": "tables", "tables": [{"schema": "public", "name": t} for t in tables]}
                 if tables else {"scope": "database"})
        return writer.commit(databases=["tonebridge_db"], server_version="15", tools={},
                             extra=extra, finished_at=when + dt.timedelta(seconds=5)).id


def _inject_physical(repo: Repository, when: dt.datetime, schedule: str,
                     depends_on: tuple[str, ...] = ()) -> str:
    """A backdated physical backup; with `depends_on` an incremental reading those backups
    (runner/engines/postgres/incremental.py records its chain in the manifest like this)."""
    with repo.begin(engine="postgres", method="physical", schedule=schedule,
                    now=when, heartbeat=0) as writer:
        writer.put_object("base.tar", iter([b"backdated " + when.isoformat().encode()]))
        extra = {"incremental": {"parent": depends_on[-1] if depends_on else None,
                                 "depends_on": list(depends_on)}}
        return writer.commit(databases=[], server_version="15", tools={}, extra=extra,
                             finished_at=when + dt.timedelta(seconds=5)).id


def _plan() -> retention.RetentionPlan:
    return retention.RetentionPlan(
        default=retention.Rule(retention.RetentionPolicy(keep_last=1,
                                                         min_age=dt.timedelta(days=3))),
        schedules={
            "daily-full": retention.Rule(retention.RetentionPolicy(daily=3, monthly=2,
                                                                   yearly=7), "Asia/Tokyo"),
            "hourly-hot": retention.Rule(retention.RetentionPolicy(hourly=2)),
        },
    )


def _expected(repo: Repository, now: dt.datetime) -> set[str]:
    return set(retention.explain_plan([candidate_of(m) for m in repo.list_backups()],
                                      _plan(), now))


def _retention_ran(sandbox: Sandbox, namespace: str, trigger: str) -> dict[str, Any] | None:
    policy = get_policy(sandbox, namespace, "pg")
    status = (policy.get("status") or {}).get("retention") or {}
    return policy if status.get("trigger") == trigger and status.get("lastRunTime") else None


def test_operator_applies_grandfather_father_son_retention(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    s3_repo_url: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    _, dsn = sample_db(pg)
    repo = Repository.open(f"{s3_repo_url}/pg")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    local_2am = now.astimezone(TOKYO).replace(hour=2, minute=0, second=0)
    yearly = {year: _inject(repo, local_2am.replace(year=year, month=6, day=15), "daily-full")
              for year in range(now.year - 9, now.year)}
    recent = [_inject(repo, local_2am - dt.timedelta(days=d), "daily-full") for d in range(1, 6)]
    hot = [_inject(repo, now - dt.timedelta(hours=h), "hourly-hot", ["transformations"])
           for h in range(1, 5)]
    manual = {d: _inject(repo, now - dt.timedelta(days=d), None) for d in (1, 2, 10, 11)}
    protected = yearly[now.year - 9]

    schedules = [
        {"name": "daily-full", "cron": "0 2 * * *", "timeZone": "Asia/Tokyo",
         "retention": DAILY},
        {"name": "hourly-hot", "cron": "15 * * * *", "tables": ["transformations"],
         "retention": HOURLY},
    ]
    restore = {
        "apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "RestoreRequest",
        "metadata": {"name": "needs-old"},
        "spec": {"source": {"policyRef": {"name": "pg"}}, "backupId": protected,
                 "target": {"database": {"dsnSecretRef": {"name": "missing-target",
                                                          "key": "dsn"}}}},
    }
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": dsn}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        restore,
        policy_doc("pg", repo_url=s3_repo_url, endpoint=moto_server, schedules=schedules,
                   retention=DEFAULT, archive={"after": "30d", "storageClass": "GLACIER"}),
    )
    expected_first = _expected(repo, now) | {protected}
    op = operator_factory(namespace)

    # The first monitor tick: the periodic run is due (it never ran).
    policy = wait_for(lambda: _retention_ran(sandbox, namespace, "schedule"), 90,
                      message=lambda: op.log_tail())
    status = policy["status"]["retention"]
    kept = {b["id"] for b in backups_list(f"{s3_repo_url}/pg")}
    assert kept == expected_first, op.log_tail()
    assert status["protectedIds"] == [protected]
    assert status["kept"] == len(kept) and status["deleted"] > 0
    assert condition(policy, "RetentionApplied")["reason"] == "Pruned"  # type: ignore[index]
    # Per schedule: hot dumps keep their 2 newest hours; manual backups keep the newest
    # and, by minAge, the 2-day-old one; the 10- and 11-day-old ones go.
    assert {h for h in hot if h in kept} == set(hot[:2])
    assert {d for d, b in manual.items() if b in kept} == {1, 2}
    assert recent[0] in kept
    before = repo.list_backups()

    # A real backup: retention runs again after it; the request is gone, so is its backup.
    sandbox.kubectl("delete", "-n", namespace, "restorerequest", "needs-old", "--wait=true")
    run_now(sandbox, namespace, "pg", "daily-full:retention")
    policy = wait_for(lambda: _retention_ran(sandbox, namespace, "backup"), 120,
                      message=lambda: op.log_tail())
    listed = backups_list(f"{s3_repo_url}/pg")
    newest = max(listed, key=lambda b: b["started_at"])
    assert newest["schedule"] == "daily-full" and newest["id"] not in expected_first
    kept = {b["id"] for b in listed}
    candidates = [candidate_of(m) for m in [*before, repo.get(newest["id"])]
                  if m.id != protected]
    assert kept == set(retention.explain_plan(candidates, _plan(), now)), op.log_tail()
    assert protected not in kept
    # 7 yearlies: this year's by the new backup, and the six years before.
    years = {dt.datetime.fromisoformat(b["started_at"]).astimezone(TOKYO).year
             for b in listed if b["schedule"] == "daily-full"}
    assert years == set(range(now.year - 6, now.year + 1))
    assert {yearly[y] for y in range(now.year - 9, now.year - 6)}.isdisjoint(kept)
    status = policy["status"]["retention"]
    assert status.get("protectedIds") in (None, [])
    assert status["oldestKeptId"] == yearly[now.year - 6]
    assert "daily-full" in status["rules"]
    # Archive tier: what is kept and older than 30 days moved to GLACIER, after the prune
    # (nothing deleted was archived first); manifests stay readable for listing.
    month_ago = now - dt.timedelta(days=30)
    for backup in listed:
        old = dt.datetime.fromisoformat(backup["started_at"]) < month_ago
        assert backup["current_storage_class"] == ("GLACIER" if old else "STANDARD"), backup
    assert status["archived"] == 0  # the first run moved them already
    first_archived = [e for e in events_for(sandbox, namespace, "pg")
                      if e["reason"] == "BackupsPruned" and "to GLACIER" in e["message"]]
    assert first_archived
    pruned = [e for e in events_for(sandbox, namespace, "pg") if e["reason"] == "BackupsPruned"]
    assert pruned and protected in " ".join(e["message"] for e in pruned)
    # The audit trail: one record per retention run of the operator (and one of the
    # backup Job), each naming what it deleted.
    records = json.loads(subprocess.run(
        [sys.executable, "-m", "tonebridge_dr.cli", "audit", "list", "--repo",
         f"{s3_repo_url}/pg", "--json"], capture_output=True, text=True, check=True,
    ).stdout)
    runs = [r for r in records if r["operation"] == "prune"]
    assert [r["who"]["trigger"] for r in runs] == ["schedule", "backup"]
    assert all(r["who"]["kind"] == "operator" and r["outcome"] == "succeeded" for r in runs)
    assert protected in runs[1]["backup_ids"] and protected not in runs[0]["backup_ids"]
    assert [r["operation"] for r in records].count("backup") == 1


def test_from_retention_locks_follow_the_rule_that_keeps_each_backup(
    sandbox: Sandbox, namespace: str, moto_server: str, monkeypatch: pytest.MonkeyPatch,
    operator_factory: Any,
) -> None:
    """`objectLock.retainFor: fromRetention`: the operator's retention run locks each kept
    backup until the end of the longest rule keeping it (yearly: 2 -> two years from its
    start); the backup the rules let go is deleted (it never had a longer lock). The
    newest backup is an incremental: the full backup it reads, kept only for its chain,
    is locked as long as it."""
    s3_fixtures.s3_env(monkeypatch, moto_server)
    bucket = s3_fixtures.new_bucket(moto_server, object_lock=True)
    repo = Repository.open(f"s3://{bucket}/repo/pg")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    yearly = _inject(repo, now.replace(year=now.year - 1, month=6, day=15), "daily-full")
    older = _inject(repo, now.replace(year=now.year - 2, month=6, day=15), "daily-full")
    base = _inject_physical(repo, now - dt.timedelta(days=3), "daily-full")
    daily = _inject_physical(repo, now - dt.timedelta(hours=1), "daily-full", (base,))
    ancient = now - dt.timedelta(days=4 * 365)  # beyond the default auditRetention (1095d)
    old_record = audit.write_record(repo.storage, audit.AuditRecord(
        operation="backup", started_at=ancient, finished_at=ancient, outcome=audit.SUCCEEDED,
        who={"kind": "cli"}))
    doc = policy_doc("pg", repo_url=f"s3://{bucket}/repo", endpoint=moto_server, schedules=[
        {"name": "daily-full", "cron": "0 2 * * *", "retention": {"daily": 1, "yearly": 2}}])
    doc["spec"]["repository"]["objectLock"] = {"mode": "GOVERNANCE",
                                               "retainFor": "fromRetention"}
    apply_docs(sandbox, namespace, secret_doc("db-dsn", {"dsn": "host=127.0.0.1 dbname=x"}),
               *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"), doc)
    op = operator_factory(namespace)
    policy = wait_for(lambda: _retention_ran(sandbox, namespace, "schedule"), 90,
                      message=lambda: op.log_tail())
    assert "Extended the Object Lock of 3" in policy["status"]["retention"]["message"]
    assert {m.id for m in repo.list_backups()} == {yearly, base, daily}  # `older`: not kept
    assert older not in {m.id for m in repo.list_backups()}
    assert not repo.storage.exists(old_record)  # the daily run applies auditRetention
    assert "1 audit record(s)" in policy["status"]["retention"]["message"]
    s3 = s3_fixtures.client(moto_server)

    def lock_of(backup_id: str) -> dt.datetime:
        key = f"repo/pg/base/{backup_id}/manifest.json"
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE"
        return head["ObjectLockRetainUntilDate"].astimezone(dt.UTC)

    started = {m.id: m.started_at for m in repo.list_backups()}
    # yearly: 2 -> 2 calendar years from the start of each backup it keeps (this year's
    # newest is this year's yearly too: its longest rule decides).
    for backup_id in (yearly, daily):
        two_years = started[backup_id].replace(year=started[backup_id].year + 2)
        assert abs(lock_of(backup_id) - two_years) < dt.timedelta(seconds=2), backup_id
    # the chain's full backup: no rule of its own keeps it, its incremental's date does
    assert lock_of(base) == lock_of(daily)
    # The operator's own audit record of the run is locked like what Jobs write.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="repo/pg/audit/")
            .get("Contents", []) if "-prune-" in o["Key"]]
    assert len(keys) == 1
    assert s3.head_object(Bucket=bucket, Key=keys[0])["ObjectLockMode"] == "GOVERNANCE"
