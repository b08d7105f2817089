"""Policy lifecycle against the sandbox: update rewrites CronJobs (and only them), suspend,
delete (garbage collection; the repository is never touched), missing Secrets and what
only the operator can judge (Ready=False with a reason, recovering by itself)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    jobs_of,
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


def _cronjobs(sandbox: Sandbox, namespace: str) -> dict[str, dict[str, Any]]:
    items = get_json(sandbox, namespace, "cronjobs")["items"]
    return {c["metadata"]["name"]: c for c in items}


def test_update_suspend_and_delete(
    sandbox: Sandbox,
    namespace: str,
    pg: PgServer,
    s3_repo_url: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    _, dsn = sample_db(pg)
    secrets = [secret_doc("db-dsn", {"dsn": dsn}),
               *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}")]
    first = [{"name": "a", "cron": "0 1 * * *"}, {"name": "b", "cron": "0 2 * * *"}]
    apply_docs(sandbox, namespace, *secrets,
               policy_doc("p", repo_url=s3_repo_url, endpoint=moto_server, schedules=first))
    op = operator_factory(namespace)
    wait_for(lambda: condition_is(sandbox, namespace, "p", "Ready", "True"), 60,
             message=lambda: op.log_tail())
    assert sorted(_cronjobs(sandbox, namespace)) == ["p-a", "p-b"]
    uid_a = _cronjobs(sandbox, namespace)["p-a"]["metadata"]["uid"]

    run_now(sandbox, namespace, "p", "before-update")
    wait_for(lambda: condition_is(sandbox, namespace, "p", "LastBackupSucceeded", "True"), 120,
             message=lambda: op.log_tail())
    assert len(backups_list(f"{s3_repo_url}/p")) == 1

    # Update: a's cron changes (same object), b goes, c comes. Nothing else moves.
    second = [{"name": "a", "cron": "30 1 * * *"}, {"name": "c", "cron": "0 3 * * *"}]
    apply_docs(sandbox, namespace,
               policy_doc("p", repo_url=s3_repo_url, endpoint=moto_server, schedules=second))
    wait_for(lambda: sorted(_cronjobs(sandbox, namespace)) == ["p-a", "p-c"], 60,
             message=lambda: op.log_tail())
    cronjobs = _cronjobs(sandbox, namespace)
    assert cronjobs["p-a"]["spec"]["schedule"] == "30 1 * * *"
    assert cronjobs["p-a"]["metadata"]["uid"] == uid_a
    policy = wait_for(
        lambda: (p := get_policy(sandbox, namespace, "p"))["status"]["observedGeneration"] == 2
        and p, 60,
    )
    assert policy["status"]["schedules"] == "a,c"
    assert condition(policy, "LastBackupSucceeded")["status"] == "True"  # type: ignore[index]
    assert len(jobs_of(sandbox, namespace, "p")) == 1

    # Suspend: every CronJob suspended; Ready says so.
    sandbox.kubectl("patch", "-n", namespace, "backuppolicy/p", "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": True}}))
    wait_for(lambda: all(c["spec"]["suspend"] for c in _cronjobs(sandbox, namespace).values()),
             60, message=lambda: op.log_tail())
    policy = wait_for(
        lambda: (p := get_policy(sandbox, namespace, "p"))["status"]["observedGeneration"] == 3
        and p, 60,
    )
    assert "suspended" in condition(policy, "Ready")["message"]  # type: ignore[index]

    # Delete: owned objects are garbage-collected, the repository keeps its backups.
    sandbox.kubectl("delete", "-n", namespace, "backuppolicy/p", "--timeout=60s")
    wait_for(lambda: not _cronjobs(sandbox, namespace) and not jobs_of(sandbox, namespace, "p"),
             90, message=lambda: op.log_tail())
    assert len(backups_list(f"{s3_repo_url}/p")) == 1
    assert op.running
    wait_for(lambda: op.metric("tonebridge_dr_catalog_reads_total", namespace, "p") is None, 30)


class _HeldS3:
    """An S3 endpoint on 127.0.0.1 that holds every request until `release()`, then
    answers 503: a repository read that is still running when the test says so."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def _hold(self) -> None:
                held.arrived.set()
                held.released.wait(120)
                body = b"<Error><Code>SlowDown</Code><Message>held</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = _hold

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_s3() -> Iterator[_HeldS3]:
    endpoint = _HeldS3()
    yield endpoint
    endpoint.close()


def test_delete_during_a_repository_read_finishes_soon_after_the_read(
    sandbox: Sandbox, namespace: str, held_s3: _HeldS3, operator_factory: Any
) -> None:
    """kopf waits for a running timer before it drops the finalizer; by default it looks
    again only after 60 s, so a delete that met a monitor tick hung for a minute."""
    apply_docs(sandbox, namespace,
               secret_doc("db-dsn", {"dsn": "host=127.0.0.1 dbname=x"}),
               *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
               policy_doc("held", repo_url="s3://held/repo", endpoint=held_s3.url))
    op = operator_factory(namespace)
    assert held_s3.arrived.wait(60), op.log_tail()  # the monitor tick is in its read
    sandbox.kubectl("delete", "-n", namespace, "backuppolicy/held", "--wait=false")
    wait_for(lambda: get_policy(sandbox, namespace, "held")["metadata"].get("deletionTimestamp"),
             30)
    time.sleep(3)  # kopf has seen the deletion and found the timer still running
    assert _policy_names(sandbox, namespace) == ["held"]
    held_s3.release()
    wait_for(lambda: _policy_names(sandbox, namespace) == [], 30,
             message=lambda: f"the policy to go; operator log:\n{op.log_tail()}")
    assert op.running


def _policy_names(sandbox: Sandbox, namespace: str) -> list[str]:
    return [p["metadata"]["name"] for p in get_json(sandbox, namespace, "backuppolicies")["items"]]


def test_missing_secret_is_reported_and_recovers(
    sandbox: Sandbox,
    namespace: str,
    s3_repo_url: str,
    moto_server: str,
    operator_factory: Any,
) -> None:
    dsn_value = f"host=127.0.0.1 dbname=x password=pw-{uuid.uuid4().hex}"
    apply_docs(sandbox, namespace,
               *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
               policy_doc("m", repo_url=s3_repo_url, endpoint=moto_server))
    op = operator_factory(namespace)
    policy = wait_for(
        lambda: condition_is(sandbox, namespace, "m", "Ready", "False", "SecretNotFound"), 60,
        message=lambda: op.log_tail(),
    )
    message = condition(policy, "Ready")["message"]  # type: ignore[index]
    assert 'Secret "db-dsn" (database DSN) not found' in message
    assert _cronjobs(sandbox, namespace) == {}

    # run-now cannot run without the DSN: refused, recorded as handled, no Job.
    run_now(sandbox, namespace, "m", "too-early")
    refused = wait_for(lambda: [e for e in events_for(sandbox, namespace, "m")
                                if e["reason"] == "RunNowRefused"], 30)
    assert "db-dsn" in refused[0]["message"]
    assert jobs_of(sandbox, namespace, "m") == []
    run = get_policy(sandbox, namespace, "m")["status"]["runNow"]  # a waiter learns it too
    assert (run["token"], run["phase"]) == ("too-early", "Failed") and "db-dsn" in run["message"]
    start = op.metric("tonebridge_dr_catalog_reads_total", namespace, "m") or 0.0
    wait_for(lambda: (op.metric("tonebridge_dr_catalog_reads_total", namespace, "m") or 0)
             >= start + 3, 30)
    warnings = [e for e in events_for(sandbox, namespace, "m") if e["reason"] == "SecretNotFound"]
    assert len(warnings) == 1  # re-checked every tick, reported once

    # The Secret appears: the periodic re-check reconciles without any spec change.
    apply_docs(sandbox, namespace, secret_doc("db-dsn", {"dsn": dsn_value}))
    policy = wait_for(lambda: condition_is(sandbox, namespace, "m", "Ready", "True"), 60,
                      message=lambda: op.log_tail())
    assert sorted(_cronjobs(sandbox, namespace)) == ["m-nightly"]
    assert jobs_of(sandbox, namespace, "m") == []
    for text in (op.log(), json.dumps(policy), json.dumps(events_for(sandbox, namespace, "m"))):
        assert dsn_value not in text

