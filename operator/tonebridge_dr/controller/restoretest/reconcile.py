"""Reconciling one RestoreTest: observe -> decide -> act, with nothing to observe yet.

The test parsed (the skeleton refuses a spec that does not, InvalidSpec); this version
of tonebridge-dr does not schedule restore tests, so every valid test gets Ready=False,
reason NotImplemented, with its generation observed: `kubectl get rt` shows plainly that
no restore is being proven.
"""

from __future__ import annotations

from typing import Any

from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.api.kinds import RestoreTest
from tonebridge_dr.api.restoretest import RestoreTestStatus
from tonebridge_dr.controller.core.kind import Cause, Controller

MESSAGE = (
    "RestoreTest is accepted and validated, but this version of tonebridge-dr does not run "
    "restore tests yet: no scheduled restore, no checks and no RTO measurement happen; "
    "restore a backup by hand with a RestoreRequest to prove it"
)


def reconcile(controller: Controller[RestoreTest, RestoreTestStatus], test: RestoreTest,
              body: dict[str, Any], cause: Cause) -> None:
    controller.refuse(body, Reason.NOT_IMPLEMENTED, MESSAGE)
