"""Window records: what one record under `windows/{W}/` says, and how uploads are grouped into one.

Pure functions. A record is an empty object whose custom metadata lists uploads, so a leader learns
a whole window from one listing (a listing returns each object's metadata). A process writes the
uploads of its concurrent requests for one window as one record (a group commit, decision 0770):

- group record (`windows/{W}/{random}.json`): metadata `uploads`, a JSON array of
  `[bucket, name, generation, timeCreated]` (timeCreated in epoch seconds, 6 decimals);
- one-upload record, written before group records (`windows/{W}/{key}.json`): metadata `bucket`,
  `name`, `generation`, `timeCreated`. Still read, so that records left from before an upgrade are
  batched.

The same upload may be listed by several records (a redelivered event lands in another group):
readers identify uploads by key (`functions.core.windows.object_key`), never by record name.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from functions.core.events import StorageObjectEvent
from functions.core.windows import object_key

UPLOADS_KEY = "uploads"
# Cloud Storage allows 8 KiB of custom metadata per object, keys and values together, and 4 KiB in one
# value (google.storage.v1 ServiceConstants). A group's uploads share one value; a lone upload whose
# name JSON would escape past 4 KiB (1,024 bytes of control characters, 6 bytes each) is written in
# the one-upload shape instead, its name a value of its own. A group of several
# stays under 3 KiB: fake-gcs-server's filesystem backend (the local stack) keeps an object's
# attributes in one extended attribute, and ext4 refuses one of more than about 3.5 KB.
MAX_GROUP_BYTES = 3 * 1024
MAX_VALUE_BYTES = 4 * 1024
# And at most this many uploads: a record is deleted only when every upload in it is batched, so a
# smaller group lets a window planned in parts let go of its records sooner.
MAX_GROUP_UPLOADS = 32


@dataclass(frozen=True)
class Entry:
    """One upload as a window record lists it."""

    bucket: str
    name: str
    generation: int
    time_created: float | None = None  # epoch seconds; None in records written without it
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", object_key(self.bucket, self.name, self.generation))

    @classmethod
    def of(cls, event: StorageObjectEvent) -> Entry:
        return cls(event.bucket, event.name, event.generation, event.time_created.timestamp())

    def encoded(self) -> list[str]:
        created = "" if self.time_created is None else f"{self.time_created:.6f}"
        return [self.bucket, self.name, str(self.generation), created]


def entry_bytes(entry: Entry) -> int:
    """Bytes `entry` adds to a group's metadata value (with its separator)."""
    return len(_dumps(entry.encoded()).encode()) + 1


def group_bytes(entries: Iterable[Entry]) -> int:
    """Bytes of a group's custom metadata: key and value."""
    return len(UPLOADS_KEY) + len(_dumps([e.encoded() for e in entries]).encode())


def fits(entries: list[Entry], entry: Entry) -> bool:
    """May `entry` join a group of `entries` (count and bytes)? An empty group takes anything."""
    if not entries:
        return True
    if len(entries) >= MAX_GROUP_UPLOADS:
        return False
    return group_bytes(entries) + entry_bytes(entry) <= MAX_GROUP_BYTES


def encode(entries: Iterable[Entry]) -> dict[str, str]:
    """The custom metadata of a group record (of a lone upload too long for one value: the
    one-upload shape)."""
    rows = [e.encoded() for e in entries]
    value = _dumps(rows)
    if len(rows) == 1 and len(value.encode()) > MAX_VALUE_BYTES:
        bucket, name, generation, created = rows[0]
        return {"bucket": bucket, "name": name, "generation": generation, "timeCreated": created}
    return {UPLOADS_KEY: value}


def parse(metadata: Mapping[str, str] | None) -> list[Entry] | None:
    """The uploads a record lists, either shape; None when it says nothing readable."""
    meta = metadata or {}
    try:
        if UPLOADS_KEY in meta:
            rows = json.loads(meta[UPLOADS_KEY])
            if not isinstance(rows, list) or not rows:
                return None
            return [_entry(*(str(v) for v in row)) for row in rows]
        return [_entry(meta["bucket"], meta["name"], meta["generation"], meta.get("timeCreated") or "")]
    except (KeyError, ValueError, TypeError):
        return None


def record_name(prefix: str) -> str:
    """A name no other write uses: a duplicate delivered right after a record's deletion never
    writes the same name again (Cloud Storage takes about one write a second per name)."""
    return f"{prefix}{uuid.uuid4().hex}.json"


def _entry(bucket: str, name: str, generation: str, created: str) -> Entry:
    if not bucket or not name:
        raise ValueError("an upload without bucket or name")
    return Entry(bucket, name, int(generation), float(created) if created else None)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
