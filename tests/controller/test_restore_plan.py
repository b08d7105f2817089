"""`plan_restore` without a cluster: what a RestoreRequest needs and makes (source, the
Secrets and keys to check, the ServiceAccount, the claim, the Job and its name, the words
of its Events), and the requests it refuses, with `Reason` members for reasons."""

from __future__ import annotations

from typing import Any

import pytest

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy, RestoreRequest
from tonebridge_dr.builders import restore as builders
from tonebridge_dr.builders.settings import RunnerSettings
from tonebridge_dr.controller.core.secrets import REPOSITORY_KEYS, SecretUse
from tonebridge_dr.controller.restorerequest.plan import (
    ClaimPlan,
    Refusal,
    RestorePlan,
    plan_restore,
    target_info,
)

SETTINGS = RunnerSettings(restore_service_account="restorer")
API = "dr.tonebridge.io/v1alpha1"


def _policy(*, postgres: bool = True, encrypted: bool = False, reader: bool = True,
            private_key: bool = True) -> BackupPolicy:
    repository: dict[str, Any] = {"url": "s3://bucket/base",
                                  "credentialsSecretRef": {"name": "writer"}}
    if reader:
        repository["restoreCredentialsSecretRef"] = {"name": "reader"}
    target = (
        {"postgres": {"database": "db", "dsnSecretRef": {"name": "dsn", "key": "dsn"}}}
        if postgres else {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}}
    )
    methods = ("logical", "physical") if postgres else ("snapshot",)
    spec: dict[str, Any] = {
        "target": target,
        "schedules": [{"name": m, "cron": "0 2 * * *", "method": m} for m in methods],
        "repository": repository,
    }
    if encrypted:
        spec["encryption"] = {"publicKeySecretRef": {"name": "gpg-pub", "key": "pub.asc"}}
        if private_key:
            spec["encryption"]["privateKeySecretRef"] = {"name": "gpg-key", "key": "key.asc"}
    return BackupPolicy.from_body({
        "apiVersion": API, "kind": "BackupPolicy",
        "metadata": {"name": "pg", "namespace": "ns", "uid": "p-1", "generation": 1},
        "spec": spec,
    })


def _request(target: dict[str, Any], name: str = "rr", **spec: Any) -> RestoreRequest:
    body = {
        "apiVersion": API, "kind": "RestoreRequest",
        "metadata": {"name": name, "namespace": "ns", "uid": "r-1", "generation": 1},
        "spec": {"source": {"policyRef": {"name": "pg"}}, "latest": True, "target": target,
                 **spec},
    }
    return RestoreRequest.from_body(body)


DATABASE = {"database": {"dsnSecretRef": {"name": "target-dsn", "key": "dsn"}}}


def _plan(rr: RestoreRequest, policy: BackupPolicy | None) -> RestorePlan:
    plan = plan_restore(rr, policy, SETTINGS)
    assert isinstance(plan, RestorePlan), plan
    return plan


def test_a_logical_restore_through_a_policy() -> None:
    policy = _policy(encrypted=True)
    rr = _request(DATABASE)
    plan = _plan(rr, policy)
    assert plan.job == builders.build_restore_job(rr, policy, SETTINGS)
    assert plan.job_name == plan.job["metadata"]["name"] == "rr-restore"
    assert plan.service_account == "restorer"
    assert plan.claim is None
    assert plan.secrets == (
        SecretUse("target-dsn", ("dsn",), "target database DSN"),
        SecretUse("reader", REPOSITORY_KEYS, "repository read credentials"),
        SecretUse("gpg-key", ("key.asc",), "OpenPGP private key"),
    )
    assert all(use.blocking for use in plan.secrets)
    assert plan.source.repository_url == "s3://bucket/base/pg"
    assert plan.started == (
        'restore Job rr-restore started: the database of Secret "target-dsn" from '
        "s3://bucket/base/pg"
    )
    assert plan.write_credentials is None
    assert plan.target == target_info(rr, policy)
    assert (plan.target.kind, plan.target.repository_url) == ("database", "s3://bucket/base/pg")
    assert plan_restore(rr, policy, SETTINGS) == plan  # pure: same inputs, same plan


def test_without_read_credentials_the_restore_warns_it_uses_the_backup_role() -> None:
    plan = _plan(_request(DATABASE), _policy(reader=False))
    assert plan.source.uses_write_credentials
    assert plan.write_credentials is not None
    assert plan.write_credentials.startswith(
        'BackupPolicy "pg" has no repository.restoreCredentialsSecretRef'
    )
    assert SecretUse("writer", REPOSITORY_KEYS, "repository read credentials") in plan.secrets


def test_volume_targets_plan_their_claim() -> None:
    policy = _policy()
    existing = _plan(_request({"volume": {"claimName": "pg-data"}}, method="physical"), policy)
    assert existing.claim == ClaimPlan(name="pg-data", manifest=None)

    templated = _request({"volume": {"claimTemplate": {"size": "1Gi"}}}, name="fresh",
                         method="physical")
    made = _plan(templated, policy)
    assert made.claim is not None and made.claim.name == "fresh"
    assert made.claim.manifest == builders.build_restore_claim(templated, policy)
    assert made.target.kind == "volume"


def test_a_repository_given_directly_needs_no_policy() -> None:
    rr = RestoreRequest.from_body({
        "apiVersion": API, "kind": "RestoreRequest",
        "metadata": {"name": "direct", "namespace": "ns", "uid": "r-2"},
        "spec": {
            "source": {"repository": {"url": "s3://other/x",
                                      "credentialsSecretRef": {"name": "creds"}},
                       "policyName": "old-db"},
            "latest": True, "target": DATABASE,
        },
    })
    plan = _plan(rr, None)
    assert plan.source.repository_url == "s3://other/x/old-db"
    assert [use.name for use in plan.secrets] == ["target-dsn", "creds"]
    assert plan.write_credentials is None


@pytest.mark.parametrize(
    ("target", "policy", "reason", "words"),
    [
        (DATABASE, _policy(encrypted=True, private_key=False), Reason.MISSING_DECRYPTION_KEY,
         "are encrypted"),
        (DATABASE, _policy(postgres=False), Reason.INVALID_SPEC, "backs up redis"),
        ({"kubernetes": {}}, _policy(), Reason.INVALID_SPEC, "not Kubernetes"),
    ],
)
def test_requests_that_can_never_run_are_refused(
    target: dict[str, Any], policy: BackupPolicy, reason: Reason, words: str
) -> None:
    refusal = plan_restore(_request(target), policy, SETTINGS)
    assert isinstance(refusal, Refusal)
    assert type(refusal.reason) is Reason and refusal.reason == reason
    assert words in refusal.message
