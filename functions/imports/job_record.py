"""The job record (`jobs/{J}.json`): its typed form, the transitions it may take, and the one
function that writes it.

A record is in one of three states. PENDING: queued, waiting for a slot (or for the running
import, growing meanwhile). STARTING: a starter holds a slot and a lease and is calling the API.
UNCONFIRMED: a start whose outcome is unknown; it keeps its slot until the poller finds out
(docs/decisions/0300). Next to the state a record carries:
- `holds`: later windows growing a PENDING staging import, each with its lease (`until`) and,
  once a starter found it run out, `cancelled` (the growth rules below).
- `closing`: a starter could start the job but found live holds: no new hold is taken, so
  overlapping growers cannot keep a job from ever starting. It keeps the slot the starter took
  (`slot`), so later windows see an import starting and queue a job that waits and grows.
- `attempted`: the time of an earlier start whose outcome was unknown and which began no
  operation as far as the poller could tell; such a job never grows (its operation may yet turn
  up and have read its prefix).
- `job.grown`: the batches committed into the job (part of the job itself).

Every write goes through `apply`: it looks up the row of `TRANSITIONS` for the record's state and
the event, checks the row's guard, and writes the result with a precondition on the generation it
read (create-if-absent for a new record, delete-if-unchanged for a removed one). A lost race is
retried on a fresh read when the caller asks for it. docs/state.md shows the table (a unit test
keeps the two the same).

Coalescing under backpressure: a later window's uploads grow a queued staging import.

While every LRO slot is taken, a job waits in `jobs/` as PENDING. A window planned meanwhile copies
its uploads into the staging prefix of the oldest such job (its URI, `staging/{J}/**`, reads
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
cannot keep a job from ever starting. The growth's pure rules are the functions at the end of this
module, its steps are rows of `TRANSITIONS`; the calls live in `functions.imports.window_batcher`
(grow) and `functions.imports.job_queue` (start).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from google.api_core.exceptions import TooManyRequests

from functions.core.lease import Lease
from functions.gcp.clients import ObjectStore, Record
from functions.log import fields

logger = logging.getLogger(__name__)

# A grown job is one LRO; past this many objects a window starts a job of its own, so that one
# import (and its manifests, read back when it finished) stays bounded. Above what arrives during
# one import at the fastest upload we plan for: at 500 files/s an import of the files that arrive
# while the one before runs settles at about 60,000 (60 s + 1 s per 1,000 files); a smaller cap
# makes a third job while one runs and the next one waits, and the queue never drains (decision 0782).
MAX_GROWN_OBJECTS = 100_000
# Growers of one job at once; a window that finds this many plans a job of its own.
MAX_HOLDS = 8


class State(Enum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    UNCONFIRMED = "UNCONFIRMED"


class Event(Enum):
    QUEUE = "queue"  # a new job, no slot free (or it waits for the running import)
    QUEUE_STARTING = "queue with a slot"  # a new job that took a free slot
    HOLD = "hold"  # a later window starts growing the job
    RENEW_HOLD = "renew hold"
    COMMIT_GROWTH = "commit growth"  # the grower's copies become part of the job
    RELEASE_HOLD = "release hold"  # a grower takes its growth back, or a starter removes a dead one
    CANCEL_HOLD = "cancel hold"  # a starter found the hold run out: its grower can no longer commit
    CLOSE = "close"  # a starter could start it but waits for live holds
    REOPEN = "reopen"  # the start it was closed for waits for another import after all
    START = "start"  # a starter takes a slot and a lease
    START_FAILED = "start failed"  # the API refused for now (retryable): queued again, slot freed
    OUTCOME_UNKNOWN = "outcome unknown"  # the starter's own call ended without an answer
    LEASE_RAN_OUT = "lease ran out"  # the starter died mid-call (found by a starter or the poller)
    REQUEUE_UNCONFIRMED = "requeue unconfirmed"  # the poller found no operation: queued, slot freed
    TRACK = "track"  # its operation is tracked (`operations/`): the record goes
    ADOPT = "adopt"  # the poller found the operation an unconfirmed start began
    DROP_TRACKED = "drop tracked"  # a starter died after tracking, before deleting the record
    UNADOPT = "unadopt"  # the operation adopted for it was another job's: unconfirmed again


@dataclass(frozen=True)
class Hold:
    batch: str
    until: float
    cancelled: bool = False

    def live(self, now: float) -> bool:
        """May its grower still commit? (Not cancelled, not run out.)"""
        return Lease(self.until).live(now) and not self.cancelled


@dataclass(frozen=True)
class JobRecord:
    """`jobs/{J}.json`, typed. `job` is the job's own JSON (functions.imports.job_queue.Job.to_json)."""

    job: Mapping[str, Any]
    state: State
    slot: int | None = None  # STARTING, UNCONFIRMED, and a closing PENDING job (it starts with it)
    claimed_at: float | None = None  # STARTING
    lease_until: float | None = None  # STARTING
    attempted_at: float | None = None  # UNCONFIRMED: when the start of unknown outcome was made
    attempted: float | None = None  # see the module docstring
    holds: Mapping[str, Hold] = field(default_factory=dict)  # PENDING
    closing: bool = False  # PENDING

    @property
    def job_id(self) -> str:
        return str(self.job["job_id"])

    def start_lease(self) -> Lease:
        """A STARTING job's lease (a record without one has none left)."""
        return Lease(self.lease_until or 0.0)

    def live_holds(self, now: float) -> list[Hold]:
        return [h for h in self.holds.values() if h.live(now)]

    def start_attempted_at(self, lease_seconds: float) -> float:
        """When a STARTING job's start began (records without `claimedAt` have their lease)."""
        if self.claimed_at is not None:
            return self.claimed_at
        return (self.lease_until or 0.0) - lease_seconds

    def growable(self, storage_class: str | None) -> bool:
        """May this job take more uploads of `storage_class`?

        Only a PENDING staging import that was never attempted, that no starter is waiting to
        start (`closing`) and that has room for another grower. A hold a starter is undoing
        (cancelled) does not stop other growers: its batch is its own (decision 0783).
        """
        return self.why_not_growable(storage_class) is None

    def why_not_growable(self, storage_class: str | None) -> str | None:
        """Why this job takes no more uploads of `storage_class` (None: it does), in words that
        say which rule of `growable` refused it: the scale bench counts the jobs it made."""
        job = self.job
        if job.get("kind") != "import" or not job.get("staging_prefix") or job.get("redrive_of"):
            return "not a staging import"
        if self.state is not State.PENDING:
            return f"{self.state.value.lower()}"
        if self.attempted is not None:
            return "attempted"
        if self.closing:
            return "closing"
        if len(self.holds) >= MAX_HOLDS:
            return f"{MAX_HOLDS} holds"
        if job.get("storage_class") != storage_class:
            return "another storage class"
        if int(job.get("object_count", 0)) >= MAX_GROWN_OBJECTS:
            return "full"
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job": dict(self.job), "state": self.state.value}
        if self.slot is not None:
            out["slot"] = self.slot
        if self.claimed_at is not None:
            out["claimedAt"] = self.claimed_at
        if self.lease_until is not None:
            out["leaseUntil"] = self.lease_until
        if self.attempted_at is not None:
            out["attemptedAt"] = self.attempted_at
        if self.attempted is not None:
            out["attempted"] = self.attempted
        if self.holds:
            out["holds"] = {batch: {"until": h.until, **({"cancelled": True} if h.cancelled else {})}
                            for batch, h in sorted(self.holds.items())}
        if self.closing:
            out["closing"] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobRecord:
        def number(key: str) -> float | None:
            return float(data[key]) if data.get(key) is not None else None

        slot = data.get("slot")
        return cls(job=dict(data.get("job", {})), state=State(data.get("state", "PENDING")),
                   slot=int(slot) if slot is not None else None, claimed_at=number("claimedAt"),
                   lease_until=number("leaseUntil"), attempted_at=number("attemptedAt"),
                   attempted=number("attempted"), holds=holds_of(data), closing=bool(data.get("closing")))


def holds_of(data: Mapping[str, Any]) -> dict[str, Hold]:
    """The holds of a record's JSON by batch; also the single `hold` some records carry."""
    holds: dict[str, Hold] = {}
    raw = data.get("holds")
    if isinstance(raw, dict):
        for batch, value in raw.items():
            holds[str(batch)] = Hold(str(batch), float(value["until"]), bool(value.get("cancelled", False)))
    single = data.get("hold")
    if isinstance(single, dict):
        batch = str(single["batch"])
        holds[batch] = Hold(batch, float(single["until"]), bool(single.get("cancelled", False)))
    return holds


@dataclass(frozen=True)
class Change:
    """What an event brings along (only the fields its row reads)."""

    now: float = 0.0
    slot: int | None = None
    lease_seconds: float = 0.0
    batch: str = ""
    until: float = 0.0
    added: int = 0
    storage_class: str | None = None
    job: Mapping[str, Any] | None = None  # QUEUE, QUEUE_STARTING: the new job's JSON
    from_record: JobRecord | None = None  # UNADOPT: what the tracked operation knew of the job


NO_CHANGE = Change()
Guard = Callable[[JobRecord | None, Change], bool]
Effect = Callable[[JobRecord | None, Change], JobRecord | None]


@dataclass(frozen=True)
class Transition:
    to: State | None  # None: the record is deleted
    guard: Guard
    guard_text: str
    effect: Effect


def _hold_of(batch_must_be_live: bool) -> Guard:
    def guard(record: JobRecord | None, change: Change) -> bool:
        hold = record.holds.get(change.batch) if record else None
        return hold is not None and not (batch_must_be_live and hold.cancelled)
    return guard


def _always(record: JobRecord | None, change: Change) -> bool:
    return True


def _new(state: State) -> Effect:
    def effect(record: JobRecord | None, change: Change) -> JobRecord:
        assert change.job is not None
        if state is State.PENDING:
            return JobRecord(job=change.job, state=state)
        return JobRecord(job=change.job, state=state, slot=change.slot, claimed_at=change.now,
                         lease_until=Lease.starting(change.now, change.lease_seconds).until)
    return effect


def _with_holds(holds: Callable[[JobRecord, Change], dict[str, Hold]]) -> Effect:
    def effect(record: JobRecord | None, change: Change) -> JobRecord:
        assert record is not None
        return replace(record, holds=holds(record, change))
    return effect


def _committed(record: JobRecord | None, change: Change) -> JobRecord:
    assert record is not None
    job = dict(record.job)
    job["grown"] = [*job.get("grown", []), change.batch]
    job["object_count"] = int(job.get("object_count", 0)) + change.added
    return replace(record, job=job, holds={b: h for b, h in record.holds.items() if b != change.batch})


def _starting(record: JobRecord | None, change: Change) -> JobRecord:
    assert record is not None
    return JobRecord(job=record.job, state=State.STARTING, slot=change.slot, claimed_at=change.now,
                     lease_until=Lease.starting(change.now, change.lease_seconds).until, attempted=record.attempted)


def _unconfirmed(attempted_at: Callable[[JobRecord, Change], float]) -> Effect:
    def effect(record: JobRecord | None, change: Change) -> JobRecord:
        assert record is not None
        return JobRecord(job=record.job, state=State.UNCONFIRMED, slot=record.slot,
                         attempted_at=attempted_at(record, change))
    return effect


def _requeued(record: JobRecord | None, change: Change) -> JobRecord:
    assert record is not None
    return JobRecord(job=record.job, state=State.PENDING)


def _requeued_unconfirmed(record: JobRecord | None, change: Change) -> JobRecord:
    assert record is not None
    return JobRecord(job=record.job, state=State.PENDING, attempted=record.attempted_at)


def _unadopted(record: JobRecord | None, change: Change) -> JobRecord:
    assert change.from_record is not None
    return change.from_record


def _deleted(record: JobRecord | None, change: Change) -> None:
    return None


_P, _S, _U = State.PENDING, State.STARTING, State.UNCONFIRMED

TRANSITIONS: dict[tuple[State | None, Event], Transition] = {
    (None, Event.QUEUE): Transition(_P, _always, "no record of that id", _new(_P)),
    (None, Event.QUEUE_STARTING): Transition(_S, _always, "no record of that id; a slot taken", _new(_S)),
    (None, Event.UNADOPT): Transition(_U, _always, "no record (the adoption deleted it)", _unadopted),
    (_U, Event.UNADOPT): Transition(_U, _always, "the adoption has not deleted it yet: the new "
                                    "generation makes that deletion fail", _unadopted),
    (_P, Event.HOLD): Transition(
        _P, lambda r, c: r is not None and r.growable(c.storage_class),
        "growable: a staging import, never attempted, not closing, "
        f"< {MAX_HOLDS} holds, < {MAX_GROWN_OBJECTS} objects, same storage class",
        _with_holds(lambda r, c: {**r.holds, c.batch: Hold(c.batch, c.until)})),
    (_P, Event.RENEW_HOLD): Transition(
        _P, _hold_of(True), "our hold is there, not cancelled",
        _with_holds(lambda r, c: {**r.holds, c.batch: Hold(c.batch, c.until)})),
    (_P, Event.COMMIT_GROWTH): Transition(
        _P, _hold_of(True), "our hold is there, not cancelled", _committed),
    (_P, Event.RELEASE_HOLD): Transition(
        _P, _hold_of(False), "the hold is there",
        _with_holds(lambda r, c: {b: h for b, h in r.holds.items() if b != c.batch})),
    (_P, Event.CANCEL_HOLD): Transition(
        _P, _hold_of(True), "the hold is there, not cancelled (the starter found it run out)",
        _with_holds(lambda r, c: {**r.holds, c.batch: Hold(c.batch, r.holds[c.batch].until, cancelled=True)})),
    (_P, Event.CLOSE): Transition(
        _P, lambda r, c: r is not None and bool(r.live_holds(c.now)) and not r.closing,
        "live holds, not closing yet; it keeps the slot taken for it",
        lambda r, c: replace(r, closing=True, slot=c.slot) if r else None),
    (_P, Event.REOPEN): Transition(
        _P, lambda r, c: r is not None and r.closing, "closing; another import runs: its slot goes back",
        lambda r, c: replace(r, closing=False, slot=None) if r else None),
    (_P, Event.START): Transition(
        _S, lambda r, c: r is not None and not r.live_holds(c.now), "no live holds; a slot taken", _starting),
    (_S, Event.START_FAILED): Transition(
        _P, _always, "the API answered with a retryable error; the slot goes back", _requeued),
    (_S, Event.OUTCOME_UNKNOWN): Transition(
        _U, _always, "the call ended without an answer; the slot stays",
        _unconfirmed(lambda r, c: c.now)),
    (_S, Event.LEASE_RAN_OUT): Transition(
        _U, lambda r, c: r is not None and r.start_lease().expired(c.now),
        "the lease ran out; the slot stays",
        _unconfirmed(lambda r, c: r.start_attempted_at(c.lease_seconds))),
    (_U, Event.REQUEUE_UNCONFIRMED): Transition(
        _P, _always, "no operation of it found in time; the slot goes back", _requeued_unconfirmed),
    (_S, Event.TRACK): Transition(None, _always, "its operation is tracked", _deleted),
    (_U, Event.TRACK): Transition(None, _always, "its starter tracked its operation after all", _deleted),
    (_P, Event.TRACK): Transition(None, _always, "its starter tracked its operation after the poller "
                                  "queued it again", _deleted),
    (_U, Event.ADOPT): Transition(None, _always, "the operation it began is tracked", _deleted),
    (_P, Event.DROP_TRACKED): Transition(None, _always, "its operation is tracked already", _deleted),
    (_S, Event.DROP_TRACKED): Transition(None, _always, "its operation is tracked already", _deleted),
    (_U, Event.DROP_TRACKED): Transition(None, _always, "its operation is tracked already", _deleted),
}


def transition(record: JobRecord | None, event: Event, change: Change = NO_CHANGE) -> tuple[bool, JobRecord | None]:
    """(allowed, the record after `event`): not allowed when no row matches or its guard fails."""
    row = TRANSITIONS.get((record.state if record else None, event))
    if row is None or not row.guard(record, change):
        return False, None
    after = row.effect(record, change)
    if after is not None and after.state is not row.to:
        after = replace(after, state=row.to) if row.to is not None else None
    return True, after


@dataclass(frozen=True)
class Applied:
    record: JobRecord | None  # None: deleted
    generation: int | None  # None: deleted

    @property
    def data(self) -> dict[str, Any]:
        return self.record.to_json() if self.record else {}


def apply(gcs: ObjectStore, bucket: str, path: str, current: Record | None, event: Event,
          change: Change = NO_CHANGE, *, attempts: int = 1, throttle_is_loss: bool = False) -> Applied | None:
    """Applies `event` to the record at `path`, read as `current` (None: absent), with a
    compare-and-swap on its generation. None when no row allows it or the swap was lost.

    `attempts` > 1: a lost swap is retried on a fresh read (other writers change the record too).
    `throttle_is_loss`: a 429 from Cloud Storage (nothing was written) counts as a lost swap.
    """
    for attempt in range(attempts):
        if attempt:
            current = gcs.read(bucket, path)
        record = JobRecord.from_json(current.data) if current is not None else None
        allowed, after = transition(record, event, change)
        if not allowed:
            return None
        try:
            if current is None:
                assert after is not None
                generation = gcs.create(bucket, path, after.to_json())
                if generation is not None:
                    return Applied(after, generation)
                continue
            if after is None:
                if gcs.delete(bucket, path, current.generation):
                    return Applied(None, None)
                continue
            generation = gcs.replace(bucket, path, after.to_json(), current.generation)
        except TooManyRequests:
            if not throttle_is_loss:
                raise
            logger.warning("a swap of a job record was throttled", extra=fields(record=path, event=event.value))
            generation = None
        if generation is not None:
            return Applied(after, generation)
    return None


def markdown_table() -> str:
    """The transition table as docs/state.md shows it."""
    lines = ["| state | event | new state | guard |", "|---|---|---|---|"]
    for (state, event), row in TRANSITIONS.items():
        lines.append(f"| {state.value if state else '(none)'} | {event.value} | "
                     f"{row.to.value if row.to else '(deleted)'} | {row.guard_text} |")
    return "\n".join(lines)


def live_holds(record: dict[str, Any], now: float) -> list[Hold]:
    """Holds whose grower may still commit."""
    return JobRecord.from_json(record).live_holds(now)


def growable(record: dict[str, Any], storage_class: str | None) -> bool:
    """May this job record take more uploads of `storage_class`? (`JobRecord.growable`)"""
    return JobRecord.from_json(record).growable(storage_class)


def _effect(record: dict[str, Any], event: Event, change: Change) -> dict[str, Any]:
    """What `event` makes of a PENDING record, its guard aside (`apply` checks the guards when
    the record is written)."""
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
