"""restoreRequest: create a child RestoreRequest and wait until it succeeds.

The child is named `<plan>-<stage>-<step>` (shortened with a hash beyond 63 characters)
and owned by the plan (garbage-collected with it). Creating it is idempotent: a child
that already exists and was created by this step (its uid in the memo, or created after
the step started) is the one waited for; a child left by an earlier run fails the step
with a sentence asking to delete it (RestoreRequests are records, never replaced
silently). Done when the child's phase is Succeeded; its Failed phase fails the step with
the child's message.

Drill: with the step's `drillTarget` the child is created for real with that scratch
target (named `...-drill`); without it the child is only validated by the API server
(server-side dry-run create: schema, CEL rules, admission) and the diff names what a
real run would create.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.failoverplan import Step
from tonebridge_dr.api.kinds import API_VERSION, FAILOVER_PLAN, RESTORE_REQUEST
from tonebridge_dr.controller.core import kube
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, StepState

KIND = kube.Kind(API_VERSION, RESTORE_REQUEST.kind, RESTORE_REQUEST.plural)
MAX_NAME = 63
#: Clock skew tolerated between the API server's creationTimestamp and the step start.
SKEW = dt.timedelta(seconds=5)


def child_name(plan: str, stage: str, step: str, *, drill: bool = False) -> str:
    """`<plan>-<stage>-<step>[-drill]`, a valid object name: lower case (a default step
    name is its action's, e.g. restoreRequest-1), shortened with a digest when too long."""
    name = f"{plan}-{stage}-{step}".lower() + ("-drill" if drill else "")
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME - 9].rstrip('-')}-{digest}"


def child_body(step: Step, ctx: StepContext, name: str, *, drill_copy: bool) -> dict[str, Any]:
    action = step.restore_request
    assert action is not None
    spec = action.spec
    if drill_copy and action.drill_target is not None:
        spec = spec.model_copy(update={"target": action.drill_target})
    return {
        "apiVersion": API_VERSION,
        "kind": RESTORE_REQUEST.kind,
        "metadata": {
            "name": name,
            "namespace": ctx.namespace,
            "labels": {"app.kubernetes.io/managed-by": "tonebridge-dr",
                       "dr.tonebridge.io/failoverplan": ctx.plan_name},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": FAILOVER_PLAN.kind, "name": ctx.plan_name,
                "uid": ctx.plan_uid, "controller": True, "blockOwnerDeletion": False,
            }],
        },
        "spec": spec.model_dump(mode="json", exclude_none=True),
    }


def _created(obj: Mapping[str, Any]) -> dt.datetime | None:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


class RestoreRequestExecutor:
    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        action = step.restore_request
        assert action is not None
        drill_copy = ctx.drill and action.drill_target is not None
        name = child_name(ctx.plan_name, ctx.stage, ctx.step_name, drill=drill_copy)
        body = child_body(step, ctx, name, drill_copy=drill_copy)
        try:
            if ctx.drill and not drill_copy:
                return self._validate(ctx, body, name, memo)
            return self._run(ctx, body, name, memo)
        except kube.ApiError as exc:
            if exc.transient:
                return StepProgress(StepState.RUNNING, f"API trouble, retrying: {exc}", memo)
            return StepProgress(StepState.FAILED, f"RestoreRequest {name}: {exc}", memo)

    @staticmethod
    def _validate(ctx: StepContext, body: dict[str, Any], name: str,
                  memo: Mapping[str, Any]) -> StepProgress:
        try:
            ctx.kube.request("POST", KIND.collection(ctx.namespace), body=body,
                             query={"dryRun": "All", "fieldManager": ctx.kube.field_manager})
        except kube.ApiError as exc:
            if not exc.already_exists:
                raise
        return StepProgress(
            StepState.SUCCEEDED,
            f"RestoreRequest {name} validated by the API server (drill: not created)", memo,
            diff={"create": {"kind": RESTORE_REQUEST.kind, "name": name,
                             "spec": body["spec"]}})

    @staticmethod
    def _run(ctx: StepContext, body: dict[str, Any], name: str,
             memo: Mapping[str, Any]) -> StepProgress:
        child = ctx.kube.get_or_none(KIND, ctx.namespace, name)
        if child is None:
            child = ctx.kube.create(body)
            memo = {**memo, "name": name, "uid": (child.get("metadata") or {}).get("uid")}
            return StepProgress(StepState.RUNNING, f"RestoreRequest {name} created", memo)
        uid = (child.get("metadata") or {}).get("uid")
        created = _created(child)
        ours = memo.get("uid") == uid or (
            memo.get("uid") is None and created is not None
            and created >= ctx.started_at - SKEW
        )
        if not ours:
            return StepProgress(StepState.FAILED, f"RestoreRequest {name} exists from an "
                                "earlier run: delete it to run this step again", memo)
        memo = {**memo, "name": name, "uid": uid}
        status = child.get("status") or {}
        phase = status.get("phase") or "Pending"
        message = str(status.get("message") or "")
        if phase == "Succeeded":
            return StepProgress(StepState.SUCCEEDED, f"RestoreRequest {name} succeeded", memo)
        if phase == "Failed":
            return StepProgress(StepState.FAILED, f"RestoreRequest {name} failed: {message}",
                                memo)
        return StepProgress(StepState.RUNNING, f"RestoreRequest {name} {phase}"
                            + (f": {message}" if message else ""), memo)
