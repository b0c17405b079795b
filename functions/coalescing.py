"""Coalescing under backpressure: a later window's uploads grow a queued staging import.

While every LRO slot is taken, a job waits in `jobs/` as PENDING. A window planned meanwhile copies
its uploads into the staging prefix of the newest such job (its URI, `staging/{J}/**`, reads
whatever lies there when the LRO starts) instead of queueing one more job behind it. So the number
of LROs follows upload time / LRO time, not the number of windows. A job that has started (or whose
start was attempted) is frozen: its LRO may already have listed its prefix.

The job record decides, with compare-and-swap on its generation (see docs/decisions/0700):
1. hold: the grower turns the PENDING record into one with `hold = {batch, until}`. A starter that
   finds a live hold leaves the job queued. If the starter's swap to STARTING came first, the
   hold fails before anything was copied; if the hold came first, the starter's swap fails.
2. the grower copies the uploads under `{staging_prefix}{batch}/` and writes
   `manifests/{J}.grown-{batch}.json`.
3. commit: the grower swaps the held record back to PENDING, without the hold, adding `batch` to
   `job.grown` and the uploads to `job.object_count`. Success means nobody touched the job since
   the hold, so its LRO, whenever it starts, lists every copy. Only then are the uploads covered.
A grower that died (or stalled past `until`) leaves a hold. A starter cancels it (swap), deletes the
batch's copies and manifest, then clears it (swap) and starts the job; the uploads' window records
still exist, so their window is planned again. Pure rules here; the calls live in
`functions.batching` (grow) and `functions.jobs` (start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A grown job is one LRO; past this many objects a window starts a job of its own, so that one
# import (and its manifest, read back on failure) stays bounded.
MAX_GROWN_OBJECTS = 50_000


@dataclass(frozen=True)
class Hold:
    batch: str
    until: float
    cancelled: bool = False


def hold_of(record: dict[str, Any]) -> Hold | None:
    raw = record.get("hold")
    if not isinstance(raw, dict):
        return None
    return Hold(str(raw["batch"]), float(raw["until"]), bool(raw.get("cancelled", False)))


def growable(record: dict[str, Any], storage_class: str | None) -> bool:
    """May this job record take more uploads of `storage_class`?

    Only a PENDING staging import that was never attempted: a job whose start had an unknown
    outcome and was queued again (`attempted`) may yet have an operation that read its prefix.
    """
    job = record.get("job", {})
    return (record.get("state") == "PENDING" and "hold" not in record and "attempted" not in record
            and job.get("kind") == "import" and bool(job.get("staging_prefix")) and not job.get("redrive_of")
            and job.get("storage_class") == storage_class
            and int(job.get("object_count", 0)) < MAX_GROWN_OBJECTS)


def held(record: dict[str, Any], batch: str, until: float) -> dict[str, Any]:
    return dict(record, hold={"batch": batch, "until": until})


def cancelled(record: dict[str, Any]) -> dict[str, Any]:
    return dict(record, hold=dict(record["hold"], cancelled=True))


def released(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "hold"}


def committed(record: dict[str, Any], batch: str, added: int) -> dict[str, Any]:
    job = dict(record["job"])
    job["grown"] = [*job.get("grown", []), batch]
    job["object_count"] = int(job.get("object_count", 0)) + added
    return dict(released(record), job=job)


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
