"""Coalescing under backpressure: a later window's uploads grow a queued staging import.

While every LRO slot is taken, a job waits in `jobs/` as PENDING. A window planned meanwhile copies
its uploads into the staging prefix of the newest such job (its URI, `staging/{J}/**`, reads
whatever lies there when the LRO starts) instead of queueing one more job behind it. So the number
of LROs follows upload time / LRO time, not the number of windows. A job that has started (or whose
start was attempted) is frozen: its LRO may already have listed its prefix.

The job record decides, with compare-and-swap on its generation (see docs/decisions/0700, 0704):
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
(grow) and `functions.jobs` (start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A grown job is one LRO; past this many objects a window starts a job of its own, so that one
# import (and its manifest, read back on failure) stays bounded.
MAX_GROWN_OBJECTS = 50_000
# Growers of one job at once; a window that finds this many plans a job of its own.
MAX_HOLDS = 8


@dataclass(frozen=True)
class Hold:
    batch: str
    until: float
    cancelled: bool = False

    def live(self, now: float) -> bool:
        """May its grower still commit? (Not cancelled, not run out.)"""
        return self.until > now and not self.cancelled


def holds_of(record: dict[str, Any]) -> dict[str, Hold]:
    """The record's holds by batch; also the single `hold` of records written before 0704."""
    holds: dict[str, Hold] = {}
    raw = record.get("holds")
    if isinstance(raw, dict):
        for batch, value in raw.items():
            holds[str(batch)] = Hold(str(batch), float(value["until"]), bool(value.get("cancelled", False)))
    legacy = record.get("hold")
    if isinstance(legacy, dict):
        batch = str(legacy["batch"])
        holds[batch] = Hold(batch, float(legacy["until"]), bool(legacy.get("cancelled", False)))
    return holds


def live_holds(record: dict[str, Any], now: float) -> list[Hold]:
    """Holds whose grower may still commit."""
    return [h for h in holds_of(record).values() if h.live(now)]


def growable(record: dict[str, Any], storage_class: str | None) -> bool:
    """May this job record take more uploads of `storage_class`?

    Only a PENDING staging import that was never attempted (a job whose start had an unknown
    outcome and was queued again may yet have an operation that read its prefix), that no starter
    is waiting to start (`closing`, or a hold it is undoing) and that has room for another grower.
    """
    job = record.get("job", {})
    holds = holds_of(record)
    return (record.get("state") == "PENDING" and "attempted" not in record and not record.get("closing")
            and len(holds) < MAX_HOLDS and not any(h.cancelled for h in holds.values())
            and job.get("kind") == "import" and bool(job.get("staging_prefix")) and not job.get("redrive_of")
            and job.get("storage_class") == storage_class
            and int(job.get("object_count", 0)) < MAX_GROWN_OBJECTS)


def _with_holds(record: dict[str, Any], holds: dict[str, Hold]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("hold", "holds")}
    if holds:
        out["holds"] = {batch: {"until": h.until, **({"cancelled": True} if h.cancelled else {})}
                        for batch, h in sorted(holds.items())}
    return out


def held(record: dict[str, Any], batch: str, until: float) -> dict[str, Any]:
    return _with_holds(record, {**holds_of(record), batch: Hold(batch, until)})


def cancelled(record: dict[str, Any], batch: str) -> dict[str, Any]:
    holds = holds_of(record)
    holds[batch] = Hold(batch, holds[batch].until, cancelled=True)
    return _with_holds(record, holds)


def released(record: dict[str, Any], batch: str) -> dict[str, Any]:
    return _with_holds(record, {b: h for b, h in holds_of(record).items() if b != batch})


def committed(record: dict[str, Any], batch: str, added: int) -> dict[str, Any]:
    job = dict(record["job"])
    job["grown"] = [*job.get("grown", []), batch]
    job["object_count"] = int(job.get("object_count", 0)) + added
    return dict(released(record, batch), job=job)


def closing(record: dict[str, Any]) -> dict[str, Any]:
    """A starter waits for the live holds to end: no new ones (see the module docstring)."""
    return dict(record, closing=True)


def reopened(record: dict[str, Any]) -> dict[str, Any]:
    """The start a job was closed for has to wait after all (another import runs): it grows again."""
    return {k: v for k, v in record.items() if k != "closing"}


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
