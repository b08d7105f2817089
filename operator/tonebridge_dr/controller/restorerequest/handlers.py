"""kopf glue of RestoreRequest: the kind's declaration (`KIND`); `core.registration` turns
it into handlers under the common retry policy.

| trigger | handler id | does |
|---|---|---|
| request created / operator resumed | `start_restore` | `reconcile.reconcile` |
| restore Job events | `job-event` (core) | `record.observe`: Job -> status, Events |
| every 5 s while `status.instance` is not Ready | `instance` | `instance.check`: the note |

A Pending request is reconciled again after `RetryPolicy.pending_delay`. The spec of a
request cannot change (CEL rule): no update handler.
"""

from __future__ import annotations

import functools

from tonebridge_dr.api.kinds import RESTORE_REQUEST, RestoreRequest
from tonebridge_dr.api.restorerequest import RestoreRequestStatus
from tonebridge_dr.builders import names
from tonebridge_dr.controller.core.kind import HandlerIds, JobRoute, KindDeclaration
from tonebridge_dr.controller.restorerequest import instance, reconcile, record
from tonebridge_dr.status import restorerequest as rr_status

KIND: KindDeclaration[RestoreRequest, RestoreRequestStatus] = KindDeclaration(
    info=RESTORE_REQUEST,
    model=RestoreRequest,
    status_model=RestoreRequestStatus,
    reconcile=reconcile.reconcile,
    refused=functools.partial(rr_status.refused, source=None),
    ids=HandlerIds(create="start_restore", resume="start_restore", update=None),
    jobs=JobRoute(component=names.COMPONENT_RESTORE, observe=record.observe),
    extra=instance.register,
)
