"""RestoreTest end to end: the operator as a real process, the sandbox's real CronJob, Job
and garbage-collection controllers, the node agent running the pods, moto S3.

- Secrets checked by key (Ready=False SecretNotFound, looked for again), then the CronJob
  (schedule, time zone, suspend, Forbid, owned), Ready=True, printer columns;
- a run of the CronJob's template whose container writes a ChecksFailed result (exit 15,
  the runner contract) -> lastRun, Passed=False, RTOMet, Event, ONE notification, metrics;
- run-now -> a Job with the runner verb's args, env and scratch volume; lastRun names it;
- the real thing (`real`: PostgreSQL, a backup in moto S3, run-now Jobs running the runner
  verb `restore-test` into a scratch database on that server): a pass,
  `kubectl wait --for=condition=Passed`, the policy Restorable; a failing check (one
  notification, the policy not Restorable) then a pass over its RTO; a corrupt object
  (IntegrityCheckFailed, no scratch database left); the test deleted mid-run (its Job
  goes, the runner gets SIGTERM, nothing of the scratch database is left).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures import procs, s3
from tests.fixtures.operator import (
    WebhookReceiver,
    apply_docs,
    condition,
    condition_is,
    get_columns,
    get_json,
    policy_doc,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tests.fixtures.postgres import Cli, PgServer, populate_sample
from tests.fixtures.redis import RedisFactory, populate
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
        2, 3, 6, 7, 8, 10, 11, 14, 15, 16, 17, 19]
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


def slow_check(seconds: float) -> Json:
    """A check that takes `seconds` (read-only, passes)."""
    return {"name": "slow", "query": f"SELECT 1 FROM pg_sleep({seconds})",
            "expect": {"nonEmpty": True}}


@dataclasses.dataclass
class RealTest:
    """A RestoreTest of a real backup, its operator and where it restores."""

    op: Any
    repo: str
    backup_id: str
    scratch: str
    """The scratch database (on `pg`, named by scratch.database.database)."""

    def run_now(self, sandbox: Sandbox, namespace: str, token: str) -> Json:
        """Annotate run-now with `token`; the finished lastRun of its Job."""
        before = last_run(sandbox, namespace).get("jobName")
        sandbox.kubectl("annotate", "-n", namespace, f"restoretest/{TEST}",
                        f"dr.tonebridge.io/run-now={token}", "--overwrite")
        return dict(wait_for(lambda: (r := last_run(sandbox, namespace)).get("jobName") != before
                             and r.get("result") in ("Passed", "Failed") and r, 240,
                             message=self.op.log_tail))


@pytest.fixture
def real(
    sandbox: Sandbox, namespace: str, pg: PgServer, cli: Cli, s3_repo_url: str,
    moto_server: str, operator_factory: Any, webhook: WebhookReceiver,
) -> Callable[..., RealTest]:
    """`real(**spec)`: a logical backup of the sample database (120 rows, plus an empty
    table `empty_rows`) in S3, the policy, a RestoreTest (`spec` wins) restoring into a
    scratch database on `pg`, the operator, Ready."""

    def start(*, scratch_exists: bool = False, **spec: Any) -> RealTest:
        source = pg.create_database("src").rsplit("dbname=", 1)[1]
        populate_sample(pg, source, rows=120)
        pg.execute(source, "CREATE TABLE empty_rows (id int)")
        repo = f"{s3_repo_url}/{POLICY}"
        backup = cli("backup", "postgres", "--dsn", pg.dsn(source), "--repo", repo, "--json")
        assert backup.code == 0, backup.err
        scratch = f"rt_scratch_{uuid.uuid4().hex[:8]}"
        if scratch_exists:
            pg.execute("postgres", f'CREATE DATABASE "{scratch}"')
        uri = f"postgresql://{pg.user}:{pg.password}@127.0.0.1:{pg.port}/postgres"
        sandbox.kubectl("create", "serviceaccount", RESTORE_SA, "-n", namespace)
        scratch_spec = {"database": {"dsnSecretRef": {"name": "scratch-db", "key": "dsn"},
                                     "database": scratch}}
        apply_docs(
            sandbox, namespace,
            *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
            secret_doc("hook", {"url": webhook.url}), secret_doc("scratch-db", {"dsn": uri}),
            policy_doc(POLICY, repo_url=s3_repo_url, endpoint=moto_server),
            restore_test_doc(**{"scratch": scratch_spec, **spec}),
        )
        op = operator_factory(namespace)
        wait_for(lambda: rt_condition(sandbox, namespace, "Ready", "True"), 60,
                 message=op.log_tail)
        return RealTest(op, repo, backup.json["id"], scratch)

    return start


def test_a_real_logical_backup_restored_into_a_scratch_database_passes(
    sandbox: Sandbox, namespace: str, pg: PgServer, real: Callable[..., RealTest],
    webhook: WebhookReceiver,
) -> None:
    rt = real(scratch_exists=True, objectives={"rto": "1h"})
    run = rt.run_now(sandbox, namespace, "real")
    waited = sandbox.kubectl("wait", "--for=condition=Passed", f"rt/{TEST}", "-n", namespace,
                             "--timeout=10s", timeout=40, check=False)
    assert "condition met" in waited.stdout, f"{waited.stderr.strip()}; lastRun: {run}"

    body = get_test(sandbox, namespace)
    run = body["status"]["lastRun"]
    assert (run["result"], run["backupId"], run["rtoMet"]) == ("Passed", rt.backup_id, True)
    assert run["restoreDurationSeconds"] > 0 and run["restoreDuration"]
    assert [(c["name"], c["passed"]) for c in run["checks"]] == [
        ("transformations-present", True), ("analytics-rows", True)]
    assert run["checks"][0]["value"] == "120"
    assert condition(body, "RTOMet")["status"] == "True"  # type: ignore[index]
    assert body["status"]["lastSuccessfulRunTime"]
    assert pg.database_exists(rt.scratch)  # it existed before: emptied, not dropped
    wait_for(lambda: webhook.payloads("RestoreTestPassed"), 30)
    assert wait_for(lambda: rt.op.metric("tonebridge_dr_restore_test_passed", namespace, TEST,
                                         label="restore_test") == 1.0, 30)

    # The policy shows it: Restorable (column RESTORABLE), RTOMet, the run in short.
    policy = wait_for(lambda: condition_is(sandbox, namespace, POLICY, "Restorable", "True",
                                           "RestoreTestPassed"), 30, message=rt.op.log_tail)
    assert condition(policy, "Restorable")["message"].startswith(  # type: ignore[index]
        f"RestoreTest {TEST} passed ")
    assert condition(policy, "RTOMet")["status"] == "True"  # type: ignore[index]
    summary = policy["status"]["lastRestoreTest"]
    assert (summary["name"], summary["passed"], summary["backupId"]) == (
        TEST, True, rt.backup_id)
    assert get_columns(sandbox, namespace, "bp", POLICY)["RESTORABLE"] == "True"


def test_a_failing_check_then_a_pass_over_its_rto(
    sandbox: Sandbox, namespace: str, real: Callable[..., RealTest], webhook: WebhookReceiver,
) -> None:
    empty = {"name": "empty-has-rows", "query": "SELECT count(*) FROM empty_rows",
             "expect": {"min": 1}}
    rt = real(checks=[empty], objectives={"rto": "1s"})  # 1s: the smallest duration
    run = rt.run_now(sandbox, namespace, "failing")
    assert run["result"] == "Failed"
    assert run["checks"] == [{"name": "empty-has-rows", "passed": False, "value": "0",
                              "message": "expected at least 1, got 0"}]
    body = rt_condition(sandbox, namespace, "Passed", "False", "ChecksFailed")
    assert body is not None, condition(get_test(sandbox, namespace), "Passed")
    wait_for(lambda: condition_is(sandbox, namespace, POLICY, "Restorable", "False",
                                  "RestoreTestFailed"), 30, message=rt.op.log_tail)
    assert len(webhook.payloads("RestoreTestFailed")) == 1

    # Passing checks, one of them slower than the RTO: Passed, RTOMet False, measured.
    sandbox.kubectl("patch", "-n", namespace, f"restoretest/{TEST}", "--type=merge", "-p",
                    json.dumps({"spec": {"checks": [*CHECKS, slow_check(1.2)]}}))
    run = rt.run_now(sandbox, namespace, "slow")
    assert (run["result"], run["rtoMet"]) == ("Passed", False)
    assert run["restoreDurationSeconds"] > 1.2
    body = get_test(sandbox, namespace)
    rto = condition(body, "RTOMet")
    assert rto is not None and (rto["status"], rto["reason"]) == ("False", "RTOMissed")
    assert f"restored in {run['restoreDuration']}, over objectives.rto 1s" in rto["message"]
    assert condition(body, "Passed")["status"] == "True"  # type: ignore[index]
    policy = wait_for(lambda: condition_is(sandbox, namespace, POLICY, "Restorable", "True"),
                      30, message=rt.op.log_tail)
    assert condition(policy, "RTOMet")["reason"] == "RTOMissed"  # type: ignore[index]
    wait_for(lambda: webhook.payloads("RestoreTestPassed"), 30)
    assert len(webhook.payloads("RestoreTestFailed")) == 1


def _corrupt_latest(repo: str, endpoint: str, backup_id: str) -> str:
    """Flip a byte in the middle of the backup's dump object; its key."""
    bucket, prefix = repo.removeprefix("s3://").split("/", 1)
    client = s3.client(endpoint)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/base/{backup_id}/")
    (key,) = [o["Key"] for o in listed["Contents"] if "/database.dump" in o["Key"]]
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x55
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    return key


def test_a_corrupt_object_in_the_latest_backup_fails_and_leaves_no_scratch_database(
    sandbox: Sandbox, namespace: str, pg: PgServer, moto_server: str,
    real: Callable[..., RealTest],
) -> None:
    rt = real()
    key = _corrupt_latest(rt.repo, moto_server, rt.backup_id)
    run = rt.run_now(sandbox, namespace, "corrupt")
    assert (run["result"], run["backupId"]) == ("Failed", rt.backup_id)
    body = rt_condition(sandbox, namespace, "Passed", "False", "IntegrityCheckFailed")
    assert body is not None, condition(get_test(sandbox, namespace), "Passed")
    assert key.rsplit("/", 1)[1] in run["message"]
    assert not pg.database_exists(rt.scratch) and procs.mentioning(rt.scratch) == []


def test_deleting_a_test_mid_run_stops_its_runner_and_leaves_nothing(
    sandbox: Sandbox, namespace: str, pg: PgServer, cli: Cli, real: Callable[..., RealTest],
) -> None:
    rt = real(checks=[slow_check(60)])
    sandbox.kubectl("annotate", "-n", namespace, f"restoretest/{TEST}",
                    "dr.tonebridge.io/run-now=slow", "--overwrite")
    # The restore is done and the slow check runs: the runner (its argv names the
    # scratch database) and the check's server backend are alive.
    wait_for(lambda: pg.query("postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = %s"
                              " AND query LIKE '%%pg_sleep%%'", (rt.scratch,)), 120,
             message=rt.op.log_tail)
    assert procs.mentioning(rt.scratch)
    sandbox.kubectl("delete", "-n", namespace, f"restoretest/{TEST}", "--wait=false")
    wait_for(lambda: get_json(sandbox, namespace, "jobs")["items"] == [], 60)
    wait_for(lambda: procs.mentioning(rt.scratch) == [], 60)
    assert not pg.database_exists(rt.scratch)
    # The runner was stopped by SIGTERM, cleaned up, and said so in its report.
    listed = cli("restore-tests", "list", "--repo", rt.repo, "--json")
    assert listed.code == 0, listed.err
    (report,) = listed.json
    assert (report["error"], report["passed"]) == ("Cancelled", False), report


def test_a_redis_policy_is_restore_tested_in_a_private_redis_server(
    sandbox: Sandbox, namespace: str, redis_factory: RedisFactory, cli: Cli, s3_repo_url: str,
    moto_server: str, operator_factory: Any, webhook: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot of a real Redis in S3, a RestoreTest of its policy (engine inferred from
    the policy, no method): the Job restores it into a redis-server of its own and runs
    the Redis checks; nothing of that server is left afterwards."""
    source = redis_factory.start(appendonly=False)
    populate(source)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    repo = f"{s3_repo_url}/cache"
    backup = cli("backup", "redis", "--url", source.url(), "--repo", repo, "--json")
    assert backup.code == 0, backup.err
    sandbox.kubectl("create", "serviceaccount", RESTORE_SA, "-n", namespace)
    policy = policy_doc("cache", repo_url=s3_repo_url, endpoint=moto_server)
    policy["spec"]["target"] = {"redis": {"urlSecretRef": {"name": "cache-url", "key": "url"}}}
    policy["spec"]["schedules"] = [{"name": "hourly", "cron": "@hourly"}]
    checks = [
        {"name": "keys-present", "query": "DBSIZE", "expect": {"min": 10}},
        {"name": "hash-kept", "query": "TYPE hash:big", "expect": {"equals": "hash"}},
        {"name": "list-length", "query": "LLEN list:big", "expect": {"equals": "3000"}},
    ]
    apply_docs(
        sandbox, namespace,
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        secret_doc("hook", {"url": webhook.url}), secret_doc("cache-url", {"url": source.url()}),
        policy,
        restore_test_doc(source={"policyRef": {"name": "cache"}}, checks=checks,
                         scratch={"instance": {}}),
    )
    op = operator_factory(namespace)
    wait_for(lambda: rt_condition(sandbox, namespace, "Ready", "True"), 60, message=op.log_tail)
    cronjob = get_json(sandbox, namespace, "cronjob", CRONJOB)
    args = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["restore-test", "redis"]
    rt = RealTest(op, repo, backup.json["id"], scratch="")
    servers_before = set(procs.mentioning("redis-server"))
    run = rt.run_now(sandbox, namespace, "redis")
    assert run["result"] == "Passed", run
    assert run["backupId"] == backup.json["id"]
    assert [(c["name"], c["passed"], c["value"]) for c in run["checks"]] == [
        ("keys-present", True, run["checks"][0]["value"]), ("hash-kept", True, "hash"),
        ("list-length", True, "3000")]
    assert int(run["checks"][0]["value"]) >= 10
    assert condition(get_test(sandbox, namespace), "Passed")["status"] == "True"  # type: ignore[index]
    # The Job's own redis-server is gone with it (the others are the fixtures' servers).
    wait_for(lambda: set(procs.mentioning("redis-server")) <= servers_before, 30)
