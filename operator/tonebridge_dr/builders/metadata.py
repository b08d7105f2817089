"""Metadata of the objects builders make for one of our resources: name, namespace,
labels and the owner reference that lets garbage collection delete them with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tonebridge_dr.api.kinds import API_VERSION, ObjectMeta

__all__ = ["Owner", "object_metadata", "owner_name", "owner_reference"]

Manifest = dict[str, Any]


class Owner(Protocol):
    """A parsed object of one of our kinds (BackupPolicy, RestoreRequest, ...)."""

    @property
    def kind(self) -> str: ...

    @property
    def metadata(self) -> ObjectMeta: ...


def owner_name(owner: Owner) -> str:
    """`metadata.name` of `owner`; ValueError when it has none (not an object as stored)."""
    name = owner.metadata.name
    if not name:
        raise ValueError(f"the {owner.kind} has no metadata.name")
    return name


def owner_reference(owner: Owner) -> Manifest:
    """The controller owner reference to `owner` (garbage collection deletes what it owns)."""
    if not owner.metadata.uid:
        raise ValueError(
            f"{owner.kind} {owner.metadata.name!r} has no metadata.uid; "
            "owner references need the object as stored by the API server"
        )
    return {
        "apiVersion": API_VERSION,
        "kind": owner.kind,
        "name": owner_name(owner),
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_metadata(
    owner: Owner, name: str, labels: Mapping[str, str], *, owned: bool = True
) -> Manifest:
    """Metadata of object `name` in `owner`'s namespace; `owned` adds the owner reference
    (False for what must outlive `owner`, e.g. restored data)."""
    meta: Manifest = {"name": name}
    if owner.metadata.namespace:
        meta["namespace"] = owner.metadata.namespace
    meta["labels"] = dict(labels)
    if owned:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta
