"""Kubernetes targets in the operator's pure parts: the Secrets-need-encryption decision,
the object counts a backup result and the catalog put into status, and the restore
summary of a Kubernetes restore (counts, first failures)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.controller.backuppolicy import reconcile
from tonebridge_dr.status import backuppolicy as bp_status
from tonebridge_dr.status import restorerequest as rr_status
from tonebridge_dr.status.jobs import JobOutcome

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def _policy(kubernetes: dict[str, Any], encrypted: bool) -> BackupPolicy:
    spec: dict[str, Any] = {
        "target": {"kubernetes": kubernetes},
        "schedules": [{"name": "daily", "cron": "0 1 * * *"}],
        "repository": {"url": "file:///backups"},
    }
    if encrypted:
        spec["encryption"] = {"publicKeySecretRef": {"name": "gpg", "key": "public.asc"}}
    return BackupPolicy.from_body({
        "apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "config", "namespace": "ops", "uid": "u-1", "generation": 1},
        "spec": spec,
    })


def test_default_kinds_export_secrets_and_so_need_encryption() -> None:
    plain = _policy({"namespaces": ["app"]}, encrypted=False)
    problem = reconcile.secrets_encryption_problem(plain)
    assert problem is not None
    assert "spec.encryption" in problem and "target.kubernetes.kinds" in problem
    decision = reconcile.decide(plain, [{"kind": "CronJob", "metadata": {"name": "x"}}], [],
                                [], None, problem)
    assert (decision.ready, decision.reason, decision.apply) == (
        False, Reason.SECRETS_NEED_ENCRYPTION, [])
    assert reconcile.secrets_encryption_problem(
        _policy({"namespaces": ["app"]}, encrypted=True)) is None
    assert reconcile.secrets_encryption_problem(
        _policy({"namespaces": ["app"], "kinds": ["configmaps", "example.com/Widget"]},
                encrypted=False)) is None


def _outcome(state: str, result: dict[str, Any] | None, reason: str = "",
             message: str = "") -> JobOutcome:
    succeeded = state == "succeeded"
    return JobOutcome(job_name="j", state=state, schedule=None,  # type: ignore[arg-type]
                      reason=reason or "Succeeded", message=message,
                      result=result if succeeded else None, payload=result,
                      started_at=NOW, finished_at=NOW)


def test_backup_result_object_count_reaches_the_summary() -> None:
    result = {"id": "20261205T010000Z", "engine": "kubernetes", "method": "export",
              "finished_at": "2026-12-05T01:00:00Z", "size_bytes": 10,
              "kubernetes": {"object_count": 1000}}
    summary = bp_status.backup_summary(_outcome("succeeded", result))
    assert summary is not None and summary.objects == 1000
    assert summary.method.value == "export"


def test_a_kubernetes_restore_reports_counts_and_first_failures() -> None:
    result = {"backup_id": "20261205T010000Z", "engine": "kubernetes", "method": "export",
              "created": 7, "updated": 0, "recreated": 1, "unchanged": 0, "skipped": 2,
              "failed": 1, "failures": [{"kind": "Ingress", "namespace": "app", "name": "web",
                                         "error": "Invalid: spec.rules[0].host: bad"}]}
    target = rr_status.TargetInfo(kind=rr_status.TargetKind.KUBERNETES,
                                  description="the namespaces of the backup, mode replace")
    failed = rr_status.job_observed(
        None, _outcome("failed", result, "ObjectsNotRestored", "1 of 11 objects were not "
                       "restored"), target=target, generation=1, now=NOW)
    assert failed.phase is not None and failed.phase.value == "Failed"
    restored = failed.restored
    assert restored is not None
    assert (restored.objects_created, restored.objects_recreated, restored.objects_skipped,
            restored.objects_failed) == (7, 1, 2, 1)
    assert restored.failures == ["Ingress app/web: Invalid: spec.rules[0].host: bad"]
    assert "objects applied before the failure stay" in (failed.message or "")
    assert "status.restored.failures" in (failed.message or "")

    result.update(failed=0, failures=[])
    done = rr_status.job_observed(None, _outcome("succeeded", result), target=target,
                                  generation=1, now=NOW)
    assert done.restored is not None and done.restored.failures is None
    assert "objects: 7 created, 1 recreated, 2 skipped" in (done.message or "")
