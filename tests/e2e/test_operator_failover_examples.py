"""The FailoverPlan examples against the sandbox's real API server, with the operator as a
real process: they apply as they are (secrets.yaml too) and are reconciled to Ready=True
with a sentence saying what the plan does in its mode; the health check runs and reports
Healthy=False for a target that does not answer; a spec change is observed again.

The examples' addresses are production placeholders: the test points their health checks
at a closed port on 127.0.0.1 and runs the automatic one in manual mode, so no step ever
reaches the placeholder DSNs (the steps themselves: test_operator_failover.py)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.fixtures import EXAMPLES
from tests.fixtures.operator import condition, get_columns, get_json, wait_for
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

NAMES = ["tonebridge-db", "tonebridge-region"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _local(text: str, port: int) -> str:
    return (text.replace("target: 10.0.1.10:5432", f"target: 127.0.0.1:{port}")
            .replace("target: https://api.tonebridge.io/healthz",
                     f"target: http://127.0.0.1:{port}/healthz")
            .replace("mode: automatic", "mode: manual")
            .replace("intervalSeconds: 10", "intervalSeconds: 1"))


def _reconciled(sandbox: Sandbox, namespace: str, name: str, generation: int
                ) -> dict[str, Any] | None:
    body = get_json(sandbox, namespace, "failoverplan", name)
    ready = condition(body, "Ready")
    healthy = condition(body, "Healthy")
    observed = body["metadata"]["generation"]
    if (observed >= generation and ready is not None and ready["status"] == "True"
            and ready.get("observedGeneration") == observed
            and body["status"].get("observedGeneration") == observed
            and healthy is not None and healthy["status"] == "False"):
        return dict(body)
    return None


def test_examples_are_accepted_and_watched(
    sandbox: Sandbox, namespace: str, operator_factory: Any,
) -> None:
    port = _closed_port()
    for path in sorted((EXAMPLES / "04-failover").glob("*.yaml")):
        sandbox.kubectl("apply", "-n", namespace, "-f", "-",
                        input=_local(path.read_text(), port))
    op = operator_factory(namespace)
    for name in NAMES:
        body = wait_for(lambda n=name: _reconciled(sandbox, namespace, n, 1), 60,  # type: ignore[misc]
                        message=op.log_tail)
        ready = condition(body, "Ready")
        assert ready is not None and ready["reason"] == "Reconciled"
        assert ready["message"].startswith("manual: watches ")
        assert "dr.tonebridge.io/failover-now=<token>" in ready["message"]
        status = body["status"]
        assert status["phase"] == "Monitoring" and status["health"]["state"] == "Down"
        assert "stages" not in status  # manual: nothing runs by itself
        columns = get_columns(sandbox, namespace, "fp", name)
        assert (columns["MODE"], columns["HEALTH"], columns["PHASE"]) == (
            "manual", "Down", "Monitoring")

    name = NAMES[0]
    before = get_json(sandbox, namespace, "failoverplan", name)
    patch = {"spec": {"trigger": {"healthCheck": {"fall": 4}}}}
    sandbox.kubectl("patch", "-n", namespace, f"failoverplan/{name}", "--type=merge",
                    "-p", json.dumps(patch))
    after = wait_for(lambda: _reconciled(sandbox, namespace, name,
                                         before["metadata"]["generation"] + 1), 60,
                     message=op.log_tail)
    assert condition(after, "Ready")["lastTransitionTime"] == (  # type: ignore[index]
        condition(before, "Ready")["lastTransitionTime"]  # type: ignore[index]
    )
