"""The six-stage business-continuity plan of examples/04-failover/failoverplan-region.yaml
(auth 30m -> database 1h -> api-gateway 1h30m -> llm-service 2h -> cache 3h -> monitoring
4h) rehearsed in drill mode end to end: the operator as a real process against the
sandbox (Deployments and StatefulSets of placeholder pods, a Service), a real PostgreSQL
primary and streaming standby, moto's Route 53, HTTP health endpoints the test serves.

Only what cannot exist here is rewritten: addresses point at 127.0.0.1, the hosted zone id
is moto's, the monitoring workloads live in the test namespace, the one-minute wait is one
second, and the mode is drill. Every step is rehearsed; the drill report has each stage's
time against its RTO and the diffs; production is untouched: the primary takes writes,
the standby stays in recovery, the Service selector, the workload templates and the DNS
record are unchanged, no RestoreRequest exists.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml

from tests.fixtures import EXAMPLES
from tests.fixtures import s3 as s3_fixtures
from tests.fixtures.operator import (
    apply_docs,
    get_json,
    policy_doc,
    s3_secrets,
    secret_doc,
    wait_for,
)
from tests.fixtures.postgres import PgFactory, PgServer
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

RECORD = "db.tonebridge.io"
OLD_VALUE = "primary-db.ap-northeast-1.tonebridge.io"
WORKLOADS = {"Deployment": ["auth-service", "gateway", "llm-service", "grafana"],
             "StatefulSet": ["redis", "prometheus"]}


class Health:
    """An HTTP endpoint answering 200 on /healthz (the targets of http checks)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/healthz" else 404)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def health() -> Iterator[Health]:
    item = Health()
    yield item
    item.close()


def _workload(kind: str, name: str) -> dict[str, Any]:
    labels = {"app": name}
    spec: dict[str, Any] = {
        "replicas": 1,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels},
                     "spec": {"terminationGracePeriodSeconds": 1,
                              "containers": [{"name": "main", "image": f"{name}:1"}]}},
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _cli_json(moto_server: str, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL_S3=moto_server, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    done = subprocess.run([sys.executable, "-m", "tonebridge_dr.cli", *args, "--json"],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def _zone(moto_server: str) -> tuple[Any, str]:
    """A moto Route 53 client and a fresh tonebridge.io. zone where RECORD is a CNAME to
    OLD_VALUE (TTL 300): what production points at before a failover."""
    route53 = boto3.client("route53", endpoint_url=moto_server, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    zone = str(route53.create_hosted_zone(
        Name="tonebridge.io.", CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
    ).split("/")[-1]
    route53.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{
        "Action": "UPSERT", "ResourceRecordSet": {
            "Name": RECORD, "Type": "CNAME", "TTL": 300,
            "ResourceRecords": [{"Value": OLD_VALUE}]}}]})
    return route53, zone


def _dsn(server: PgServer) -> str:
    return (f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres "
            f"password={server.password}")


def _in_recovery(server: PgServer) -> bool:
    return bool(server.query("postgres", "SELECT pg_is_in_recovery()")[0][0])


def _plan(zone: str, health_url: str, primary: PgServer) -> dict[str, Any]:
    """The example, with only what cannot exist here rewritten (module docstring)."""
    plan = yaml.safe_load((EXAMPLES / "04-failover" / "failoverplan-region.yaml").read_text())
    spec = plan["spec"]
    spec["mode"] = "drill"
    spec["trigger"]["healthCheck"].update(target=health_url, intervalSeconds=1)
    for stage in spec["stages"]:
        for step in stage["steps"]:
            if "check" in step:
                step["check"]["target"] = (
                    f"127.0.0.1:{primary.port}" if step["check"]["kind"] == "postgres"
                    else health_url)
            if "updateDNS" in step:
                step["updateDNS"]["hostedZoneId"] = zone
            if "wait" in step:
                step["wait"]["duration"] = "1s"
            if "rolloutRestart" in step:
                step["rolloutRestart"].pop("namespace", None)
    return plan


def _workloads(sandbox: Sandbox, namespace: str) -> dict[str, dict[str, Any]]:
    found = {}
    for kind, names in WORKLOADS.items():
        for name in names:
            body = get_json(sandbox, namespace, kind.lower(), name)
            found[name] = {"generation": body["metadata"]["generation"],
                           "template": body["spec"]["template"]}
    return found


def test_the_six_stage_region_plan_rehearses_end_to_end(
    sandbox: Sandbox, namespace: str, pg_factory: PgFactory, moto_server: str,
    health: Health, operator_factory: Any,
) -> None:
    primary = pg_factory.start("fp-region-primary")
    standby = pg_factory.start_standby(primary, "fp-region-standby")
    wait_for(lambda: _in_recovery(standby), 60, message="the standby to run")
    route53, zone = _zone(moto_server)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tonebridge-postgres"},
               "spec": {"selector": {"app": "postgres", "region": "ap-northeast-1"},
                        "ports": [{"port": 5432}]}}
    plan = _plan(zone, health.url, primary)
    plan["spec"]["policyRef"] = {"name": "reports"}  # where the drill report is kept
    bucket = s3_fixtures.new_bucket(moto_server)
    apply_docs(
        sandbox, namespace,
        secret_doc("db-dsn", {"dsn": _dsn(primary)}),
        *s3_secrets(f"w-{uuid.uuid4().hex}", f"r-{uuid.uuid4().hex}"),
        policy_doc("reports", repo_url=f"s3://{bucket}/dr", endpoint=moto_server),
        *[_workload(kind, name) for kind, names in WORKLOADS.items() for name in names],
        service,
        secret_doc("tonebridge-db-standby-admin", {"dsn": _dsn(standby)}),
        secret_doc("route53-failover", {"AWS_ACCESS_KEY_ID": "testing",
                                        "AWS_SECRET_ACCESS_KEY": "testing"}),
        secret_doc("slack-webhook", {"url": "http://127.0.0.1:9/never-called"}),
        plan,
    )
    before = _workloads(sandbox, namespace)
    op = operator_factory(namespace, env={"AWS_ENDPOINT_URL_ROUTE53": moto_server,
                                          "AWS_REGION": "us-east-1"})
    wait_for(lambda: ((get_json(sandbox, namespace, "failoverplan", "tonebridge-region")
                       .get("status") or {}).get("health") or {}).get("state") == "Up",
             60, message=op.log_tail)
    sandbox.kubectl("annotate", "-n", namespace, "failoverplan/tonebridge-region",
                    "dr.tonebridge.io/failover-now=annual-drill", "--overwrite")

    def finished() -> dict[str, Any] | None:
        status = get_json(sandbox, namespace, "failoverplan", "tonebridge-region").get(
            "status") or {}
        return status if status.get("phase") in ("DrillSucceeded", "DrillFailed") else None

    report = wait_for(finished, 180, message=op.log_tail)
    failed = [s for s in report.get("stages") or [] if s["state"] != "Succeeded"]
    assert report["phase"] == "DrillSucceeded", json.dumps(failed)[:4000]
    stages = report["stages"]
    assert [s["name"] for s in stages] == ["auth", "database", "api-gateway", "llm-service",
                                           "cache", "monitoring"]
    rtos = [s["rtoSeconds"] for s in stages]
    assert rtos == [1800, 3600, 5400, 7200, 10800, 14400]
    for stage in stages:
        assert stage["state"] == "Succeeded" and stage["rtoMet"] is True, stage
        assert 0 <= stage["elapsedSeconds"] <= stage["rtoSeconds"]
    elapsed = [s["elapsedSeconds"] for s in stages]
    assert elapsed == sorted(elapsed)  # measured from the start of the failover, in order
    steps = {(stage["name"], step["name"]): step for stage in stages for step in stage["steps"]}
    diffs = [step.get("diff") for step in steps.values()]
    assert all(step["state"] == "Succeeded" for step in steps.values())
    assert sum(1 for d in diffs if d) >= 9  # promote, switch, DNS, 6 restarts, restore
    print("drill report:", json.dumps([{k: s[k] for k in ("name", "elapsedSeconds",
                                                          "rtoSeconds", "rtoMet")}
                                       for s in stages]))

    # Production is untouched.
    assert _in_recovery(standby)
    primary.execute("postgres", "CREATE TABLE after_drill (id int)")
    svc = get_json(sandbox, namespace, "service", "tonebridge-postgres")
    assert svc["spec"]["selector"] == {"app": "postgres", "region": "ap-northeast-1"}
    assert _workloads(sandbox, namespace) == before
    records = route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    cname = [r for r in records if r["Name"] == RECORD + "." and r["Type"] == "CNAME"]
    assert [v["Value"] for v in cname[0]["ResourceRecords"]] == [OLD_VALUE]
    assert get_json(sandbox, namespace, "restorerequests")["items"] == []

    # The drill report is kept in the policy's repository, checksummed, with an audit record.
    def stored() -> list[dict[str, Any]] | None:
        found = _cli_json(moto_server, "drills", "list", "--repo", f"s3://{bucket}/dr/reports")
        return found or None

    (kept,) = wait_for(stored, 60, message=op.log_tail)
    assert (kept["plan"], kept["namespace"], kept["mode"], kept["phase"], kept["token"]) == (
        "tonebridge-region", namespace, "drill", "DrillSucceeded", "annual-drill")
    assert kept["checksum"] == "ok" and kept["rto_met"] is True
    assert [s["name"] for s in kept["stages"]] == [s["name"] for s in stages]
    assert any(step.get("diff") for s in kept["stages"] for step in s["steps"])
    audit = _cli_json(moto_server, "audit", "list", "--repo", f"s3://{bucket}/dr/reports",
                      "--operation", "failover")
    assert len(audit) == 1 and audit[0]["details"]["report"] == kept["key"]


def test_automatic_failover_promotes_switches_rolls_out_and_updates_dns(
    sandbox: Sandbox, namespace: str, pg_factory: PgFactory, moto_server: str,
    operator_factory: Any,
) -> None:
    """Automatic mode for real: the primary stops; after `fall` failed probes the standby is
    promoted and takes writes, the Service selects the new pods (its EndpointSlice lists
    them), the Deployment rolled out (a new ReplicaSet), the Route 53 record holds the new
    value; status shows each stage's elapsed time and rtoMet."""
    primary = pg_factory.start("fp-auto-primary")
    standby = pg_factory.start_standby(primary, "fp-auto-standby")
    wait_for(lambda: _in_recovery(standby), 60, message="the standby to run")
    route53, zone = _zone(moto_server)
    standby_pods = _workload("Deployment", "postgres-standby")
    standby_pods["spec"]["template"]["metadata"]["labels"] = {"app": "postgres-standby",
                                                              "role": "standby"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
               "spec": {"selector": {"app": "postgres-primary"}, "ports": [{"port": 5432}]}}
    stages = [
        {"name": "database", "priority": 1, "rto": "2m", "steps": [
            {"name": "promote", "promotePostgres": {
                "dsnSecretRef": {"name": "standby-admin", "key": "dsn"}}},
            {"name": "switch", "switchService": {"service": "db",
                                                 "selector": {"role": "standby"}}},
            {"name": "dns", "updateDNS": {
                "hostedZoneId": zone, "recordName": RECORD, "recordType": "CNAME",
                "values": ["standby-db.us-west-2.tonebridge.io"], "ttl": 60,
                "credentialsSecretRef": {"name": "route53-failover"}}},
        ]},
        {"name": "api", "priority": 2, "rto": "4m", "steps": [
            {"name": "restart", "rolloutRestart": {"name": "gateway"}},
        ]},
    ]
    plan = {"apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "FailoverPlan",
            "metadata": {"name": "db-failover"},
            "spec": {"mode": "automatic", "stages": stages, "trigger": {"healthCheck": {
                "kind": "postgres", "target": f"127.0.0.1:{primary.port}",
                "intervalSeconds": 1, "timeoutSeconds": 1, "rise": 1, "fall": 3}}}}
    apply_docs(
        sandbox, namespace, _workload("Deployment", "gateway"), standby_pods, service,
        secret_doc("standby-admin", {"dsn": _dsn(standby)}),
        secret_doc("route53-failover", {"AWS_ACCESS_KEY_ID": "testing",
                                        "AWS_SECRET_ACCESS_KEY": "testing"}),
        plan,
    )
    op = operator_factory(namespace, env={"AWS_ENDPOINT_URL_ROUTE53": moto_server,
                                          "AWS_REGION": "us-east-1"})
    wait_for(lambda: ((get_json(sandbox, namespace, "failoverplan", "db-failover")
                       .get("status") or {}).get("health") or {}).get("state") == "Up",
             60, message=op.log_tail)
    before = get_json(sandbox, namespace, "deployment", "gateway")["metadata"]["generation"]
    primary.stop()

    def finished() -> dict[str, Any] | None:
        status = get_json(sandbox, namespace, "failoverplan", "db-failover").get(
            "status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    done = wait_for(finished, 180, message=op.log_tail)
    failed = [s for s in done.get("stages") or [] if s["state"] != "Succeeded"]
    assert done["phase"] == "Succeeded", json.dumps(failed)[:4000]
    for stage in done["stages"]:
        assert stage["rtoMet"] is True and 0 < stage["elapsedSeconds"] <= stage["rtoSeconds"]
    # promoted, and takes writes
    assert not _in_recovery(standby)
    standby.execute("postgres", "CREATE TABLE after_failover (id int)")
    # the Service selects the standby's pods, and its EndpointSlice lists them
    assert get_json(sandbox, namespace, "service", "db")["spec"]["selector"] == {
        "role": "standby"}
    slices = get_json(sandbox, namespace, "endpointslices")["items"]
    endpoints = [e for s in slices
                 if s["metadata"]["labels"].get("kubernetes.io/service-name") == "db"
                 for e in s.get("endpoints") or []]
    assert endpoints and all(e["conditions"]["ready"] for e in endpoints)
    # the Deployment rolled out: a new generation, a new ReplicaSet, complete
    gateway = get_json(sandbox, namespace, "deployment", "gateway")
    assert gateway["metadata"]["generation"] > before
    annotations = gateway["spec"]["template"]["metadata"].get("annotations") or {}
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    sets = [r for r in get_json(sandbox, namespace, "replicasets")["items"]
            if r["metadata"]["name"].startswith("gateway-")]
    assert len(sets) == 2
    assert gateway["status"].get("updatedReplicas") == 1
    # the DNS record holds the new value
    records = route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    cname = [r for r in records if r["Name"] == RECORD + "." and r["Type"] == "CNAME"]
    assert [v["Value"] for v in cname[0]["ResourceRecords"]] == [
        "standby-db.us-west-2.tonebridge.io"]
