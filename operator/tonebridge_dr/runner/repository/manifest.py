"""The manifest: the completion marker of a backup, and everything needed to restore it.

`base/<id>/manifest.json` is written after every object of the backup; a backup
without a manifest does not exist. The JSON has stable snake_case keys (the
field order below), `format_version` 1, datetimes as ISO 8601 UTC strings with
a `Z`. Unknown keys are ignored when reading, so a newer writer may add fields
without breaking older readers; a higher `format_version` is refused.

Checksums and sizes describe the *stored* bytes (after compression and
encryption), so anyone can verify a backup without the private key;
`raw_size` is the size before the codecs.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import pydantic

from tonebridge_dr.runner.contract import runner_contract
from tonebridge_dr.runner.repository import ids

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: The object of a whole-database PostgreSQL logical backup (what a full restore needs).
WHOLE_DATABASE_OBJECT = "database.dump"


def format_time(value: dt.datetime, *, timespec: str = "auto") -> str:
    """ISO 8601 in UTC with a `Z`, e.g. 2026-11-29T02:41:00Z."""
    return value.astimezone(dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _known_engine(name: str) -> str:
    names = runner_contract.ENGINE_NAMES
    if name not in names:
        raise ValueError(f"unknown engine {name!r}: one of {', '.join(names)}")
    return name


#: One of the contract's engine names (api/runner_contract.py ENGINES).
EngineName = Annotated[str, pydantic.AfterValidator(_known_engine)]


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


class ObjectEntry(_Model):
    """One stored object of a backup."""

    name: str  # logical name: "database.dump", "globals.sql", "table.public.t.dump", "base.tar"
    key: str  # storage key relative to the repository, e.g. "base/<id>/database.dump.zst"
    size: int = pydantic.Field(ge=0)  # stored bytes
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")  # hex digest of the stored bytes
    raw_size: int = pydantic.Field(ge=0)  # bytes before compression/encryption
    #: False: stored without the backup's encryption (only compressed), e.g. the content
    #: index of a bucket snapshot that retention reads without a key; None: as the backup.
    encrypted: bool | None = None

    @pydantic.model_serializer(mode="wrap")
    def _omit_default(self, handler: pydantic.SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.encrypted is None and isinstance(data, dict):
            data.pop("encrypted", None)  # manifests of other backups stay as they were
        return data


class Encryption(_Model):
    """How the objects are encrypted; never carries key material."""

    method: Literal["openpgp"] = "openpgp"
    recipient_fingerprint: str


class WalRange(_Model):
    """The WAL a physical base backup needs to be consistent."""

    start_lsn: str
    stop_lsn: str
    timeline: int = pydantic.Field(ge=1)
    start_wal_file: str | None = None
    stop_wal_file: str | None = None


class Manifest(_Model):
    """A complete backup. Build it with `BackupWriter.commit`, read it with `Repository.get`."""

    format_version: int = FORMAT_VERSION
    id: str
    engine: EngineName
    method: str  # "logical" | "physical" | "rdb" | "export" | "copy" ...
    databases: list[str] = []
    started_at: pydantic.AwareDatetime
    finished_at: pydantic.AwareDatetime
    server_version: str | None = None
    tool_version: str
    tools: dict[str, str] = {}
    compression: str
    encryption: Encryption | None = None
    storage_class: str | None = None
    schedule: str | None = None  # the BackupPolicy schedule that made it (retention groups)
    objects: list[ObjectEntry] = []
    wal: WalRange | None = None
    extra: dict[str, Any] = {}

    @pydantic.field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value < 1 or value > FORMAT_VERSION:
            raise ValueError(
                f"manifest format_version {value} is not supported by this tonebridge-dr "
                f"(it reads up to {FORMAT_VERSION}); upgrade tonebridge-dr"
            )
        return value

    @pydantic.field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not ids.is_backup_id(value):
            raise ValueError(f"invalid backup id {value!r}")
        return value

    @pydantic.field_validator("started_at", "finished_at")
    @classmethod
    def _to_utc(cls, value: dt.datetime) -> dt.datetime:
        return value.astimezone(dt.UTC)

    @pydantic.field_serializer("started_at", "finished_at")
    def _dump_time(self, value: dt.datetime) -> str:
        return format_time(value)

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [entry.name for entry in self.objects]
        if len(names) != len(set(names)):
            raise ValueError("manifest lists an object name twice")
        prefix = f"base/{self.id}/"
        for entry in self.objects:
            rest = entry.key[len(prefix):]
            parts = rest.split("/")
            if (
                not entry.key.startswith(prefix)
                or len(parts) != 1  # objects sit directly in the backup's folder
                or parts[0] in ("", ".", "..")
                or any(ord(c) < 0x20 or c == "\x7f" for c in rest)
            ):
                raise ValueError(f"object key {entry.key!r} is not a file directly in {prefix}")
        if self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        return self

    # Derived values -------------------------------------------------------------
    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Backups whose objects a restore of this one reads too (an incremental's chain)."""
        chain = self.extra.get("incremental")
        if not isinstance(chain, dict):
            return ()
        return tuple(str(other) for other in chain.get("depends_on") or ())

    @property
    def size_bytes(self) -> int:
        """Stored bytes of all objects."""
        return sum(entry.size for entry in self.objects)

    @property
    def raw_size_bytes(self) -> int:
        """Bytes of all objects before compression and encryption."""
        return sum(entry.raw_size for entry in self.objects)

    @property
    def is_table_subset(self) -> bool:
        """A PostgreSQL logical backup of chosen tables only (hot tables): its dump says so
        (`scope: tables`), or it lacks the whole-database object a full restore needs."""
        return self.engine == "postgres" and self.method == "logical" and (
            self.extra.get("scope") == "tables" or self.object(WHOLE_DATABASE_OBJECT) is None
        )

    @property
    def table_subset(self) -> tuple[str, ...]:
        """"schema.table" names of a table-subset backup, else () (a whole-database dump
        lists every table in `extra["tables"]` too)."""
        if not self.is_table_subset:
            return ()
        names = []
        for entry in self.extra.get("tables") or ():
            if isinstance(entry, dict) and entry.get("name"):
                schema = entry.get("schema")
                names.append(f"{schema}.{entry['name']}" if schema else str(entry["name"]))
        return tuple(names)

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def key(self) -> str:
        """Storage key of this manifest."""
        return manifest_key(self.id)

    def object_encrypted(self, entry: ObjectEntry) -> bool:
        """Whether `entry`'s stored bytes are encrypted."""
        return self.encrypted if entry.encrypted is None else entry.encrypted

    def object(self, name: str) -> ObjectEntry | None:
        """The entry for logical `name`, or None."""
        return next((entry for entry in self.objects if entry.name == name), None)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse; raises pydantic.ValidationError on anything malformed."""
        return cls.model_validate_json(data)

    def result(self) -> dict[str, Any]:
        """The stable `--json` summary of this backup (also the Job termination message)."""
        return {
            "id": self.id,
            "engine": self.engine,
            "method": self.method,
            "databases": list(self.databases),
            "started_at": format_time(self.started_at, timespec="seconds"),
            "finished_at": format_time(self.finished_at, timespec="seconds"),
            "duration_seconds": round(self.duration_seconds, 3),
            "size_bytes": self.size_bytes,
            "raw_size_bytes": self.raw_size_bytes,
            "objects": len(self.objects),
            "compression": self.compression,
            "encrypted": self.encrypted,
            "recipient_fingerprint": (
                self.encryption.recipient_fingerprint if self.encryption else None
            ),
            "storage_class": self.storage_class,
            "schedule": self.schedule,
            "tables": list(self.table_subset),
            "server_version": self.server_version,
            "tool_version": self.tool_version,
            "wal": self.wal.model_dump() if self.wal else None,
        }


def backup_prefix(backup_id: str) -> str:
    """Folder of a backup's objects: `base/<id>/`."""
    return f"base/{backup_id}/"


def manifest_key(backup_id: str) -> str:
    return f"base/{backup_id}/{MANIFEST_NAME}"
