"""Container environment entries, shared by the backup and restore builders.

Credentials only ever reach a container as `secretKeyRef`s: builders never see values.
"""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]


def secret_env(name: str, secret: str, key: str, *, optional: bool = False) -> Manifest:
    """`name` from key `key` of Secret `secret` (optional: the pod starts without it)."""
    selector: Manifest = {"name": secret, "key": key}
    if optional:
        selector["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": selector}}


def value_env(name: str, value: str) -> Manifest:
    return {"name": name, "value": value}
