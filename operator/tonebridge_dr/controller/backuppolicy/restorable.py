"""The RestoreTests of a policy, as the monitor sees them: read through the API (this
package never imports the RestoreTest kind's package), one list per namespace per
monitoring interval.

Every policy has its own monitor timer; in a namespace with many policies their ticks
would each list the RestoreTests. `RestoreTests` keeps one namespace's list for one
interval (`ttl`), so a namespace costs at most one list per interval whatever its
number of policies; a verdict reaches the policy at most about two intervals after the
test recorded it. A list that fails is not cached: that tick leaves Restorable and
RTOMet as they are, and the next tick tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tonebridge_dr.api.kinds import RESTORE_TEST
from tonebridge_dr.api.restoretest import RestoreTestStatus
from tonebridge_dr.controller.core import kube, objects
from tonebridge_dr.controller.core.kind import api_kind

log = logging.getLogger(__name__)

KIND = api_kind(RESTORE_TEST)

Json = dict[str, Any]


def _policy_ref(test: Mapping[str, Any]) -> str | None:
    source = (test.get("spec") or {}).get("source") or {}
    name = (source.get("policyRef") or {}).get("name")
    return name if isinstance(name, str) else None


class RestoreTests:
    """The RestoreTests of each namespace, listed at most once per `ttl` seconds.
    Thread-safe (kopf runs timers in worker threads)."""

    def __init__(self, client: kube.Kube, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = client
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._lists: dict[str, tuple[float, list[Json]]] = {}

    def _list(self, namespace: str) -> list[Json]:
        with self._lock:
            cached = self._lists.get(namespace)
            if cached is not None and self._clock() - cached[0] < self._ttl:
                return cached[1]
            items = self._kube.list(KIND, namespace)  # raises: nothing cached
            self._lists[namespace] = (self._clock(), items)
            return items

    def of_policy(self, namespace: str, policy: str) -> dict[str, RestoreTestStatus | None] | None:
        """Name -> status of every RestoreTest in `namespace` whose `source.policyRef`
        names `policy` (a test being deleted included: its last run still happened);
        None when the list failed."""
        try:
            items = self._list(namespace)
        except kube.ApiError as exc:
            log.warning("%s: cannot list RestoreTests: %s", namespace, exc)
            return None
        return {
            objects.ident(item)[1]: objects.status_of(item, RestoreTestStatus)
            for item in items
            if _policy_ref(item) == policy
        }
