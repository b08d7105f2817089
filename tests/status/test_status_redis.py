"""Pure status of Redis backups: AOFEnabled from the runner's result (spec 4.2, issue 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures import EXAMPLES
from tonebridge_dr.api.backuppolicy import BackupPolicyStatus
from tonebridge_dr.api.conditions import Condition
from tonebridge_dr.api.kinds import BackupPolicy
from tonebridge_dr.status import backuppolicy as bp_status
from tonebridge_dr.status import conditions
from tonebridge_dr.status.jobs import JobOutcome

T0 = datetime(2024, 1, 15, 2, 0, 0, tzinfo=UTC)
HYPOTHESIS = settings(derandomize=True, max_examples=100, deadline=None)

AOF_OFF = (
    "AOF is disabled on Redis at 127.0.0.1:6379 (appendonly no): writes after the last "
    "snapshot are lost when it crashes; set appendonly yes and appendfsync everysec"
)
FSYNC_NO = (
    "Redis at 127.0.0.1:6379 has appendonly yes but appendfsync no: the OS decides when "
    "the AOF reaches the disk; appendfsync everysec is recommended"
)
UNKNOWN = (
    "cannot tell whether AOF is enabled on Redis at 127.0.0.1:6379: user 'backup' may run "
    "neither CONFIG GET nor INFO"
)
CHECKSUM = (
    "Redis at 127.0.0.1:6379 writes RDB files without a checksum (rdbchecksum no): only "
    "the repository's SHA-256 protects this backup"
)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def redis_result(
    minute: float, appendonly: str | None = "no", warnings: Any = None, **redis: Any
) -> dict[str, Any]:
    """A result shaped like `backup redis --json` (runner/engines/redis/backup.py)."""
    if warnings is None:
        warnings = [AOF_OFF] if appendonly == "no" else []
    return {
        "id": f"r{int(minute):03d}",
        "engine": "redis",
        "method": "rdb",
        "started_at": stamp(at(minute - 1)),
        "finished_at": stamp(at(minute)),
        "duration_seconds": 60.0,
        "size_bytes": 176,
        "redis": {"appendonly": appendonly, "appendfsync": "everysec", "keys": 3, **redis},
        "warnings": warnings,
    }


def succeeded(result: dict[str, Any] | None, job: str = "j") -> JobOutcome:
    finished = datetime.fromisoformat(result["finished_at"]) if result else at(0)
    return JobOutcome(state="succeeded", job_name=job, schedule="hourly", started_at=at(0),
                      finished_at=finished, result=result, reason="Succeeded", message="")


def failed(minute: float) -> JobOutcome:
    return JobOutcome(state="failed", job_name="jf", schedule="hourly", started_at=at(0),
                      finished_at=at(minute), result=None, reason="AuthenticationFailed",
                      message="Redis at 127.0.0.1:6379 rejected the credentials")


def apply(status: BackupPolicyStatus | None, outcome: JobOutcome) -> BackupPolicyStatus:
    return bp_status.apply_job_outcome(status, outcome, generation=3, now=at(999))


def aof(status: BackupPolicyStatus) -> Condition:
    found = conditions.get_condition(status.conditions, conditions.AOF_ENABLED)
    assert found is not None, "no AOFEnabled condition"
    return found


def load_policy(example: str) -> BackupPolicy:
    body = yaml.safe_load((EXAMPLES / example / "backuppolicy.yaml").read_text())
    body["metadata"].update(uid="u", namespace="ns", generation=4)
    return BackupPolicy.from_body(body)


# --- the condition -------------------------------------------------------------------------------


def test_aof_disabled_sets_condition_false_with_the_runner_warning() -> None:
    status = apply(None, succeeded(redis_result(5)))
    condition = aof(status)
    assert (condition.status, condition.reason) == ("False", "AppendOnlyDisabled")
    assert condition.message == f"{AOF_OFF} (seen by backup r005)"
    assert condition.last_transition_time == at(5)
    assert condition.observed_generation == 3
    last = conditions.get_condition(status.conditions, conditions.LAST_BACKUP_SUCCEEDED)
    assert last is not None and last.status == "True"
    assert status.last_backup is not None and status.last_backup.id == "r005"
    assert status.last_backup.method.value == "snapshot"
    # The stored form is what the CRD accepts: reason CamelCase, round-trips.
    dumped = status.model_dump(mode="json", exclude_none=True)
    assert BackupPolicyStatus.model_validate(dumped) == status
    assert [c["type"] for c in dumped["conditions"]] == ["AOFEnabled", "LastBackupSucceeded"]


def test_aof_back_on_turns_true_and_moves_the_transition_time() -> None:
    status = apply(None, succeeded(redis_result(5)))
    again = apply(status, succeeded(redis_result(10)))
    assert aof(again).last_transition_time == at(5)  # still False: no transition
    assert aof(again).message.endswith("(seen by backup r010)")
    enabled = apply(again, succeeded(redis_result(15, appendonly="yes")))
    condition = aof(enabled)
    assert (condition.status, condition.reason) == ("True", "AppendOnlyEnabled")
    assert condition.message == (
        "AOF is enabled on the Redis server: appendonly yes, appendfsync everysec "
        "(seen by backup r015)"
    )
    assert condition.last_transition_time == at(15)


def test_appendfsync_no_is_enabled_but_says_why_it_is_weak() -> None:
    result = redis_result(5, appendonly="yes", warnings=[CHECKSUM, FSYNC_NO], appendfsync="no")
    condition = aof(apply(None, succeeded(result)))
    assert (condition.status, condition.reason) == ("True", "AppendOnlyEnabled")
    assert condition.message == f"{FSYNC_NO} (seen by backup r005)"  # not the checksum one


def test_unknown_when_the_backup_user_may_not_ask() -> None:
    result = redis_result(5, appendonly=None, warnings=[UNKNOWN])
    condition = aof(apply(None, succeeded(result)))
    assert (condition.status, condition.reason) == ("Unknown", "AppendOnlyUnknown")
    assert condition.message == f"{UNKNOWN} (seen by backup r005)"


def test_disabled_without_a_warning_still_gets_a_readable_message() -> None:
    condition = aof(apply(None, succeeded(redis_result(5, warnings=[]))))
    assert condition.status == "False"
    assert condition.message.startswith("AOF is disabled on the Redis server (appendonly no)")


def test_other_engines_and_results_without_facts_leave_it_alone() -> None:
    postgres = {"id": "p1", "engine": "postgres", "method": "logical",
                "finished_at": stamp(at(5)), "warnings": [AOF_OFF]}
    status = apply(None, succeeded(postgres))
    assert conditions.get_condition(status.conditions, conditions.AOF_ENABLED) is None

    status = apply(None, succeeded(redis_result(5)))
    # Cut down to fit the termination message (runner/result.compact): no news.
    cut = {**redis_result(10, appendonly="yes"), "redis": "(omitted)", "warnings": "(omitted)"}
    later = apply(status, succeeded(cut))
    assert later.last_backup is not None and later.last_backup.id == "r010"
    assert aof(later) == aof(status)
    # A Job that completed without any result, and a failed Job: no news either.
    assert aof(apply(later, succeeded(None))) == aof(status)
    assert aof(apply(later, failed(20))) == aof(status)


def test_untrusted_warnings_are_cleaned_and_clipped() -> None:
    noisy = "AOF is disabled\x1b[31m on\x00 Redis " + "x" * 5000
    result = redis_result(5, warnings=[42, None, "", noisy, {"AOF": 1}, "  "])
    message = aof(apply(None, succeeded(result))).message
    assert "\x1b" not in message and "\x00" not in message
    assert message.startswith("AOF is disabled [31m on  Redis xxx")
    assert len(message) < 1100
    result = redis_result(5, warnings="AOF is disabled")  # not a list: counts as none
    assert aof(apply(None, succeeded(result))).message.startswith(
        "AOF is disabled on the Redis server (appendonly no)"
    )


def test_idempotent_and_an_older_result_never_overrides_a_newer_one() -> None:
    newer = succeeded(redis_result(20, appendonly="yes"))
    status = apply(None, newer)
    assert apply(status, newer) == status
    late = apply(status, succeeded(redis_result(5)))  # an old Job recorded after a restart
    assert aof(late).status == "True"
    assert late.last_backup is not None and late.last_backup.id == "r020"


@HYPOTHESIS
@given(st.permutations([(5, "no"), (10, "yes"), (15, None), (20, "no"), (25, "yes")]))
def test_the_newest_backup_decides_whatever_the_order(order: list[tuple[int, str | None]]) -> (
    None
):
    status: BackupPolicyStatus | None = None
    for minute, appendonly in order:
        warnings = [UNKNOWN] if appendonly is None else None
        status = apply(status, succeeded(redis_result(minute, appendonly, warnings)))
    assert status is not None
    condition = aof(status)
    assert condition.status == "True" and condition.message.endswith("(seen by backup r025)")


# --- what deserves an Event ----------------------------------------------------------------------


def test_turned_reports_only_real_transitions() -> None:
    def conds(status: conditions.StatusValue) -> list[Condition]:
        return conditions.set_condition(None, type="AOFEnabled", status=status, reason="R",
                                        message="m", observed_generation=1, now=at(0))

    assert conditions.turned(None, conds("False"), "AOFEnabled", "False") is not None
    assert conditions.turned(conds("True"), conds("False"), "AOFEnabled", "False") is not None
    assert conditions.turned(conds("False"), conds("False"), "AOFEnabled", "False") is None
    assert conditions.turned(conds("False"), conds("True"), "AOFEnabled", "False") is None
    assert conditions.turned(conds("False"), None, "AOFEnabled", "False") is None


def test_aof_change_warns_once_and_notes_the_recovery() -> None:
    off = apply(None, succeeded(redis_result(5)))
    change = bp_status.aof_change(None, off)
    assert change is not None and (change.status, change.reason) == ("False", "AppendOnlyDisabled")
    assert change.message == aof(off).message

    still_off = apply(off, succeeded(redis_result(10)))
    assert bp_status.aof_change(off, still_off) is None  # no repeated warning each hour
    assert bp_status.aof_change(off, apply(off, succeeded(redis_result(5)))) is None

    on = apply(still_off, succeeded(redis_result(15, appendonly="yes")))
    change = bp_status.aof_change(still_off, on)
    assert change is not None and (change.status, change.reason) == ("True", "AppendOnlyEnabled")

    # A server that always had AOF: nothing to announce; Unknown is not announced either.
    first_on = apply(None, succeeded(redis_result(5, appendonly="yes")))
    assert bp_status.aof_change(None, first_on) is None
    unknown = apply(first_on, succeeded(redis_result(10, None, [UNKNOWN])))
    assert bp_status.aof_change(first_on, unknown) is None


# --- the policy changes ---------------------------------------------------------------------------


def test_reconcile_drops_aof_when_the_target_is_no_longer_redis() -> None:
    status = apply(None, succeeded(redis_result(5)))
    kept = bp_status.apply_reconciled(status, load_policy("02-redis-backup"), now=at(6))
    assert aof(kept) == aof(status)
    dropped = bp_status.apply_reconciled(kept, load_policy("01-postgres-backup"), now=at(7))
    assert conditions.get_condition(dropped.conditions, conditions.AOF_ENABLED) is None
    assert [c.type for c in dropped.conditions or []] == ["LastBackupSucceeded", "Ready"]
