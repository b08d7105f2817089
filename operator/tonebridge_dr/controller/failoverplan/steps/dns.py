"""updateDNS: UPSERT one Route 53 record, then wait until Route 53 reports the change INSYNC.

Credentials: the keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally
AWS_SESSION_TOKEN of the step's `credentialsSecretRef`, else the operator's own AWS
identity (botocore's usual chain). Endpoint and region come from the operator's standard
AWS environment: AWS_ENDPOINT_URL_ROUTE53 (also accepted spelled AWS_ENDPOINT_URL_ROUTE_53,
botocore's name) or AWS_ENDPOINT_URL; AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.

Idempotent: a record that already holds the wanted values and TTL is not changed; once
submitted, the change id is in the memo and later calls only ask GetChange (a submit is
never repeated). The first call that submits returns RUNNING even when Route 53 answers
INSYNC at once, so the change id is in the plan's status before the step succeeds.

Drill: validates the change against the production zone (the zone exists, the record
name belongs to it, the current record is readable, a CNAME would not collide with other
records of that name) and reports the diff without submitting anything; or, when the plan
names a drill zone (`spec.drill.hostedZoneId`), submits the change there and waits for
INSYNC. Secret values never appear in messages: a refused credential names the Secret.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from tonebridge_dr.api.failoverplan import DnsRecordType, Step, UpdateDNS
from tonebridge_dr.controller.failoverplan.steps import (
    StepContext,
    StepProgress,
    StepState,
    outcomes,
)

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_ROUTE53", "AWS_ENDPOINT_URL_ROUTE_53", "AWS_ENDPOINT_URL")
DEFAULT_REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
#: One call stays bounded: a few seconds to connect and answer, two retries inside it.
CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=5,
    read_timeout=10,
    retries={"mode": "standard", "max_attempts": 3},
)
_CREDENTIAL_CODES = frozenset({
    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
    "AccessDenied", "AccessDeniedException", "InvalidAccessKeyId", "ExpiredToken",
    "ExpiredTokenException", "InvalidSignatureException", "IncompleteSignature",
    "MissingAuthenticationToken", "AuthFailure",
})
_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "PriorRequestNotComplete", "ServiceUnavailable",
    "InternalError", "RequestTimeout",
})


class _Refused(Exception):
    """A failure already phrased for the step's message; `transient` when a retry may help."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def drill_hosted_zone(ctx: StepContext) -> str | None:
    """The plan's `spec.drill.hostedZoneId`, which the run engine hands over as
    `ctx.drill_targets` (read defensively: a context without that field has no zone)."""
    zone = getattr(getattr(ctx, "drill_targets", None), "hosted_zone_id", None)
    return zone if isinstance(zone, str) and zone else None


def endpoint_url() -> str | None:
    for name in ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def normalize_name(name: str) -> str:
    """Route 53 answers names lower-case, fully qualified, with `*` as \\052."""
    return name.replace("\\052", "*").rstrip(".").lower() + "."


def normalize_value(record_type: DnsRecordType, value: str) -> str:
    if record_type == DnsRecordType.CNAME:
        return value.rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def record_diff(action: UpdateDNS, current: Mapping[str, Any] | None) -> dict[str, Any]:
    """What an UPSERT of `action` changes in `current` (a ResourceRecordSet or None);
    {} when the record already holds the wanted values and TTL."""
    wanted = sorted(normalize_value(action.record_type, v) for v in action.values)
    have = None if current is None else sorted(
        normalize_value(action.record_type, r["Value"])
        for r in current.get("ResourceRecords") or []
    )
    ttl = None if current is None else current.get("TTL")
    diff: dict[str, Any] = {}
    if have != wanted or (current is not None and current.get("AliasTarget")):
        diff["values"] = {"from": have, "to": wanted}
    if ttl != action.ttl:
        diff["ttl"] = {"from": ttl, "to": action.ttl}
    if diff:
        diff["record"] = f"{normalize_name(action.record_name)} {action.record_type.value}"
    return diff


class UpdateDnsExecutor:
    """The updateDNS step (see the module docstring)."""

    def advance(self, step: Step, ctx: StepContext, memo: Mapping[str, Any]) -> StepProgress:
        action = step.update_dns
        if action is None:
            raise ValueError(f"step {ctx.step_name} has no updateDNS")
        secret = action.credentials_secret_ref.name if action.credentials_secret_ref else None
        whose = (
            f"the credentials in Secret {ctx.namespace}/{secret}"
            if secret else "the operator's AWS credentials"
        )
        try:
            client = self._client(ctx, secret)
            if not ctx.drill:
                return self._upsert(client, action, action.hosted_zone_id, ctx, memo, whose)
            drill_zone = drill_hosted_zone(ctx)
            if drill_zone is None:
                return self._validate(client, action, ctx, memo, whose)
            if "changeId" not in memo:
                checked = self._validate(client, action, ctx, memo, whose)
                if checked.state == StepState.FAILED:
                    return checked
                # The diff stays production's: what a real run would change.
                memo = {**memo, "diff": dict(checked.diff or {})}
            return self._upsert(client, action, drill_zone, ctx, memo, whose, drill=True)
        except _Refused as refused:
            if refused.transient:
                return outcomes.transient(ctx, str(refused), memo)
            return outcomes.failed(str(refused), memo)

    # -- the two forms ----------------------------------------------------------------

    def _upsert(
        self,
        client: Any,
        action: UpdateDNS,
        zone: str,
        ctx: StepContext,
        memo: Mapping[str, Any],
        whose: str,
        drill: bool = False,
    ) -> StepProgress:
        name = normalize_name(action.record_name)
        record = f"{name} {action.record_type.value} in hosted zone {zone}"
        prefix = "drill: " if drill else ""
        change_id = memo.get("changeId")
        if change_id:
            status = self._call(client.get_change, whose, f"asking for change {change_id}",
                                Id=change_id)["ChangeInfo"]["Status"]
            if status == "INSYNC":
                return outcomes.succeeded(
                    f"{prefix}{record} holds {', '.join(action.values)} (change {change_id} "
                    "INSYNC)", memo, memo.get("diff") if drill else None,
                )
            return outcomes.waiting(
                ctx, f"{prefix}waiting for change {change_id} of {record} to be INSYNC "
                f"(now {status})", memo,
            )
        current = self._current(client, zone, action, whose)
        if not record_diff(action, current):
            return outcomes.succeeded(
                f"{prefix}{record} already holds {', '.join(action.values)} "
                f"(TTL {action.ttl}); nothing to change", memo, memo.get("diff") if drill else None,
            )
        answer = self._call(
            client.change_resource_record_sets, whose, f"changing {record}",
            HostedZoneId=zone,
            ChangeBatch={
                "Comment": f"tonebridge-dr FailoverPlan {ctx.namespace}/{ctx.plan_name} "
                           f"stage {ctx.stage} step {ctx.step_name}"[:256],
                "Changes": [{
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": name,
                        "Type": action.record_type.value,
                        "TTL": action.ttl,
                        "ResourceRecords": [{"Value": v} for v in action.values],
                    },
                }],
            },
        )
        info = answer["ChangeInfo"]
        memo = {**memo, "changeId": info["Id"], "zone": zone}
        return StepProgress(
            StepState.RUNNING,
            f"{prefix}submitted UPSERT of {record} as change {info['Id']} ({info['Status']}); "
            "waiting for INSYNC",
            memo,
        )

    def _validate(
        self, client: Any, action: UpdateDNS, ctx: StepContext, memo: Mapping[str, Any],
        whose: str,
    ) -> StepProgress:
        zone_id = action.hosted_zone_id
        zone = self._call(client.get_hosted_zone, whose, f"reading hosted zone {zone_id}",
                          Id=zone_id)["HostedZone"]
        zone_name = normalize_name(str(zone["Name"]))
        name = normalize_name(action.record_name)
        if name != zone_name and not name.endswith("." + zone_name):
            return outcomes.failed(
                f"drill: {name} is not in hosted zone {zone_id} ({zone_name})", memo
            )
        records = self._records_at(client, zone_id, name, whose)
        if action.record_type == DnsRecordType.CNAME:
            others = sorted({r["Type"] for r in records} - {"CNAME"})
            if others:
                return outcomes.failed(
                    f"drill: {name} also has {', '.join(others)} records in zone {zone_id}: "
                    "Route 53 would refuse a CNAME there", memo,
                )
        elif any(r["Type"] == "CNAME" for r in records):
            return outcomes.failed(
                f"drill: {name} is a CNAME in zone {zone_id}: Route 53 would refuse an "
                f"{action.record_type.value} record there", memo,
            )
        if action.record_type != DnsRecordType.CNAME:
            version = 4 if action.record_type == DnsRecordType.A else 6
            bad = [v for v in action.values if not _is_ip(v, version)]
            if bad:
                return outcomes.failed(
                    f"drill: {', '.join(bad)} not an IPv{version} address for an "
                    f"{action.record_type.value} record", memo,
                )
        current = next((r for r in records if r["Type"] == action.record_type.value), None)
        diff = record_diff(action, current)
        what = "nothing would change" if not diff else (
            f"an UPSERT would change {name} {action.record_type.value}"
        )
        return outcomes.succeeded(
            f"drill: validated against hosted zone {zone_id} ({zone_name}): {what} "
            "(nothing submitted)", memo, diff,
        )

    # -- Route 53 -----------------------------------------------------------------------

    def _client(self, ctx: StepContext, secret: str | None) -> Any:
        credentials: dict[str, str] = {}
        if secret is not None:
            access = ctx.secret_value(secret, ACCESS_KEY)
            secret_key = ctx.secret_value(secret, SECRET_KEY)
            if not access or not secret_key:
                raise _Refused(
                    f"Secret {ctx.namespace}/{secret} is missing or lacks {ACCESS_KEY} and "
                    f"{SECRET_KEY} (credentialsSecretRef of updateDNS)"
                )
            credentials = {"aws_access_key_id": access, "aws_secret_access_key": secret_key}
            token = ctx.secret_value(secret, SESSION_TOKEN)
            if token:
                credentials["aws_session_token"] = token
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        session = boto3.session.Session(**credentials)  # type: ignore[arg-type]
        return session.client(
            "route53",
            region_name=region or DEFAULT_REGION,
            endpoint_url=endpoint_url(),
            config=CLIENT_CONFIG,
        )

    def _current(
        self, client: Any, zone: str, action: UpdateDNS, whose: str
    ) -> Mapping[str, Any] | None:
        name = normalize_name(action.record_name)
        for record in self._records_at(client, zone, name, whose):
            if record["Type"] == action.record_type.value and not record.get("SetIdentifier"):
                return dict(record)
        return None

    def _records_at(self, client: Any, zone: str, name: str, whose: str) -> list[Any]:
        """The record sets named `name` in `zone` (one page: at most a few types)."""
        answer = self._call(
            client.list_resource_record_sets, whose, f"reading {name} in hosted zone {zone}",
            HostedZoneId=zone, StartRecordName=name, MaxItems="20",
        )
        return [
            r for r in answer.get("ResourceRecordSets") or []
            if normalize_name(str(r.get("Name", ""))) == name
        ]

    @staticmethod
    def _call(method: Any, whose: str, doing: str, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except botocore.exceptions.NoCredentialsError:
            raise _Refused(f"{doing}: no AWS credentials (set credentialsSecretRef)") from None
        except botocore.exceptions.ClientError as exc:
            response: dict[str, Any] = dict(exc.response)
            error = response.get("Error") or {}
            code = str(error.get("Code") or "")
            status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            if code in _CREDENTIAL_CODES or status in (401, 403):
                raise _Refused(
                    f"{doing}: Route 53 refused {whose} ({code or f'HTTP {status}'})"
                ) from None
            message = str(error.get("Message") or "").strip()
            text = f"{doing}: {code or f'HTTP {status}'}" + (f": {message}" if message else "")
            raise _Refused(text, transient=code in _TRANSIENT_CODES or status >= 500) from None
        except (botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectTimeoutError,
                botocore.exceptions.ReadTimeoutError) as exc:
            raise _Refused(f"{doing}: Route 53 unreachable ({type(exc).__name__})",
                           transient=True) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _Refused(f"{doing}: {type(exc).__name__}") from None


def _is_ip(value: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(value).version == version
    except ValueError:
        return False
