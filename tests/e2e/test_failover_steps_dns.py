"""The updateDNS step executor against Route 53 on moto (server mode, 127.0.0.1), with its
credentials Secret in the sandbox's real API server."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from tests.e2e.failover_steps import context, run_step, step
from tests.fixtures.s3 import MotoServer, s3_env
from tonebridge_dr.api.failoverplan import Drill
from tonebridge_dr.controller.core.kube import Kube
from tonebridge_dr.controller.failoverplan.steps import StepContext, StepState
from tonebridge_dr.controller.failoverplan.steps.dns import UpdateDnsExecutor
from tonebridge_dr.sandbox.runtime import Sandbox

RECORD = "db.example.test"


@pytest.fixture
def kube(sandbox: Sandbox) -> Iterator[Kube]:
    client = Kube(sandbox.api_client())
    try:
        yield client
    finally:
        client.close()


def route53(url: str, key: str = "testing", secret: str = "testing") -> Any:
    return boto3.client("route53", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)


def new_zone(client: Any, name: str = "example.test.") -> str:
    zone = client.create_hosted_zone(Name=name, CallerReference=name + str(id(client)))
    return str(zone["HostedZone"]["Id"]).split("/")[-1]


def upsert(client: Any, zone: str, value: str, ttl: int = 300) -> None:
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{
        "Action": "UPSERT",
        "ResourceRecordSet": {"Name": RECORD, "Type": "CNAME", "TTL": ttl,
                              "ResourceRecords": [{"Value": value}]},
    }]})


def record(client: Any, zone: str) -> tuple[list[str], int] | None:
    answer = client.list_resource_record_sets(HostedZoneId=zone, StartRecordName=RECORD,
                                              StartRecordType="CNAME", MaxItems="1")
    for found in answer["ResourceRecordSets"]:
        if found["Name"] == RECORD + "." and found["Type"] == "CNAME":
            return [r["Value"] for r in found["ResourceRecords"]], int(found["TTL"])
    return None


def dns_step(zone: str, secret: str | None = None, value: str = "standby.example.test") -> Any:
    body: dict[str, Any] = {"hostedZoneId": zone, "recordName": RECORD, "recordType": "CNAME",
                            "values": [value], "ttl": 60}
    if secret:
        body["credentialsSecretRef"] = {"name": secret}
    return step({"name": "dns", "updateDNS": body})


def put_secret(kube: Kube, namespace: str, name: str, data: dict[str, str]) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": name, "namespace": namespace},
                 "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


@pytest.fixture
def zone(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh zone on the shared moto server, with db.example.test CNAME
    old-primary.example.test (TTL 300); the operator's AWS environment points at moto."""
    s3_env(monkeypatch, moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE_53", moto_server)
    client = route53(moto_server)
    zone_id = new_zone(client)
    upsert(client, zone_id, "old-primary.example.test")
    return zone_id


def without_operator_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator has no AWS identity: only a step's Secret can authenticate."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)


def test_update_dns_upserts_the_record_and_waits_for_insync(
    kube: Kube, namespace: str, moto_server: str, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_operator_credentials(monkeypatch)
    put_secret(kube, namespace, "route53", {"AWS_ACCESS_KEY_ID": "testing",
                                            "AWS_SECRET_ACCESS_KEY": "testing"})
    executor = UpdateDnsExecutor()
    the_step = dns_step(zone, "route53")

    final, seen = run_step(executor, the_step, lambda: context(kube, namespace))

    assert final.state == StepState.SUCCEEDED, final.message
    assert seen[0].state == StepState.RUNNING and seen[0].memo["changeId"]
    assert final.memo["changeId"] == seen[0].memo["changeId"]
    assert "INSYNC" in final.message
    client = route53(moto_server)
    assert record(client, zone) == (["standby.example.test"], 60)

    # Called again with its memo, it only asks for the change: it never submits again,
    # even when the record has been changed since.
    upsert(client, zone, "someone-else.example.test")
    again = executor.advance(the_step, context(kube, namespace), final.memo)
    assert again.state == StepState.SUCCEEDED
    assert record(client, zone) == (["someone-else.example.test"], 300)


def test_update_dns_of_a_record_that_already_holds_the_values_changes_nothing(
    kube: Kube, namespace: str, moto_server: str, zone: str
) -> None:
    upsert(route53(moto_server), zone, "standby.example.test.", ttl=60)

    progress = UpdateDnsExecutor().advance(dns_step(zone), context(kube, namespace), {})

    assert progress.state == StepState.SUCCEEDED, progress.message
    assert "already holds" in progress.message
    assert "changeId" not in progress.memo


def test_update_dns_drill_validates_and_reports_the_diff_without_submitting(
    kube: Kube, namespace: str, moto_server: str, zone: str
) -> None:
    progress = UpdateDnsExecutor().advance(
        dns_step(zone), context(kube, namespace, drill=True), {}
    )

    assert progress.state == StepState.SUCCEEDED, progress.message
    assert progress.diff == {
        "record": "db.example.test. CNAME",
        "values": {"from": ["old-primary.example.test"], "to": ["standby.example.test"]},
        "ttl": {"from": 300, "to": 60},
    }
    assert "changeId" not in progress.memo
    assert record(route53(moto_server), zone) == (["old-primary.example.test"], 300)


def test_update_dns_drill_refuses_what_route53_would_refuse(
    kube: Kube, namespace: str, moto_server: str, zone: str
) -> None:
    executor = UpdateDnsExecutor()
    drill = context(kube, namespace, drill=True)

    missing = executor.advance(dns_step("ZNOSUCHZONE1"), drill, {})
    outside = executor.advance(step({"updateDNS": {
        "hostedZoneId": zone, "recordName": "db.other.test", "values": ["x.example.test"]}}),
        drill, {})
    a_on_cname = executor.advance(step({"updateDNS": {
        "hostedZoneId": zone, "recordName": RECORD, "recordType": "A",
        "values": ["10.1.2.3"]}}), drill, {})

    assert missing.state == outside.state == a_on_cname.state == StepState.FAILED
    assert "reading hosted zone ZNOSUCHZONE1: NoSuchHostedZone" in missing.message
    assert "db.other.test. is not in hosted zone" in outside.message
    assert "is a CNAME in zone" in a_on_cname.message


def test_update_dns_drill_with_a_drill_zone_submits_there_only(
    kube: Kube, namespace: str, moto_server: str, zone: str
) -> None:
    client = route53(moto_server)
    drill_zone = new_zone(client)
    targets = Drill.model_validate({"hostedZoneId": drill_zone})  # the plan's spec.drill

    def drill_context() -> StepContext:
        return dataclasses.replace(context(kube, namespace, drill=True), drill_targets=targets)

    final, seen = run_step(UpdateDnsExecutor(), dns_step(zone), drill_context)

    assert final.state == StepState.SUCCEEDED, final.message
    assert seen[0].memo["zone"] == drill_zone
    assert record(client, drill_zone) == (["standby.example.test"], 60)
    assert record(client, zone) == (["old-primary.example.test"], 300)
    assert final.diff is not None
    assert final.diff["values"] == {"from": ["old-primary.example.test"],
                                    "to": ["standby.example.test"]}


def test_update_dns_without_its_credentials_secret_fails_naming_the_secret(
    kube: Kube, namespace: str, zone: str
) -> None:
    put_secret(kube, namespace, "half", {"AWS_ACCESS_KEY_ID": "AKIAHALF"})
    executor = UpdateDnsExecutor()

    missing = executor.advance(dns_step(zone, "route53-creds"), context(kube, namespace), {})
    half = executor.advance(dns_step(zone, "half"), context(kube, namespace), {})

    assert missing.state == half.state == StepState.FAILED
    assert f"Secret {namespace}/route53-creds is missing or lacks" in missing.message
    assert f"Secret {namespace}/half is missing or lacks" in half.message
    assert "AKIAHALF" not in half.message


@pytest.fixture
def authenticating_moto(start_moto: Callable[[], MotoServer], monkeypatch: pytest.MonkeyPatch
                        ) -> tuple[str, str]:
    """A private moto that checks credentials after its first request, which makes a zone
    with db.example.test; the operator itself has no AWS identity: (url, zone id).

    (moto 5.2 also refuses correctly signed Route 53 GET requests once it checks
    credentials, so only a refusal can be tested against it.)"""
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "1")
    server = start_moto()
    zone_id = new_zone(route53(server.url))
    s3_env(monkeypatch, server.url)
    without_operator_credentials(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE53", server.url)
    return server.url, zone_id


def test_update_dns_with_refused_credentials_fails_naming_the_secret_not_the_values(
    kube: Kube, namespace: str, authenticating_moto: tuple[str, str]
) -> None:
    _url, zone_id = authenticating_moto
    wrong = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG", "AWS_SECRET_ACCESS_KEY": "not-the-key",
             "AWS_SESSION_TOKEN": "session-token-value"}
    put_secret(kube, namespace, "wrong", wrong)

    refused = UpdateDnsExecutor().advance(dns_step(zone_id, "wrong"), context(kube, namespace),
                                          {})

    assert refused.state == StepState.FAILED
    # Not "no AWS credentials": the Secret's keys were sent, and refused.
    assert f"Route 53 refused the credentials in Secret {namespace}/wrong" in refused.message
    assert not any(value in refused.message for value in wrong.values())
    assert refused.memo == {}
