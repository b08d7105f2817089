"""rolloutRestart: `kubectl rollout restart` of a Deployment, StatefulSet or DaemonSet,
then wait until the rollout is complete, judged as `kubectl rollout status` does.

The restart sets the pod template annotation RESTARTED_AT by server-side apply (field
manager FIELD_MANAGER). Its value (the time of the first call that made it, UTC, to the
second) goes into the memo and is set once: later calls only watch the rollout. A value
already on the workload that is not older than the step's start is adopted instead of
restarting again (an earlier process set it, and its memo write was lost).

Complete means the controller observed the new generation and:
- Deployment: every replica updated and available, no old replicas left (no older
  ReplicaSet of the Deployment still has pods); ProgressDeadlineExceeded fails the step;
- StatefulSet (RollingUpdate): every replica ready and available, updateRevision ==
  currentRevision (with a partition: the replicas above it updated);
- DaemonSet (RollingUpdate): updatedNumberScheduled and numberAvailable reach
  desiredNumberScheduled.
A paused Deployment or an OnDelete update strategy fails the step before anything is
changed: the restart would never roll out. Drill: the same apply as a server-side dry run;
the diff is `{"restartedAt": {"from": ..., "to": ...}}` and the workload is not changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.failoverplan import Step, WorkloadKind
from tonebridge_dr.controller.core import kube
from tonebridge_dr.controller.core.kube import ApiError, Json
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, outcomes
from tonebridge_dr.controller.failoverplan.steps.service import FIELD_MANAGER

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
REVISION = "deployment.kubernetes.io/revision"

KINDS: dict[WorkloadKind, kube.Kind] = {
    WorkloadKind.DEPLOYMENT: kube.DEPLOYMENT,
    WorkloadKind.STATEFUL_SET: kube.STATEFULSET,
    WorkloadKind.DAEMON_SET: kube.DAEMONSET,
}


def stamp(moment: dt.datetime) -> str:
    """RFC 3339 in UTC, to the second (what RESTARTED_AT holds)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def restarted_at(workload: Mapping[str, Any]) -> str | None:
    template = (workload.get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)


def _status_numbers(workload: Mapping[str, Any]) -> tuple[int, int, Json, Json]:
    metadata, spec = workload.get("metadata") or {}, workload.get("spec") or {}
    status = workload.get("status") or {}
    return (
        int(metadata.get("generation") or 0),
        int(status.get("observedGeneration") or 0),
        spec,
        status,
    )


def deployment_progress(deployment: Json, replica_sets: list[Json]) -> tuple[str, str]:
    """("done" | "waiting" | "failed", what the rollout is at) of a Deployment, with the
    ReplicaSets of its namespace."""
    generation, observed, spec, status = _status_numbers(deployment)
    if observed < generation:
        return "waiting", "waiting for the deployment controller to see the change"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and (
            condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return "failed", f"rollout exceeded its progress deadline: {condition.get('message')}"
    replicas = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < replicas:
        return "waiting", f"{updated} of {replicas} replicas updated"
    if total > updated:
        return "waiting", f"{total - updated} old replicas pending termination"
    if available < updated:
        return "waiting", f"{available} of {updated} updated replicas available"
    uid = deployment["metadata"].get("uid")
    revision = (deployment["metadata"].get("annotations") or {}).get(REVISION)
    old = [
        rs["metadata"]["name"]
        for rs in replica_sets
        if any(o.get("uid") == uid for o in rs["metadata"].get("ownerReferences") or [])
        and (rs["metadata"].get("annotations") or {}).get(REVISION) != revision
        and int((rs.get("status") or {}).get("replicas") or 0) > 0
    ]
    if old:
        return "waiting", f"old ReplicaSets still have pods: {', '.join(sorted(old))}"
    return "done", f"{available} of {replicas} replicas updated and available"


def statefulset_progress(statefulset: Json) -> tuple[str, str]:
    generation, observed, spec, status = _status_numbers(statefulset)
    if observed < generation:
        return "waiting", "waiting for the statefulset controller to see the change"
    replicas = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if ready < replicas:
        return "waiting", f"{ready} of {replicas} replicas ready"
    if available < replicas:
        return "waiting", f"{available} of {replicas} replicas available"
    rolling = ((spec.get("updateStrategy") or {}).get("rollingUpdate") or {})
    partition = int(rolling.get("partition") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    if partition:
        above = replicas - partition
        if updated < above:
            return "waiting", f"{updated} of {above} replicas above the partition updated"
        return "done", f"{updated} replicas above partition {partition} updated"
    if status.get("updateRevision") != status.get("currentRevision"):
        return "waiting", f"{updated} of {replicas} replicas updated"
    return "done", f"{ready} of {replicas} replicas updated and ready"


def daemonset_progress(daemonset: Json) -> tuple[str, str]:
    generation, observed, _spec, status = _status_numbers(daemonset)
    if observed < generation:
        return "waiting", "waiting for the daemonset controller to see the change"
    desired = int(status.get("desiredNumberScheduled") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    available = int(status.get("numberAvailable") or 0)
    if updated < desired:
        return "waiting", f"{updated} of {desired} pods updated"
    if available < desired:
        return "waiting", f"{available} of {desired} updated pods available"
    return "done", f"{available} of {desired} pods updated and available"


def _cannot_roll(kind: WorkloadKind, workload: Json) -> str | None:
    spec = workload.get("spec") or {}
    if kind == WorkloadKind.DEPLOYMENT:
        return "is paused: a restart would not roll out" if spec.get("paused") else None
    if (spec.get("updateStrategy") or {}).get("type") == "OnDelete":
        return "has updateStrategy OnDelete: a restart would not replace its pods"
    return None


class RolloutRestartExecutor:
    """The rolloutRestart step (see the module docstring)."""

    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        action = step.rollout_restart
        if action is None:
            raise ValueError(f"step {ctx.step_name} has no rolloutRestart")
        namespace = action.namespace or ctx.namespace
        kind = KINDS[action.kind]
        where = f"{action.kind.value} {namespace}/{action.name}"
        try:
            workload = ctx.kube.get_or_none(kind, namespace, action.name)
        except ApiError as exc:
            return outcomes.api_failure(ctx, f"reading {where}", exc, memo)
        if workload is None:
            return outcomes.failed(f"{where} not found", memo)
        value = memo.get("restartedAt")
        current = restarted_at(workload)
        problem = _cannot_roll(action.kind, workload)
        if ctx.drill:
            if problem:
                return outcomes.failed(f"drill: {where} {problem}", memo)
            return self._drill(ctx, kind, namespace, action.name, where, current, memo)
        if value is None:
            if problem:
                return outcomes.failed(f"{where} {problem}", memo)
            moment = _parse(current)
            started = ctx.started_at.replace(microsecond=0)
            if started.tzinfo is None:
                started = started.replace(tzinfo=dt.UTC)
            if moment is not None and moment >= started:
                value = current  # set by an earlier call of this step whose memo was lost
            else:
                value = stamp(ctx.now)
                try:
                    ctx.kube.apply(_restart_patch(kind, namespace, action.name, value),
                                   field_manager=FIELD_MANAGER)
                except ApiError as exc:
                    return outcomes.api_failure(ctx, f"restarting {where}", exc, memo)
                return outcomes.waiting(
                    ctx, f"restarted {where} ({RESTARTED_AT}={value}); waiting for the rollout",
                    {**memo, "restartedAt": value},
                )
            memo = {**memo, "restartedAt": value}
        try:
            if action.kind == WorkloadKind.DEPLOYMENT:
                replica_sets = ctx.kube.list(kube.REPLICASET, namespace)
                state, note = deployment_progress(workload, replica_sets)
            elif action.kind == WorkloadKind.STATEFUL_SET:
                state, note = statefulset_progress(workload)
            else:
                state, note = daemonset_progress(workload)
        except ApiError as exc:
            return outcomes.api_failure(ctx, f"reading the ReplicaSets of {where}", exc, memo)
        if state == "done":
            return outcomes.succeeded(f"{where} restarted ({value}) and rolled out: {note}", memo)
        if state == "failed":
            return outcomes.failed(f"{where}: {note}", memo)
        return outcomes.waiting(ctx, f"waiting for the rollout of {where}: {note}", memo)

    @staticmethod
    def _drill(
        ctx: StepContext,
        kind: kube.Kind,
        namespace: str,
        name: str,
        where: str,
        current: str | None,
        memo: Mapping[str, Any],
    ) -> StepProgress:
        value = stamp(ctx.now)
        try:
            answer = ctx.kube.apply(
                _restart_patch(kind, namespace, name, value),
                field_manager=FIELD_MANAGER,
                dry_run=True,
            )
        except ApiError as exc:
            return outcomes.api_failure(ctx, f"dry run of restarting {where}", exc, memo)
        return outcomes.succeeded(
            f"drill: the API server accepted restarting {where} (dry run, nothing changed)",
            memo,
            {"restartedAt": {"from": current, "to": restarted_at(answer)}},
        )


def _restart_patch(kind: kube.Kind, namespace: str, name: str, value: str) -> Json:
    """The apply configuration: only the restart annotation is this field manager's."""
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}},
    }
