"""FailoverPlan end to end: the operator as a real process against the sandbox, a real
PostgreSQL primary with a streaming standby (`pg_basebackup -R`), TCP listeners the
test opens and closes, and a webhook receiver.

- automatic: the primary stops, `fall` failed probes later the standby is promoted and
  takes writes (the time from the stop to the first accepted write is printed), status
  shows each stage's elapsed time and rtoMet;
- a flapping target (down for fewer than `fall` probes) starts nothing;
- manual: health is reported, nothing runs until dr.tonebridge.io/failover-now, the
  token runs once, a new token before a reset is refused, reset lets it run again;
- drill: every step rehearsed, timings and diffs in status, production untouched (the
  primary takes writes, the standby stays in recovery, no RestoreRequest exists), a
  throwaway standby named in spec.drill is the one promoted;
- the operator killed after the promotion, during a later `wait`: restarted, it finishes
  the run without a second promotion (one new timeline, one promotion Event);
- a failing step fails its stage, the later stage never starts, escalation level 1 is
  sent at once and level 2 after its delay, each to its own webhook; notifications with
  only per-level webhooks are delivered; reset resolves the escalation.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.operator import (
    WebhookReceiver,
    apply_docs,
    get_columns,
    get_json,
    secret_doc,
    wait_for,
)
from tests.fixtures.postgres import PG_BIN, PgFactory, PgServer, clean_env
from tonebridge_dr.api.failoverplan import HealthCheck
from tonebridge_dr.controller.failoverplan import probes
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

KIND = "failoverplan"


# --- helpers ------------------------------------------------------------------------------
class Listener:
    """A TCP port the test opens and closes (the target of tcp health checks)."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.sock = sock
        self.thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self.thread.start()

    def _accept(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = sock.accept()
                conn.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None


@pytest.fixture
def listener() -> Iterator[Listener]:
    item = Listener()
    item.open()
    yield item
    item.close()


@pytest.fixture
def pair(pg_factory: PgFactory) -> tuple[PgServer, PgServer]:
    """A primary and its streaming standby (the standby has replayed a marker table)."""
    primary = pg_factory.start("fp-primary")
    primary.execute("postgres", "CREATE TABLE marker (id int)", "INSERT INTO marker VALUES (1)")
    standby = pg_factory.start_standby(primary, "fp-standby")
    wait_for(lambda: _in_recovery(standby), 60, message="the standby to run")
    return primary, standby


def _in_recovery(server: PgServer) -> bool:
    return bool(server.query("postgres", "SELECT pg_is_in_recovery()")[0][0])


def _accepts_writes(server: PgServer) -> bool:
    try:
        with server.connect("postgres", autocommit=True, connect_timeout=2) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS after_failover (id int)")
            conn.execute("INSERT INTO after_failover VALUES (1)")
        return True
    except psycopg.Error:
        return False


def _timelines(server: PgServer) -> list[str]:
    return sorted(p.name for p in (server.datadir / "pg_wal").glob("*.history"))


def _dsn(server: PgServer) -> str:
    return f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres " \
           f"password={server.password}"


def plan_doc(name: str, *, mode: str, stages: list[dict[str, Any]],
             trigger: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"mode": mode, "stages": stages, **extra}
    if trigger is not None:
        spec["trigger"] = {"healthCheck": trigger}
    return {"apiVersion": "dr.tonebridge.io/v1alpha1", "kind": "FailoverPlan",
            "metadata": {"name": name}, "spec": spec}


def _plan(sandbox: Sandbox, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_json(sandbox, namespace, KIND, name))


def _status(sandbox: Sandbox, namespace: str, name: str) -> dict[str, Any]:
    return dict(_plan(sandbox, namespace, name).get("status") or {})


def _phase_is(sandbox: Sandbox, namespace: str, name: str, *phases: str
              ) -> dict[str, Any] | None:
    status = _status(sandbox, namespace, name)
    return status if status.get("phase") in phases else None


def _health(sandbox: Sandbox, namespace: str, name: str) -> dict[str, Any]:
    return dict(_status(sandbox, namespace, name).get("health") or {})


def _failing(sandbox: Sandbox, namespace: str, name: str, at_least: int
             ) -> dict[str, Any] | None:
    health = _health(sandbox, namespace, name)
    return health if (health.get("consecutiveFailures") or 0) >= at_least else None


def _events(sandbox: Sandbox, namespace: str, name: str, reason: str | None = None
            ) -> list[dict[str, Any]]:
    items = get_json(sandbox, namespace, "events")["items"]
    return [e for e in items
            if e["involvedObject"].get("kind") == "FailoverPlan"
            and e["involvedObject"].get("name") == name
            and (reason is None or e.get("reason") == reason)]


def _annotate(sandbox: Sandbox, namespace: str, name: str, key: str, value: str) -> None:
    sandbox.kubectl("annotate", "-n", namespace, f"{KIND}/{name}",
                    f"dr.tonebridge.io/{key}={value}", "--overwrite")


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in status.get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return None


def _step(status: dict[str, Any], stage: str, step: str) -> dict[str, Any]:
    for item in status.get("stages") or []:
        if item["name"] == stage:
            for entry in item.get("steps") or []:
                if entry["name"] == step:
                    return dict(entry)
    raise AssertionError(f"no step {stage}/{step} in {json.dumps(status)[:2000]}")


# --- the postgres probe ---------------------------------------------------------------------
def _pg_isready(port: int) -> int:
    return subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port),
                           "-t", "2"], capture_output=True, env=clean_env(),
                          check=False).returncode


def test_postgres_probe_decides_like_pg_isready(pg_factory: PgFactory) -> None:
    """Accepting (0: up), rejecting (1: down, 57P03 of a standby without hot standby) and
    no response (2: down), each compared with the real pg_isready."""
    primary = pg_factory.start("probe-primary")
    rejecting = pg_factory.start_standby(primary, "probe-cold", hot_standby="off")

    def check(port: int) -> probes.ProbeResult:
        return probes.probe(HealthCheck.model_validate(
            {"kind": "postgres", "target": f"127.0.0.1:{port}", "timeoutSeconds": 2}))

    up = check(primary.port)
    assert (_pg_isready(primary.port), up.ok) == (0, True), up.message
    wait_for(lambda: _pg_isready(rejecting.port) == 1, 30, message="a rejecting standby")
    refused = check(rejecting.port)
    assert not refused.ok and "rejects connections" in refused.message
    rejecting.stop()
    primary.stop()
    gone = check(primary.port)
    assert (_pg_isready(primary.port), gone.ok) == (2, False), gone.message


# --- automatic ----------------------------------------------------------------------------
def test_automatic_failover_promotes_the_standby_when_the_primary_stops(
    sandbox: Sandbox, namespace: str, pair: tuple[PgServer, PgServer], operator_factory: Any,
) -> None:
    primary, standby = pair
    apply_docs(sandbox, namespace,
               secret_doc("standby-admin", {"dsn": _dsn(standby)}),
               plan_doc("db", mode="automatic",
                        trigger={"kind": "postgres", "target": f"127.0.0.1:{primary.port}",
                                 "intervalSeconds": 1, "timeoutSeconds": 1, "rise": 1,
                                 "fall": 3},
                        stages=[
                            {"name": "database", "priority": 1, "rto": "1m", "steps": [
                                {"name": "promote", "promotePostgres": {
                                    "dsnSecretRef": {"name": "standby-admin", "key": "dsn"}}},
                                {"check": {"kind": "postgres",
                                           "target": f"127.0.0.1:{standby.port}",
                                           "intervalSeconds": 1, "rise": 1}, "timeout": "30s"},
                            ]},
                            {"name": "api", "priority": 2, "rto": "1s",
                             "steps": [{"wait": {"duration": "2s"}}]},
                        ]))
    op = operator_factory(namespace)
    wait_for(lambda: _health(sandbox, namespace, "db").get("state") == "Up", 60,
             message=op.log_tail)
    status = _status(sandbox, namespace, "db")
    assert status["phase"] == "Monitoring" and "stages" not in status
    assert _condition(status, "Healthy")["status"] == "True"  # type: ignore[index]
    assert _condition(status, "Ready")["status"] == "True"  # type: ignore[index]

    lost = time.monotonic()
    primary.stop()
    wait_for(lambda: _accepts_writes(standby), 120, 0.05, message=op.log_tail)
    took = time.monotonic() - lost
    print(f"\nprimary loss -> promoted standby accepts writes: {took:.2f}s "
          "(intervalSeconds 1, timeoutSeconds 1, fall 3)")
    assert not _in_recovery(standby)

    done = wait_for(lambda: _phase_is(sandbox, namespace, "db", "Succeeded", "Failed"), 120,
                    message=op.log_tail)
    assert done["phase"] == "Succeeded", json.dumps(done)[:3000]
    assert done["health"]["state"] == "Down" and done["triggeredBy"].startswith("health check")
    database, api = done["stages"]
    assert database["state"] == "Succeeded" and database["rtoMet"] is True
    assert 0 < database["elapsedSeconds"] <= database["rtoSeconds"] == 60
    assert api["state"] == "Succeeded" and api["rtoMet"] is False  # 2 s wait > 1 s
    assert api["elapsedSeconds"] >= database["elapsedSeconds"]
    assert _step(done, "database", "promote")["memo"]["promoteIssued"] is True
    rto = _condition(done, "RTOMet")
    assert rto is not None and rto["status"] == "False" and "api" in rto["message"]
    columns = get_columns(sandbox, namespace, "fp", "db")
    assert (columns["MODE"], columns["HEALTH"], columns["PHASE"]) == ("automatic", "Down",
                                                                     "Succeeded")
    assert columns["ELAPSED"].endswith("s")
    assert len(_events(sandbox, namespace, "db", "TargetDown")) == 1
    assert len(_events(sandbox, namespace, "db", "FailoverStarted")) == 1
    # Succeeded stays: the target is still down and nothing runs again.
    wait_for(lambda: (_health(sandbox, namespace, "db").get("consecutiveFailures") or 0) >= 8,
             60, message=op.log_tail)
    assert _status(sandbox, namespace, "db")["phase"] == "Succeeded"
    assert len(_events(sandbox, namespace, "db", "FailoverStarted")) == 1


def test_a_flapping_target_starts_nothing(
    sandbox: Sandbox, namespace: str, listener: Listener, operator_factory: Any,
) -> None:
    apply_docs(sandbox, namespace, plan_doc(
        "flappy", mode="automatic",
        trigger={"kind": "tcp", "target": listener.target, "intervalSeconds": 1,
                 "timeoutSeconds": 1, "rise": 1, "fall": 5},
        stages=[{"name": "s", "priority": 1, "rto": "1m",
                 "steps": [{"wait": {"duration": "1s"}}]}]))
    op = operator_factory(namespace)
    wait_for(lambda: _health(sandbox, namespace, "flappy").get("state") == "Up", 60,
             message=op.log_tail)
    worst = 0
    for _flap in range(3):
        listener.close()
        # Reopen after two failed probes: three probes (3 s) short of `fall`.
        health = wait_for(lambda: _failing(sandbox, namespace, "flappy", 2), 60, 0.05,
                          message=op.log_tail)
        listener.open()
        worst = max(worst, health["consecutiveFailures"])
        wait_for(lambda: (_health(sandbox, namespace, "flappy").get("consecutiveSuccesses")
                          or 0) >= 2, 60, message=op.log_tail)
    status = _status(sandbox, namespace, "flappy")
    assert 2 <= worst < 5
    assert status["health"]["state"] == "Up" and status["phase"] == "Monitoring"
    assert "stages" not in status and "triggeredAt" not in status
    assert _events(sandbox, namespace, "flappy", "TargetDown") == []
    assert _events(sandbox, namespace, "flappy", "FailoverStarted") == []


# --- manual, reset ------------------------------------------------------------------------
def test_manual_plan_reports_health_and_runs_once_per_token(
    sandbox: Sandbox, namespace: str, listener: Listener, operator_factory: Any,
) -> None:
    apply_docs(sandbox, namespace, plan_doc(
        "by-hand", mode="manual",
        trigger={"kind": "tcp", "target": listener.target, "intervalSeconds": 1,
                 "rise": 1, "fall": 2},
        stages=[{"name": "only", "priority": 1, "rto": "1m",
                 "steps": [{"wait": {"duration": "1s"}}]}]))
    op = operator_factory(namespace)
    wait_for(lambda: (_health(sandbox, namespace, "by-hand").get("consecutiveSuccesses")
                      or 0) >= 2, 60, message=op.log_tail)
    listener.close()  # down: manual mode reports it and runs nothing
    wait_for(lambda: _health(sandbox, namespace, "by-hand").get("state") == "Down", 60,
             message=op.log_tail)
    wait_for(lambda: (_health(sandbox, namespace, "by-hand").get("consecutiveFailures")
                      or 0) >= 4, 60, message=op.log_tail)
    status = _status(sandbox, namespace, "by-hand")
    assert status["phase"] == "Monitoring" and "stages" not in status
    assert _condition(status, "Healthy")["status"] == "False"  # type: ignore[index]

    _annotate(sandbox, namespace, "by-hand", "failover-now", "t1")
    done = wait_for(lambda: _phase_is(sandbox, namespace, "by-hand", "Succeeded", "Failed"),
                    60, message=op.log_tail)
    assert done["phase"] == "Succeeded" and done["runToken"] == "t1"
    assert done["triggeredBy"] == "dr.tonebridge.io/failover-now=t1"
    first_run = done["triggeredAt"]
    annotations = _plan(sandbox, namespace, "by-hand")["metadata"]["annotations"]
    assert annotations["dr.tonebridge.io/failover-now-handled"] == "t1"

    _annotate(sandbox, namespace, "by-hand", "failover-now", "t2")  # before a reset
    wait_for(lambda: _events(sandbox, namespace, "by-hand", "FailoverNowRefused"), 30,
             message=op.log_tail)
    assert _status(sandbox, namespace, "by-hand")["triggeredAt"] == first_run

    _annotate(sandbox, namespace, "by-hand", "reset", "r1")
    wait_for(lambda: _phase_is(sandbox, namespace, "by-hand", "Monitoring"), 30,
             message=op.log_tail)
    _annotate(sandbox, namespace, "by-hand", "failover-now", "t3")
    again = wait_for(lambda: (s := _phase_is(sandbox, namespace, "by-hand", "Succeeded"))
                     and s.get("runToken") == "t3" and s, 60, message=op.log_tail)
    assert again["triggeredAt"] >= first_run
    assert len(_events(sandbox, namespace, "by-hand", "FailoverStarted")) == 2
    # two ticks a second per plan: kopf's line for each would drown the log
    assert "Timer 'engine' succeeded" not in op.log()
    assert "failover started (dr.tonebridge.io/failover-now=t3)" in op.log()


# --- drill --------------------------------------------------------------------------------
def test_drill_rehearses_every_step_and_leaves_production_untouched(
    sandbox: Sandbox, namespace: str, pair: tuple[PgServer, PgServer], pg_factory: PgFactory,
    operator_factory: Any,
) -> None:
    primary, standby = pair
    clone = pg_factory.start_standby(primary, "fp-drill-clone")
    wait_for(lambda: _in_recovery(clone), 60, message="the drill clone to run")
    promote = {"promotePostgres": {"dsnSecretRef": {"name": "standby-admin", "key": "dsn"}}}
    restore = {"restoreRequest": {"spec": {
        "source": {"policyRef": {"name": "nightly"}}, "latest": True,
        "target": {"database": {"database": "restored",
                                "dsnSecretRef": {"name": "standby-admin", "key": "dsn"}}},
    }}}
    stages = [
        {"name": "database", "priority": 1, "rto": "1m", "steps": [
            {"name": "promote", **promote},
            {"name": "restore", **restore},
            {"check": {"kind": "postgres", "target": f"127.0.0.1:{primary.port}"}},
        ]},
        {"name": "api", "priority": 2, "rto": "2m", "steps": [{"wait": {"duration": "1s"}}]},
    ]
    trigger = {"kind": "postgres", "target": f"127.0.0.1:{primary.port}",
               "intervalSeconds": 1, "rise": 1}
    apply_docs(sandbox, namespace,
               secret_doc("standby-admin", {"dsn": _dsn(standby)}),
               secret_doc("clone-admin", {"dsn": _dsn(clone)}),
               plan_doc("rehearsal", mode="drill", trigger=trigger, stages=stages),
               plan_doc("rehearsal-clone", mode="drill", trigger=trigger, stages=stages[:1],
                        drill={"promotePostgres": {"dsnSecretRef": {"name": "clone-admin",
                                                                    "key": "dsn"}}}))
    op = operator_factory(namespace)
    _annotate(sandbox, namespace, "rehearsal", "failover-now", "drill-1")
    done = wait_for(lambda: _phase_is(sandbox, namespace, "rehearsal", "DrillSucceeded",
                                      "DrillFailed"), 90, message=op.log_tail)
    assert done["phase"] == "DrillSucceeded", json.dumps(done)[:3000]
    assert done["runMode"] == "drill"
    for stage in done["stages"]:
        assert stage["state"] == "Succeeded" and stage["rtoMet"] is True
        assert stage["elapsedSeconds"] >= 0 and stage["rtoSeconds"] > 0
    assert _step(done, "database", "promote")["diff"] == {
        "promote": {"from": "standby (in recovery)", "to": "primary"}}
    restore_diff = _step(done, "database", "restore")["diff"]["create"]
    assert restore_diff["kind"] == "RestoreRequest"
    assert restore_diff["name"] == "rehearsal-database-restore"
    report = _events(sandbox, namespace, "rehearsal", "DrillSucceeded")
    assert len(report) == 1 and '"rtoMet":true' in report[0]["message"]
    # production untouched
    assert _in_recovery(standby) and _accepts_writes(primary)
    assert get_json(sandbox, namespace, "restorerequests")["items"] == []
    assert _status(sandbox, namespace, "rehearsal")["health"]["state"] == "Up"

    _annotate(sandbox, namespace, "rehearsal-clone", "failover-now", "drill-1")
    cloned = wait_for(lambda: _phase_is(sandbox, namespace, "rehearsal-clone",
                                        "DrillSucceeded", "DrillFailed"), 90,
                      message=op.log_tail)
    assert cloned["phase"] == "DrillSucceeded", json.dumps(cloned)[:3000]
    assert not _in_recovery(clone)  # the throwaway copy was promoted for real
    assert _in_recovery(standby) and _accepts_writes(primary)
    # a drill may run again without a reset
    _annotate(sandbox, namespace, "rehearsal", "failover-now", "drill-2")
    wait_for(lambda: (s := _phase_is(sandbox, namespace, "rehearsal", "DrillSucceeded"))
             and s.get("runToken") == "drill-2", 90, message=op.log_tail)


# --- operator restart in the middle of a run -----------------------------------------------
def test_operator_killed_mid_run_finishes_without_promoting_again(
    sandbox: Sandbox, namespace: str, pair: tuple[PgServer, PgServer], operator_factory: Any,
) -> None:
    primary, standby = pair
    apply_docs(sandbox, namespace,
               secret_doc("standby-admin", {"dsn": _dsn(standby)}),
               plan_doc("resume", mode="automatic",
                        trigger={"kind": "postgres", "target": f"127.0.0.1:{primary.port}",
                                 "intervalSeconds": 1, "rise": 1, "fall": 2},
                        stages=[
                            {"name": "database", "priority": 1, "rto": "5m", "steps": [
                                {"name": "promote", "promotePostgres": {
                                    "dsnSecretRef": {"name": "standby-admin", "key": "dsn"}}},
                                {"name": "settle", "wait": {"duration": "12s"}},
                            ]},
                            {"name": "api", "priority": 2, "rto": "5m",
                             "steps": [{"wait": {"duration": "1s"}}]},
                        ]))
    op = operator_factory(namespace)
    wait_for(lambda: _health(sandbox, namespace, "resume").get("state") == "Up", 60,
             message=op.log_tail)
    assert _timelines(standby) == []
    primary.stop()
    waiting = wait_for(
        lambda: (s := _status(sandbox, namespace, "resume")).get("stages")
        and _step(s, "database", "settle")["state"] == "Running" and s, 120,
        message=op.log_tail)
    op.kill()  # after the promotion, inside the wait
    promoted = _step(waiting, "database", "promote")
    assert promoted["state"] == "Succeeded" and not _in_recovery(standby)
    settle_started = _step(waiting, "database", "settle")["startedAt"]

    op.start()
    done = wait_for(lambda: _phase_is(sandbox, namespace, "resume", "Succeeded", "Failed"),
                    120, message=op.log_tail)
    assert done["phase"] == "Succeeded", json.dumps(done)[:3000]
    assert _step(done, "database", "promote") == promoted  # not run again
    assert _step(done, "database", "settle")["startedAt"] == settle_started
    assert _timelines(standby) == ["00000002.history"]  # one promotion, one new timeline
    promotions = [e for e in _events(sandbox, namespace, "resume", "StepSucceeded")
                  if "step promote" in e["message"]]
    assert len(promotions) == 1
    assert len(_events(sandbox, namespace, "resume", "FailoverStarted")) == 1


# --- a failing step, escalation -------------------------------------------------------------
def test_failing_step_stops_the_plan_and_escalates(
    sandbox: Sandbox, namespace: str, listener: Listener, webhook: WebhookReceiver,
    operator_factory: Any,
) -> None:
    listener.close()  # the check below never succeeds
    apply_docs(sandbox, namespace,
               secret_doc("hook-1", {"url": webhook.url + "/level-1"}),
               secret_doc("hook-2", {"url": webhook.url + "/level-2"}),
               plan_doc("doomed", mode="manual", stages=[
                   {"name": "first", "priority": 1, "rto": "1m", "steps": [
                       {"name": "probe", "timeout": "2s",
                        "check": {"kind": "tcp", "target": listener.target,
                                  "intervalSeconds": 1, "timeoutSeconds": 1}},
                       {"wait": {"duration": "1s"}},
                   ]},
                   {"name": "second", "priority": 2, "rto": "1m",
                    "steps": [{"wait": {"duration": "1s"}}]},
               ], notifications={"escalation": [
                   {"level": 1, "after": "0s", "contacts": ["lead@example.com"],
                    "webhookSecretRef": {"name": "hook-1", "key": "url"}},
                   {"level": 2, "after": "4s", "contacts": ["manager@example.com"],
                    "webhookSecretRef": {"name": "hook-2", "key": "url"}},
               ]}))
    op = operator_factory(namespace)
    wait_for(lambda: _phase_is(sandbox, namespace, "doomed", "Idle"), 60, message=op.log_tail)
    asked = time.monotonic()
    _annotate(sandbox, namespace, "doomed", "failover-now", "go")
    done = wait_for(lambda: _phase_is(sandbox, namespace, "doomed", "Failed", "Succeeded"), 60,
                    message=op.log_tail)
    assert done["phase"] == "Failed"
    first, second = done["stages"]
    assert first["state"] == "Failed" and "probe failed: timed out" in first["message"]
    assert [s["state"] for s in first["steps"]] == ["Failed", "Skipped"]
    assert second["state"] == "Skipped" and "startedAt" not in second
    assert [s["state"] for s in second["steps"]] == ["Skipped"]

    def arrived(path: str, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, p) for at, where, p in webhook.arrivals
                if where.endswith(path) and p.get("event") == event]

    level_1 = wait_for(lambda: arrived("/level-1", "Escalation"), 30, message=op.log_tail)
    level_2 = wait_for(lambda: arrived("/level-2", "Escalation"), 30, message=op.log_tail)
    assert "escalation level 1" in level_1[0][1]["message"]
    assert level_1[0][1]["contacts"] == ["lead@example.com"]
    assert level_2[0][1]["contacts"] == ["manager@example.com"]
    assert level_2[0][0] - asked >= 4  # not before its `after`
    assert level_1[0][0] <= level_2[0][0]
    # only per-level webhooks: ordinary notifications go to the level-1 (after 0s) hook
    wait_for(lambda: arrived("/level-1", "FailoverFailed"), 30, message=op.log_tail)
    assert arrived("/level-2", "FailoverFailed") == []
    assert _status(sandbox, namespace, "doomed")["escalation"]["notifiedLevels"] == [1, 2]

    _annotate(sandbox, namespace, "doomed", "reset", "r1")
    wait_for(lambda: arrived("/level-2", "Resolved") and arrived("/level-1", "Resolved"), 30,
             message=op.log_tail)
    wait_for(lambda: "escalation" not in _status(sandbox, namespace, "doomed"), 30,
             message=op.log_tail)
    assert len(arrived("/level-1", "Escalation")) == 1  # each level once
    assert len(arrived("/level-2", "Escalation")) == 1


# --- restoreRequest ---------------------------------------------------------------------------
def test_restore_request_step_creates_an_owned_child_and_waits_for_it(
    sandbox: Sandbox, namespace: str, operator_factory: Any,
) -> None:
    """The child is named <plan>-<stage>-<step>, owned by the plan, waited for (here it
    cannot succeed: its policy does not exist, so the step's timeout fails it); a run
    after a reset does not silently reuse the earlier run's child."""
    apply_docs(sandbox, namespace,
               secret_doc("target-db", {"dsn": "host=127.0.0.1 port=1 dbname=x"}),
               plan_doc("restorer", mode="manual", stages=[
                   {"name": "cache", "priority": 1, "rto": "1m", "steps": [
                       {"name": "refill", "timeout": "4s", "restoreRequest": {"spec": {
                           "source": {"policyRef": {"name": "no-such-policy"}},
                           "latest": True,
                           "target": {"database": {"dsnSecretRef": {"name": "target-db",
                                                                    "key": "dsn"}}},
                       }}},
                   ]},
               ]))
    op = operator_factory(namespace)
    wait_for(lambda: _phase_is(sandbox, namespace, "restorer", "Idle"), 60,
             message=op.log_tail)
    _annotate(sandbox, namespace, "restorer", "failover-now", "one")
    done = wait_for(lambda: _phase_is(sandbox, namespace, "restorer", "Failed", "Succeeded"),
                    60, message=op.log_tail)
    step = _step(done, "cache", "refill")
    assert done["phase"] == "Failed" and step["state"] == "Failed"
    assert step["message"].startswith("timed out after 4s: RestoreRequest "
                                      "restorer-cache-refill ")
    child = get_json(sandbox, namespace, "restorerequest", "restorer-cache-refill")
    plan_uid = _plan(sandbox, namespace, "restorer")["metadata"]["uid"]
    (owner,) = child["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("FailoverPlan", plan_uid)
    assert step["memo"]["uid"] == child["metadata"]["uid"]

    _annotate(sandbox, namespace, "restorer", "reset", "r1")
    wait_for(lambda: _phase_is(sandbox, namespace, "restorer", "Idle"), 30,
             message=op.log_tail)
    _annotate(sandbox, namespace, "restorer", "failover-now", "two")
    again = wait_for(lambda: (s := _phase_is(sandbox, namespace, "restorer", "Failed"))
                     and s.get("runToken") == "two" and s, 60, message=op.log_tail)
    assert "exists from an earlier run: delete it" in _step(again, "cache", "refill")["message"]
