"""The bucket target through the operator: a BackupPolicy like examples/07-uploads-backup
(run-now -> Job -> a deduplicated snapshot in the repository, status names it), then a
RestoreRequest with `target.bucket` puts the snapshot into an empty bucket, objects and
metadata exact. Sandbox control plane, the operator as a real process, moto S3."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.operator import (
    apply_docs,
    backups_list,
    condition_is,
    get_json,
    run_now,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

OBJECTS = {f"photos/{n:03d}.jpg": bytes([n]) * (1000 + n) for n in range(40)}
OBJECTS["docs/readme.txt"] = b"same bytes" * 10
OBJECTS["docs/copy.txt"] = b"same bytes" * 10  # deduplicated: stored once


def test_bucket_policy_snapshots_and_a_restore_request_puts_it_back(
    sandbox: Sandbox, namespace: str, moto_server: str, operator_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_fixtures.s3_env(monkeypatch, moto_server)  # for `backups list` here
    s3 = s3_fixtures.client(moto_server)
    source = s3_fixtures.new_bucket(moto_server)
    for key, data in OBJECTS.items():
        s3.put_object(Bucket=source, Key=key, Body=data, ContentType="image/jpeg",
                      Metadata={"owner": "user-7"})
    backups = s3_fixtures.new_bucket(moto_server)
    target = s3_fixtures.new_bucket(moto_server)
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    policy = {
        "apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "uploads"},
        "spec": {
            "target": {"bucket": {"url": f"s3://{source}", "endpoint": moto_server,
                                  "credentialsSecretRef": {"name": "uploads-reader"}}},
            "schedules": [{"name": "every-15-minutes", "cron": "*/15 * * * *"}],
            "repository": {"url": f"s3://{backups}/uploads", "endpoint": moto_server,
                           "credentialsSecretRef": {"name": "repo-writer"},
                           "restoreCredentialsSecretRef": {"name": "repo-reader"}},
        },
    }
    restore = {
        "apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "RestoreRequest",
        "metadata": {"name": "uploads-back"},
        "spec": {"source": {"policyRef": {"name": "uploads"}}, "latest": True,
                 "target": {"bucket": {"url": f"s3://{target}", "endpoint": moto_server,
                                       "credentialsSecretRef": {"name": "uploads-writer"}}}},
    }
    apply_docs(sandbox, namespace, secret_doc("uploads-reader", keys),
               secret_doc("uploads-writer", keys),
               *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"), policy)
    op = operator_factory(namespace, "--restore-service-account", "default")
    wait_for(lambda: condition_is(sandbox, namespace, "uploads", "Ready", "True"), 60,
             message=op.log_tail)
    run_now(sandbox, namespace, "uploads", "first")
    done = wait_for(lambda: condition_is(sandbox, namespace, "uploads", "LastBackupSucceeded",
                                         "True"), 120, message=op.log_tail)
    (listed,) = backups_list(f"s3://{backups}/uploads/uploads")  # <url>/<policy>
    assert listed["engine"] == "bucket" and listed["bucket_objects"] == len(OBJECTS)
    assert listed["deduplicated_size_bytes"] > 0  # the two equal documents
    assert done["status"]["runNow"]["backupId"] == listed["id"]

    apply_docs(sandbox, namespace, restore)
    finished = wait_for(lambda: (lambda s: s if s.get("phase") in ("Succeeded", "Failed")
                                 else None)(get_json(sandbox, namespace, "restorerequest",
                                                     "uploads-back").get("status") or {}),
                        120, message=op.log_tail)
    assert finished["phase"] == "Succeeded", finished.get("message")
    assert finished["restored"]["objectsRestored"] == len(OBJECTS)
    for key, data in OBJECTS.items():
        got = s3.get_object(Bucket=target, Key=key)
        assert got["Body"].read() == data, key
        assert got["ContentType"] == "image/jpeg" and got["Metadata"] == {"owner": "user-7"}
