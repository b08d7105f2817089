"""High availability through kopf peering: two operators (not standalone) share a
namespace; only the higher priority one acts, the other takes over when it stops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import ROOT
from tests.fixtures.operator import (
    OperatorProcess,
    apply_docs,
    condition_is,
    get_json,
    get_policy,
    policy_doc,
    secret_doc,
    wait_for,
)
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

PEERING_CRDS = ROOT / "charts" / "tonebridge-dr" / "crds" / "kopf-peering.yaml"


def _peers(sandbox: Sandbox, namespace: str) -> list[dict[str, Any]]:
    peering = get_json(sandbox, namespace, "kopfpeering", "tonebridge-dr")
    return list((peering.get("status") or {}).values())


def _log(*ops: OperatorProcess) -> str:
    return "\n".join(f"--- operator log:\n{op.log()[-2500:]}" for op in ops)


def test_only_the_leader_acts_and_the_standby_takes_over(
    sandbox: Sandbox, namespace: str, operator_factory: Any, tmp_path: Path
) -> None:
    sandbox.kubectl("apply", "-f", str(PEERING_CRDS))
    sandbox.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/kopfpeerings.kopf.dev", "crd/clusterkopfpeerings.kopf.dev")
    apply_docs(sandbox, namespace,
               {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                "metadata": {"name": "tonebridge-dr"}},
               secret_doc("db-dsn", {"dsn": "host=127.0.0.1 dbname=x"}))
    leader = operator_factory(namespace, "--priority", "20", standalone=False)
    standby = operator_factory(namespace, "--priority", "10", standalone=False)
    # Both have signed in; an operator starts paused until the peering says otherwise.
    wait_for(lambda: sorted(p["priority"] for p in _peers(sandbox, namespace)) == [10, 20], 60,
             message=lambda: _log(leader, standby))
    wait_for(lambda: "Resuming operations" in leader.log(), 60, message=lambda: _log(leader))

    apply_docs(sandbox, namespace, policy_doc("one", repo_url=(tmp_path / "r1").as_uri()))
    wait_for(lambda: condition_is(sandbox, namespace, "one", "Ready", "True"), 60,
             message=lambda: _log(leader, standby))
    assert "Handler 'reconcile' succeeded" in leader.log()
    assert "Resuming operations" not in standby.log()
    assert "Handler 'reconcile'" not in standby.log()

    leader.stop()  # a clean stop leaves the peering: the standby resumes at once
    wait_for(lambda: "Resuming" in standby.log(), 60, message=lambda: _log(standby))
    apply_docs(sandbox, namespace, policy_doc("two", repo_url=(tmp_path / "r2").as_uri()))
    wait_for(lambda: condition_is(sandbox, namespace, "two", "Ready", "True"), 60,
             message=lambda: _log(standby))
    assert get_policy(sandbox, namespace, "one")["status"]["observedGeneration"] == 1
