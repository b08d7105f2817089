"""FailoverPlan against the sandbox's real API server, with the operator as a real process:
the examples apply as they are (the CRD's status schema takes standard conditions), and
every plan gets Ready=False, reason NotImplemented, observedGeneration set, and a message
saying plainly that this version does not act on it yet; a spec change is observed again.
(RestoreTest, accepted the same way before, runs now: tests/e2e/test_operator_restore_test.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures import EXAMPLES
from tests.fixtures.operator import condition, get_json, wait_for
from tonebridge_dr.sandbox.runtime import Sandbox

pytestmark = pytest.mark.timeout(300)

CASES = [
    ("failoverplan", "04-failover", ["tonebridge-db", "tonebridge-region"],
     "does not run health checks or fail over yet"),
]


def _not_implemented(
    sandbox: Sandbox, namespace: str, resource: str, name: str, generation: int
) -> dict[str, Any] | None:
    """The object once Ready says NotImplemented for `generation` (or a later one)."""
    body = get_json(sandbox, namespace, resource, name)
    ready = condition(body, "Ready")
    observed = body["metadata"]["generation"]
    if (
        observed >= generation and ready is not None and ready["reason"] == "NotImplemented"
        and ready.get("observedGeneration") == observed
        and body["status"].get("observedGeneration") == observed
    ):
        return dict(body)
    return None


def _wait(sandbox: Sandbox, namespace: str, resource: str, name: str, op: Any,
          generation: int = 1) -> dict[str, Any]:
    return wait_for(
        lambda: _not_implemented(sandbox, namespace, resource, name, generation), 60,
        message=lambda: f"{resource}/{name} NotImplemented (generation {generation}); "
        f"{op.log_tail()}",
    )


@pytest.mark.parametrize(("resource", "folder", "names", "words"), CASES)
def test_examples_are_accepted_and_say_what_is_not_done_yet(
    sandbox: Sandbox, namespace: str, operator_factory: Any,
    resource: str, folder: str, names: list[str], words: str,
) -> None:
    for path in sorted((EXAMPLES / folder).glob("*.yaml")):
        sandbox.kubectl("apply", "-n", namespace, "-f", str(path))
    op = operator_factory(namespace)
    for name in names:
        body = _wait(sandbox, namespace, resource, name, op)
        ready = condition(body, "Ready")
        assert ready is not None and ready["status"] == "False"
        assert "accepted and validated" in ready["message"] and words in ready["message"]
        assert ready["lastTransitionTime"]
    events = get_json(sandbox, namespace, "events")["items"]
    ours = [(e["involvedObject"]["name"], e["type"], e["reason"]) for e in events
            if e.get("reportingComponent") == "tonebridge-dr"]
    assert sorted(ours) == sorted((name, "Warning", "NotImplemented") for name in names)

    # A spec change is a new generation: observed again, still NotImplemented.
    name = names[0]
    before = _wait(sandbox, namespace, resource, name, op)
    patch = {"spec": {"trigger": {"healthCheck": {"fall": 4}}}}
    sandbox.kubectl("patch", "-n", namespace, f"{resource}/{name}", "--type=merge",
                    "-p", json.dumps(patch))
    after = _wait(sandbox, namespace, resource, name, op, before["metadata"]["generation"] + 1)
    assert condition(after, "Ready")["lastTransitionTime"] == (  # type: ignore[index]
        condition(before, "Ready")["lastTransitionTime"]  # type: ignore[index]
    )
