"""The CRDs as the real kube-apiserver judges them: every invalid case of
tests/api/test_crd_validation.py is rejected with its message, strict field validation,
defaults, and statuses dumped from the models printed by kubectl."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.api.test_crd_validation import (
    BP,
    CASES,
    FP,
    FP_AUTO,
    RR_PITR,
    RT,
    Case,
    broken,
    load_example,
)
from tonebridge_dr.api import (
    GROUP,
    VERSION,
    BackupMethod,
    BackupPolicySpec,
    BackupPolicyStatus,
    Condition,
    ConditionStatus,
    ConditionType,
    Reason,
    RestorePhase,
    RestoreRequestStatus,
    RestoreTestStatus,
    format_duration,
    formats,
    kind_info,
)
from tonebridge_dr.api.backuppolicy import BackupSummary
from tonebridge_dr.api.failoverplan import (
    FailoverMode,
    FailoverPhase,
    FailoverPlanStatus,
    HealthStatus,
    StageState,
    StageStatus,
)
from tonebridge_dr.api.restorerequest import RestoredSummary
from tonebridge_dr.api.restoretest import CheckResult, TestResult, TestRun

# --- against the real API server ---------------------------------------------------------


@pytest.fixture(scope="module")
def validation_namespace(sandbox: Any) -> Iterator[str]:
    name = f"crd-validation-{uuid.uuid4().hex[:6]}"
    sandbox.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        sandbox.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def custom_objects(sandbox: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(sandbox.api_client())


def _server_error(call: Callable[[], Any]) -> str:
    with pytest.raises(client.ApiException) as raised:
        call()
    assert raised.value.status in (400, 422), raised.value.body
    body = json.loads(raised.value.body or "{}")
    return str(body["message"])


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.id)
def test_api_server_rejects(
    item: Case, custom_objects: client.CustomObjectsApi, validation_namespace: str
) -> None:
    document = broken(item)
    plural = kind_info(document["kind"]).plural
    if item.update:
        original = load_example(item.base)
        original["metadata"]["name"] = document["metadata"]["name"] = f"{item.id}"
        created: Any = custom_objects.create_namespaced_custom_object(
            GROUP, VERSION, validation_namespace, plural, original, field_validation="Strict"
        )
        document["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        message = _server_error(
            lambda: custom_objects.replace_namespaced_custom_object(
                GROUP,
                VERSION,
                validation_namespace,
                plural,
                document["metadata"]["name"],
                document,
                dry_run="All",
                field_validation="Strict",
            )
        )
    else:
        message = _server_error(
            lambda: custom_objects.create_namespaced_custom_object(
                GROUP,
                VERSION,
                validation_namespace,
                plural,
                document,
                dry_run="All",
                field_validation="Strict",
            )
        )
    assert item.server in message


def test_unknown_fields_are_pruned_without_strict_validation(
    custom_objects: client.CustomObjectsApi, validation_namespace: str
) -> None:
    """Without Strict, the closed schema drops unknown fields instead of storing them."""
    document = load_example(BP)
    document["spec"]["bogus"] = True
    document["spec"]["repository"]["bucket"] = "x"
    created: Any = custom_objects.create_namespaced_custom_object(
        GROUP, VERSION, validation_namespace, "backuppolicies", document, dry_run="All"
    )
    assert "bogus" not in created["spec"]
    assert "bucket" not in created["spec"]["repository"]


def test_kubectl_strict_validation_names_the_unknown_field(
    sandbox: Any, validation_namespace: str
) -> None:
    document = load_example(RT)
    document["spec"]["checks"][0]["expected"] = {"min": 1}
    result = sandbox.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        validation_namespace,
        "-f",
        "-",
        input=yaml.safe_dump(document),
        check=False,
    )
    assert result.returncode != 0
    assert 'unknown field "spec.checks[0].expected"' in result.stderr


def test_kubectl_reports_every_broken_rule_at_once(sandbox: Any, validation_namespace: str) -> None:
    document = load_example(BP)
    document["spec"]["schedules"][0]["cron"] = "every day"
    document["spec"]["objectives"]["rpo"] = "1 hour"
    result = sandbox.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        validation_namespace,
        "-f",
        "-",
        input=yaml.safe_dump(document),
        check=False,
    )
    assert result.returncode != 0
    assert "spec.schedules[0].cron: Invalid value: " in result.stderr
    assert formats.CRON_MESSAGE in result.stderr
    assert "spec.objectives.rpo: Invalid value: " in result.stderr
    assert formats.DURATION_MESSAGE in result.stderr


def test_defaults_are_applied_by_the_api_server(
    custom_objects: client.CustomObjectsApi, validation_namespace: str
) -> None:
    created: Any = custom_objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        validation_namespace,
        "failoverplans",
        load_example(FP_AUTO),
        dry_run="All",
    )
    check = created["spec"]["trigger"]["healthCheck"]
    assert check["timeoutSeconds"] == 5
    assert created["spec"]["stages"][0]["steps"][0]["promotePostgres"]["waitSeconds"] == 60
    region: Any = custom_objects.create_namespaced_custom_object(
        GROUP, VERSION, validation_namespace, "failoverplans", load_example(FP), dry_run="All",
    )
    dns = region["spec"]["stages"][1]["steps"][2]["updateDNS"]
    assert dns["provider"] == "route53"
    assert region["spec"]["stages"][2]["steps"][0]["rolloutRestart"]["kind"] == "Deployment"


def _statuses() -> dict[str, tuple[str, dict[str, Any], list[str]]]:
    """kind -> (example, status dumped from the models, cells `kubectl get` must show)."""
    when = datetime(2024, 1, 15, 1, 30, tzinfo=UTC)
    ready = Condition(
        type=ConditionType.READY,
        status=ConditionStatus.TRUE,
        reason=Reason.RECONCILED,
        message="3 CronJobs",
        last_transition_time=when,
        observed_generation=1,
    )
    kopf_data = {"progress": {"create_fn": {"started": "2024-01-15T01:30:00Z", "retries": 0}}}
    policy = BackupPolicySpec.model_validate(load_example(BP)["spec"])
    bp = BackupPolicyStatus(
        observed_generation=1,
        conditions=[ready],
        target=policy.target.describe(),
        schedules=policy.describe_schedules(),
        last_successful_backup=BackupSummary(
            id="20240115T013000Z-daily-full", method=BackupMethod.LOGICAL, time=when
        ),
        recovery_point=when,
        kopf=kopf_data,
    )
    rr = RestoreRequestStatus(
        conditions=[ready],
        phase=RestorePhase.SUCCEEDED,
        source="tonebridge-db",
        duration=format_duration(750),
        duration_seconds=750.2,
        restored=RestoredSummary(backup_id="b1", recovered_to_lsn="0/3000060", repaired_rows=3),
        kopf=kopf_data,
    )
    fp = FailoverPlanStatus(
        phase=FailoverPhase.RUNNING,
        run_mode=FailoverMode.DRILL,
        current_stage="database",
        stages=[StageStatus(name="auth", state=StageState.SUCCEEDED, rto_met=True)],
        health=HealthStatus(healthy=False, consecutive_failures=3),
        kopf=kopf_data,
    )
    rt = RestoreTestStatus(
        source="tonebridge-db",
        last_run=TestRun(
            started_at=when,
            result=TestResult.PASSED,
            restore_duration=format_duration(754),
            checks=[CheckResult(name="users-present", passed=True, value="42")],
        ),
        kopf=kopf_data,
    )

    def dump(status: Any) -> dict[str, Any]:
        return dict(status.model_dump(mode="json", exclude_none=True))

    return {
        "bp": (BP, dump(bp), ["postgres/tonebridge_db", "daily-full,hourly-hot,daily-physical"]),
        "rr": (RR_PITR, dump(rr), ["Succeeded", "tonebridge-db", "12m30s"]),
        "fp": (FP, dump(fp), ["manual", "Running", "database"]),
        "rt": (RT, dump(rt), ["tonebridge-db", "Passed", "12m34s"]),
    }


@pytest.mark.parametrize("short", ["bp", "rr", "fp", "rt"])
def test_status_dumped_from_the_models_is_accepted_and_printed(
    short: str, sandbox: Any, custom_objects: client.CustomObjectsApi, validation_namespace: str
) -> None:
    example, status, cells = _statuses()[short]
    document = load_example(example)
    name = document["metadata"]["name"] = f"status-{short}"
    plural = kind_info(short).plural
    custom_objects.create_namespaced_custom_object(
        GROUP, VERSION, validation_namespace, plural, document, field_validation="Strict"
    )
    stored: Any = custom_objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        validation_namespace,
        plural,
        name,
        {"status": status},
        field_validation="Strict",
    )
    assert stored["status"] == status  # nothing pruned, kopf's free-form data kept
    table = sandbox.kubectl("get", short, name, "-n", validation_namespace).stdout
    for cell in cells:
        assert cell in table
