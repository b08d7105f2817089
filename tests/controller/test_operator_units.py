"""Controller pieces without a cluster: settings, webhook notifications, metrics, the
monitor's write throttle, run-now parsing, reconcile decisions, referenced Secrets, and
catalog reads with explicit per-policy S3 credentials (real moto server, no patching)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.operator import WebhookReceiver
from tests.status import test_restorable_status
from tonebridge_dr.api.common import NotificationEvent
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.api.restoretest import TestResult
from tonebridge_dr.controller import main as controller_main
from tonebridge_dr.controller.backuppolicy import freshness, reconcile, restorable, runnow
from tonebridge_dr.controller.core import catalog, notify, objects, secrets
from tonebridge_dr.controller.core import settings as settings_mod
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.core.metrics import Metrics
from tonebridge_dr.runner.storage import open_storage
from tonebridge_dr.status import restorable as restorable_status


def _policy(spec_extra: dict[str, Any] | None = None, **metadata: Any) -> BackupPolicy:
    spec: dict[str, Any] = {
        "target": {"postgres": {"database": "db",
                                "dsnSecretRef": {"name": "dsn", "key": "dsn"}}},
        "schedules": [{"name": "daily", "cron": "0 2 * * *"},
                      {"name": "hourly", "cron": "0 * * * *"}],
        "repository": {"url": "file:///var/tmp/nowhere"},
    }
    spec.update(spec_extra or {})
    meta = {"name": "p", "namespace": "ns", "uid": "u-1", "generation": 1, **metadata}
    return BackupPolicy.from_body({"apiVersion": "dr.tonebridge.io/v1alpha1",
                                   "kind": "BackupPolicy", "metadata": meta, "spec": spec})


# --- settings ---------------------------------------------------------------------------------
def test_settings_defaults_env_and_flags() -> None:
    defaults = settings_mod.parse([], {})
    assert defaults.clusterwide and defaults.namespaces == ()
    assert defaults.metrics_port == 8080 and defaults.freshness_interval == 60
    assert not defaults.standalone and defaults.peering_name == "tonebridge-dr"
    env = {
        "TONEBRIDGE_DR_WATCH_NAMESPACES": "a, b,a",
        "TONEBRIDGE_DR_RUNNER_IMAGE": "registry/tbdr:1.2",
        "TONEBRIDGE_DR_METRICS_PORT": "0",
        "TONEBRIDGE_DR_STANDALONE": "true",
        "TONEBRIDGE_DR_FRESHNESS_INTERVAL": "1",
        "TONEBRIDGE_DR_BACKUP_SERVICE_ACCOUNT": "sa-backup",
    }
    from_env = settings_mod.parse([], env)
    assert from_env.namespaces == ("a", "b")
    assert from_env.runner.image == "registry/tbdr:1.2"
    assert from_env.runner.backup_service_account == "sa-backup"
    assert from_env.metrics_port == 0 and from_env.standalone
    assert from_env.freshness_interval == 1.0
    flags = settings_mod.parse(
        ["-n", "x", "--runner-image", "img:2", "--metrics-port", "9100", "--priority", "5",
         "--peering", "blue", "--verbose"], env,
    )
    assert flags.namespaces == ("x",) and flags.runner.image == "img:2"
    assert flags.metrics_port == 9100 and flags.priority == 5 and flags.peering_name == "blue"
    assert flags.log_level == "DEBUG"
    assert settings_mod.parse(["-A"], env).clusterwide
    assert settings_mod.parse([], {"TONEBRIDGE_DR_WATCH_NAMESPACES": "*"}).clusterwide


def test_metrics_bind_loopback_unless_told() -> None:
    """An operator run on a laptop keeps its metrics to itself (#17 item 11); the chart
    asks for 0.0.0.0 explicitly (TONEBRIDGE_DR_METRICS_ADDRESS)."""
    assert settings_mod.parse([], {}).metrics_address == "127.0.0.1"
    env = {"TONEBRIDGE_DR_METRICS_ADDRESS": "0.0.0.0"}
    assert settings_mod.parse([], env).metrics_address == "0.0.0.0"
    assert settings_mod.parse(["--metrics-address", "::1"], env).metrics_address == "::1"


@pytest.mark.parametrize(
    ("argv", "env", "text"),
    [
        (["--freshness-interval", "0.5"], {}, "at least 1 second"),
        ([], {"TONEBRIDGE_DR_METRICS_PORT": "http"}, "METRICS_PORT must be a number"),
        ([], {"TONEBRIDGE_DR_STANDALONE": "maybe"}, "true or false"),
        (["--metrics-port", "70000"], {}, "0..65535"),
        (["--no-such-flag"], {}, "unrecognized arguments"),
        (["-n", "a", "-A"], {}, "not allowed with"),
    ],
)
def test_settings_errors(argv: list[str], env: dict[str, str], text: str) -> None:
    with pytest.raises(settings_mod.SettingsError, match=text):
        settings_mod.parse(argv, env)


def test_operator_command_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert controller_main.main(["--freshness-interval", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert controller_main.main(["--help"]) == 0


# --- notifications ----------------------------------------------------------------------------
def test_notification_payload_and_delivery(webhook: WebhookReceiver) -> None:
    note = notify.Notification("ns", "p", NotificationEvent.BACKUP_FAILED, "Failed",
                               "Job j failed: AuthenticationFailed", ("oncall@example.com",))
    assert notify.send(webhook.url, note, timeout=5)
    (payload,) = webhook.payloads()
    assert payload == {
        "text": ":rotating_light: [ns/p] BackupFailed: Job j failed: AuthenticationFailed"
                "\ncc oncall@example.com",
        "namespace": "ns", "policy": "p", "event": "BackupFailed", "state": "Failed",
        "message": "Job j failed: AuthenticationFailed", "contacts": ["oncall@example.com"],
    }


def test_failed_delivery_never_logs_the_url(caplog: pytest.LogCaptureFixture) -> None:
    from tests.fixtures.operator import free_port

    token = uuid.uuid4().hex
    url = f"http://127.0.0.1:{free_port()}/hooks/{token}"  # nothing listens there
    note = notify.Notification("ns", "p", NotificationEvent.BACKUP_FAILED, "Failed", "m")
    with caplog.at_level(logging.DEBUG):
        assert not notify.send(url, note, timeout=2)
    assert "could not be delivered" in caplog.text
    assert token not in caplog.text and "127.0.0.1" not in caplog.text


def test_wanted_events() -> None:
    silent = _policy()
    assert not notify.wanted(silent.spec.notifications, NotificationEvent.BACKUP_FAILED)
    hook = {"webhookSecretRef": {"name": "hook", "key": "url"}}
    default = _policy({"notifications": hook}).spec.notifications
    assert notify.wanted(default, NotificationEvent.BACKUP_FAILED)
    assert notify.wanted(default, NotificationEvent.RPO_MISSED)
    assert not notify.wanted(default, NotificationEvent.BACKUP_SUCCEEDED)
    chosen = _policy({"notifications": {**hook, "events": ["BackupSucceeded"]}})
    assert notify.wanted(chosen.spec.notifications, NotificationEvent.BACKUP_SUCCEEDED)
    assert not notify.wanted(chosen.spec.notifications, NotificationEvent.BACKUP_FAILED)
    escalated = _policy({"notifications": {**hook, "escalation": [
        {"level": 1, "after": "0s", "contacts": ["lead@x.io"]},
        {"level": 2, "after": "1h", "contacts": ["cto@x.io"]},
    ]}})
    assert notify.first_contacts(escalated.spec.notifications) == ("lead@x.io",)


# --- metrics ----------------------------------------------------------------------------------
def test_metrics_series_and_forget() -> None:
    metrics = Metrics()
    metrics.track("ns", "p")
    metrics.backup_succeeded("ns", "p", finished_at=1700000000.0, duration_seconds=2.5,
                             size_bytes=1234)
    metrics.backup_failed("ns", "p")
    metrics.catalog_read("ns", "p", ok=True, rpo_age_seconds=42.0, backups=3)
    text = metrics.render().decode()
    for line in (
        'tonebridge_dr_backup_last_success_timestamp_seconds{namespace="ns",policy="p"} 1.7e+09',
        'tonebridge_dr_backup_last_duration_seconds{namespace="ns",policy="p"} 2.5',
        'tonebridge_dr_backup_last_size_bytes{namespace="ns",policy="p"} 1234.0',
        'tonebridge_dr_backup_failures_total{namespace="ns",policy="p"} 1.0',
        'tonebridge_dr_rpo_age_seconds{namespace="ns",policy="p"} 42.0',
        'tonebridge_dr_backups{namespace="ns",policy="p"} 3.0',
        'tonebridge_dr_repository_up{namespace="ns",policy="p"} 1.0',
    ):
        assert line in text
    assert "process_resident_memory_bytes" in text
    metrics.forget("ns", "p")
    assert 'policy="p"' not in metrics.render().decode()


# --- monitor write throttle -------------------------------------------------------------------
def test_only_significant_status_changes_are_written() -> None:
    check = freshness.significant(300)
    base = {
        "rpoAgeSeconds": 10.0,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "a"},
            {"type": "RPOMet", "status": "True", "reason": "ObjectiveMet", "message": "10s old"},
        ],
    }
    older = {**base, "rpoAgeSeconds": 70.0,
             "conditions": [base["conditions"][0],  # type: ignore[index]
                            {**base["conditions"][1], "message": "1m10s old"}]}  # type: ignore[index]
    assert not check(base, older)
    assert check(base, {**older, "rpoAgeSeconds": 400.0})
    missed = {**older, "conditions": [base["conditions"][0],  # type: ignore[index]
                                      {**older["conditions"][1], "status": "False"}]}
    assert check(base, missed)
    ready_message = {**older, "conditions": [{**base["conditions"][0], "message": "b"},  # type: ignore[index]
                                             older["conditions"][1]]}
    assert check(base, ready_message)
    assert check(base, {**older, "backupCount": 2})
    assert freshness.refresh_after(1) == 300 and freshness.refresh_after(120) == 600


def test_the_growing_age_in_restorable_messages_is_not_worth_a_write() -> None:
    tests = {"quarterly": test_restorable_status.status(TestResult.PASSED)}
    now = test_restorable_status.NOW
    first = restorable_status.assess_restorable(None, tests, rto=None, generation=1, now=now)
    aged = restorable_status.assess_restorable(first, tests, rto=None, generation=1,
                                               now=now + timedelta(minutes=1))
    newer = {"quarterly": test_restorable_status.status(TestResult.PASSED, backup_id="b2")}
    other = restorable_status.assess_restorable(first, newer, rto=None, generation=1, now=now)
    check = freshness.significant(300)
    dump = [s.model_dump(mode="json", exclude_none=True) for s in (first, aged, other)]
    assert not check(dump[0], dump[1])
    assert check(dump[0], dump[2])


class _ListingKube:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items, self.calls = items, 0

    def list(self, kind: Any, namespace: str) -> list[dict[str, Any]]:
        self.calls += 1
        if isinstance(self.items, Exception):
            raise self.items
        return self.items


def test_restore_tests_are_listed_once_per_namespace_and_interval() -> None:
    def rt(name: str, policy: str, result: str | None = None) -> dict[str, Any]:
        status = {"lastRun": {"result": result}} if result else {}
        return {"metadata": {"namespace": "ns", "name": name},
                "spec": {"source": {"policyRef": {"name": policy}}}, "status": status}

    fake = _ListingKube([rt("a", "pg", "Passed"), rt("b", "other"), rt("c", "pg")])
    clock = [0.0]
    tests = restorable.RestoreTests(fake, ttl=60, clock=lambda: clock[0])  # type: ignore[arg-type]
    found = tests.of_policy("ns", "pg")
    assert found is not None and sorted(found) == ["a", "c"]
    assert found["a"] is not None and found["a"].last_run is not None
    assert found["c"] is None
    assert tests.of_policy("ns", "other") is not None and fake.calls == 1
    clock[0] = 61.0
    fake.items = ApiError(503, "ServiceUnavailable", "down")  # type: ignore[assignment]
    assert tests.of_policy("ns", "pg") is None and fake.calls == 2
    assert tests.of_policy("ns", "pg") is None and fake.calls == 3  # a failure is not cached


# --- run-now ----------------------------------------------------------------------------------
def test_run_now_token_and_schedule() -> None:
    policy = _policy()
    assert runnow.pick_schedule(policy, "123") == "daily"
    assert runnow.pick_schedule(policy, "hourly:123") == "hourly"
    assert runnow.pick_schedule(policy, "2024-01-01T10:00") == "daily"
    body = {"metadata": {"annotations": {"dr.tonebridge.io/run-now": "a"}}}
    assert runnow.pending_token(body) == "a"
    handled = {"metadata": {"annotations": {"dr.tonebridge.io/run-now": "a",
                                            "dr.tonebridge.io/run-now-handled": "a"}}}
    assert runnow.pending_token(handled) is None
    assert runnow.pending_token({"metadata": {}}) is None


# --- reconcile decisions ----------------------------------------------------------------------
def _obj(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": kind, "metadata": {"name": name}}


def test_decide_applies_desired_and_deletes_stale() -> None:
    policy = _policy()
    desired = [_obj("CronJob", "p-daily"), _obj("CronJob", "p-hourly")]
    owned = [_obj("CronJob", "p-daily"), _obj("CronJob", "p-weekly")]
    decision = reconcile.decide(policy, desired, owned, [])
    assert decision.ready and decision.apply == desired
    assert [o["metadata"]["name"] for o in decision.delete] == ["p-weekly"]

    blocking = [secrets.SecretProblem(secrets.SecretUse("dsn", ("dsn",), "database DSN"))]
    decision = reconcile.decide(policy, desired, owned, blocking)
    assert not decision.ready and decision.reason == "SecretNotFound"
    assert decision.apply == [] and decision.delete == []
    assert 'Secret "dsn" (database DSN) not found' in decision.message

    monitoring = [secrets.SecretProblem(
        secrets.SecretUse("hook", ("url",), "webhook URL", blocking=False)
    )]
    decision = reconcile.decide(policy, desired, owned, monitoring)
    assert not decision.ready and decision.apply == desired and len(decision.delete) == 1

    key = [secrets.SecretProblem(secrets.SecretUse("dsn", ("dsn",), "database DSN"), ("dsn",))]
    decision = reconcile.decide(policy, desired, owned, key)
    assert not decision.ready and decision.reason == "SecretKeyNotFound"
    assert decision.apply == [] and decision.delete == []
    assert 'Secret "dsn" (database DSN) has no key "dsn"' in decision.message


def test_object_lock_not_enabled_is_ready_false_and_leaves_owned_objects() -> None:
    lock = {"url": "s3://locked-bucket/p", "objectLock": {"mode": "GOVERNANCE",
                                                           "retainFor": "30d"}}
    policy = _policy({"repository": lock})
    desired, owned = [_obj("CronJob", "p-daily")], [_obj("CronJob", "p-weekly")]
    assert reconcile.object_lock_problem(policy, True) is None
    assert reconcile.object_lock_problem(policy, None) is None  # cannot tell: no verdict
    assert reconcile.object_lock_problem(_policy(), False) is None  # no objectLock asked
    problem = reconcile.object_lock_problem(policy, False)
    assert problem is not None and "bucket locked-bucket does not have S3 Object Lock" in problem
    decision = reconcile.decide(policy, desired, owned, [], problem)
    assert not decision.ready and decision.reason == "ObjectLockNotEnabled"
    assert decision.apply == [] and decision.delete == [] and decision.message == problem
    assert reconcile.Reason.OBJECT_LOCK_NOT_ENABLED in reconcile.RECHECKED_REASONS
    # a missing Secret backup Jobs need is reported first
    blocking = [secrets.SecretProblem(secrets.SecretUse("dsn", ("dsn",), "database DSN"))]
    assert reconcile.decide(policy, desired, owned, blocking, problem).reason == "SecretNotFound"


def test_referenced_secrets() -> None:
    policy = _policy({
        "repository": {"url": "s3://bucket/p", "credentialsSecretRef": {"name": "w"},
                       "restoreCredentialsSecretRef": {"name": "r"}},
        "encryption": {"publicKeySecretRef": {"name": "gpg", "key": "pub"},
                       "privateKeySecretRef": {"name": "gpg-private", "key": "key"}},
        "notifications": {"webhookSecretRef": {"name": "dsn", "key": "hook"}},
    })
    uses = reconcile.referenced_secrets(policy)
    assert sorted({u.name for u in uses}) == ["dsn", "gpg", "r", "w"]  # private key: restores
    aws = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    assert [(u.name, u.keys, u.blocking) for u in uses] == [
        ("dsn", ("dsn",), True), ("w", aws, True), ("gpg", ("pub",), True),
        ("r", aws, False), ("dsn", ("hook",), False),
    ]


# --- catalog reads with explicit credentials --------------------------------------------------
class _Secrets:
    """Stands in for controller.core.kube.Kube where only Secrets are read."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)


def test_catalog_reader_reports_the_wal_archive_position(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    storage = open_storage((repo / "p").as_uri())  # the folder of policy "p"
    segment = "000000010000000000000003"
    storage.put_bytes(f"wal/0000000100000000/{segment}.{'ab' * 32}.zst", b"wal")
    storage.put_bytes(f"wal/0000000100000000/000000010000000000000002.{'cd' * 32}.zst", b"w")
    policy = _policy({
        "target": {"postgres": {"database": "db", "dsnSecretRef": {"name": "d", "key": "k"},
                                "walArchive": {"mode": "archive_command"}}},
        "repository": {"url": repo.as_uri()},
    })
    read = catalog.CatalogReader().read(policy, _Secrets({}))  # type: ignore[arg-type]
    assert read.summary.error is None and read.summary.backup_count == 0
    assert read.summary.newest_wal_segment == segment
    assert read.summary.newest_wal_time is not None


def test_invalid_body_is_one_readable_sentence() -> None:
    body = {"apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"target": {"postgres": {"database": "db",
                                             "dsnSecretRef": {"name": "d", "key": "k"}}},
                     "schedules": [{"name": "a", "cron": "0 1 * * *"},
                                   {"name": "a", "cron": "0 2 * * *"}],
                     "repository": {"url": "file:///var/tmp/x"}}}
    with pytest.raises(objects.InvalidSpec, match="schedule names must be unique"):
        objects.parse(BackupPolicy, body)
