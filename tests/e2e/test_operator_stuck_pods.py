"""A backup Job whose pod cannot start is reported on the policy within a monitoring round
(here 1 s), not after the Job's deadline: the Secret lost the key its env refers to, the
sandbox's node agent answers like the kubelet (CreateContainerConfigError)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.operator import (
    apply_docs,
    condition,
    condition_is,
    events_for,
    get_json,
    policy_doc,
    secret_doc,
    wait_for,
)
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)


def test_a_pod_that_cannot_start_is_reported_within_a_round(
    sandbox: Sandbox, namespace: str, tmp_path: Any, operator_factory: Any
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    apply_docs(sandbox, namespace,
               secret_doc("db-dsn", {"dsn": "host=127.0.0.1 dbname=x"}),
               policy_doc("pg", repo_url=repo.as_uri()))
    op = operator_factory(namespace, interval=1)
    wait_for(lambda: condition_is(sandbox, namespace, "pg", "Ready", "True"), 60,
             message=op.log_tail)
    # The Secret is rewritten with the wrong key (url instead of dsn), then the schedule
    # fires (a Job from the CronJob's template, as the CronJob controller makes it).
    sandbox.kubectl("delete", "secret", "-n", namespace, "db-dsn")
    apply_docs(sandbox, namespace, secret_doc("db-dsn", {"url": "host=127.0.0.1 dbname=x"}))
    sandbox.kubectl("create", "job", "-n", namespace, "--from=cronjob/pg-nightly", "pg-manual")
    policy = wait_for(lambda: condition_is(sandbox, namespace, "pg", "LastBackupSucceeded",
                                           "False", "PodCannotStart"), 60, message=op.log_tail)
    message = condition(policy, "LastBackupSucceeded")["message"]  # type: ignore[index]
    assert message.startswith("the backup Job pg-manual cannot start its pod pg-manual-")
    assert "CreateContainerConfigError" in message and "dsn" in message
    events = [e for e in events_for(sandbox, namespace, "pg") if e["reason"] == "PodCannotStart"]
    assert len(events) == 1
    job = get_json(sandbox, namespace, "job", "pg-manual")
    assert not (job.get("status") or {}).get("conditions")  # still running: hours to go
