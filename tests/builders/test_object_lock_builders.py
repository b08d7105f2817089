"""`spec.repository.objectLock` reaches every pod that writes to the repository (backup
CronJobs, run-now Jobs, the WAL streamer, restore tests, which store a report) and no pod
that only reads (restore Jobs); `fromRetention` writes the contract's initial lock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import test_builders as bp
from tests.builders import test_restore_builders as rr
from tests.builders import test_restoretest_builders as rt
from tonebridge_dr.api import formats
from tonebridge_dr.api import runner_contract as contract
from tonebridge_dr.builders import backup, pods, restore
from tonebridge_dr.builders import restoretest as restoretest_builders

LOCK_ENV = (contract.ENV_S3_OBJECT_LOCK_MODE, contract.ENV_S3_OBJECT_LOCK_RETAIN)


def _repository(retain_for: str, mode: str = "COMPLIANCE") -> dict[str, Any]:
    repository = dict(bp.policy_body("01-postgres-backup")["spec"]["repository"])
    repository["objectLock"] = {"mode": mode, "retainFor": retain_for}
    return repository


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value") for entry in container["env"]}


def _writers(retain_for: str, mode: str = "COMPLIANCE") -> list[dict[str, Any]]:
    """The containers of every object a policy with this lock creates."""
    policy = bp.load_policy("01-postgres-backup", repository=_repository(retain_for, mode))
    objects = [*backup.desired_objects(policy, bp.SETTINGS),
               *backup.build_run_now_jobs(policy, bp.SETTINGS, bp.RUN_NOW_TOKEN)]
    kinds = {obj["kind"] for obj in objects}
    assert kinds == {"CronJob", "Job", "Deployment"}  # backups, run-now, the WAL streamer
    return [c for obj in objects for spec in bp.pod_specs(obj) for c in spec["containers"]]


@pytest.mark.parametrize(("retain_for", "written"), [
    ("30d", "30d"),
    ("2555d", "2555d"),
    ("fromRetention", formats.format_duration(contract.FROM_RETENTION_INITIAL_LOCK)),
])
def test_every_writing_pod_gets_mode_and_duration(retain_for: str, written: str) -> None:
    containers = _writers(retain_for)
    assert containers
    for container in containers:
        env = _env(container)
        assert env[contract.ENV_S3_OBJECT_LOCK_MODE] == "COMPLIANCE"
        if container["name"] == "wal-stream" and retain_for == "fromRetention":
            # Streamed WAL: as long as the longest rule of the physical schedule (daily: 7).
            assert env[contract.ENV_S3_OBJECT_LOCK_RETAIN] == "7d"
            assert [e["name"] for e in container["env"]].count(
                contract.ENV_S3_OBJECT_LOCK_RETAIN) == 1
        else:
            assert env[contract.ENV_S3_OBJECT_LOCK_RETAIN] == written


def test_wal_lock_period_is_the_longest_physical_rule() -> None:
    def period(**spec: Any) -> str:
        policy = bp.load_policy("01-postgres-backup",
                                repository=_repository("fromRetention"), **spec)
        return formats.format_duration(backup.wal_lock_period(policy))

    assert period() == "7d"  # daily-physical: daily 7 (the logical yearlies need no WAL)
    schedules = bp.policy_body("01-postgres-backup")["spec"]["schedules"]
    schedules[2]["retention"] = {"daily": 7, "monthly": 2, "minAge": "90d"}
    assert period(schedules=schedules) == "90d"
    schedules[2]["retention"] = {"keepLast": 3}
    assert period(schedules=schedules) == formats.format_duration(
        contract.FROM_RETENTION_INITIAL_LOCK)


def test_without_object_lock_no_pod_gets_the_lock_env() -> None:
    policy = bp.load_policy("01-postgres-backup")
    for obj in backup.desired_objects(policy, bp.SETTINGS):
        for spec in bp.pod_specs(obj):
            for container in spec["containers"]:
                assert not set(LOCK_ENV) & set(_env(container))
    repository = rt.policy().spec.repository
    assert pods.object_lock_env(repository) == []


def test_restore_jobs_read_only_and_get_no_lock_but_restore_tests_do() -> None:
    locked = {"repository": _repository("30d", "GOVERNANCE")}
    request = rr.request("restorerequest-pitr.yaml")
    job = restore.build_restore_job(request, rr.policy(**locked), rr.SETTINGS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert not set(LOCK_ENV) & set(_env(container))
    test = rt.restore_test()
    job = restoretest_builders.build_run_now_job(test, rt.policy(**locked), rt.SETTINGS, rt.TOKEN)
    env = _env(rt.container(job))
    assert env[contract.ENV_S3_OBJECT_LOCK_MODE] == "GOVERNANCE"
    assert env[contract.ENV_S3_OBJECT_LOCK_RETAIN] == "30d"


def test_the_env_names_are_the_runners() -> None:
    from tonebridge_dr.runner.storage import s3

    assert (s3.LOCK_MODE_ENV, s3.LOCK_RETAIN_ENV) == LOCK_ENV
