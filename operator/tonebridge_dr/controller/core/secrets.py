"""The one check of the Secrets an object names: each Secret exists AND holds every key
it is used for. Every kind runs its Secrets through `check` before it creates Jobs that
read them, so a typo is a precise condition, not a pod stuck in
CreateContainerConfigError or a monitor that quietly cannot read.

Only key names are looked at: values are never logged, returned or put in a message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tonebridge_dr.api.common import Notifications
from tonebridge_dr.api.conditions import Reason
from tonebridge_dr.controller.core.kube import Kube

REPOSITORY_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
"""The keys a repository credentials Secret must hold (AWS_SESSION_TOKEN is optional)."""


@dataclasses.dataclass(frozen=True)
class SecretUse:
    """One use of a Secret by an object."""

    name: str
    keys: tuple[str, ...]
    """Keys the use reads (each must be present)."""
    purpose: str
    """What it is for, in words (for messages): e.g. "database DSN"."""
    blocking: bool = True
    """Jobs cannot run without it; False: only monitoring or notifications read it."""


@dataclasses.dataclass(frozen=True)
class SecretProblem:
    """A Secret that does not exist (`missing_keys` empty), or lacks keys a use reads."""

    use: SecretUse
    missing_keys: tuple[str, ...] = ()

    @property
    def reason(self) -> Reason:
        return Reason.SECRET_KEY_NOT_FOUND if self.missing_keys else Reason.SECRET_NOT_FOUND

    @property
    def blocking(self) -> bool:
        return self.use.blocking

    def describe(self) -> str:
        where = f'Secret "{self.use.name}" ({self.use.purpose})'
        if not self.missing_keys:
            return f"{where} not found"
        return f"{where} has no key " + ", ".join(f'"{key}"' for key in self.missing_keys)


def notification_uses(notifications: Notifications | None) -> list[SecretUse]:
    """The webhook Secrets of `spec.notifications` (the main one, then each escalation
    level's); never blocking: only notifications read them."""
    uses: list[SecretUse] = []
    if notifications is None:
        return uses
    if notifications.webhook_secret_ref is not None:
        ref = notifications.webhook_secret_ref
        uses.append(SecretUse(ref.name, (ref.key,), "webhook URL", blocking=False))
    for level in notifications.escalation or ():
        if level.webhook_secret_ref is not None:
            ref = level.webhook_secret_ref
            uses.append(SecretUse(ref.name, (ref.key,), "escalation webhook URL",
                                  blocking=False))
    return uses


def check(kube: Kube, namespace: str, uses: Sequence[SecretUse]) -> list[SecretProblem]:
    """The problems of `uses`, in their order; [] when every Secret and key is there.

    Each Secret is read once. A missing Secret is one problem (named after its first
    use, blocking when any use blocks); a missing key is one problem per use. Raises
    kube.ApiError on API trouble."""
    data: dict[str, dict[str, str] | None] = {}
    problems: list[SecretProblem] = []
    absent: dict[str, int] = {}  # missing Secret -> index of its problem
    for use in uses:
        if use.name not in data:
            data[use.name] = kube.secret_data(namespace, use.name)
        values = data[use.name]
        if values is None:
            if use.name not in absent:
                absent[use.name] = len(problems)
                problems.append(SecretProblem(use))
            elif use.blocking and not problems[absent[use.name]].blocking:
                problems[absent[use.name]] = SecretProblem(
                    dataclasses.replace(problems[absent[use.name]].use, blocking=True)
                )
            continue
        missing = tuple(key for key in use.keys if key not in values)
        if missing:
            problems.append(SecretProblem(use, missing))
    return problems


def describe(problems: Sequence[SecretProblem]) -> str:
    """One sentence for a condition or an Event: every problem, `; `-separated."""
    return "; ".join(problem.describe() for problem in problems)
