"""RestoreRequest with a Redis target, end to end (issue 7): the operator as a real process,
the sandbox's Job controller, restore Jobs running the real runner (with its scratch
`redis-server`), a real password-protected redis-server and moto S3 as the repository.

The backup is taken with the runner CLI into the folder of the BackupPolicy that would
have written it (`<repository url>/<policy>`), exactly where restore Jobs look. The
target is written by an ACL user with the rights examples/03-restore documents.

- the server lost everything (FLUSHALL, FUNCTION FLUSH): a request through the policy
  puts back every key, value and absolute expiry, and the function library;
- keys changed, deleted and added since: a second request without overwrite (from the
  bucket alone) restores the deleted keys only and leaves every live key as it is;
- `overwrite: true` with a `pattern` replaces the matching keys and no other;
- the Redis passwords appear in no operator log, Event, status or pod spec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.fixtures.operator import (
    OperatorProcess,
    apply_docs,
    get_json,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tests.fixtures.redis import (
    POPULATED_KEYS,
    RedisFactory,
    RedisServer,
    Snapshot,
    populate,
    snapshot,
)
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(600)

POLICY = "cache"
RESTORE_SA = "tonebridge-dr-restore"
RESTORE_USER = "restore"
TIMEOUT = 240.0
ALL_KEYS = sum(POPULATED_KEYS.values())


def backup(server: RedisServer, repo: str) -> dict[str, Any]:
    """`tonebridge-dr backup redis` as a backup Job runs it: the password from the env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "TONEBRIDGE_DR_"))}
    env["REDIS_PASSWORD"] = server.password or ""
    proc = subprocess.run(
        [sys.executable, "-m", "tonebridge_dr.cli", "backup", "redis", "--url", server.url(),
         "--repo", repo, "--json"],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def restore_user(server: RedisServer, password: str) -> None:
    """The restore role of examples/03-restore/secrets.yaml: nothing but what a restore uses."""
    client = server.client()
    try:
        client.acl_setuser(
            RESTORE_USER, enabled=True, reset=True, passwords=[f"+{password}"], keys=["*"],
            commands=["+ping", "+select", "+restore", "+function|restore"],
        )
    finally:
        client.close()


def policy_doc(repo_url: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "dr.tonebridge.io/v1alpha1",
        "kind": "BackupPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "target": {"redis": {"urlSecretRef": {"name": "redis-backup", "key": "url"}}},
            "schedules": [{"name": "hourly", "cron": "@hourly"}],
            "repository": {
                "url": repo_url,
                "endpoint": endpoint,
                "region": "us-east-1",
                "credentialsSecretRef": {"name": "repo-writer"},
                "restoreCredentialsSecretRef": {"name": "repo-reader"},
            },
        },
    }


def request_doc(
    name: str, source: dict[str, Any], redis: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    target = {"urlSecretRef": {"name": "redis-restore", "key": "url"}, **(redis or {})}
    return {
        "apiVersion": "dr.tonebridge.io/v1alpha1",
        "kind": "RestoreRequest",
        "metadata": {"name": name},
        "spec": {"source": source, "target": {"redis": target}, **spec},
    }


def finished(sandbox: Sandbox, namespace: str, name: str, op: OperatorProcess) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = get_json(sandbox, namespace, "restorerequest", name)
        phase = (body.get("status") or {}).get("phase")
        return body if phase in ("Succeeded", "Failed") else None

    body = wait_for(done, TIMEOUT, message=lambda: f"RestoreRequest {name}; {op.log_tail()}")
    assert body["status"]["phase"] == "Succeeded", (body["status"], op.log_tail())
    return body


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


def events(sandbox: Sandbox, namespace: str, name: str) -> list[dict[str, Any]]:
    items = get_json(sandbox, namespace, "events")["items"]
    return [e for e in items if e["involvedObject"].get("kind") == "RestoreRequest"
            and e["involvedObject"].get("name") == name]


def merged(base: Snapshot, live: Snapshot) -> Snapshot:
    """`base` with every key of `live` winning: what a restore in missing mode leaves."""
    out: Snapshot = {}
    for db in sorted(set(base) | set(live)):
        out[db] = {**base.get(db, {}), **live.get(db, {})}
    return out


def test_redis_restore_requests_put_back_missing_keys_and_leave_live_ones(
    sandbox: Sandbox,
    namespace: str,
    redis_factory: RedisFactory,
    s3_repo_url: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    admin_password = f"Admin-{uuid.uuid4().hex}"
    restore_password = f"Restore-{uuid.uuid4().hex}"
    server = redis_factory.start(password=admin_password)
    populate(server)
    restore_user(server, restore_password)
    taken = backup(server, f"{s3_repo_url}/{POLICY}")
    backup_id = taken["id"]
    expected = snapshot(server)
    assert sum(len(keys) for keys in expected.values()) == ALL_KEYS

    # The server loses everything, functions included.
    admin = server.client()
    try:
        admin.flushall()
        admin.function_flush()
        assert admin.dbsize() == 0 and admin.function_list() == []
    finally:
        admin.close()

    restore_url = f"redis://{RESTORE_USER}:{restore_password}@{server.host}:{server.port}"
    writer_secret, reader_secret = f"writer-{uuid.uuid4().hex}", f"reader-{uuid.uuid4().hex}"
    sandbox.kube().create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                          {"metadata": {"name": RESTORE_SA}})
    apply_docs(
        sandbox, namespace,
        secret_doc("redis-backup", {"url": f"redis://:{admin_password}@{server.host}:"
                                           f"{server.port}"}),
        secret_doc("redis-restore", {"url": restore_url}),
        *s3_secrets(writer_secret, reader_secret),
        policy_doc(s3_repo_url, moto_server),
    )
    op = operator_factory(namespace)

    # 1. Through the policy, into the emptied server: every key, value, TTL and function.
    apply_docs(sandbox, namespace, request_doc(
        "restore-cache", {"policyRef": {"name": POLICY}}, latest=True, method="snapshot",
    ))
    body = finished(sandbox, namespace, "restore-cache", op)
    waited = sandbox.kubectl("wait", "--for=condition=Complete", "rr/restore-cache", "-n",
                             namespace, "--timeout=60s", timeout=90)
    assert "condition met" in waited.stdout
    assert snapshot(server) == expected
    admin = server.client()
    try:
        assert len(admin.function_list()) == 1
        assert admin.fcall("tb_echo", 0, "hi") == b"hi"  # the library of populate()
    finally:
        admin.close()
    status = body["status"]
    assert status["restored"] == {"backupId": backup_id, "method": "snapshot",
                                  "keysRestored": ALL_KEYS, "keysSkipped": 0}
    assert status["source"] == POLICY
    assert status["message"] == (
        f'Restored backup {backup_id} into the Redis of Secret "redis-restore" '
        f"({ALL_KEYS} keys restored)."
    )
    assert condition(body, "Failed")["status"] == "False"
    job = get_json(sandbox, namespace, "job", status["jobName"])
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["restore", "redis", "--backup", "latest", "--mode", "missing",
                                 "--json"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TONEBRIDGE_DR_REDIS_TARGET_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-restore", "key": "url"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "repo-reader"
    assert env["TONEBRIDGE_DR_REPO"]["value"] == f"{s3_repo_url}/{POLICY}"
    reasons = {e["reason"] for e in events(sandbox, namespace, "restore-cache")}
    assert {"RestoreStarted", "RestoreSucceeded"} <= reasons
    assert "WriteCredentials" not in reasons

    # 2. Life goes on: keys change, expire differently, disappear, appear. A request without
    #    overwrite (from the bucket alone) brings back the deleted keys and nothing else.
    admin = server.client()
    try:
        admin.set("str", "live value")
        admin.persist("expiring:ex")
        admin.hset("hash:small", "c", "3")
        admin.delete("int", "list:small")
        admin.set("new:key", "written after the backup", ex=9000)
    finally:
        admin.close()
    db1 = server.client(1)
    try:
        db1.delete("db1:key")
    finally:
        db1.close()
    live = snapshot(server)
    apply_docs(sandbox, namespace, request_doc(
        "restore-missing",
        {"repository": {"url": s3_repo_url, "endpoint": moto_server, "region": "us-east-1",
                        "credentialsSecretRef": {"name": "repo-reader"}},
         "policyName": POLICY},
        backupId=backup_id,
    ))
    body = finished(sandbox, namespace, "restore-missing", op)
    assert snapshot(server) == merged(expected, live)
    check = server.client()
    try:
        assert check.get("str") == b"live value"
        assert check.ttl("expiring:ex") == -1
        assert check.hget("hash:small", "c") == b"3"
        assert check.get("int") == b"12345"
        assert check.lrange("list:small", 0, -1) == [b"a", b"b", b"c"]
        assert check.get("new:key") == b"written after the backup"
    finally:
        check.close()
    assert body["status"]["restored"]["keysRestored"] == 3
    assert body["status"]["restored"]["keysSkipped"] == ALL_KEYS - 3
    assert f"{ALL_KEYS - 3} keys it already had left as they were" in body["status"]["message"]

    # 3. overwrite with a pattern: the matching keys get the backup's values back (the TTL of
    #    expiring:ex included), every other live change stays.
    apply_docs(sandbox, namespace, request_doc(
        "restore-expiring", {"policyRef": {"name": POLICY}}, latest=True, overwrite=True,
        redis={"pattern": "expiring:*"},
    ))
    body = finished(sandbox, namespace, "restore-expiring", op)
    after = snapshot(server)
    assert after[0][b"expiring:ex"] == expected[0][b"expiring:ex"]
    assert after[0][b"str"] == live[0][b"str"]
    assert after[0][b"hash:small"] == live[0][b"hash:small"]
    assert body["status"]["restored"]["keysRestored"] == 3
    assert body["status"]["restored"]["keysSkipped"] == 0
    assert body["status"]["message"].startswith(
        f'Restored backup {backup_id} into keys matching "expiring:*" in the Redis of Secret '
        '"redis-restore"'
    )
    job = get_json(sandbox, namespace, "job", body["status"]["jobName"])
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--mode") + 1] == "replace"

    # The passwords are nowhere: operator log, Events, statuses, pod specs.
    texts = [op.log()]
    for name in ("restore-cache", "restore-missing", "restore-expiring"):
        rr = get_json(sandbox, namespace, "restorerequest", name)
        texts += [json.dumps(rr), json.dumps(events(sandbox, namespace, name))]
        pods = get_json(sandbox, namespace, "pods", "-l",
                        f"job-name={rr['status']['jobName']}")["items"]
        texts.append(json.dumps([p["spec"] for p in pods]))
    for secret in (admin_password, restore_password, reader_secret, restore_url):
        for text in texts:
            assert secret not in text
