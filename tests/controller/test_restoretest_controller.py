"""The RestoreTest controller without a cluster: the pure plan and decision, reconcile
(policy, Secrets by key, ServiceAccount, the CronJob applied, Ready), run-now, and test Jobs
folded into status with Events, notifications and metrics. A small in-memory fake of our
own `Kube` interface stands in for the API server."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import yaml

from tests.fixtures import EXAMPLES
from tests.fixtures.operator import WebhookReceiver
from tests.status.test_status import job_condition, make_pod
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import BackupPolicy, RestoreTest
from tonebridge_dr.builders.settings import RunnerSettings
from tonebridge_dr.controller.core import jobs, kube, secrets
from tonebridge_dr.controller.core.context import Context
from tonebridge_dr.controller.core.kind import Cause, Controller, Trigger
from tonebridge_dr.controller.core.kube import ApiError
from tonebridge_dr.controller.core.metrics import Metrics
from tonebridge_dr.controller.core.settings import Settings
from tonebridge_dr.controller.restoretest import handlers, plan, record, runnow

NOW = dt.datetime(2030, 1, 1, 3, 30, tzinfo=dt.UTC)
NS = "tonebridge"
Json = dict[str, Any]
READER = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}


def _document(path: str) -> Json:
    (body,) = [d for d in yaml.safe_load_all((EXAMPLES / path).read_text()) if d]
    return dict(body)


def policy_body() -> Json:
    body = _document("01-postgres-backup/backuppolicy.yaml")
    body["metadata"].update(namespace=NS, uid="policy-uid", generation=1)
    return body


def rt_body(**spec: Any) -> Json:
    body = _document("05-restore-test/restoretest.yaml")
    body["metadata"].update(namespace=NS, uid="rt-uid", generation=2, resourceVersion="1")
    body["spec"].update(spec)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    return body


class FakeKube:
    """The parts of controller.core.kube.Kube the RestoreTest controller uses, in memory:
    objects by (kind, namespace, name), Secrets, Events, applied and created objects."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Json] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.applied: list[Json] = []
        self.status_writes = 0

    def put(self, obj: Json) -> Json:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace") or NS, meta["name"])] = obj
        return obj

    def get_or_none(self, kind: kube.Kind, namespace: str | None, name: str) -> Json | None:
        found = self.objects.get((kind.kind, namespace or NS, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, kind: kube.Kind, namespace: str | None, *, label_selector: str = "",
             **_: Any) -> list[Json]:
        key, _, value = label_selector.partition("=")
        return [copy.deepcopy(o) for (k, n, _name), o in self.objects.items()
                if k == kind.kind and n == (namespace or NS)
                and (o["metadata"].get("labels") or {}).get(key) == value]

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)

    def apply(self, obj: Mapping[str, Any]) -> Json:
        self.applied.append(copy.deepcopy(dict(obj)))
        return self.put(copy.deepcopy(dict(obj)))

    def create(self, obj: Mapping[str, Any]) -> Json:
        meta = obj["metadata"]
        if (obj["kind"], meta.get("namespace") or NS, meta["name"]) in self.objects:
            raise ApiError(409, "AlreadyExists", "exists")
        return self.put(copy.deepcopy(dict(obj)))

    def merge_patch(self, kind: kube.Kind, namespace: str | None, name: str,
                    patch: Mapping[str, Any]) -> Json:
        obj = self.objects[(kind.kind, namespace or NS, name)]
        annotations = obj["metadata"].setdefault("annotations", {})
        annotations.update(patch["metadata"]["annotations"])
        return obj

    def write_status(self, kind: kube.Kind, namespace: str, name: str,
                     compute: Callable[[Json], Json | None], *, body: Json | None = None,
                     attempts: int = 8) -> Json | None:
        current = self.objects.get((kind.kind, namespace, name))
        if current is None:
            return None
        status = compute(copy.deepcopy(current))
        if status is not None:
            self.status_writes += 1
            current["status"] = status
        return copy.deepcopy(current)

    def post_event(self, involved: Json, *, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _type, reason, _message in self.events]


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


def controller_for(fake: FakeKube, metrics: Metrics | None = None) -> Any:
    ctx = Context(settings=Settings(runner=RunnerSettings()), kube=fake,  # type: ignore[arg-type]
                  metrics=metrics or Metrics(), clock=lambda: NOW)
    return Controller(ctx, handlers.KIND)


def ready_world(fake: FakeKube, **spec: Any) -> Json:
    """The policy, every Secret, the restore ServiceAccount and the test."""
    fake.put(policy_body())
    fake.secrets.update({"tonebridge-backup-reader": READER,
                         "tonebridge-restore-gpg": {"private.asc": "k"},
                         "slack-webhook": {"url": "http://127.0.0.1:9/hook"}})
    fake.put({"kind": "ServiceAccount", "metadata": {"name": "tonebridge-dr-restore",
                                                     "namespace": NS}})
    return fake.put(rt_body(**spec))


def status_of(fake: FakeKube, name: str = "tonebridge-db-quarterly") -> Json:
    return dict(fake.objects[("RestoreTest", NS, name)].get("status") or {})


def cond(status: Json, type_: str) -> tuple[str, str, str]:
    found = next(c for c in status["conditions"] if c["type"] == type_)
    return found["status"], found["reason"], found["message"]


# --- the pure plan ------------------------------------------------------------------------


def _parsed(**spec: Any) -> RestoreTest:
    return RestoreTest.from_body(rt_body(**spec))


def test_plan_names_the_cronjob_the_secrets_and_says_what_runs() -> None:
    made = plan.plan_test(_parsed(), BackupPolicy.from_body(policy_body()), RunnerSettings())
    assert isinstance(made, plan.TestPlan)
    assert made.cronjob["metadata"]["name"] == "tonebridge-db-quarterly-restore-test"
    assert [(u.name, u.keys, u.blocking) for u in made.secrets] == [
        ("tonebridge-backup-reader", secrets.REPOSITORY_KEYS, True),
        ("tonebridge-restore-gpg", ("private.asc",), True),
        ("slack-webhook", ("url",), False),
    ]
    assert made.service_account == "tonebridge-dr-restore"
    assert made.summary == (
        "CronJob tonebridge-db-quarterly-restore-test runs '0 3 1 1,4,7,10 *' (Asia/Tokyo): "
        "restores the latest logical backup from s3://tonebridge-backups/postgresql/"
        "tonebridge-db into a throwaway PostgreSQL in the test Job, then runs 4 checks; RTO 4h")


def test_plan_refuses_what_the_policy_cannot_serve() -> None:
    redis = _document("02-redis-backup/backuppolicy.yaml")
    redis["metadata"].update(namespace=NS, uid="r")
    refused = plan.plan_test(_parsed(source={"policyRef": {"name": "tonebridge-redis"}}),
                             BackupPolicy.from_body(redis), RunnerSettings())
    assert isinstance(refused, plan.Refusal) and refused.reason == Reason.INVALID_SPEC


def test_decide() -> None:
    made = plan.plan_test(_parsed(), BackupPolicy.from_body(policy_body()), RunnerSettings())
    assert isinstance(made, plan.TestPlan)
    reader, _key, hook = made.secrets
    missing = [secrets.SecretProblem(reader, ("AWS_SECRET_ACCESS_KEY",))]
    decided = plan.decide(made, missing, service_account_missing=False)
    assert (decided.apply, decided.ready, decided.reason) == (
        False, False, Reason.SECRET_KEY_NOT_FOUND)
    assert decided.message.endswith("the test's CronJob is left unchanged until it exists")
    only_hook = plan.decide(made, [secrets.SecretProblem(hook)], service_account_missing=False)
    assert (only_hook.apply, only_hook.ready, only_hook.reason) == (
        True, False, Reason.SECRET_NOT_FOUND)
    no_account = plan.decide(made, [], service_account_missing=True)
    assert (no_account.apply, no_account.ready, no_account.reason) == (
        True, False, Reason.SERVICE_ACCOUNT_NOT_FOUND)
    fine = plan.decide(made, [], service_account_missing=False)
    assert (fine.apply, fine.ready, fine.message) == (True, True, made.summary)


# --- reconcile ----------------------------------------------------------------------------


def test_reconcile_applies_the_cronjob_and_says_ready(fake: FakeKube) -> None:
    body = ready_world(fake)
    controller = controller_for(fake)
    assert controller.reconcile(body, Cause(Trigger.CREATE)) is None
    (cronjob,) = fake.applied
    assert cronjob["kind"] == "CronJob" and cronjob["spec"]["schedule"] == "0 3 1 1,4,7,10 *"
    status = status_of(fake)
    assert cond(status, "Ready")[:2] == ("True", "Reconciled")
    assert status["observedGeneration"] == 2 and status["source"] == "tonebridge-db"
    assert fake.events == []
    writes = fake.status_writes
    controller.reconcile(fake.objects[("RestoreTest", NS, "tonebridge-db-quarterly")],
                         Cause(Trigger.RESUME))
    assert fake.status_writes == writes and len(fake.applied) == 2  # applied, nothing new


@pytest.mark.parametrize(
    ("break_world", "reason", "words", "applied"),
    [
        (lambda f: f.objects.pop(("BackupPolicy", NS, "tonebridge-db")), "PolicyNotFound",
         'BackupPolicy "tonebridge-db" not found in namespace "tonebridge"', False),
        (lambda f: f.secrets.pop("tonebridge-backup-reader"), "SecretNotFound",
         'Secret "tonebridge-backup-reader" (repository read credentials) not found', False),
        (lambda f: f.secrets.update({"tonebridge-restore-gpg": {}}), "SecretKeyNotFound",
         'Secret "tonebridge-restore-gpg" (OpenPGP private key) has no key "private.asc"',
         False),
        (lambda f: f.secrets.pop("slack-webhook"), "SecretNotFound",
         'Secret "slack-webhook" (webhook URL) not found', True),
        (lambda f: f.objects.pop(("ServiceAccount", NS, "tonebridge-dr-restore")),
         "ServiceAccountNotFound", 'ServiceAccount "tonebridge-dr-restore"', True),
    ],
)
def test_what_is_missing_is_ready_false_and_looked_for_again(
    fake: FakeKube, break_world: Callable[[FakeKube], object], reason: str, words: str,
    applied: bool,
) -> None:
    body = ready_world(fake)
    break_world(fake)
    controller = controller_for(fake)
    waiting = controller.reconcile(body, Cause(Trigger.CREATE))
    assert waiting is not None and words in waiting  # the skeleton retries
    state, found, message = cond(status_of(fake), "Ready")
    assert (state, found) == ("False", reason) and words in message
    assert bool(fake.applied) is applied
    assert fake.reasons() == [reason]
    controller.reconcile(fake.objects[("RestoreTest", NS, "tonebridge-db-quarterly")],
                         Cause(Trigger.TIMER))
    assert fake.reasons() == [reason]  # the same problem again is quiet


# --- run-now ------------------------------------------------------------------------------


def _annotated(fake: FakeKube, token: str) -> Json:
    body = fake.objects[("RestoreTest", NS, "tonebridge-db-quarterly")]
    body["metadata"].setdefault("annotations", {})["dr.tonebridge.io/run-now"] = token
    return copy.deepcopy(body)


def test_run_now_starts_one_job_and_the_run_is_running(fake: FakeKube) -> None:
    ready_world(fake, suspend=True)
    controller = controller_for(fake)
    job_name = runnow.handle(controller, _annotated(fake, "t1"))
    assert job_name is not None and job_name.startswith("tonebridge-db-quarterly-restore-test-now-")
    job = fake.objects[("Job", NS, job_name)]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "rt-uid"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "restore-test", "postgres"]
    status = status_of(fake)
    assert status["lastRun"] == {"startedAt": "2030-01-01T03:30:00Z", "result": "Running",
                                 "jobName": job_name}
    assert fake.reasons() == ["RestoreTestStarted"]
    annotations = fake.objects[("RestoreTest", NS, "tonebridge-db-quarterly")]["metadata"][
        "annotations"]
    assert annotations["dr.tonebridge.io/run-now-handled"] == "t1"
    assert runnow.handle(controller, _annotated(fake, "t1")) is None  # handled already
    # The watch sees the run-now Job: nothing new (no second Event).
    record.observe(controller, fake.objects[("Job", NS, job_name)], False)
    assert fake.reasons() == ["RestoreTestStarted"]


def test_run_now_is_refused_without_the_policy(fake: FakeKube) -> None:
    ready_world(fake)
    fake.objects.pop(("BackupPolicy", NS, "tonebridge-db"))
    controller = controller_for(fake)
    assert runnow.handle(controller, _annotated(fake, "t2")) is None
    ((kind, reason, message),) = fake.events
    assert (kind, reason) == ("Warning", "RunNowRefused") and "tonebridge-db" in message
    assert not [key for key in fake.objects if key[0] == "Job"]


# --- Jobs -> status -----------------------------------------------------------------------


def scheduled_job(fake: FakeKube, name: str, *, finished: str | None = None) -> Json:
    """A Job the test's CronJob made (owned by the CronJob), running or finished."""
    cronjob = fake.objects[("CronJob", NS, "tonebridge-db-quarterly-restore-test")]
    conditions = [job_condition(finished, when="2030-01-01T03:20:00Z")] if finished else []
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": NS, "uid": f"{name}-uid",
            "labels": dict(cronjob["spec"]["jobTemplate"]["metadata"]["labels"]),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                                 "name": cronjob["metadata"]["name"], "uid": "cj-uid",
                                 "controller": True}],
            "creationTimestamp": "2030-01-01T03:00:00Z",
        },
        "status": {"startTime": "2030-01-01T03:00:00Z", "conditions": conditions},
    }
    return fake.put(job)


def checks_failed_pod(fake: FakeKube, job: str) -> None:
    payload = {
        "name": "tonebridge-db-quarterly", "engine": "postgres", "method": "logical",
        "backup_id": "b-1", "restore_duration_seconds": 600, "rto_seconds": 14400,
        "rto_met": True, "passed": False,
        "checks": [{"name": "users-present", "passed": False, "value": 0,
                    "message": "expected at least 1, got 0"}],
        "error": "ChecksFailed", "message": "1 of 1 checks failed", "exit_code": 15,
    }
    pod = make_pod(f"{job}-p", created="2030-01-01T03:00:00Z", exit_code=15,
                   message=json.dumps(payload), job_name=job, job_uid=f"{job}-uid")
    fake.put({**pod, "metadata": {**pod["metadata"], "namespace": NS}})


def test_a_scheduled_run_flows_into_status_events_notifications_and_metrics(
    fake: FakeKube, webhook: WebhookReceiver,
) -> None:
    body = ready_world(fake)
    fake.secrets["slack-webhook"] = {"url": webhook.url}
    metrics = Metrics()
    controller = controller_for(fake, metrics)
    controller.reconcile(body, Cause(Trigger.CREATE))

    running = scheduled_job(fake, "q-1")
    record.observe(controller, running, False)
    assert status_of(fake)["lastRun"]["result"] == "Running"
    assert fake.reasons() == ["RestoreTestStarted"]

    done = scheduled_job(fake, "q-1", finished="Failed")
    checks_failed_pod(fake, "q-1")
    assert record.wanted(done)
    record.observe(controller, done, False)
    status = status_of(fake)
    assert status["lastRun"]["result"] == "Failed" and status["runCount"] == 1
    assert status["lastRun"]["checks"] == [{"name": "users-present", "passed": False,
                                            "value": "0",
                                            "message": "expected at least 1, got 0"}]
    assert cond(status, "Passed")[:2] == ("False", "ChecksFailed")
    assert cond(status, "RTOMet")[:2] == ("True", "RTOMet")
    assert fake.reasons() == ["RestoreTestStarted", "RestoreTestFailed"]
    (sent,) = webhook.payloads()
    assert (sent["event"], sent["state"], sent["policy"]) == (
        "RestoreTestFailed", "Failed", "tonebridge-db-quarterly")
    recorded = fake.objects[("Job", NS, "q-1")]
    assert recorded["metadata"]["annotations"][jobs.ANNOTATION_RECORDED] == "failed"
    assert not record.wanted(recorded)
    text = metrics.render().decode()
    labels = f'namespace="{NS}",restore_test="tonebridge-db-quarterly"'
    assert f"tonebridge_dr_restore_test_passed{{{labels}}} 0.0" in text
    assert f"tonebridge_dr_restore_test_duration_seconds{{{labels}}} 600.0" in text

    # Seen again (a restart before the annotation): nothing is counted or sent twice.
    record.finish(controller, controller.parse(fake.objects[("RestoreTest", NS,
                                                             "tonebridge-db-quarterly")]),
                  fake.objects[("RestoreTest", NS, "tonebridge-db-quarterly")], done)
    assert status_of(fake)["runCount"] == 1 and len(webhook.payloads()) == 1
    assert fake.reasons() == ["RestoreTestStarted", "RestoreTestFailed"]

    # The metrics come back from the status after an operator restart.
    fresh = Metrics()
    restarted = controller_for(fake, fresh)
    restarted.reconcile(fake.objects[("RestoreTest", NS, "tonebridge-db-quarterly")],
                        Cause(Trigger.RESUME))
    assert f"tonebridge_dr_restore_test_passed{{{labels}}} 0.0" in fresh.render().decode()
    fresh.forget_restore_test(NS, "tonebridge-db-quarterly")
    assert "restore_test=" not in fresh.render().decode()


def test_a_running_job_that_is_deleted_fails_the_run(fake: FakeKube) -> None:
    body = ready_world(fake)
    controller = controller_for(fake)
    controller.reconcile(body, Cause(Trigger.CREATE))
    job = scheduled_job(fake, "q-2")
    record.observe(controller, job, False)
    record.observe(controller, job, True)
    status = status_of(fake)
    assert status["lastRun"]["result"] == "Failed"
    assert cond(status, "Passed")[:2] == ("False", "JobDeleted")
    assert fake.reasons() == ["RestoreTestStarted", "RestoreTestFailed"]
    assert "was deleted before it finished" in fake.events[-1][2]


def test_jobs_of_other_owners_are_ignored(fake: FakeKube) -> None:
    body = ready_world(fake)
    controller = controller_for(fake)
    controller.reconcile(body, Cause(Trigger.CREATE))
    stranger = scheduled_job(fake, "other")
    stranger["metadata"]["ownerReferences"] = []
    stranger["metadata"]["labels"]["dr.tonebridge.io/restore-test"] = "nobody"
    record.observe(controller, stranger, False)
    assert "lastRun" not in status_of(fake)
