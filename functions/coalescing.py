"""Coalescing under backpressure: a later window's uploads grow a queued staging import.

While every LRO slot is taken, a job waits in `jobs/` as PENDING. A window planned meanwhile copies
its uploads into the staging prefix of the newest such job (its URI, `staging/{J}/**`, reads
whatever lies there when the LRO starts) instead of queueing one more job behind it. So the number
of LROs follows upload time / LRO time, not the number of windows. A job that has started (or whose
start was attempted) is frozen: its LRO may already have listed its prefix.

The job record decides, with compare-and-swap on its generation (see docs/decisions/0700):
1. hold: the grower adds `holds[batch] = {until}` to the PENDING record. A starter that finds a
   live hold leaves the job queued. If the starter's swap to STARTING came first, the hold fails
   before anything was copied; if a hold came first, the starter's swap fails. Several windows
   may hold one job at once (their leaders overlap when planning takes longer than a window):
   each re-reads and retries its own swaps when another grower changed the record meanwhile.
2. the grower copies the uploads under `{staging_prefix}{batch}/` and writes
   `manifests/{J}.grown-{batch}.json`.
3. commit: the grower swaps its hold out of the record, adding `batch` to `job.grown` and the
   uploads to `job.object_count`. It succeeds only while its hold is in the record and not
   cancelled, so the job's LRO, whenever it starts, lists every copy. Only then are the uploads
   covered.
A grower that died (or stalled past `until`) leaves its hold. A starter cancels it (swap), deletes
the batch's copies and manifest, then removes it (swap) and starts the job; the uploads' window
records still exist, so their window is planned again. A starter that finds live holds while it
could start marks the job `closing`: no new hold is taken, so a stream of overlapping growers
cannot keep a job from ever starting. Pure rules here; the calls live in `functions.batching`
(grow) and `functions.jobs` (start); the record's transitions in `functions.job_record`.
"""

from __future__ import annotations

from typing import Any

from functions.job_record import MAX_GROWN_OBJECTS, MAX_HOLDS, TRANSITIONS, Change, Event, Hold, JobRecord, State
from functions.job_record import holds_of as _holds_of

__all__ = ["MAX_GROWN_OBJECTS", "MAX_HOLDS", "Hold"]


def holds_of(record: dict[str, Any]) -> dict[str, Hold]:
    """The record's holds by batch (functions.job_record)."""
    return _holds_of(record)


def live_holds(record: dict[str, Any], now: float) -> list[Hold]:
    """Holds whose grower may still commit."""
    return JobRecord.from_json(record).live_holds(now)


def growable(record: dict[str, Any], storage_class: str | None) -> bool:
    """May this job record take more uploads of `storage_class`? (`JobRecord.growable`)"""
    return JobRecord.from_json(record).growable(storage_class)


def _effect(record: dict[str, Any], event: Event, change: Change) -> dict[str, Any]:
    """What `event` makes of a PENDING record, its guard aside (the guards are
    functions.job_record's, checked when the record is written)."""
    after = TRANSITIONS[(State.PENDING, event)].effect(JobRecord.from_json(record), change)
    assert after is not None
    return after.to_json()


def held(record: dict[str, Any], batch: str, until: float) -> dict[str, Any]:
    return _effect(record, Event.HOLD, Change(batch=batch, until=until))


def cancelled(record: dict[str, Any], batch: str) -> dict[str, Any]:
    return _effect(record, Event.CANCEL_HOLD, Change(batch=batch))


def released(record: dict[str, Any], batch: str) -> dict[str, Any]:
    return _effect(record, Event.RELEASE_HOLD, Change(batch=batch))


def committed(record: dict[str, Any], batch: str, added: int) -> dict[str, Any]:
    return _effect(record, Event.COMMIT_GROWTH, Change(batch=batch, added=added))


def closing(record: dict[str, Any]) -> dict[str, Any]:
    """A starter waits for the live holds to end: no new ones (see the module docstring)."""
    return _effect(record, Event.CLOSE, Change())


def reopened(record: dict[str, Any]) -> dict[str, Any]:
    """The start a job was closed for has to wait after all (another import runs): it grows again."""
    return _effect(record, Event.REOPEN, Change())


def batch_prefix(staging_prefix: str, batch: str) -> str:
    """Where a growth's copies go: inside the job's staging prefix, so its `**` URI reads them."""
    return f"{staging_prefix}{batch}/"


def grown_manifest(manifest: str, batch: str) -> str:
    """`manifests/{J}.json` -> `manifests/{J}.grown-{batch}.json` (read with the job's own)."""
    return f"{manifest.removesuffix('.json')}.grown-{batch}.json"


def manifest_job_id(manifest_name: str) -> str:
    """`.../manifests/{J}.json`, `{J}.adopted-{B}.json`, `{J}.grown-{B}.json` -> J."""
    base = manifest_name.rsplit("/", 1)[-1]
    return base.split(".", 1)[0]


def manifest_batch(manifest_name: str) -> str | None:
    """The batch of a `.grown-{B}.json` manifest, None for any other."""
    base = manifest_name.rsplit("/", 1)[-1].removesuffix(".json")
    _, _, rest = base.partition(".grown-")
    return rest or None
