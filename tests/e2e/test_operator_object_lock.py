"""`spec.repository.objectLock` against the sandbox's real API server, the operator as a real
process and moto S3: a bucket without Object Lock makes the policy Ready=False, reason
ObjectLockNotEnabled, and creates no CronJob; a bucket with Object Lock is Ready and its
backup CronJob carries the lock; enabling Object Lock later is noticed by the recheck."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.operator import (
    apply_docs,
    condition,
    condition_is,
    get_json,
    policy_doc,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

LOCK = {"mode": "GOVERNANCE", "retainFor": "30d"}


def _cronjobs(sandbox: Sandbox, namespace: str, policy: str) -> list[dict[str, Any]]:
    items = get_json(sandbox, namespace, "cronjobs")["items"]
    return [c for c in items
            if c["metadata"].get("labels", {}).get("dr.tonebridge.io/policy") == policy]


def test_object_lock_needs_a_bucket_with_object_lock(
    sandbox: Sandbox, namespace: str, moto_server: str, operator_factory: Any
) -> None:
    plain = s3_fixtures.new_bucket(moto_server)
    locked = s3_fixtures.new_bucket(moto_server, object_lock=True)

    def policy(name: str, bucket: str) -> dict[str, Any]:
        doc = policy_doc(name, repo_url=f"s3://{bucket}/repo", endpoint=moto_server)
        doc["spec"]["repository"]["objectLock"] = LOCK
        return doc

    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": "host=127.0.0.1 dbname=tonebridge_db"}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        policy("unlocked", plain), policy("locked", locked),
    )
    op = operator_factory(namespace)

    body = wait_for(
        lambda: condition_is(sandbox, namespace, "unlocked", "Ready", "False",
                             "ObjectLockNotEnabled"),
        60, message=lambda: op.log_tail(),
    )
    message = condition(body, "Ready")["message"]  # type: ignore[index]
    assert f"bucket {plain} does not have S3 Object Lock enabled" in message
    assert "remove objectLock" in message
    ready = wait_for(lambda: condition_is(sandbox, namespace, "locked", "Ready", "True"), 60,
                     message=lambda: op.log_tail())
    assert condition(ready, "Ready")["reason"] == "Reconciled"  # type: ignore[index]
    (cronjob,) = _cronjobs(sandbox, namespace, "locked")
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[contract.ENV_S3_OBJECT_LOCK_MODE] == "GOVERNANCE"
    assert env[contract.ENV_S3_OBJECT_LOCK_RETAIN] == "30d"
    assert _cronjobs(sandbox, namespace, "unlocked") == []  # nothing that would fail to write

    # Object Lock enabled on the bucket afterwards: the recheck makes the policy Ready.
    client = s3_fixtures.client(moto_server)
    client.put_bucket_versioning(Bucket=plain, VersioningConfiguration={"Status": "Enabled"})
    client.put_object_lock_configuration(
        Bucket=plain, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
    wait_for(lambda: condition_is(sandbox, namespace, "unlocked", "Ready", "True"), 60,
             message=lambda: op.log_tail())
    assert len(_cronjobs(sandbox, namespace, "unlocked")) == 1
