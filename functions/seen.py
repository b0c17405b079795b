"""The uploads a window's leaders have batched: one object per window, `seen/{W}.json`.

The event path writes only the upload's window record, `windows/{W}/{K}.json` (a create: a 412
means the upload is still waiting). A duplicate delivered after its window was batched finds no
record and creates it again; the window's next leader finds its key here and deletes the record
instead of planning it (docs/decisions/0004). The file is written once per planning round, after
the round's jobs are durable and before its records are deleted, with a generation precondition,
so two leaders of one window (a takeover) never drop each other's keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from functions.clients import ObjectStore, Record
from functions.errors import RetryableError

# A leader of the window holds its claim while it writes, so a lost swap means a leader whose
# claim was taken over wrote meanwhile; a few fresh reads settle it.
_SWAP_ATTEMPTS = 5


class SeenSwapLostError(RetryableError):
    """The window's seen file changed under every attempt to add to it: the round fails before
    its records go, and the window's takeover plans what no job covers (`WindowBatcher`)."""


@dataclass(frozen=True)
class Seen:
    """The keys (`functions.windows.object_key`) of a window's batched uploads."""

    keys: frozenset[str]
    generation: int | None  # None: no leader of the window has batched anything yet


def parse(record: Record | None) -> Seen:
    """A seen file as read (None: absent). Entries that are not strings are ignored."""
    if record is None:
        return Seen(frozenset(), None)
    keys = record.data.get("keys", [])
    return Seen(frozenset(k for k in keys if isinstance(k, str)) if isinstance(keys, list) else frozenset(),
                record.generation)


def body(keys: Iterable[str]) -> dict[str, list[str]]:
    return {"keys": sorted(set(keys))}


def read(gcs: ObjectStore, bucket: str, path: str) -> Seen:
    return parse(gcs.read(bucket, path))


def add(gcs: ObjectStore, bucket: str, path: str, seen: Seen, keys: Iterable[str]) -> Seen:
    """Adds `keys` to the file last read as `seen`: a create or a replace at its generation, and on a
    lost race a fresh read merged with ours. No write when nothing is new.

    Raises:
        SeenSwapLostError: `_SWAP_ATTEMPTS` writes were lost.
    """
    new = frozenset(keys)
    for _ in range(_SWAP_ATTEMPTS):
        if new <= seen.keys:
            return seen
        merged = seen.keys | new
        if seen.generation is None:
            generation = gcs.create(bucket, path, body(merged))
        else:
            generation = gcs.replace(bucket, path, body(merged), seen.generation)
        if generation is not None:
            return Seen(merged, generation)
        seen = read(gcs, bucket, path)
    raise SeenSwapLostError(f"{path} changed under {_SWAP_ATTEMPTS} writes")
