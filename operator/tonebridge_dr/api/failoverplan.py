"""FailoverPlan: how to detect a failure and recover, stage by stage in priority order."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StrictInt

from tonebridge_dr.api import formats
from tonebridge_dr.api.base import (
    DnsLabel,
    FreeForm,
    Matches,
    ObjectName,
    PositiveDuration,
    Rule,
    SpecModel,
    StatusModel,
    Time,
    unique,
)
from tonebridge_dr.api.common import LocalObjectRef, Notifications, SecretKeyRef, SecretRef
from tonebridge_dr.api.conditions import ConditionList
from tonebridge_dr.api.restorerequest import RestoreRequestSpec, RestoreTarget

__all__ = [
    "DnsProvider",
    "DnsRecordType",
    "Drill",
    "DrillPromotePostgres",
    "EscalationStatus",
    "FailoverMode",
    "FailoverPhase",
    "FailoverPlanSpec",
    "FailoverPlanStatus",
    "HealthCheck",
    "HealthCheckKind",
    "HealthState",
    "HealthStatus",
    "PromotePostgres",
    "RestoreRequestStep",
    "RolloutRestart",
    "Stage",
    "StageState",
    "StageStatus",
    "Step",
    "StepKind",
    "StepRunState",
    "StepStatus",
    "SwitchService",
    "Trigger",
    "UpdateDNS",
    "Wait",
    "WorkloadKind",
]

LabelValue = Annotated[
    str,
    Field(max_length=63),
    Matches(
        r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
        "must be a label value: letters, digits, '-', '_' and '.'",
    ),
]


class FailoverMode(StrEnum):
    """What the plan is allowed to do."""

    AUTOMATIC = "automatic"
    """Run the stages as soon as the health check declares the primary down."""
    MANUAL = "manual"
    """Watch and report health; run the stages only when a person asks."""
    DRILL = "drill"
    """Rehearsal (spec 11.2): run every step against copies or as a dry run and record
    timings; production traffic is never switched."""


class HealthCheckKind(StrEnum):
    """How the target is probed."""

    POSTGRES = "postgres"
    """PostgreSQL protocol handshake (like pg_isready)."""
    TCP = "tcp"
    """TCP connect."""
    HTTP = "http"
    """HTTP GET answering 2xx."""


def _target_matches(kind: HealthCheckKind, target: str) -> bool:
    regex = formats.HTTP_URL_RE if kind == HealthCheckKind.HTTP else formats.HOST_PORT_RE
    return re.search(regex, target) is not None


class HealthCheck(SpecModel):
    """A periodic probe with HAProxy-style hysteresis (`check inter 2000 rise 2 fall 3`)."""

    kind: HealthCheckKind
    """postgres, tcp or http."""
    target: Annotated[str, Field(min_length=1, max_length=512)]
    """host:port for postgres and tcp (e.g. 10.0.1.10:5432); an http(s):// URL for http."""
    interval_seconds: Annotated[StrictInt, Field(ge=1, le=3600)] = 2
    """Seconds between probes."""
    timeout_seconds: Annotated[StrictInt, Field(ge=1, le=600)] = 5
    """Seconds before a probe counts as failed."""
    rise: Annotated[StrictInt, Field(ge=1, le=100)] = 2
    """Consecutive successes before the target counts as up."""
    fall: Annotated[StrictInt, Field(ge=1, le=100)] = 3
    """Consecutive failures before the target counts as down."""

    cel_rules = (
        Rule(
            f"self.kind == 'http' ? self.target.matches(r'{formats.HTTP_URL_RE}')"
            f" : self.target.matches(r'{formats.HOST_PORT_RE}')",
            "target must be host:port for kind postgres or tcp (e.g. 10.0.1.10:5432) "
            "and an http:// or https:// URL for kind http",
            lambda h: _target_matches(h.kind, h.target),
        ),
    )


class Trigger(SpecModel):
    """What starts the plan in automatic mode."""

    health_check: HealthCheck
    """The plan starts when this check declares the target down."""


class PromotePostgres(SpecModel):
    """Promote a streaming standby to primary with pg_promote()."""

    dsn_secret_ref: SecretKeyRef
    """Secret key holding a connection string to the standby, as a role allowed to run
    pg_promote()."""
    wait_seconds: Annotated[StrictInt, Field(ge=1, le=3600)] = 60
    """How long to wait for the promotion to finish."""


class SwitchService(SpecModel):
    """Point a Service at other pods by replacing its selector (e.g. the promoted standby)."""

    service: ObjectName
    """Service in the plan's namespace."""
    selector: Annotated[dict[str, LabelValue], Field(min_length=1, max_length=16)]
    """The new selector."""


class DnsProvider(StrEnum):
    """DNS services that can be updated."""

    ROUTE53 = "route53"


class DnsRecordType(StrEnum):
    """DNS record types."""

    A = "A"
    AAAA = "AAAA"
    CNAME = "CNAME"


class UpdateDNS(SpecModel):
    """UPSERT one DNS record (Route 53 change-resource-record-sets)."""

    provider: DnsProvider = DnsProvider.ROUTE53
    """DNS service."""
    hosted_zone_id: Annotated[
        str, Field(max_length=32), Matches(formats.HOSTED_ZONE_RE, formats.HOSTED_ZONE_MESSAGE)
    ]
    """Hosted zone, e.g. Z1234567890ABC."""
    record_name: Annotated[
        str, Field(max_length=253), Matches(formats.DNS_NAME_RE, formats.DNS_NAME_MESSAGE)
    ]
    """Record to change, e.g. db.tonebridge.io."""
    record_type: DnsRecordType = DnsRecordType.CNAME
    """A, AAAA or CNAME."""
    values: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=255)]],
        Field(min_length=1, max_length=8),
    ]
    """New record values (addresses, or one host name for CNAME)."""
    ttl: Annotated[StrictInt, Field(ge=1, le=172800)] = 60
    """TTL in seconds."""
    credentials_secret_ref: SecretRef | None = None
    """AWS credentials allowed to change the zone (default: the operator's identity)."""

    cel_rules = (
        Rule(
            "self.recordType != 'CNAME' || size(self.values) == 1",
            "a CNAME record takes exactly one value",
            lambda d: d.record_type != DnsRecordType.CNAME or len(d.values) == 1,
        ),
    )


class WorkloadKind(StrEnum):
    """Workloads that can be restarted."""

    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"


class RolloutRestart(SpecModel):
    """`kubectl rollout restart` of a workload, waiting until it is rolled out."""

    kind: WorkloadKind = WorkloadKind.DEPLOYMENT
    """Deployment, StatefulSet or DaemonSet."""
    name: ObjectName
    """Workload name."""
    namespace: DnsLabel | None = None
    """Namespace (default: the plan's)."""


class RestoreRequestStep(SpecModel):
    """Create a RestoreRequest and wait until it succeeds."""

    spec: RestoreRequestSpec
    """Spec of the RestoreRequest to create (named <plan>-<stage>-<step>)."""
    drill_target: RestoreTarget | None = None
    """Drill mode: restore for real into this scratch target (the spec's target replaced);
    without it a drill only validates the RestoreRequest (server-side dry run)."""


class Wait(SpecModel):
    """Pause, e.g. for DNS TTLs to expire."""

    duration: PositiveDuration
    """How long to wait."""


class StepKind(StrEnum):
    """The actions a step can take (the name of its one action field)."""

    PROMOTE_POSTGRES = "promotePostgres"
    SWITCH_SERVICE = "switchService"
    UPDATE_DNS = "updateDNS"
    ROLLOUT_RESTART = "rolloutRestart"
    RESTORE_REQUEST = "restoreRequest"
    WAIT = "wait"
    CHECK = "check"


class Step(SpecModel):
    """One action of a stage: exactly one of promotePostgres, switchService, updateDNS,
    rolloutRestart, restoreRequest, wait, check."""

    name: DnsLabel | None = None
    """Label of the step in status and Events (default: its action and position)."""
    timeout: PositiveDuration | None = None
    """Give up on the step (and fail the stage) after this long."""
    promote_postgres: PromotePostgres | None = None
    """Promote a PostgreSQL standby."""
    switch_service: SwitchService | None = None
    """Repoint a Service."""
    update_dns: UpdateDNS | None = None
    """Change a DNS record."""
    rollout_restart: RolloutRestart | None = None
    """Restart a workload."""
    restore_request: RestoreRequestStep | None = None
    """Restore data."""
    wait: Wait | None = None
    """Pause."""
    check: HealthCheck | None = None
    """Wait until a health check passes (`rise` successes in a row)."""

    cel_rules = (
        Rule(
            "(has(self.promotePostgres) ? 1 : 0) + (has(self.switchService) ? 1 : 0)"
            " + (has(self.updateDNS) ? 1 : 0) + (has(self.rolloutRestart) ? 1 : 0)"
            " + (has(self.restoreRequest) ? 1 : 0) + (has(self.wait) ? 1 : 0)"
            " + (has(self.check) ? 1 : 0) == 1",
            "each step needs exactly one action: promotePostgres, switchService, updateDNS, "
            "rolloutRestart, restoreRequest, wait or check",
            lambda s: len(s.actions()) == 1,
        ),
    )

    def actions(self) -> list[StepKind]:
        """The action fields that are set (exactly one once validated)."""
        return [
            kind
            for kind, value in (
                (StepKind.PROMOTE_POSTGRES, self.promote_postgres),
                (StepKind.SWITCH_SERVICE, self.switch_service),
                (StepKind.UPDATE_DNS, self.update_dns),
                (StepKind.ROLLOUT_RESTART, self.rollout_restart),
                (StepKind.RESTORE_REQUEST, self.restore_request),
                (StepKind.WAIT, self.wait),
                (StepKind.CHECK, self.check),
            )
            if value is not None
        ]

    @property
    def kind(self) -> StepKind:
        """The step's action."""
        return self.actions()[0]


class Stage(SpecModel):
    """A group of steps that recovers one system, with its own recovery time objective."""

    name: DnsLabel
    """Stage name, e.g. auth, database, api-gateway."""
    priority: Annotated[StrictInt, Field(ge=1, le=99)]
    """Recovery order, 1 first (spec 10.1)."""
    rto: PositiveDuration
    """Target time from the start of the failover until this stage is done."""
    description: Annotated[str, Field(max_length=1024)] | None = None
    """Why this stage matters (spec 10.1 reason column)."""
    steps: Annotated[list[Step], Field(min_length=1, max_length=16)]
    """Steps, run one after the other."""


class DrillPromotePostgres(SpecModel):
    """A throwaway standby (or clone) a drill may really promote."""

    dsn_secret_ref: SecretKeyRef
    """Secret key holding a connection string to the throwaway standby."""


class Drill(SpecModel):
    """Copies a drill may act on instead of production (spec 11.2)."""

    promote_postgres: DrillPromotePostgres | None = None
    """promotePostgres steps promote this standby in a drill (without it a drill only
    checks that the production standby is reachable and in recovery)."""
    hosted_zone_id: Annotated[
        str, Field(max_length=32), Matches(formats.HOSTED_ZONE_RE, formats.HOSTED_ZONE_MESSAGE)
    ] | None = None
    """updateDNS steps submit their change to this zone in a drill (without it a drill only
    validates the change against the production zone)."""


class FailoverPlanSpec(SpecModel):
    """A disaster-recovery runbook the operator can execute."""

    mode: FailoverMode = FailoverMode.MANUAL
    """automatic, manual (default) or drill."""
    trigger: Trigger | None = None
    """Health check that decides when the primary is down."""
    stages: Annotated[
        list[Stage],
        Field(
            min_length=1,
            max_length=16,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ]
    """Stages in priority order."""
    notifications: Notifications | None = None
    """Webhook notifications and escalation for failovers."""
    drill: Drill | None = None
    """Throwaway copies drills act on (mode: drill)."""
    policy_ref: LocalObjectRef | None = None
    """A BackupPolicy in this namespace whose repository keeps the report of every run
    (drills and real failovers, under `drills/`, listed by `tonebridge-dr drills list`) and
    an audit record of it; without one the report is only in status and an Event."""

    cel_rules = (
        Rule(None, "stage names must be unique", lambda p: unique(p.stages, "name")),
        Rule(
            "self.mode != 'automatic' || has(self.trigger)",
            "mode: automatic needs trigger.healthCheck to decide when to fail over",
            lambda p: p.mode != FailoverMode.AUTOMATIC or p.trigger is not None,
        ),
        Rule(
            "self.stages.map(s, s.priority).isSorted()",
            "stages must be listed in priority order (lowest priority number first)",
            lambda p: [s.priority for s in p.stages] == sorted(s.priority for s in p.stages),
        ),
    )


class FailoverPhase(StrEnum):
    """Lifecycle of a FailoverPlan."""

    IDLE = "Idle"
    """Nothing watched, nothing running (manual or drill mode without a run)."""
    MONITORING = "Monitoring"
    """The health check runs and no run is in progress or waiting for a reset (the
    shipped value kept: monitoring reads it; not renamed to Watching)."""
    RUNNING = "Running"
    """Stages are being executed."""
    SUCCEEDED = "Succeeded"
    """The last (real) run finished every stage; stays until dr.tonebridge.io/reset."""
    FAILED = "Failed"
    """The last (real) run stopped at a failed step; stays until dr.tonebridge.io/reset."""
    DRILL_SUCCEEDED = "DrillSucceeded"
    """The last drill finished every stage (nothing in production changed)."""
    DRILL_FAILED = "DrillFailed"
    """The last drill stopped at a failed step (nothing in production changed)."""


class StageState(StrEnum):
    """State of one stage in a run."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class StepRunState(StrEnum):
    """State of one step in a run."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class StepStatus(StatusModel):
    """Progress of one step, as its executor last reported it."""

    name: str
    """Step name (its own, or <action>-<position>)."""
    kind: str
    """The step's action, e.g. promotePostgres."""
    state: StepRunState
    """Pending, Running, Succeeded, Failed or Skipped."""
    started_at: Time | None = None
    """When the step started."""
    completed_at: Time | None = None
    """When it finished."""
    message: str | None = None
    """What the step did or waits for (never a secret)."""
    memo: FreeForm | None = None
    """Facts the step keeps between ticks and operator restarts (what it already did)."""
    diff: FreeForm | None = None
    """Drill: what a real run would change."""


class StageStatus(StatusModel):
    """Progress of one stage, with elapsed time against its RTO."""

    name: str
    """Stage name."""
    state: StageState
    """Pending, Running, Succeeded, Failed or Skipped."""
    started_at: Time | None = None
    """When the stage started."""
    completed_at: Time | None = None
    """When it finished."""
    elapsed_seconds: Annotated[float, Field(ge=0)] | None = None
    """Seconds from the start of the failover to the end of this stage (or now)."""
    rto_seconds: Annotated[float, Field(ge=0)] | None = None
    """The stage's target, in seconds."""
    rto_met: bool | None = None
    """Whether the stage finished within its target."""
    current_step: str | None = None
    """Step running now."""
    message: str | None = None
    """Last error or progress note."""
    steps: list[StepStatus] | None = None
    """Per-step progress."""


class HealthState(StrEnum):
    """The target after rise/fall hysteresis."""

    UNKNOWN = "Unknown"
    UP = "Up"
    DOWN = "Down"


class HealthStatus(StatusModel):
    """Latest health-check results."""

    state: HealthState | None = None
    """Up, Down or Unknown (not yet `rise` successes or `fall` failures in a row)."""
    healthy: bool | None = None
    """Whether the target counts as up (after rise/fall hysteresis)."""
    consecutive_successes: Annotated[int, Field(ge=0)] | None = None
    """Successful probes in a row."""
    consecutive_failures: Annotated[int, Field(ge=0)] | None = None
    """Failed probes in a row."""
    last_probe_time: Time | None = None
    """When the target was last probed."""
    message: str | None = None
    """Result of the last probe."""
    last_error: str | None = None
    """The last failed probe's error."""
    last_transition_time: Time | None = None
    """When `state` last changed."""


class EscalationStatus(StatusModel):
    """An open problem (a run in progress or failed, the target down) and the escalation
    levels already notified (spec 10.2)."""

    opened_at: Time
    """When the problem was opened (level times count from here)."""
    reason: str
    """What is open, e.g. "the target is down"."""
    notified_levels: list[int] | None = None
    """Levels already handed to the notifier."""


class FailoverPlanStatus(StatusModel):
    """Observed state of a FailoverPlan and of its current or last run."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation last reconciled."""
    conditions: ConditionList | None = None
    """Ready, Healthy, RTOMet."""
    phase: FailoverPhase | None = None
    """Idle, Monitoring, Running, Succeeded, Failed, DrillSucceeded or DrillFailed."""
    run_mode: FailoverMode | None = None
    """Mode of the current or last run (drill runs never switch traffic)."""
    current_stage: str | None = None
    """Stage running now."""
    triggered_at: Time | None = None
    """When the current or last run started."""
    triggered_by: str | None = None
    """What started it (health check, a person, a drill schedule)."""
    completed_at: Time | None = None
    """When the last run finished."""
    run_token: str | None = None
    """The dr.tonebridge.io/failover-now value that started the current or last run."""
    elapsed: str | None = None
    """Time from the start of the current or last run to now or its end, e.g. 1m30s."""
    stages: list[StageStatus] | None = None
    """Per-stage progress of the current or last run."""
    health: HealthStatus | None = None
    """Latest health-check results."""
    escalation: EscalationStatus | None = None
    """The open problem being escalated (absent when nothing is open)."""
    reset_token: str | None = None
    """The dr.tonebridge.io/reset value handled last."""
    kopf: FreeForm | None = None
    """Reserved for the kopf framework's own bookkeeping."""
