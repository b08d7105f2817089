"""RestoreRequest end to end: the operator's handlers under kopf, the sandbox's real Job and
garbage-collection controllers, restore Jobs running the real runner, real PostgreSQL and
an S3 repository on moto. Every restore is checked row by row against its source.

Backups are written with the runner CLI into the folder of the policy that would have
written them (`<bucket>/<policy>`), exactly where restore Jobs look.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fixtures.gpg import GpgKeys
from tests.fixtures.operator import OperatorProcess, WebhookReceiver, get_columns
from tests.fixtures.pg_wal import batches, commit_batch, start_archiving, switch_wal, wait_archived
from tests.fixtures.postgres import (
    ADMIN_PASSWORD,
    Cli,
    PgFactory,
    PgServer,
    populate_sample,
    table_checksums,
)
from tests.fixtures.restore_operator import RestoreOperator, restore_operator  # noqa: F401
from tests.fixtures.s3 import new_bucket, s3_env
from tonebridge_dr.api import formats
from tonebridge_dr.sandbox import procs
from tonebridge_dr.sandbox.kube import ApiError, Kube
from tonebridge_dr.sandbox.runtime import Sandbox

Json = dict[str, Any]
T = TypeVar("T")

POLICY = "tonebridge-db"
RESTORE_SA = "tonebridge-dr-restore"
TIMEOUT = 180.0
API = "/apis/dr.tonebridge.io/v1alpha1"
CLI = Path(sys.executable).parent / "tonebridge-dr"


def wait_until(check: Callable[[], T | None], timeout: float = TIMEOUT, what: str = "it") -> T:
    """Poll until `check` returns something truthy (a readiness wait, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def dbname_of(dsn: str) -> str:
    return dsn.rsplit("dbname=", 1)[1]


@dataclasses.dataclass
class World:
    """One test's namespace, database server, bucket and the operator."""

    sandbox: Sandbox
    kube: Kube
    namespace: str
    pg: PgServer
    cli: Cli
    bucket_url: str
    endpoint: str

    # --- objects ----------------------------------------------------------------------------
    def path(self, plural: str, name: str = "", group: str = API) -> str:
        base = f"{group}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def secret(self, name: str, data: dict[str, str]) -> None:
        self.kube.create(
            self.path("secrets", group="/api/v1"),
            {"metadata": {"name": name}, "stringData": data},
        )

    def dsn_secret(self, name: str, dbname: str, key: str = "dsn") -> str:
        """A Secret with a full connection URI, password included (as users store it)."""
        uri = f"postgresql://{self.pg.user}:{self.pg.password}@127.0.0.1:{self.pg.port}/{dbname}"
        self.secret(name, {key: uri})
        return uri

    def repository(self, **extra: Any) -> Json:
        return {"url": self.bucket_url, "endpoint": self.endpoint, "region": "us-east-1",
                **extra}

    def policy(self, **spec: Any) -> None:
        body = {
            "apiVersion": "dr.tonebridge.io/v1alpha1",
            "kind": "BackupPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "target": {"postgres": {"database": "src",
                                        "dsnSecretRef": {"name": "db-backup", "key": "dsn"}}},
                "schedules": [{"name": "daily", "cron": "0 2 * * *", "method": "logical"}],
                "repository": self.repository(
                    credentialsSecretRef={"name": "s3-writer"},
                    restoreCredentialsSecretRef={"name": "s3-reader"},
                ),
                **spec,
            },
        }
        self.kube.create(self.path("backuppolicies"), body)

    def request(self, name: str, spec: Json) -> None:
        body = {"apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "RestoreRequest",
                "metadata": {"name": name}, "spec": spec}
        self.kube.create(self.path("restorerequests"), body)

    def rr(self, name: str) -> Json | None:
        try:
            return self.kube.get(self.path("restorerequests", name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def finished(self, name: str) -> Json:
        def done() -> Json | None:
            body = self.rr(name)
            phase = ((body or {}).get("status") or {}).get("phase")
            return body if phase in ("Succeeded", "Failed") else None

        return wait_until(done, what=f"RestoreRequest {name} to finish")

    def pending(self, name: str, reason: str) -> Json:
        def waiting() -> Json | None:
            body = self.rr(name) or {}
            ready = condition(body, "Ready")
            if body.get("status", {}).get("phase") == "Pending" and ready.get("reason") == reason:
                return body
            return None

        return wait_until(waiting, what=f"RestoreRequest {name} Pending with {reason}")

    def jobs(self) -> list[Json]:
        return list(self.kube.get(self.path("jobs", group="/apis/batch/v1"))["items"])

    def pods(self, job: str) -> list[Json]:
        return list(self.kube.get(
            self.path("pods", group="/api/v1"), labelSelector=f"job-name={job}"
        )["items"])

    def events(self, name: str) -> list[Json]:
        items = self.kube.get(self.path("events", group="/api/v1"))["items"]
        return [e for e in items if e["involvedObject"].get("name") == name]

    # --- data ---------------------------------------------------------------------------------
    def source_db(self, rows: int = 300) -> str:
        dsn = self.pg.create_database("src")
        populate_sample(self.pg, dbname_of(dsn), rows=rows)
        return dsn

    def backup(self, dsn: str, *extra: str) -> str:
        result = self.cli("backup", "postgres", "--dsn", dsn, "--repo",
                          f"{self.bucket_url}/{POLICY}", "--json", *extra)
        assert result.code == 0, result.err
        backup_id: str = result.json["id"]
        return backup_id

    def rows(self, dsn: str, query: str) -> list[tuple[Any, ...]]:
        return self.pg.query(dbname_of(dsn), query)


def printer_columns(world: World, name: str) -> dict[str, str]:
    """`kubectl get rr NAME` as {column: cell}."""
    return get_columns(world.sandbox, world.namespace, "rr", name)


def condition(body: Json, kind: str) -> Json:
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


@pytest.fixture
def place(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    cli: Cli,
    s3_repo_url: str,
    moto_server: str,
) -> World:
    """A namespace with the restore ServiceAccount and bucket credentials; no operator."""
    kube = sandbox.kube()
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"metadata": {"name": RESTORE_SA}})
    here = World(sandbox, kube, namespace, pg, cli, s3_repo_url, moto_server)
    here.secret("s3-reader", {"AWS_ACCESS_KEY_ID": "reader", "AWS_SECRET_ACCESS_KEY": "reader-key"})
    here.secret("s3-writer", {"AWS_ACCESS_KEY_ID": "writer", "AWS_SECRET_ACCESS_KEY": "writer-key"})
    return here


@pytest.fixture
def world(place: World, restore_operator: RestoreOperator) -> Iterator[World]:  # noqa: F811
    """`place` with the RestoreRequest handlers running (in this process)."""
    yield place
    assert restore_operator.error is None, restore_operator.error


def assert_no_secret_leaks(world: World, name: str, *secrets: str) -> None:
    """Status, Events and the Job's pod spec never carry secret values."""
    job_name = (world.rr(name) or {}).get("status", {}).get("jobName", "")
    texts = [json.dumps(world.rr(name)), json.dumps(world.events(name)),
             json.dumps([p["spec"] for p in world.pods(job_name)])]
    for secret in secrets:
        for text in texts:
            assert secret not in text


# --- restores ---------------------------------------------------------------------------------


def test_logical_latest_restore_through_a_request(world: World) -> None:
    src = world.source_db()
    first = world.backup(src)
    world.pg.execute(dbname_of(src), "INSERT INTO analytics VALUES ('2030-01-01', 'moon', 7)",
                     "DELETE FROM usage_tracking WHERE id > 100")
    latest = world.backup(src)
    assert latest != first
    world.policy()
    target = world.pg.create_database("empty")
    uri = world.dsn_secret("db-restore", dbname_of(target))

    world.request("restore-latest", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "method": "logical",
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    waited = world.sandbox.kubectl(
        "wait", "--for=condition=Complete", "rr/restore-latest", "-n", world.namespace,
        f"--timeout={int(TIMEOUT)}s", timeout=TIMEOUT + 30,
    )
    assert "condition met" in waited.stdout

    assert table_checksums(world.pg, dbname_of(target)) == table_checksums(
        world.pg, dbname_of(src)
    )
    query = "SELECT * FROM transformations ORDER BY id"
    assert world.rows(target, query) == world.rows(src, query)
    assert world.rows(target, "SELECT hits FROM analytics WHERE region = 'moon'") == [(7,)]

    body = world.finished("restore-latest")
    status = body["status"]
    assert status["phase"] == "Succeeded"
    assert status["source"] == POLICY
    assert status["jobName"] == "restore-latest-restore"
    assert status["restored"]["backupId"] == latest
    assert status["restored"]["method"] == "logical"
    assert formats.parse_duration(status["duration"]).total_seconds() == int(
        status["durationSeconds"]
    )
    assert status["startedAt"] <= status["completedAt"]
    assert condition(body, "Complete")["status"] == "True"
    assert condition(body, "Failed")["status"] == "False"
    assert condition(body, "Ready")["status"] == "True"
    assert f"Restored backup {latest} into the database of Secret" in status["message"]

    columns = printer_columns(world, "restore-latest")
    assert list(columns) == ["NAME", "PHASE", "SOURCE", "TARGET TIME", "DURATION", "AGE"]
    assert columns["PHASE"] == "Succeeded"
    assert columns["SOURCE"] == POLICY
    assert columns["TARGET TIME"] == ""  # a logical restore has no target time
    assert columns["DURATION"] == status["duration"]
    wide = world.sandbox.kubectl("get", "rr", "-n", world.namespace, "-o", "wide").stdout
    assert latest in wide

    (job,) = world.jobs()
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-reader"
    assert env["TONEBRIDGE_DR_REPO"]["value"] == f"{world.bucket_url}/{POLICY}"
    reasons = {e["reason"] for e in world.events("restore-latest")}
    assert {"RestoreStarted", "RestoreSucceeded"} <= reasons
    assert_no_secret_leaks(world, "restore-latest", world.pg.password, uri, "reader-key")


def test_an_archived_backup_goes_through_rehydrating_to_complete(world: World) -> None:
    src = world.source_db()
    backup_id = world.backup(src)
    repo = f"{world.bucket_url}/{POLICY}"
    archived = world.cli("backups", "archive", "--repo", repo, "--after", "0", "--json")
    assert archived.code == 0, archived.err
    assert archived.json["moved"] == [backup_id]
    world.policy()
    target = world.pg.create_database("empty")
    world.dsn_secret("db-restore", dbname_of(target))

    world.request("restore-archived", {
        "source": {"policyRef": {"name": POLICY}},
        "backupId": backup_id,
        "rehydration": {"days": 2, "tier": "Bulk"},
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    body = world.finished("restore-archived")
    assert body["status"]["phase"] == "Succeeded", body["status"]
    assert condition(body, "Complete")["status"] == "True"
    assert body["status"]["restored"]["backupId"] == backup_id
    assert table_checksums(world.pg, dbname_of(target)) == table_checksums(
        world.pg, dbname_of(src)
    )
    # The request went through Rehydrating before its Job: one Event says so, with the
    # counts and the tier (moto makes copies readable at once: the next check goes on).
    events = sorted(world.events("restore-archived"), key=lambda e: e["metadata"]["name"])
    rehydrating = [e for e in events if e["reason"] == "Rehydrating"]
    assert [e["message"] for e in rehydrating] == [
        f"backup {backup_id}: 2 of 2 objects are in storage class GLACIER and not readable "
        "yet; rehydration 2 requested now, 0 in progress (tier Bulk, readable for 2 days)"
    ]
    started = next(e for e in events if e["reason"] == "RestoreStarted")
    assert rehydrating[0]["firstTimestamp"] <= started["firstTimestamp"]
    listed = world.cli("backups", "list", "--repo", repo, "--json")
    assert [b["current_storage_class"] for b in listed.json] == ["GLACIER"]


def test_table_restore_replaces_that_table_and_leaves_the_others(world: World) -> None:
    src = world.source_db()
    world.backup(src)
    world.policy()
    target = world.source_db()
    world.pg.execute(dbname_of(target), "DELETE FROM usage_tracking WHERE id % 2 = 0",
                     "UPDATE usage_tracking SET amount = 0", "UPDATE analytics SET hits = 0")
    before = table_checksums(world.pg, dbname_of(target))
    world.dsn_secret("db-restore", dbname_of(target))

    world.request("restore-usage", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
        "tables": ["usage_tracking"],
        "overwrite": True,
    })
    body = world.finished("restore-usage")
    assert body["status"]["phase"] == "Succeeded", body["status"]["message"]
    query = "SELECT * FROM usage_tracking ORDER BY id"
    assert world.rows(target, query) == world.rows(src, query)
    after = table_checksums(world.pg, dbname_of(target))
    source = table_checksums(world.pg, dbname_of(src))
    assert after["public.usage_tracking"] == source["public.usage_tracking"]
    for table in ("public.analytics", "public.transformations", "app.documents"):
        assert after[table] == before[table]  # untouched, changes included
    assert world.rows(target, "SELECT max(hits) FROM analytics") == [(0,)]
    assert body["status"]["restored"]["tables"] == ["public.usage_tracking"]


def test_time_range_repair_reinserts_only_the_missing_rows_of_the_range(world: World) -> None:
    src = world.source_db()
    backup_id = world.backup(src)
    world.policy()
    target = world.source_db()
    # Rows n were created at 2024-01-01 00:00 + (n-1) hours: 3 January is ids 49..72.
    world.pg.execute(
        dbname_of(target),
        "DELETE FROM transformations WHERE id BETWEEN 60 AND 70",  # lost inside the range
        "DELETE FROM transformations WHERE id BETWEEN 200 AND 205",  # lost outside the range
        "UPDATE transformations SET note = 'edited live' WHERE id = 55",
    )
    world.dsn_secret("db-restore", dbname_of(target))
    world.request("repair-jan-3", {
        "source": {"policyRef": {"name": POLICY}},
        "backupId": backup_id,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
        "repair": {"table": "transformations", "column": "created_at",
                   "from": "2024-01-03T00:00:00Z", "to": "2024-01-03T23:59:59Z"},
    })
    body = world.finished("repair-jan-3")
    status = body["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert status["restored"]["repairedRows"] == 11
    assert status["restored"]["backupId"] == backup_id
    assert "11 missing rows re-inserted" in status["message"]

    query = "SELECT * FROM transformations WHERE id BETWEEN 49 AND 72 AND id <> 55 ORDER BY id"
    assert world.rows(target, query) == world.rows(src, query)
    assert world.rows(target, "SELECT note FROM transformations WHERE id = 55") == [
        ("edited live",)
    ]
    assert world.rows(target, "SELECT count(*) FROM transformations WHERE id BETWEEN 200 "
                              "AND 205") == [(0,)]
    assert world.rows(target, "SELECT count(*) FROM transformations") == [(300 - 6,)]


def test_disaster_restore_from_the_bucket_alone(world: World, gpg_keys: GpgKeys,
                                               webhook: WebhookReceiver) -> None:
    """A new cluster: no BackupPolicy, only the bucket, read credentials and the key; the
    request's own notifications tell the team (there is no policy to take them from)."""
    src = world.source_db(rows=120)
    world.backup(src, "--encrypt-to", str(gpg_keys.public_key))
    target = world.pg.create_database("rebuilt")
    world.dsn_secret("db-restore", dbname_of(target))
    world.secret("restore-gpg", {"private.asc": gpg_keys.private_key.read_text()})
    world.secret("hook", {"url": webhook.url})
    assert world.kube.get(world.path("backuppolicies"))["items"] == []

    world.request("rebuild", {
        "source": {
            "repository": world.repository(credentialsSecretRef={"name": "s3-reader"}),
            "policyName": POLICY,
            "privateKeySecretRef": {"name": "restore-gpg", "key": "private.asc"},
        },
        "latest": True,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
        "notifications": {"webhookSecretRef": {"name": "hook", "key": "url"},
                          "events": ["RestoreSucceeded", "RestoreFailed"]},
    })
    body = world.finished("rebuild")
    assert body["status"]["phase"] == "Succeeded", body["status"]["message"]
    assert body["status"]["source"] == f"{world.bucket_url} ({POLICY})"
    assert table_checksums(world.pg, dbname_of(target)) == table_checksums(
        world.pg, dbname_of(src)
    )
    query = "SELECT * FROM transformations ORDER BY id"
    assert world.rows(target, query) == world.rows(src, query)
    (job,) = world.jobs()
    pod = job["spec"]["template"]["spec"]
    (key,) = [v for v in pod["volumes"] if "secret" in v]
    assert key["secret"]["secretName"] == "restore-gpg"
    private = gpg_keys.private_key.read_text()
    assert_no_secret_leaks(world, "rebuild", private.splitlines()[3], world.pg.password)
    (sent,) = wait_until(lambda: webhook.payloads("RestoreSucceeded") or None, 30,
                         "the RestoreSucceeded notification")
    assert (sent["policy"], sent["state"]) == ("rebuild", "Succeeded")


def test_the_operator_process_runs_restore_requests(
    place: World, operator_factory: Callable[..., OperatorProcess]
) -> None:
    """`tonebridge-dr operator` (every handler, one Job watch for backup and restore Jobs)
    restores a table through a RestoreRequest next to its BackupPolicy."""
    world = place
    src = world.source_db(rows=40)
    world.backup(src)
    world.policy()
    target = world.source_db(rows=40)
    world.pg.execute(dbname_of(target), "DELETE FROM usage_tracking")
    world.dsn_secret("db-restore", dbname_of(target))
    process = operator_factory(world.namespace)
    world.request("via-process", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
        "tables": ["usage_tracking"],
        "overwrite": True,
    })
    body = world.finished("via-process")
    assert body["status"]["phase"] == "Succeeded", (body["status"]["message"], process.log())
    query = "SELECT * FROM usage_tracking ORDER BY id"
    assert world.rows(target, query) == world.rows(src, query)
    assert world.pg.password not in process.log()


# --- refusals ---------------------------------------------------------------------------------


def test_a_non_empty_database_is_refused_fast_and_left_untouched(world: World) -> None:
    src = world.source_db(rows=50)
    world.backup(src)
    world.policy()
    target = world.source_db(rows=20)
    world.pg.execute(dbname_of(target), "UPDATE analytics SET hits = -1")
    before = table_checksums(world.pg, dbname_of(target))
    world.dsn_secret("db-restore", dbname_of(target))

    world.request("into-live-db", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    body = world.finished("into-live-db")
    assert body["status"]["phase"] == "Failed"
    failed = condition(body, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "TargetNotEmpty")
    assert failed["message"].startswith("Restore refused (TargetNotEmpty): target database")
    assert "Nothing was changed" in failed["message"]
    assert "spec.overwrite: true" in failed["message"]
    assert "--clean" not in failed["message"]
    assert condition(body, "Complete")["status"] == "False"
    assert table_checksums(world.pg, dbname_of(target)) == before

    (job,) = world.jobs()
    job_failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert job_failed["reason"] == "PodFailurePolicy"  # no retry for a refusal
    assert len(world.pods(job["metadata"]["name"])) == 1
    ours = [e for e in world.events("into-live-db") if e.get("reportingComponent") ==
            "tonebridge-dr"]
    assert sorted((e["type"], e["reason"]) for e in ours) == [
        ("Normal", "RestoreStarted"), ("Warning", "RestoreFailed")
    ]


def test_an_unknown_backup_id_fails_with_a_precise_message(world: World) -> None:
    src = world.source_db(rows=10)
    world.backup(src)
    world.policy()
    target = world.pg.create_database("untouched")
    world.dsn_secret("db-restore", dbname_of(target))
    world.request("wrong-id", {
        "source": {"policyRef": {"name": POLICY}},
        "backupId": "20200101T000000Z",
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    body = world.finished("wrong-id")
    failed = condition(body, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "BackupNotFound")
    assert "20200101T000000Z" in failed["message"]
    assert f"tonebridge-dr backups list --repo {world.bucket_url}/{POLICY}" in failed["message"]
    assert world.rows(target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [
        (0,)
    ]


def test_a_missing_secret_keeps_the_request_pending_until_it_exists(world: World) -> None:
    src = world.source_db(rows=30)
    world.backup(src)
    world.policy()
    target = world.pg.create_database("later")
    world.request("waits-for-secret", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    body = world.pending("waits-for-secret", "SecretNotFound")
    ready = condition(body, "Ready")
    assert ready["status"] == "False"
    assert ready["message"].startswith(
        'Secret "db-restore" (target database DSN) not found. Nothing was restored yet'
    )
    assert body["status"]["message"] == ready["message"]
    assert world.jobs() == []

    world.secret("db-restore", {"wrong-key": "x"})
    body = world.pending("waits-for-secret", "SecretKeyNotFound")
    assert 'Secret "db-restore" (target database DSN) has no key "dsn"' in condition(
        body, "Ready")["message"]
    world.kube.delete(world.path("secrets", "db-restore", group="/api/v1"))
    world.dsn_secret("db-restore", dbname_of(target))

    body = world.finished("waits-for-secret")
    assert body["status"]["phase"] == "Succeeded", body["status"]["message"]
    assert table_checksums(world.pg, dbname_of(target)) == table_checksums(
        world.pg, dbname_of(src)
    )


def test_a_missing_policy_is_a_precise_pending_condition(world: World) -> None:
    world.dsn_secret("db-restore", "nowhere")
    world.request("no-policy", {
        "source": {"policyRef": {"name": "tonebridge-db-typo"}},
        "latest": True,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    body = world.pending("no-policy", "PolicyNotFound")
    assert condition(body, "Ready")["message"].startswith(
        f'BackupPolicy "tonebridge-db-typo" not found in namespace "{world.namespace}".'
    )
    assert world.jobs() == []


def test_encrypted_backups_without_a_key_are_refused_before_anything_runs(
    world: World,
) -> None:
    world.secret("backup-gpg", {"public.asc": "not needed here"})
    world.policy(encryption={"publicKeySecretRef": {"name": "backup-gpg", "key": "public.asc"}})
    world.dsn_secret("db-restore", "nowhere")
    world.request("no-key", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
    })
    body = world.finished("no-key")
    failed = condition(body, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "MissingDecryptionKey")
    assert "privateKeySecretRef" in failed["message"]
    assert "Nothing was changed" in failed["message"]
    assert world.jobs() == []


def test_a_missing_service_account_or_claim_keeps_the_request_pending(world: World) -> None:
    world.kube.delete(world.path("serviceaccounts", RESTORE_SA, group="/api/v1"))
    world.request("needs-more", {
        "source": {"repository": world.repository(credentialsSecretRef={"name": "s3-reader"}),
                   "policyName": POLICY},
        "latest": True,
        "method": "physical",
        "target": {"volume": {"claimName": "pg-data"}},
    })
    body = world.pending("needs-more", "ServiceAccountNotFound")
    assert condition(body, "Ready")["message"].startswith(
        f'ServiceAccount "{RESTORE_SA}" (restore Jobs run as it) not found in namespace '
        f'"{world.namespace}"'
    )
    world.kube.create(world.path("serviceaccounts", group="/api/v1"),
                      {"metadata": {"name": RESTORE_SA}})
    body = world.pending("needs-more", "ClaimNotFound")
    assert condition(body, "Ready")["message"].startswith(
        f'PersistentVolumeClaim "pg-data" not found in namespace "{world.namespace}".'
    )
    assert world.jobs() == []


# --- deletion ---------------------------------------------------------------------------------


def _restore_backend(world: World, dbname: str, own_pid: int) -> int | None:
    rows = world.pg.query(
        "postgres",
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s "
        "AND wait_event_type = 'Lock'",
        (dbname, own_pid),
    )
    return int(rows[0][0]) if rows else None


@pytest.mark.parametrize("propagation", ["Foreground", "Background"])
def test_deleting_a_running_request_stops_the_restore_and_changes_nothing(
    world: World, propagation: str
) -> None:
    src = world.source_db(rows=50)
    world.backup(src)
    world.policy()
    target = world.source_db(rows=20)
    world.pg.execute(dbname_of(target), "UPDATE usage_tracking SET amount = 1")
    before = table_checksums(world.pg, dbname_of(target))
    world.dsn_secret("db-restore", dbname_of(target))

    # Hold a lock so the restore blocks inside its transaction, after it started writing.
    blocker = world.pg.connect(dbname_of(target))
    try:
        blocker.execute("LOCK TABLE usage_tracking IN ACCESS EXCLUSIVE MODE")
        own_pid = blocker.info.backend_pid
        world.request("stop-me", {
            "source": {"policyRef": {"name": POLICY}},
            "latest": True,
            "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
            "tables": ["usage_tracking"],
            "overwrite": True,
        })
        backend = wait_until(lambda: _restore_backend(world, dbname_of(target), own_pid),
                             what="the restore to block on the lock")
        (job,) = world.jobs()
        (pod,) = world.pods(job["metadata"]["name"])
        container = pod["status"]["containerStatuses"][0]
        pid = int(container["containerID"].removeprefix("sandbox://"))
        started = procs.start_time(pid)
        assert procs.is_alive(pid, started)
        assert (world.rr("stop-me") or {})["status"]["phase"] == "Running"

        world.kube.delete(world.path("restorerequests", "stop-me"),
                          {"propagationPolicy": propagation})
        wait_until(lambda: world.rr("stop-me") is None, what="the request to be deleted")
        wait_until(lambda: not world.jobs(), what="the Job to be deleted")
        wait_until(lambda: not world.pods(job["metadata"]["name"]), what="the pod to go")
        assert procs.wait_gone(pid, started, 30)
        assert not procs.group_members(pid, started or 0)
    finally:
        blocker.rollback()
        blocker.close()
    # The orphaned server backend gets the lock, finds its client gone and rolls back.
    wait_until(
        lambda: not world.pg.query("postgres", "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                   (backend,)),
        what="the restore's backend to end",
    )
    assert table_checksums(world.pg, dbname_of(target)) == before


def test_deleting_the_job_fails_the_request_and_says_so(world: World) -> None:
    src = world.source_db(rows=20)
    world.backup(src)
    world.policy()
    target = world.source_db(rows=10)
    world.dsn_secret("db-restore", dbname_of(target))
    blocker = world.pg.connect(dbname_of(target))
    try:
        blocker.execute("LOCK TABLE usage_tracking IN ACCESS EXCLUSIVE MODE")
        world.request("job-deleted", {
            "source": {"policyRef": {"name": POLICY}},
            "latest": True,
            "target": {"database": {"dsnSecretRef": {"name": "db-restore", "key": "dsn"}}},
            "tables": ["usage_tracking"],
            "overwrite": True,
        })
        wait_until(lambda: _restore_backend(world, dbname_of(target),
                                            blocker.info.backend_pid),
                   what="the restore to block")
        (job,) = world.jobs()
        world.kube.delete(world.path("jobs", job["metadata"]["name"], group="/apis/batch/v1"),
                          {"propagationPolicy": "Background"})
        body = world.finished("job-deleted")
    finally:
        blocker.rollback()
        blocker.close()
    failed = condition(body, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "JobDeleted")
    assert "was deleted before it finished" in failed["message"]
    assert "rolled back" in failed["message"]


# --- point-in-time recovery into a volume --------------------------------------------------------

ROWS = 10


@dataclasses.dataclass
class Archive:
    """A cluster archiving WAL into `<bucket>/<policy>`, one base backup, three batches."""

    server: PgServer
    bucket_url: str
    base_backup: str
    after: dict[int, Any]  # batch -> time right after its commit
    started: Any  # time before the base backup


@pytest.fixture(scope="module")
def archive(pg_factory: PgFactory, moto_server: str, postgres_runs_cli: None) -> Iterator[Archive]:
    with pytest.MonkeyPatch.context() as mp:
        s3_env(mp, moto_server)
        mp.setenv("PGPASSWORD", ADMIN_PASSWORD)
        bucket_url = f"s3://{new_bucket(moto_server)}/postgresql"
        repo = f"{bucket_url}/{POLICY}"
        server = start_archiving(pg_factory, "rr-pitr", repo)
        server.execute("postgres", "CREATE TABLE t (batch int NOT NULL, i int NOT NULL)")
        started = server.query("postgres", "SELECT clock_timestamp()")[0][0]
        result = subprocess.run(
            [str(CLI), "backup", "postgres", "--method", "physical", "--dsn", server.dsn(),
             "--repo", repo, "--json"],
            capture_output=True, text=True, check=False, env=dict(os.environ), timeout=600,
        )
        assert result.returncode == 0, result.stderr
        after = {}
        for batch in (1, 2, 3):
            after[batch] = commit_batch(server, batch, ROWS)[0]
            time.sleep(0.3)  # a target right after a commit lies before the next one
        wait_archived(server, switch_wal(server))
        yield Archive(server, bucket_url, json.loads(result.stdout)["id"], after, started)


def physical_policy(world: World, archive: Archive) -> None:
    world.bucket_url = archive.bucket_url
    world.policy(
        target={"postgres": {"database": "postgres",
                             "dsnSecretRef": {"name": "db-backup", "key": "dsn"},
                             "walArchive": {"mode": "archive_command"}}},
        schedules=[{"name": "daily-physical", "cron": "30 3 * * *", "method": "physical"}],
    )


def claim_folder(world: World, claim: str) -> Path:
    body = world.kube.get(world.path("persistentvolumeclaims", claim, group="/api/v1"))
    return Path(world.sandbox.state_dir) / "volumes" / str(body["spec"]["volumeName"])


def test_point_in_time_restore_fills_a_volume_ready_for_postgres(
    world: World, archive: Archive, pg_factory: PgFactory
) -> None:
    physical_policy(world, archive)
    target_time = archive.after[1].isoformat()
    world.request("pitr", {
        "source": {"policyRef": {"name": POLICY}},
        "targetTime": target_time,
        "method": "physical",
        "target": {"volume": {"claimTemplate": {"size": "1Gi"}},
                   "instance": {"image": "postgres:15"}},
    })
    body = world.finished("pitr")
    status = body["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert status["restored"]["backupId"] == archive.base_backup
    assert "ready to start" in status["message"]
    assert printer_columns(world, "pitr")["TARGET TIME"] == target_time

    restored = status["restored"]
    assert restored["method"] == "physical"
    # the last transaction replayed is batch 1: committed after `started`, before the target
    # (status times have whole seconds)
    recovered = dt.datetime.fromisoformat(restored["recoveredToTime"].replace("Z", "+00:00"))
    assert archive.started.replace(microsecond=0) <= recovered <= archive.after[1]
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", restored["recoveredToLSN"])
    assert f"recovered to LSN {restored['recoveredToLSN']}" in status["message"]

    data = claim_folder(world, "pitr") / "pgdata"
    assert not (data / "recovery.signal").exists()  # promoted
    assert not (data / "postmaster.opts").exists()  # nothing of the restore run sticks
    auto = (data / "postgresql.auto.conf").read_text()
    for name in ("restore_command", "recovery_target", "unix_socket_directories",
                 "listen_addresses", "port"):
        assert not re.search(rf"^{name}\b", auto, re.MULTILINE), auto
    server = pg_factory.start_datadir(f"rr-pitr-{world.namespace[-6:]}", data)
    try:
        assert batches(server) == [(1, ROWS)]  # exactly the rows committed before the target
        assert server.query("postgres", "SELECT pg_is_in_recovery()") == [(False,)]
    finally:
        server.stop()

    statefulset = world.kube.get(world.path("statefulsets", "pitr", group="/apis/apps/v1"))
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "postgres:15"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "pitr"
    assert world.kube.get(world.path("services", "pitr", group="/api/v1"))["spec"]["ports"][0][
        "port"] == 5432
    assert "StatefulSet pitr" in (world.rr("pitr") or {})["status"]["message"]
    # "runs on it" only once its pod is Ready (a sandbox placeholder for postgres:15)
    ready = wait_until(lambda: (world.rr("pitr") or {})["status"] if (
        ((world.rr("pitr") or {}).get("status") or {}).get("instance") or {}).get("ready")
        else None, 60, "the instance to be Ready")
    assert ready["instance"] == {"name": "pitr", "image": "postgres:15", "ready": True}
    assert ready["message"].endswith("PostgreSQL (postgres:15) runs on it: its pod is Ready.")
    assert any(e["reason"] == "InstanceReady" for e in world.events("pitr"))


def test_an_instance_image_of_another_major_version_is_not_started(
    world: World, archive: Archive
) -> None:
    """The restore succeeds (the volume is ready), but PostgreSQL 16 would refuse a 15 data
    directory: no StatefulSet, and the message says why and what to set."""
    physical_policy(world, archive)
    world.request("wrong-major", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "method": "physical",
        "target": {"volume": {"claimTemplate": {"size": "1Gi"}},
                   "instance": {"image": "postgres:16.4-bookworm"}},
    })
    body = world.finished("wrong-major")
    assert body["status"]["phase"] == "Succeeded"
    def noted() -> str | None:
        message = str(((world.rr("wrong-major") or {}).get("status") or {}).get("message"))
        return message if "not started" in message else None

    message = wait_until(noted, 30, "the instance note")
    major = re.search(r"backup is PostgreSQL (\d+)", message)
    assert major and major.group(1) != "16", message
    assert "image postgres:16.4-bookworm is PostgreSQL 16" in message
    with pytest.raises(ApiError) as missing:
        world.kube.get(world.path("statefulsets", "wrong-major", group="/apis/apps/v1"))
    assert missing.value.status == 404


def test_a_future_target_time_is_refused_before_a_volume_is_made(
    world: World, archive: Archive
) -> None:
    physical_policy(world, archive)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=9)  # e.g. JST written as UTC
    world.request("future", {
        "source": {"policyRef": {"name": POLICY}},
        "targetTime": future.isoformat(),
        "method": "physical",
        "target": {"volume": {"claimTemplate": {"size": "1Gi"}}},
    })
    body = world.finished("future")
    failed = condition(body, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "TargetTimeInFuture")
    assert "in the future" in failed["message"] and "time zone" in failed["message"]
    with pytest.raises(ApiError) as missing:  # nothing was created, nothing left behind
        world.kube.get(world.path("persistentvolumeclaims", "future", group="/api/v1"))
    assert missing.value.status == 404


def test_a_target_time_whose_wal_is_not_archived_yet_waits_for_it(
    world: World, pg_factory: PgFactory, moto_server: str,
) -> None:
    """Right after an incident the WAL holding the target is still on the server (it is
    archived within archiveTimeout): the request waits (WaitingForWAL) instead of failing,
    and restores once the segment is in the repository."""
    with pytest.MonkeyPatch.context() as mp:
        s3_env(mp, moto_server)
        mp.setenv("PGPASSWORD", ADMIN_PASSWORD)
        bucket_url = f"s3://{new_bucket(moto_server)}/postgresql"
        server = start_archiving(pg_factory, "rr-walwait", f"{bucket_url}/{POLICY}")
        server.execute("postgres", "CREATE TABLE t (batch int NOT NULL, i int NOT NULL)")
        backup = subprocess.run(
            [str(CLI), "backup", "postgres", "--method", "physical", "--dsn", server.dsn(),
             "--repo", f"{bucket_url}/{POLICY}", "--json"],
            capture_output=True, text=True, check=False, env=dict(os.environ), timeout=600,
        )
        assert backup.returncode == 0, backup.stderr
        commit_batch(server, 1, ROWS)
        wait_archived(server, switch_wal(server))
        time.sleep(1.5)  # archive times have whole seconds: batch 2 in a later one
        target = commit_batch(server, 2, ROWS)[0]  # only in the server's current segment
        world.bucket_url = bucket_url
        world.policy(
            target={"postgres": {"database": "postgres",
                                 "dsnSecretRef": {"name": "db-backup", "key": "dsn"},
                                 "walArchive": {"mode": "archive_command",
                                                "archiveTimeout": "10m"}}},
            schedules=[{"name": "daily-physical", "cron": "30 3 * * *", "method": "physical"}],
        )
        world.request("walwait", {
            "source": {"policyRef": {"name": POLICY}},
            "targetTime": target.isoformat(),
            "method": "physical",
            "target": {"volume": {"claimTemplate": {"size": "1Gi"}}},
        })
        waiting = world.pending("walwait", "WaitingForWAL")
        message = condition(waiting, "Ready")["message"]
        assert "waiting for WAL up to targetTime" in message and "wal-status" in message
        assert world.jobs() == [] or all(
            j["metadata"]["name"] != "walwait" for j in world.jobs())
        wait_archived(server, switch_wal(server))  # what archive_timeout would do
        body = world.finished("walwait")
        assert body["status"]["phase"] == "Succeeded", body["status"]["message"]
        restored = pg_factory.start_datadir(f"rr-walwait-{world.namespace[-6:]}",
                                            claim_folder(world, "walwait") / "pgdata")
        try:
            assert batches(restored) == [(1, ROWS), (2, ROWS)]
        finally:
            restored.stop()


def test_a_target_time_before_the_oldest_backup_is_refused(
    world: World, archive: Archive
) -> None:
    physical_policy(world, archive)
    world.request("too-early", {
        "source": {"policyRef": {"name": POLICY}},
        "targetTime": (archive.started - dt.timedelta(days=1)).isoformat(),
        "method": "physical",
        "target": {"volume": {"claimTemplate": {"size": "1Gi"}}},
    })
    body = world.finished("too-early")
    failed = condition(body, "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] in ("RecoveryTargetUnreachable", "BackupNotFound")
    assert 'Nothing was changed in volume "too-early"' in failed["message"]
    assert list(claim_folder(world, "too-early").iterdir()) == []


def test_a_non_empty_volume_is_refused_without_overwrite(
    world: World, archive: Archive
) -> None:
    physical_policy(world, archive)
    world.kube.create(world.path("persistentvolumeclaims", group="/api/v1"), {
        "metadata": {"name": "live-data"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    folder = wait_until(
        lambda: (world.kube.get(world.path("persistentvolumeclaims", "live-data",
                                           group="/api/v1")).get("status", {}).get("phase")
                 == "Bound") and claim_folder(world, "live-data"),
        what="a bound claim",
    )
    (folder / "pgdata").mkdir()
    (folder / "pgdata" / "PG_VERSION").write_text("15\n")
    world.request("into-live-volume", {
        "source": {"policyRef": {"name": POLICY}},
        "latest": True,
        "method": "physical",
        "target": {"volume": {"claimName": "live-data"}},
    })
    body = world.finished("into-live-volume")
    failed = condition(body, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "TargetNotEmpty")
    assert "spec.overwrite: true" in failed["message"]
    assert [p.name for p in (folder / "pgdata").iterdir()] == ["PG_VERSION"]
