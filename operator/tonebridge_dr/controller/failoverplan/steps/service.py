"""switchService: point a Service at other pods (e.g. the promoted standby).

The selector is replaced by server-side apply as the field manager FIELD_MANAGER (a
Service selector is an atomic map: the applied selector replaces the whole old one,
and keys the plan does not name are gone). The step then waits until the Service's
EndpointSlices (label kubernetes.io/service-name) list at least one endpoint and only
ready endpoints of pods that match the new selector: then traffic reaches the new pods
and nothing else.

Idempotent: a Service that already has the wanted selector is not written again (the
step still checks its EndpointSlices). Once this step has applied its selector (memo
`applied`), a selector changed afterwards by someone else fails the step instead of
being switched back. Drill: the same apply as a server-side dry run (dryRun=All);
the diff is `{"selector": {"from": ..., "to": ...}}` and the Service is not changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tonebridge_dr.api.failoverplan import Step
from tonebridge_dr.controller.core import kube
from tonebridge_dr.controller.core.kube import ApiError, Json
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepProgress, outcomes

FIELD_MANAGER = "tonebridge-dr-failover"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def selector_text(selector: Mapping[str, str]) -> str:
    """`a=1,b=2`: a label selector, and how selectors read in messages."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def _ready(endpoint: Mapping[str, Any]) -> bool:
    # discovery/v1: an unset `ready` means unknown, which consumers treat as ready.
    return (endpoint.get("conditions") or {}).get("ready") is not False


def endpoints_state(
    slices: list[Json], matching_pods: list[Json]
) -> tuple[bool, str]:
    """(whether the slices list only ready endpoints of `matching_pods`, at least one;
    a sentence saying what they list)."""
    uids = {pod["metadata"].get("uid") for pod in matching_pods}
    endpoints = [e for s in slices for e in s.get("endpoints") or []]
    ours = [e for e in endpoints if (e.get("targetRef") or {}).get("uid") in uids]
    others = len(endpoints) - len(ours)
    ready = [e for e in ours if _ready(e)]
    names = sorted(str((e.get("targetRef") or {}).get("name")) for e in ready)
    text = (
        f"{len(ready)} of {len(matching_pods)} matching pods are ready endpoints"
        + (f" ({', '.join(names)})" if names else "")
    )
    if others:
        text += f", {others} endpoints of other pods still listed"
    if len(ready) < len(ours):
        text += f", {len(ours) - len(ready)} not ready"
    return bool(ready) and not others and len(ready) == len(endpoints), text


class SwitchServiceExecutor:
    """The switchService step (see the module docstring)."""

    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        action = step.switch_service
        if action is None:
            raise ValueError(f"step {ctx.step_name} has no switchService")
        name, wanted = action.service, dict(action.selector)
        where = f"Service {ctx.namespace}/{name}"
        try:
            service = ctx.kube.get_or_none(kube.SERVICE, ctx.namespace, name)
        except ApiError as exc:
            return outcomes.api_failure(ctx, f"reading {where}", exc, memo)
        if service is None:
            return outcomes.failed(f"{where} not found", memo)
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            return outcomes.failed(f"{where} is of type ExternalName: it has no selector", memo)
        current = dict(spec.get("selector") or {})
        if ctx.drill:
            return self._drill(ctx, name, where, current, wanted, memo)
        if current != wanted:
            if memo.get("applied"):
                return outcomes.failed(
                    f"the selector of {where} was changed to {selector_text(current)!r} after "
                    f"this step set {selector_text(wanted)!r}; not switching it again",
                    memo,
                )
            try:
                ctx.kube.apply(_selector_patch(ctx.namespace, name, wanted),
                               field_manager=FIELD_MANAGER)
            except ApiError as exc:
                return outcomes.api_failure(ctx, f"switching {where}", exc, memo)
            memo = {**memo, "applied": True, "from": current}
            return outcomes.waiting(
                ctx,
                f"switched the selector of {where} from {selector_text(current)!r} to "
                f"{selector_text(wanted)!r}; waiting for its EndpointSlices",
                memo,
            )
        try:
            pods = ctx.kube.list(kube.POD, ctx.namespace, label_selector=selector_text(wanted))
            slices = ctx.kube.list(
                kube.ENDPOINT_SLICE, ctx.namespace, label_selector=f"{SERVICE_NAME_LABEL}={name}"
            )
        except ApiError as exc:
            return outcomes.api_failure(ctx, f"reading the EndpointSlices of {where}", exc, memo)
        done, state = endpoints_state(slices, pods)
        if done:
            return outcomes.succeeded(
                f"{where} selects {selector_text(wanted)!r}: {state}", memo
            )
        return outcomes.waiting(
            ctx,
            f"waiting for the EndpointSlices of {where} to list only ready pods matching "
            f"{selector_text(wanted)!r}: {state}",
            memo,
        )

    def _drill(
        self,
        ctx: StepContext,
        name: str,
        where: str,
        current: dict[str, str],
        wanted: dict[str, str],
        memo: Mapping[str, Any],
    ) -> StepProgress:
        try:
            pods = ctx.kube.list(kube.POD, ctx.namespace, label_selector=selector_text(wanted))
        except ApiError as exc:
            return outcomes.api_failure(ctx, f"listing the pods {where} would select", exc, memo)
        ready = [p for p in pods if _pod_ready(p)]
        pods_note = f"{len(ready)} ready pods of {len(pods)} match {selector_text(wanted)!r}"
        if current == wanted:
            return outcomes.succeeded(
                f"drill: {where} already selects {selector_text(wanted)!r}; nothing would "
                f"change ({pods_note})",
                memo,
                {},
            )
        try:
            answer = ctx.kube.apply(
                _selector_patch(ctx.namespace, name, wanted),
                field_manager=FIELD_MANAGER,
                dry_run=True,
            )
        except ApiError as exc:
            return outcomes.api_failure(ctx, f"dry run of switching {where}", exc, memo)
        result = dict((answer.get("spec") or {}).get("selector") or {})
        return outcomes.succeeded(
            f"drill: the API server accepted switching {where} from {selector_text(current)!r} "
            f"to {selector_text(result)!r} (dry run, nothing changed; {pods_note})",
            memo,
            {"selector": {"from": current, "to": result}},
        )


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _selector_patch(namespace: str, name: str, selector: Mapping[str, str]) -> Json:
    """The apply configuration: only the selector is this field manager's."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": dict(selector)},
    }
