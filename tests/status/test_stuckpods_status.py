"""Backup pods that cannot start (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tonebridge_dr.status import conditions
from tonebridge_dr.status.stuckpods import apply_stuck_pods, stuck_pods

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def pod(name: str, reason: str, message: str = "", init: bool = False) -> dict[str, Any]:
    statuses = [{"name": "c", "state": {"waiting": {"reason": reason, "message": message}}}]
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"metadata": {"name": name}, "status": {key: statuses}}


def test_only_reasons_a_pod_does_not_get_past_by_itself() -> None:
    pods = [pod("a", "ContainerCreating"), pod("b", "PodInitializing"),
            pod("c", "CreateContainerConfigError", 'couldn\'t find key dsn in Secret ns/db'),
            pod("d", "ImagePullBackOff", init=True)]
    found = stuck_pods("job-1", pods)
    assert [(s.pod, s.reason) for s in found] == [("c", "CreateContainerConfigError"),
                                                 ("d", "ImagePullBackOff")]
    assert found[0].sentence() == ("the backup Job job-1 cannot start its pod c: "
                                   "CreateContainerConfigError: couldn't find key dsn in "
                                   "Secret ns/db")


def test_a_stuck_pod_fails_last_backup_succeeded_and_nothing_says_nothing() -> None:
    assert apply_stuck_pods(None, [], generation=1, now=NOW) is None
    stuck = stuck_pods("job-1", [pod("c", "ErrImagePull", "not found")] * 2)
    status = apply_stuck_pods(None, stuck, generation=1, now=NOW)
    assert status is not None
    found = conditions.get_condition(status.conditions, "LastBackupSucceeded")
    assert found is not None and (found.status.value, found.reason) == ("False",
                                                                        "PodCannotStart")
    assert found.message.endswith("(and 1 more)")
