"""RestoreTest end to end: the operator as a real process, the sandbox's real CronJob, Job
and garbage-collection controllers, the node agent running the pods, moto S3.

- Secrets checked by key (Ready=False SecretNotFound, looked for again), then the CronJob
  (schedule, time zone, suspend, Forbid, owned), Ready=True, printer columns;
- a run of the CronJob's template whose container writes a ChecksFailed result (exit 15,
  the runner contract) -> lastRun, Passed=False, RTOMet, Event, ONE notification, metrics;
- run-now -> a Job with the runner verb's args, env and scratch volume; lastRun names it;
- the real thing: a logical backup restored into a scratch database by the runner verb
  `restore-test`, `kubectl wait --for=condition=Passed`.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest

from tests.fixtures.operator import (
    WebhookReceiver,
    apply_docs,
    condition,
    get_columns,
    get_json,
    policy_doc,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tests.fixtures.postgres import Cli, PgServer, populate_sample
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

Json = dict[str, Any]
POLICY = "pg"
TEST = "quarterly"
RESTORE_SA = "tonebridge-dr-restore"
CRONJOB = f"{TEST}-restore-test"
CHECKS = [
    {"name": "transformations-present", "query": "SELECT count(*) FROM transformations",
     "expect": {"min": 1}},
    {"name": "analytics-rows", "query": "SELECT count(*) FROM analytics",
     "expect": {"min": 1, "max": 1000}},
]


def restore_test_doc(**spec: Any) -> Json:
    body: Json = {
        "schedule": "0 3 1 1,4,7,10 *",
        "timeZone": "Asia/Tokyo",
        "source": {"policyRef": {"name": POLICY}},
        "scratch": {"instance": {}},
        "checks": CHECKS,
        "objectives": {"rto": "4h"},
        "notifications": {"webhookSecretRef": {"name": "hook", "key": "url"},
                          "events": ["RestoreTestPassed", "RestoreTestFailed", "RTOMissed"]},
    }
    body.update(spec)
    return {"apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "RestoreTest",
            "metadata": {"name": TEST}, "spec": body}


def get_test(sandbox: Sandbox, namespace: str) -> Json:
    return dict(get_json(sandbox, namespace, "restoretest", TEST))


def rt_condition(sandbox: Sandbox, namespace: str, type_: str, status: str,
                   reason: str | None = None) -> Json | None:
    """The test when its condition `type_` has `status` (and `reason`), else None."""
    body = get_test(sandbox, namespace)
    found = condition(body, type_)
    if found and found["status"] == status and (reason is None or found["reason"] == reason):
        return body
    return None


def last_run(sandbox: Sandbox, namespace: str) -> Json:
    return dict((get_test(sandbox, namespace).get("status") or {}).get("lastRun") or {})


def events_of_test(sandbox: Sandbox, namespace: str) -> list[Json]:
    return [e for e in get_json(sandbox, namespace, "events")["items"]
            if e["involvedObject"].get("kind") == "RestoreTest"]


def checks_failed_run(cronjob: Json) -> Json:
    """A Job of `cronjob` (owned by it, as the CronJob controller makes them) whose container
    does what the runner verb does when a check fails: its whole result plus the error as
    termination message, exit 15."""
    result = {
        "name": TEST, "engine": "postgres", "method": "logical", "backup_id": "b-20300101",
        "backup_finished_at": "2030-01-01T02:05:00Z", "manifest_sha256": "ab" * 32,
        "started_at": "2030-01-01T03:00:10Z", "completed_at": "2030-01-01T03:12:40Z",
        "restore_duration_seconds": 750, "rto_seconds": 14400, "rto_met": True,
        "passed": False,
        "checks": [
            {"name": "transformations-present", "passed": False, "value": 0,
             "message": "expected at least 1, got 0"},
            {"name": "analytics-rows", "passed": True, "value": 90, "message": None},
        ],
        "report_key": "reports/restore-tests/quarterly/20300101T030010Z.json",
        "error": "ChecksFailed", "message": "1 of 2 checks failed", "exit_code": 15,
    }
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    container = template["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["/bin/sh", "-c",
                            f"printf '%s' '{json.dumps(result)}' > /dev/termination-log; exit 15"]
    container["args"] = []
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": f"{CRONJOB}-29456789",
            "labels": template["metadata"]["labels"],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                                 "name": cronjob["metadata"]["name"],
                                 "uid": cronjob["metadata"]["uid"], "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": template["spec"],
    }


def test_schedule_run_now_and_a_result_flowing_into_status(
    sandbox: Sandbox, namespace: str, s3_repo_url: str, moto_server: str,
    operator_factory: Any, webhook: WebhookReceiver,
) -> None:
    sandbox.kubectl("create", "serviceaccount", RESTORE_SA, "-n", namespace)
    writer, reader = s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}")
    apply_docs(sandbox, namespace, writer, secret_doc("hook", {"url": webhook.url}),
               policy_doc(POLICY, repo_url=s3_repo_url, endpoint=moto_server),
               restore_test_doc())
    op = operator_factory(namespace)

    # The read credentials are missing: Ready=False with the Secret's name, no CronJob.
    body = wait_for(lambda: rt_condition(sandbox, namespace, "Ready", "False",
                                           "SecretNotFound"), 60, message=op.log_tail)
    assert 'Secret "repo-reader" (repository read credentials) not found' in condition(
        body, "Ready")["message"]  # type: ignore[index]
    assert get_json(sandbox, namespace, "cronjobs")["items"] == []

    # They appear: the test is looked at again without any change to it.
    apply_docs(sandbox, namespace, reader)
    body = wait_for(lambda: rt_condition(sandbox, namespace, "Ready", "True", "Reconciled"),
                    60, message=op.log_tail)
    uid = body["metadata"]["uid"]
    assert body["status"]["source"] == POLICY
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert condition(body, "Ready")["message"].startswith(  # type: ignore[index]
        f"CronJob {CRONJOB} runs '0 3 1 1,4,7,10 *' (Asia/Tokyo): restores the latest backup "
        f"from {s3_repo_url}/{POLICY} into a throwaway PostgreSQL")
    columns = get_columns(sandbox, namespace, "rt", TEST)
    assert list(columns) == ["NAME", "SOURCE", "LAST RESULT", "RESTORE TIME", "RTO MET",
                             "LAST RUN", "AGE"]
    assert columns["SOURCE"] == POLICY

    cronjob = get_json(sandbox, namespace, "cronjob", CRONJOB)
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["suspend"], spec["concurrencyPolicy"]) == (
        "0 3 1 1,4,7,10 *", "Asia/Tokyo", False, "Forbid")
    assert [o["uid"] for o in cronjob["metadata"]["ownerReferences"]] == [uid]
    assert cronjob["metadata"]["labels"]["app.kubernetes.io/component"] == "restore-test"

    # suspend follows the spec.
    sandbox.kubectl("patch", "-n", namespace, f"restoretest/{TEST}", "--type=merge",
                    "-p", json.dumps({"spec": {"suspend": True}}))
    wait_for(lambda: get_json(sandbox, namespace, "cronjob", CRONJOB)["spec"]["suspend"], 60,
             message=op.log_tail)

    # A scheduled run whose checks fail: the result flows into status, once.
    job = checks_failed_run(get_json(sandbox, namespace, "cronjob", CRONJOB))
    apply_docs(sandbox, namespace, job)
    job_name = job["metadata"]["name"]
    body = wait_for(lambda: rt_condition(sandbox, namespace, "Passed", "False",
                                           "ChecksFailed"), 120, message=op.log_tail)
    run = body["status"]["lastRun"]
    assert (run["jobName"], run["result"], run["backupId"]) == (job_name, "Failed", "b-20300101")
    assert (run["restoreDurationSeconds"], run["restoreDuration"], run["rtoMet"]) == (
        750, "12m30s", True)
    assert run["checks"][0] == {"name": "transformations-present", "passed": False,
                                "value": "0", "message": "expected at least 1, got 0"}
    assert "1 of 2 checks failed (transformations-present: expected at least 1, got 0)" in (
        run["message"])
    assert body["status"]["runCount"] == 1
    assert condition(body, "RTOMet")["status"] == "True"  # type: ignore[index]
    columns = get_columns(sandbox, namespace, "rt", TEST)
    assert (columns["LAST RESULT"], columns["RESTORE TIME"], columns["RTO MET"]) == (
        "Failed", "12m30s", "True")
    recorded = wait_for(lambda: (get_json(sandbox, namespace, "job", job_name)["metadata"]
                                 .get("annotations") or {}).get("dr.tonebridge.io/recorded"), 30)
    assert recorded == "failed"
    reasons = [e["reason"] for e in events_of_test(sandbox, namespace)]
    assert "RestoreTestStarted" in reasons and reasons.count("RestoreTestFailed") == 1
    (sent,) = wait_for(lambda: webhook.payloads("RestoreTestFailed"), 30)
    assert (sent["policy"], sent["state"]) == (TEST, "Failed")
    assert "1 of 2 checks failed" in sent["message"]
    metric = "tonebridge_dr_restore_test_passed"
    assert wait_for(lambda: op.metric(metric, namespace, TEST, label="restore_test") == 0.0, 30)
    assert op.metric("tonebridge_dr_restore_test_duration_seconds", namespace, TEST,
                     label="restore_test") == 750.0

    # run-now (the test is suspended: it still runs on demand) -> the runner verb's Job.
    sandbox.kubectl("annotate", "-n", namespace, f"restoretest/{TEST}",
                    "dr.tonebridge.io/run-now=first", "--overwrite")
    now_job = wait_for(lambda: [j for j in get_json(sandbox, namespace, "jobs")["items"]
                                if j["metadata"]["name"].startswith(f"{CRONJOB}-now-")], 60,
                       message=op.log_tail)[0]
    assert [o["uid"] for o in now_job["metadata"]["ownerReferences"]] == [uid]
    assert now_job["metadata"]["annotations"]["dr.tonebridge.io/run-now"] == "first"
    pod = now_job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == RESTORE_SA
    (container,) = pod["containers"]
    assert container["args"] == [
        "restore-test", "postgres", "--json", "--scratch-instance",
        "/var/lib/tonebridge-dr/scratch", "--rto", "4h", "--name", TEST]
    env = {e["name"]: e for e in container["env"]}
    assert env["TONEBRIDGE_DR_REPO"]["value"] == f"{s3_repo_url}/{POLICY}"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "repo-reader", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == moto_server
    assert json.loads(env["TONEBRIDGE_DR_CHECKS"]["value"]) == CHECKS
    assert "TONEBRIDGE_DR_TARGET_DSN" not in env
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    assert {"name": "scratch", "mountPath": "/var/lib/tonebridge-dr/scratch"} in (
        container["volumeMounts"])
    assert now_job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [
        2, 3, 6, 7, 8, 10, 11, 14, 15, 16]
    wait_for(lambda: last_run(sandbox, namespace).get("jobName") == now_job["metadata"]["name"],
             60, message=op.log_tail)
    annotations = get_test(sandbox, namespace)["metadata"]["annotations"]
    assert annotations["dr.tonebridge.io/run-now-handled"] == "first"
    assert "RestoreTestStarted" in [e["reason"] for e in events_of_test(sandbox, namespace)
                                    if now_job["metadata"]["name"] in e["message"]]

    # Deleting the test deletes its CronJob and Jobs (garbage collection).
    sandbox.kubectl("delete", "-n", namespace, f"restoretest/{TEST}", "--wait=true",
                    "--timeout=60s")
    wait_for(lambda: get_json(sandbox, namespace, "cronjobs")["items"] == []
             and get_json(sandbox, namespace, "jobs")["items"] == [], 60)


def test_a_real_logical_backup_restored_into_a_scratch_database_passes(
    sandbox: Sandbox, namespace: str, pg: PgServer, cli: Cli, s3_repo_url: str,
    moto_server: str, operator_factory: Any, webhook: WebhookReceiver,
) -> None:
    source = pg.create_database("src")
    populate_sample(pg, source.rsplit("dbname=", 1)[1], rows=120)
    backup = cli("backup", "postgres", "--dsn", source, "--repo", f"{s3_repo_url}/{POLICY}",
                 "--json")
    assert backup.code == 0, backup.err
    backup_id = backup.json["id"]
    scratch = pg.create_database("scratch").rsplit("dbname=", 1)[1]
    uri = f"postgresql://{pg.user}:{pg.password}@127.0.0.1:{pg.port}/{scratch}"

    sandbox.kubectl("create", "serviceaccount", RESTORE_SA, "-n", namespace)
    apply_docs(
        sandbox, namespace,
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        secret_doc("hook", {"url": webhook.url}),
        secret_doc("scratch-db", {"dsn": uri}),
        policy_doc(POLICY, repo_url=s3_repo_url, endpoint=moto_server),
        restore_test_doc(scratch={"database": {"dsnSecretRef": {"name": "scratch-db",
                                                                 "key": "dsn"}}},
                         objectives={"rto": "1h"}),
    )
    op = operator_factory(namespace)
    wait_for(lambda: rt_condition(sandbox, namespace, "Ready", "True"), 60,
             message=op.log_tail)
    sandbox.kubectl("annotate", "-n", namespace, f"restoretest/{TEST}",
                    "dr.tonebridge.io/run-now=real", "--overwrite")
    run = wait_for(lambda: (r := last_run(sandbox, namespace)).get("result") in (
        "Passed", "Failed") and r, 240, message=op.log_tail)
    waited = sandbox.kubectl("wait", "--for=condition=Passed", f"rt/{TEST}", "-n", namespace,
                             "--timeout=10s", timeout=40, check=False)
    assert "condition met" in waited.stdout, f"{waited.stderr.strip()}; lastRun: {run}"

    body = get_test(sandbox, namespace)
    run = body["status"]["lastRun"]
    assert (run["result"], run["backupId"], run["rtoMet"]) == ("Passed", backup_id, True)
    assert run["restoreDurationSeconds"] > 0 and run["restoreDuration"]
    assert [(c["name"], c["passed"]) for c in run["checks"]] == [
        ("transformations-present", True), ("analytics-rows", True)]
    assert run["checks"][0]["value"] == "120"
    assert condition(body, "RTOMet")["status"] == "True"  # type: ignore[index]
    assert body["status"]["lastSuccessfulRunTime"]
    wait_for(lambda: webhook.payloads("RestoreTestPassed"), 30)
    assert wait_for(lambda: op.metric("tonebridge_dr_restore_test_passed", namespace, TEST,
                                      label="restore_test") == 1.0, 30)
