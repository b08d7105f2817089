"""The key map of a snapshot (`keys.jsonl`): one JSON line per source object, sorted by key.

Each line: `key` (relative to the source prefix), `size`, `etag`, `last_modified` (what
change detection compares with the next listing), `attributes` (content type, user
metadata, cache control, ...: what a restore puts back), and the content reference:
`sha256` (the address), `stored_size`, `stored_sha256`, `codec`.

It is written and read as a stream in key order, the order S3 lists keys in, so a
snapshot merges the previous map with the new listing holding one line of each: memory
does not grow with the number of keys. Stored compressed, not encrypted: the next
snapshot's pod (which has only the public key) must read it (docs/bucket-backups.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from typing import Any

from tonebridge_dr.runner import errors
from tonebridge_dr.runner.engines.bucket import content

NAME = "keys.jsonl"
INDEX_NAME = "content.idx"


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str
    size: int
    etag: str | None
    last_modified: dt.datetime
    attributes: dict[str, Any]
    stored: content.Stored

    def same_version(self, size: int, etag: str | None, last_modified: dt.datetime) -> bool:
        """True when a listed object is this version (size, ETag and time all equal)."""
        return (self.size == size and self.etag == etag and etag is not None
                and self.last_modified == last_modified)

    def line(self) -> bytes:
        data = {
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "last_modified": _time(self.last_modified),
            "attributes": self.attributes,
            "sha256": self.stored.sha256,
            "stored_size": self.stored.stored_size,
            "stored_sha256": self.stored.stored_sha256,
            "codec": self.stored.codec,
        }
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> Entry:
        try:
            data = json.loads(line)
            return cls(
                key=str(data["key"]),
                size=int(data["size"]),
                etag=data.get("etag"),
                last_modified=dt.datetime.fromisoformat(data["last_modified"]),
                attributes=dict(data.get("attributes") or {}),
                stored=content.Stored(
                    sha256=str(data["sha256"]), size=int(data["size"]),
                    stored_size=int(data["stored_size"]),
                    stored_sha256=str(data["stored_sha256"]), codec=str(data["codec"]),
                ),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.IntegrityError(
                f"key map line is malformed ({type(exc).__name__}): {line[:120]!r}"
            ) from None


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse(chunks: Iterable[bytes]) -> Iterator[Entry]:
    """Entries of a decoded key map stream, checked to be in strictly increasing key order."""
    last: str | None = None
    for line in content.split_lines(chunks):
        if not line:
            continue
        entry = Entry.parse(line)
        if last is not None and entry.key <= last:
            raise errors.IntegrityError(f"key map is not sorted at {entry.key!r}")
        last = entry.key
        yield entry
