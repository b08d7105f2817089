"""Redis BackupPolicies end to end (issue 7): sandbox control plane (real Job / CronJob
controllers, node agent running the runner), real redis-server with a password, the
operator as a real process, moto S3 as the repository.

- run-now -> Job -> `backup redis` over the replication protocol -> backup in the
  repository -> status names the same backup;
- AOF disabled -> AOFEnabled=False with the runner's warning and one Warning Event; AOF
  switched on and backed up again -> AOFEnabled=True and a Normal Event; a server with
  AOF from the start never gets the warning;
- the Redis passwords appear in no operator log, Event or status.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.fixtures.operator import (
    apply_docs,
    backups_list,
    condition,
    condition_is,
    events_for,
    get_json,
    get_policy,
    job_finished,
    jobs_of,
    run_now,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tests.fixtures.redis import POPULATED_KEYS, RedisFactory, RedisServer, populate
from tonebridge_dr.runner.repository.catalog import Repository
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)


def _redis_url(server: RedisServer, password: str) -> str:
    return f"redis://:{password}@{server.host}:{server.port}"


def redis_policy_doc(name: str, *, secret: str, repo_url: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "dr.tonebridge.io/v1alpha1",
        "kind": "BackupPolicy",
        "metadata": {"name": name},
        "spec": {
            "target": {"redis": {"urlSecretRef": {"name": secret, "key": "url"}}},
            "schedules": [{"name": "hourly", "cron": "@hourly"}],
            "repository": {
                "url": repo_url,
                "endpoint": endpoint,
                "credentialsSecretRef": {"name": "repo-writer"},
                "restoreCredentialsSecretRef": {"name": "repo-reader"},
            },
            "objectives": {"rpo": "1h"},
        },
    }


def _events(sandbox: Sandbox, namespace: str, policy: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in events_for(sandbox, namespace, policy) if e["reason"] == reason]


def test_redis_policy_backs_up_and_reports_aof(
    sandbox: Sandbox,
    namespace: str,
    redis_factory: RedisFactory,
    s3_repo_url: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    cache_password = f"Cache-{uuid.uuid4().hex}"
    sessions_password = f"Sessions-{uuid.uuid4().hex}"
    cache = redis_factory.start(password=cache_password, appendonly=False)
    sessions = redis_factory.start(password=sessions_password, appendonly=True)
    populate(cache)
    client = sessions.client()
    try:
        client.set("session:1", "alice")
    finally:
        client.close()
    cache_repo, sessions_repo = f"{s3_repo_url}/cache", f"{s3_repo_url}/sessions"
    writer_secret, reader_secret = f"writer-{uuid.uuid4().hex}", f"reader-{uuid.uuid4().hex}"
    apply_docs(
        sandbox, namespace,
        secret_doc("redis-cache", {"url": _redis_url(cache, cache_password)}),
        secret_doc("redis-sessions", {"url": _redis_url(sessions, sessions_password)}),
        *s3_secrets(writer_secret, reader_secret),
        redis_policy_doc("cache", secret="redis-cache", repo_url=cache_repo,
                         endpoint=moto_server),
        redis_policy_doc("sessions", secret="redis-sessions", repo_url=sessions_repo,
                         endpoint=moto_server),
    )
    op = operator_factory(namespace)

    # Reconciled: the CronJob runs `backup redis`, the URL comes from the Secret by reference.
    for name in ("cache", "sessions"):
        def ready(name: str = name) -> dict[str, Any] | None:
            return condition_is(sandbox, namespace, name, "Ready", "True")

        policy = wait_for(ready, 60, message=lambda: op.log_tail())
        assert policy["status"]["target"] == "redis"
    cronjob = get_json(sandbox, namespace, "cronjob", "cache-hourly")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["backup", "redis", "--compression", "zstd",
                                 "--schedule", "hourly", "--json"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TONEBRIDGE_DR_REDIS_URL"] == {
        "name": "TONEBRIDGE_DR_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis-cache", "key": "url"}},
    }
    assert cache_password not in json.dumps(cronjob)

    # run-now: the Job runs the runner through the node agent; the backup is in the catalog.
    run_now(sandbox, namespace, "cache", "first")
    run_now(sandbox, namespace, "sessions", "first")
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "cache", "LastBackupSucceeded", "True"),
        120, message=lambda: op.log_tail(),
    )
    (job,) = jobs_of(sandbox, namespace, "cache")
    assert job_finished(job) == "Complete"
    (listed,) = backups_list(f"{cache_repo}/cache")
    assert (listed["engine"], listed["method"]) == ("redis", "rdb")
    assert policy["status"]["lastBackup"]["id"] == listed["id"]
    assert policy["status"]["lastBackup"]["method"] == "snapshot"
    facts = Repository.open(f"{cache_repo}/cache", create=False).get(listed["id"]).extra["redis"]
    assert facts["appendonly"] == "no"
    assert facts["keys"] == sum(POPULATED_KEYS.values())

    # AOF disabled: a condition with the runner's warning, and one Warning Event.
    aof = condition(policy, "AOFEnabled")
    assert aof is not None, op.log_tail()
    assert (aof["status"], aof["reason"]) == ("False", "AppendOnlyDisabled")
    assert aof["message"].startswith(
        f"AOF is disabled on Redis at 127.0.0.1:{cache.port} (appendonly no): writes after "
        "the last snapshot are lost when it crashes; set appendonly yes"
    )
    assert aof["message"].endswith(f"(seen by backup {listed['id']})")
    warned = wait_for(lambda: _events(sandbox, namespace, "cache", "AppendOnlyDisabled"), 30)
    assert len(warned) == 1
    assert warned[0]["type"] == "Warning"
    assert warned[0]["message"] == aof["message"]
    assert _events(sandbox, namespace, "cache", "BackupSucceeded")

    # The AOF server: backed up, AOFEnabled=True, never a warning.
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "sessions", "LastBackupSucceeded", "True"),
        120, message=lambda: op.log_tail(),
    )
    (durable,) = backups_list(f"{sessions_repo}/sessions")
    assert durable["engine"] == "redis"
    assert policy["status"]["lastBackup"]["id"] == durable["id"]
    aof = condition(policy, "AOFEnabled")
    assert aof is not None
    assert (aof["status"], aof["reason"]) == ("True", "AppendOnlyEnabled")
    assert "appendonly yes" in aof["message"] and "disabled" not in aof["message"]
    # Recorded (every Event of the Job is out by then), and no AOF Event among them.
    wait_for(lambda: jobs_of(sandbox, namespace, "sessions")[0]["metadata"]
             .get("annotations", {}).get("dr.tonebridge.io/recorded") == "succeeded", 30)
    reasons = [e["reason"] for e in events_for(sandbox, namespace, "sessions")]
    assert "BackupSucceeded" in reasons
    assert "AppendOnlyDisabled" not in reasons and "AppendOnlyEnabled" not in reasons

    # AOF switched on and backed up again: the condition clears, a Normal Event says so.
    client = cache.client()
    try:
        client.config_set("appendonly", "yes")
    finally:
        client.close()
    run_now(sandbox, namespace, "cache", "second")
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "cache", "AOFEnabled", "True",
                             "AppendOnlyEnabled"),
        120, message=lambda: op.log_tail(),
    )
    newest = backups_list(f"{cache_repo}/cache")[-1]["id"]
    assert newest != listed["id"]
    assert policy["status"]["lastBackup"]["id"] == newest
    assert condition(policy, "AOFEnabled")["message"].endswith(  # type: ignore[index]
        f"(seen by backup {newest})"
    )
    enabled = wait_for(lambda: _events(sandbox, namespace, "cache", "AppendOnlyEnabled"), 30)
    assert enabled[0]["type"] == "Normal"
    assert len(_events(sandbox, namespace, "cache", "AppendOnlyDisabled")) == 1

    # The passwords and keys are nowhere: operator log, Events, status.
    texts = [op.log()]
    for name in ("cache", "sessions"):
        texts += [json.dumps(events_for(sandbox, namespace, name)),
                  json.dumps(get_policy(sandbox, namespace, name))]
    for secret in (cache_password, sessions_password, writer_secret, reader_secret):
        for text in texts:
            assert secret not in text
