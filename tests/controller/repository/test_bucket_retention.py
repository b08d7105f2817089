"""The operator's retention run of a bucket policy: snapshots pruned by the policy's rules,
then the content no kept snapshot references garbage-collected (real snapshots on moto)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.controller.test_operator_units import _policy, _Secrets
from tests.fixtures import s3 as s3_fixtures
from tests.runner.bucket import harness
from tonebridge_dr.controller.core import maintenance
from tonebridge_dr.runner.engines.bucket import content, snapshot


def test_the_retention_run_of_a_bucket_policy_prunes_and_collects_garbage(
    moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_fixtures.s3_env(monkeypatch, moto_server)
    client = s3_fixtures.client(moto_server)
    src = harness.new_bucket(moto_server)
    repo_bucket = harness.new_bucket(moto_server)
    first = {f"k{n}": (harness.body(n, 800), "text/plain", {}) for n in range(6)}
    harness.fill(client, src, first)
    repo, _ = harness.counting_repo(f"s3://{repo_bucket}/repo/p")  # the folder of policy "p"
    old = snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    client.delete_object(Bucket=src, Key="k0")
    client.put_object(Bucket=src, Key="k1", Body=b"changed")
    new = snapshot.snapshot(harness.source(f"s3://{src}"), repo)
    policy = _policy({
        "target": {"bucket": {"url": f"s3://{src}"}},
        "schedules": [{"name": "often", "cron": "*/15 * * * *", "method": "sync"}],
        "retention": {"keepLast": 1},
        "repository": {"url": f"s3://{repo_bucket}/repo", "endpoint": moto_server,
                       "credentialsSecretRef": {"name": "writer"}},
    })
    secrets: Any = _Secrets({"writer": {"AWS_ACCESS_KEY_ID": "testing",
                                        "AWS_SECRET_ACCESS_KEY": "testing"}})

    outcome = maintenance.apply_retention(
        policy, secrets, trigger=maintenance.TRIGGER_BACKUP,
        now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    assert outcome.error is None
    assert outcome.deleted == (old["id"],)
    assert any("Deleted 2 unreferenced content object(s)" in s for s in outcome.extra)
    left = harness.stored_contents(client, repo_bucket, "repo/p")
    kept = {harness.address(d) for k, (d, _, _) in first.items() if k not in ("k0", "k1")}
    kept.add(harness.address(b"changed"))
    assert set(left) == {content.key_of(a) for a in kept}
    assert [m.id for m in repo.list_backups()] == [new["id"]]
