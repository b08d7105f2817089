"""Reconciling one RestoreTest: observe -> decide -> act, with nothing to observe yet.

The test parsed (the skeleton refuses a spec that does not, InvalidSpec); this version
of tonebridge-dr does not schedule restore tests, so every valid test gets Ready=False,
reason NotImplemented, with its generation observed: `kubectl get rt` shows plainly that
no restore is being proven.
"""

from __future__ import annotations

from tonebridge_dr.controller.core.kind import not_implemented

MESSAGE = (
    "RestoreTest is accepted and validated, but this version of tonebridge-dr does not run "
    "restore tests yet: no scheduled restore, no checks and no RTO measurement happen; "
    "restore a backup by hand with a RestoreRequest to prove it"
)

reconcile = not_implemented(MESSAGE)
