"""Queued LRO starts, a per-store semaphore of LRO slots, and tracked operations.

A job is one `dicomStores.import`, `dicomStores.export` or `dicomStores.setBlobStorageSettings`
call waiting to be made. Jobs are durable objects (`jobs/`), started by whoever holds a free slot (`slots/i`, at most
`DICOM_MAX_CONCURRENT_OPERATIONS` of them); a started job becomes a tracked operation
(`operations/`) that the poller watches. See docs/state.md.

Starting an LRO is not idempotent. A start whose outcome is unknown (the POST failed after it was
sent, or its starter died mid-call) is never sent again blindly: the job turns UNCONFIRMED, keeps
its slot, and the poller looks for the operation it may have started (`resolve_unconfirmed`); see
docs/decisions/0300-ambiguous-lro-starts.md.

Which operation did an unconfirmed start begin, if any? Pure decisions on plain data.

A start is unconfirmed when its `:import`/`:export` POST failed after the request was sent (a read
timeout, a dropped connection, a 500/502/504) or its starter died mid-call: the API may have started
an operation whose name we never learnt. Google's operations carry no trace of the request that
started them (`OperationMetadata` has `apiMethodName`, `createTime`, `endTime`, counters), so the
only evidence is an operation of the right method, created after the attempt began, that nobody
tracks. See docs/decisions/0300-ambiguous-lro-starts.md.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from functions.core.errors import ApiError, PermanentApiError, RetryableError, UnknownOutcomeError
from functions.core.job_checks import job_problem
from functions.core.lease import OPERATION_CLOCK_SKEW_SECONDS as CLOCK_SKEW_SECONDS
from functions.core.lease import Lease, renewal_margin
from functions.core.refusal import refusal_reason
from functions.gcp.clients import HealthcareApi, ObjectStore, Record
from functions.gcp.retry import classify, is_transient
from functions.imports import job_record
from functions.imports.job_record import NO_CHANGE, Change, Event, JobRecord, State
from functions.imports.job_record import apply as apply_transition
from functions.imports.run_budget import RunBudget, unlimited
from functions.log import fields
from functions.settings import Settings

logger = logging.getLogger(__name__)

Kind = Literal["import", "export", "storageClass"]  # storageClass: dicomStores.setBlobStorageSettings
REFUSED_PREFIX = "refused-"  # operation ids of starts the API refused (see `_record_refusal`)
# Slots 0..INGEST_SLOTS-1 take imports of uploads only: exports, storage-class changes and
# redrives (whatever a publisher of export requests can start) never hold every slot, so they
# cannot starve ingest (docs/decisions/0874). Not with a single slot: requests would never run.
INGEST_SLOTS = 1
_READ_THREADS = 16
_DELETE_THREADS = 64  # deletions of an undone growth's copies
_PAGE = 1000  # one listing page of Cloud Storage
_UNDO_PAGE = "a page of an undone growth's copies"  # a unit of a poller run's budget
# Writes of a job record that must land whatever its state (the operation is tracked): each lost
# swap is followed by a fresh read.
_TRACK_ATTEMPTS = 3
_TRACK_MAX_BACKOFF = 8.0  # seconds between tries of a started operation's tracking write


@dataclass(frozen=True)
class Job:
    """One LRO to start. `import_uri`/`manifest` for imports, `destination`... for exports."""

    job_id: str  # sortable: starts with the creation time, so the queue drains in order
    kind: Kind
    request_id: str  # the import batch id, or the export request id
    created_at: float
    import_uri: str = ""
    storage_class: str | None = None
    manifest: str = ""  # state object listing the batch's objects (import)
    object_count: int = 0
    staging_prefix: str = ""  # state prefix of staged copies, removed after success
    destination: str = ""
    mime_type: str | None = None
    filter_uri: str | None = None
    message_id: str = ""
    redrive_of: str = ""  # import jobs of a redrive: the operation whose receipt they re-import
    claim: str = ""  # export/redrive: the request's claim object, freed when the start is refused
    whole_store: bool = False  # storageClass without a filter file: the request said wholeStore
    grown: tuple[str, ...] = ()  # batches of later windows staged into it while it waited (coalescing)

    @property
    def staging_bucket(self) -> str:
        """The bucket its staged copies are in (its import URI's); "" when it stages nothing.

        Jobs queued before `DICOM_STAGING_BUCKET` changed keep theirs: growers copy there too."""
        if not self.staging_prefix or not self.import_uri.startswith("gs://"):
            return ""
        return self.import_uri[len("gs://"):].split("/", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if v not in (None, "", 0, ()) or k == "created_at"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        known = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in known}
        if "grown" in values:
            values["grown"] = tuple(values["grown"])
        return cls(**values)


@dataclass(frozen=True)
class StartedOperation:
    """What the poller keeps about a started LRO until its completion event is out."""

    name: str
    job: Job
    slot: int
    started_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def operation_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def refused(self) -> bool:
        """A start the API refused: its operation JSON is our own stand-in, not the API's."""
        return self.operation_id.startswith(REFUSED_PREFIX)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "job": self.job.to_json(), "slot": self.slot,
                "startedAt": self.started_at, **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StartedOperation:
        return cls(name=data["name"], job=Job.from_json(data["job"]), slot=int(data["slot"]),
                   started_at=float(data.get("startedAt", 0)), extra=data.get("extra", {}))


@dataclass(frozen=True)
class Reservation:
    """A job written to the queue; with a slot (state STARTING) when it may start right away."""

    job: Job
    slot: int | None
    generation: int | None  # None: the job existed already (somebody else's)
    record: JobRecord | None = None  # as created


@dataclass(frozen=True)
class StartResult:
    started: str | None  # operation name
    queued: bool  # no free slot: the job waits for the poller
    unconfirmed: bool = False  # the outcome is unknown: the job holds its slot until the poller knows
    coalescing: bool = False  # an import waits for the running one, taking later uploads (no slot taken)
    capped: bool = False  # a request's job found only ingest slots free: the jobs behind it may start


class JobQueue:
    """Submits and starts jobs under the slot limit. Safe across threads and instances."""

    def __init__(self, settings: Settings, gcs: ObjectStore, healthcare: HealthcareApi,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self._s = settings
        self._gcs = gcs
        self._hc = healthcare
        self._clock = clock
        self._sleep = sleep

    # -- paths -----------------------------------------------------------------------------
    def job_path(self, job_id: str) -> str:
        return self._s.state_path("jobs", f"{job_id}.json")

    def slot_path(self, index: int) -> str:
        return self._s.state_path("slots", str(index))

    def operation_path(self, operation_id: str) -> str:
        return self._s.state_path("operations", f"{operation_id}.json")

    def disowned_path(self, operation_id: str) -> str:
        return self._s.state_path("disowned", f"{operation_id}.json")

    def unconfirmed_path(self, job_id: str) -> str:
        return self._s.state_path("unconfirmed", f"{job_id}.json")

    # -- queue -------------------------------------------------------------------------------
    def reserve(self, job: Job) -> Reservation:
        """Queues the job durably, taking a free slot for it when there is one.

        Idempotent: a job id that exists already is left to whoever created it. The slot is taken
        before the job is written, so a job that can start is written twice (created as
        STARTING, deleted once its operation is tracked), never three times.
        """
        slot = None if self.waits_for_running_import(job) else self._acquire_slot(job)
        change = Change(job=job.to_json())
        if slot is not None:
            change = Change(job=job.to_json(), slot=slot, now=self._clock(), lease_seconds=self._s.claim_lease_seconds)
        created = self._apply(job.job_id, None, Event.QUEUE if slot is None else Event.QUEUE_STARTING, change)
        if created is None:
            if slot is not None:
                self.release_slot(slot, job.job_id)
            return Reservation(job, None, None)
        return Reservation(job, slot, created.generation, created.record)

    def start(self, reservation: Reservation) -> StartResult:
        """Makes the API call of a reserved job; a job without a slot stays queued for the poller."""
        if reservation.generation is None:
            return StartResult(None, queued=False)  # somebody else's job
        if reservation.slot is None or reservation.record is None:
            return StartResult(None, queued=True)
        return self._start_claimed(reservation.job, reservation.slot, Record(reservation.record.to_json(),
                                                                             reservation.generation))

    def submit(self, job: Job) -> StartResult:
        """Queues the job and starts it at once if a slot is free."""
        return self.start(self.reserve(job))

    def pending_jobs(self) -> list[Job]:
        """The queued jobs themselves (one read each)."""
        jobs = []
        for job_id in self.pending_job_ids():
            record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
            if record is not None:
                jobs.append(Job.from_json(record.data["job"]))
        return jobs

    def pending_records(self) -> list[Record]:
        """The queued jobs' records (one read each), oldest first."""
        records = []
        for job_id in self.pending_job_ids():
            record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
            if record is not None:
                records.append(record)
        return records

    def pending_jobs_since(self, records: list[Record] | None = None) -> list[tuple[Job, float | None]]:
        """The queued jobs, each with the time its start was attempted: None while it has not been
        (a job STARTING or UNCONFIRMED may already have an operation that read its source).
        `records`: `pending_records()` when the caller has read them already."""
        jobs: list[tuple[Job, float | None]] = []
        for record in self.pending_records() if records is None else records:
            typed = JobRecord.from_json(record.data)
            attempted: float | None = None
            if typed.state is State.UNCONFIRMED:
                attempted = typed.attempted_at
            elif typed.state is State.STARTING:
                attempted = typed.start_attempted_at(self._s.claim_lease_seconds)
            jobs.append((Job.from_json(record.data["job"]), attempted))
        return jobs

    def pending_job_ids(self) -> list[str]:
        prefix = self._s.state_path("jobs/")
        return sorted(o.name[len(prefix):-len(".json")] for o in self._gcs.list(self._s.state_bucket, prefix))

    def try_start(self, job_id: str, tracked_jobs: Collection[str] = (),
                  budget: RunBudget | None = None) -> StartResult:
        """Starts the job if a slot is free and nobody else is starting it.

        `tracked_jobs`: jobs whose operation is tracked (read before the job list). Such a job's
        starter died after it recorded the operation, before it deleted the job: the job record
        is dropped, not started a second time.

        A transient API failure puts the job back in the queue (the poller tries again); a
        permanent one finishes it as a failed operation so that its completion event says why. A
        job whose starter died mid-call is not started again: its operation may exist, so it turns
        UNCONFIRMED (see `resolve_unconfirmed`).

        `budget`: a poller run's (decision 0775); undoing a stopped grower's growth stops within
        it, and the job then waits for the next run to finish the undo.
        """
        record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
        if record is None:
            return StartResult(None, queued=False)  # started (or finished) by somebody else
        if job_id in tracked_jobs:
            logger.warning("dropping a job whose operation is already tracked", extra=fields(job=job_id))
            self._apply(job_id, record, Event.DROP_TRACKED)
            return StartResult(None, queued=False)
        now = self._clock()
        typed = JobRecord.from_json(record.data)
        if typed.state is State.UNCONFIRMED:
            return StartResult(None, queued=False, unconfirmed=True)
        if typed.state is State.STARTING:
            if typed.start_lease().live(now):
                return StartResult(None, queued=False)
            self._mark_unconfirmed(record, "its starter stopped before it knew the outcome")
            return StartResult(None, queued=False, unconfirmed=True)
        for hold in [h for h in typed.holds.values() if not h.live(now)]:
            dropped = self._drop_hold(record, hold, budget or unlimited(self._clock))
            if dropped is None:
                return StartResult(None, queued=False)
            record = dropped
        typed = JobRecord.from_json(record.data)
        job = Job.from_json(record.data["job"])
        kept = typed.slot if typed.closing else None  # a closing job keeps the slot it was closed with
        if self.waits_for_running_import(job):
            # Closed for a start that another import has since overtaken: it waits again, so it
            # may grow again (else later windows would queue jobs beside it).
            if self._apply(job_id, record, Event.REOPEN) is not None and kept is not None:
                self.release_slot(kept, job_id)
            return StartResult(None, queued=False, coalescing=True)
        if kept is not None and typed.live_holds(now):
            return StartResult(None, queued=False)  # its last grower (or the poller) starts it
        slot = kept if kept is not None else self._acquire_slot(job)
        if slot is None:
            return StartResult(None, queued=True, capped=is_request(job))
        if typed.live_holds(now):
            # Later windows are growing it. It could start now, so it takes no new growers (else
            # overlapping windows could hold it forever); the last grower to commit, or the
            # poller, starts it. It keeps the slot meanwhile (decision 0780): later windows see
            # an import starting, so their jobs wait and grow instead of starting beside it.
            if self._apply(job_id, record, Event.CLOSE, Change(now=now, slot=slot)) is None:
                self.release_slot(slot, job.job_id)
            return StartResult(None, queued=False)
        started = self._apply(job_id, record, Event.START,
                              Change(now=now, slot=slot, lease_seconds=self._s.claim_lease_seconds))
        if started is None or started.generation is None:
            if kept is None:  # a closing job's slot stays with it: its record says so
                self.release_slot(slot, job.job_id)
            return StartResult(None, queued=False)
        return self._start_claimed(job, slot, Record(started.data, started.generation))

    def waits_for_running_import(self, job: Job) -> bool:
        """Should this import stay queued, although a slot may be free, to take later uploads?

        Yes for a staging import (one that later windows can grow) while another import of this
        pipeline runs (or is being started) and the job is younger than `import_coalesce_seconds`:
        the running import will not read what arrives meanwhile, so the waiting one grows
        (functions.imports.job_record) and starts when the running one is done. During a long upload this
        keeps the number of LROs near upload time / LRO time instead of cap times that. Globs (they
        cannot grow), redrives and exports never wait. See docs/decisions/0700.
        """
        if (job.kind != "import" or not job.staging_prefix or job.redrive_of
                or self._s.import_coalesce_seconds <= 0):
            return False
        if self._clock() >= job.created_at + self._s.import_coalesce_seconds:
            return False
        running = self._running_import(besides=job.job_id)
        if running:
            logger.info("an import waits for the running one, taking later uploads",
                        extra=fields(job=job.job_id, running=running))
        return bool(running)

    def _running_import(self, besides: str) -> str:
        """The job id of an import that holds a slot and is not known to be done ("" when none).

        The slots and the tracked operations carry their job and kind as object metadata, so this
        is two listings plus one `operations.get` per import slot. A slot without a tracked
        operation counts as running while its starter is calling the API within its lease (one
        read of its job), and so does a slot written before slots carried metadata; a start of
        unknown outcome does not (see `_start_in_flight`). A finished operation whose slot the
        poller has not freed yet does not count: the next window need not wait for the poller's
        schedule.
        """
        prefix = self._s.state_path("slots/")
        holders = [info.metadata.get("job", "") for info in self._gcs.list(self._s.state_bucket, prefix)
                   if info.metadata.get("kind", "import") == "import"]
        holders = [holder for holder in holders if holder != besides]
        if not holders:
            return ""
        operation_of = self._tracked_by_job()
        for holder in holders:
            operation_id = operation_of.get(holder)
            if operation_id is None:
                if not holder:
                    return "a slot without metadata"
                if self._start_in_flight(holder):
                    return holder
                continue
            if operation_id.startswith(REFUSED_PREFIX):
                continue
            try:
                operation = self._hc.get_operation(f"{self._s.dataset}/operations/{operation_id}")
            except ApiError as exc:
                logger.warning("could not tell whether an import still runs; counting it as running",
                               extra=fields(job=holder, operation=operation_id, error=type(exc).__name__,
                                            status=exc.status_code))
                return holder
            if not operation.get("done"):
                return holder
        return ""

    def _start_in_flight(self, job_id: str) -> bool:
        """Is this untracked slot holder being started by a live starter (STARTING within its lease)?

        A start of unknown outcome (UNCONFIRMED, or STARTING past its lease: the starter died)
        holds no import back: it keeps its slot until the poller knows (docs/decisions/0300), which
        can take 10 minutes, and waiting for it would stall every window of an upload behind a
        killed instance until the coalescing age. If its operation does exist, the cost of not
        waiting is one LRO more, never a second read. A job record that is gone means the start
        ended (tracked or dropped) after the listing: not in flight either.
        """
        record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
        if record is not None and record.data.get("closing") and record.data.get("slot") is not None:
            return True  # about to start once its last grower commits (decision 0780)
        if record is None or record.data.get("state") != "STARTING":
            return False
        return Lease(float(record.data.get("leaseUntil", 0))).live(self._clock())

    def _drop_hold(self, record: Record, hold: job_record.Hold, budget: RunBudget) -> Record | None:
        """Undoes the growth of a grower that died or stalled past its hold (see functions.imports.job_record).

        Cancelled first, so that a stalled grower's commit fails; then its copies and manifest go
        (its uploads' window records still exist: their window is planned again), then the hold.
        A crash in between leaves the cancelled hold for the next starter to finish, and so does a
        run whose budget ends before the last copy (None then: the job is not started now).
        """
        job_id = str(record.data["job"]["job_id"])
        if not hold.cancelled:
            cancelled = self._apply(job_id, record, Event.CANCEL_HOLD, Change(batch=hold.batch))
            if cancelled is None or cancelled.generation is None:
                return None
            record = Record(cancelled.data, cancelled.generation)
        job = Job.from_json(record.data["job"])
        logger.warning("undoing the growth of a queued job whose grower stopped",
                       extra=fields(job=job.job_id, batch=hold.batch))
        bucket = job.staging_bucket if self._s.is_staging_bucket(job.staging_bucket) else self._s.staging
        if not self._delete_copies(bucket, job_record.batch_prefix(job.staging_prefix, hold.batch), budget):
            logger.info("undoing a growth is left to the next run", extra=fields(job=job.job_id, batch=hold.batch))
            return None
        self._gcs.delete(self._s.state_bucket, job_record.grown_manifest(job.manifest, hold.batch))
        cleared = self._apply(job_id, record, Event.RELEASE_HOLD, Change(batch=hold.batch))
        return None if cleared is None or cleared.generation is None else Record(cleared.data, cleared.generation)

    def _delete_copies(self, bucket: str, prefix: str, budget: RunBudget) -> bool:
        """Deletes every object under `prefix`, a listing page at a time while `budget` allows;
        whether none is left. A growth is up to a window of copies (2,500 at 500 files/s): one at
        a time they took a poller run minutes at x5 latency, so a page goes on 64 threads."""
        while budget.allows(_UNDO_PAGE):
            began = self._clock()
            wanted = budget.take(_PAGE)
            names = [info.name for info in self._gcs.list(bucket, prefix, max_results=wanted)]
            with ThreadPoolExecutor(max_workers=_DELETE_THREADS) as pool:
                list(pool.map(lambda name: self._gcs.delete(bucket, name), names))
            budget.spent(_UNDO_PAGE, self._clock() - began, len(names))
            if len(names) < wanted:
                return True  # the prefix is empty now
        return False

    def _apply(self, job_id: str, record: Record | None, event: Event, change: Change = NO_CHANGE,
               attempts: int = 1) -> job_record.Applied | None:
        """The one way this class writes a job record (functions.imports.job_record)."""
        return apply_transition(self._gcs, self._s.state_bucket, self.job_path(job_id), record, event, change,
                                attempts=attempts)

    def _start_claimed(self, job: Job, slot: int, record: Record) -> StartResult:
        """Makes the API call for a job this caller holds (`record`: its STARTING record)."""
        job_id = job.job_id
        attempted_at = self._clock()
        try:
            problem = job_problem(job, self._s)
            if problem is not None:
                # Written by something other than this deployment's own code: never started.
                logger.error("refusing a job this deployment would not have written",
                             extra=fields(job=job_id, kind=job.kind, reason=problem))
                raise PermanentApiError(400, problem, status="FAILED_PRECONDITION", resource="job")
            name = self._start(job)
        except PermanentApiError as exc:
            logger.error("the API refused to start the job", extra=fields(job=job_id, status=exc.status_code,
                                                                          error=exc.message))
            name = self._record_refusal(job, exc)
        except UnknownOutcomeError as exc:
            logger.warning("the start's outcome is unknown; the job keeps its slot until the poller finds out",
                           extra=fields(job=job_id, slot=slot, error=str(exc)[:300]))
            self._gcs.create(self._s.state_bucket, self.unconfirmed_path(job_id), {"job": job_id})
            # A failed swap: the poller took the job over already (it is UNCONFIRMED there too).
            self._apply(job_id, record, Event.OUTCOME_UNKNOWN, Change(now=attempted_at))
            return StartResult(None, queued=False, unconfirmed=True)
        except RetryableError as exc:
            logger.warning("could not start the job; it stays queued",
                           extra=fields(job=job_id, error=str(exc)))
            if self._apply(job_id, record, Event.START_FAILED) is not None:
                self.release_slot(slot, job.job_id)
            # else: taken over as UNCONFIRMED while we called (our lease ran out); its slot stays.
            return StartResult(None, queued=True)
        tracked = StartedOperation(name=name, job=job, slot=slot, started_at=attempted_at)
        # The one write that knows the operation's name: lost, the start turns unknown (and its files
        # may be read twice), so it outlasts throttling until the STARTING lease is nearly over.
        lease_until = float(record.data.get("leaseUntil", attempted_at + self._s.claim_lease_seconds))
        self._until_written(lambda: self._track(tracked), until=lease_until - renewal_margin(
            self._s.claim_lease_seconds), job_id=job_id)
        # Whatever the record's state by now (the poller may have turned it UNCONFIRMED, or queued
        # it again, while we called): the operation is tracked, so the job goes.
        self._apply(job_id, record, Event.TRACK, attempts=_TRACK_ATTEMPTS)
        logger.info("operation started", extra=fields(job=job_id, kind=job.kind, operation=name, slot=slot))
        return StartResult(name, queued=False)

    def _until_written(self, write: Callable[[], None], *, until: float, job_id: str) -> None:
        """Runs `write` again after each transient fault (backoff 1 s doubling to 8 s) while the
        next attempt can begin before `until`; the last fault reaches the caller."""
        delay = 1.0
        while True:
            try:
                write()
                return
            except Exception as exc:
                if not is_transient(exc) or self._clock() + delay >= until:
                    raise
                logger.warning("could not record a started operation; trying again",
                               extra=fields(job=job_id, error=type(exc).__name__))
                self._sleep(delay)
                delay = min(delay * 2, _TRACK_MAX_BACKOFF)

    def _track(self, started: StartedOperation) -> None:
        """Tracks an operation this caller certainly started.

        Created, not overwritten: if the poller adopted the operation for an unconfirmed job in the
        meantime (it could only guess by time), the operation is ours and that job goes back to
        UNCONFIRMED, holding its slot, to be resolved again.
        """
        path = self.operation_path(started.operation_id)
        if self._gcs.create(self._s.state_bucket, path, started.to_json(), _labels(started.job)) is not None:
            return
        existing = self._gcs.read(self._s.state_bucket, path)
        if existing is not None:
            other = StartedOperation.from_json(existing.data)
            if other.job.job_id != started.job.job_id:
                logger.warning("an unconfirmed job had adopted an operation another job started; "
                               "it is unconfirmed again",
                               extra=fields(job=other.job.job_id, operation=started.name))
                unconfirmed = JobRecord(job=other.job.to_json(), state=State.UNCONFIRMED, slot=other.slot,
                                        attempted_at=float(other.extra.get("attemptedAt", other.started_at)))
                self._apply(other.job.job_id, self._gcs.read(self._s.state_bucket, self.job_path(other.job.job_id)),
                            Event.UNADOPT, Change(from_record=unconfirmed), attempts=_TRACK_ATTEMPTS)
                self._gcs.write(self._s.state_bucket, self.unconfirmed_path(other.job.job_id),
                                {"job": other.job.job_id})
        self._gcs.write(self._s.state_bucket, path, started.to_json())

    def _mark_unconfirmed(self, record: Record, why: str) -> bool:
        """Turns a STARTING job whose lease ran out into UNCONFIRMED (it keeps its slot)."""
        job = Job.from_json(record.data["job"])
        self._gcs.create(self._s.state_bucket, self.unconfirmed_path(job.job_id), {"job": job.job_id})
        if self._apply(job.job_id, record, Event.LEASE_RAN_OUT,
                       Change(now=self._clock(), lease_seconds=self._s.claim_lease_seconds)) is None:
            return False
        logger.warning("a job's start has an unknown outcome; it keeps its slot until the poller finds out",
                       extra=fields(job=job.job_id, reason=why))
        return True

    # -- unconfirmed starts ----------------------------------------------------------------------
    def resolve_unconfirmed(self) -> dict[str, str]:
        """Finds the operations unconfirmed starts began (or decides they began none).

        Returns {job id: adopted operation name | "requeued" | "waiting"}. One `operations.list`
        of the dataset per call, and only when a start is unconfirmed.
        """
        prefix = self._s.state_path("unconfirmed/")
        job_ids = [info.name[len(prefix):-len(".json")] for info in self._gcs.list(self._s.state_bucket, prefix)]
        if not job_ids:
            return {}
        records: dict[str, Record] = {}
        for job_id in job_ids:
            record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
            if record is None or record.data.get("state") != "UNCONFIRMED":
                # Resolved meanwhile (tracked, refused or requeued by its starter): nothing to find.
                self._gcs.delete(self._s.state_bucket, self.unconfirmed_path(job_id))
            else:
                records[job_id] = record
        if not records:
            return {}
        starts = [UnconfirmedStart(job_id, str(r.data["job"]["kind"]), float(r.data["attemptedAt"]))
                  for job_id, r in records.items()]
        since = min(s.attempted_at for s in starts) - CLOCK_SKEW_SECONDS
        tracked_by_job = self._tracked_by_job()
        disowned_prefix = self._s.state_path("disowned/")
        disowned = {info.name[len(disowned_prefix):-len(".json")]
                    for info in self._gcs.list(self._s.state_bucket, disowned_prefix)}
        found = [c for c in candidates(self._hc.list_operations(self._s.dataset),
                                       tracked=set(tracked_by_job.values()) | disowned, since=since)
                 if self._gcs.read(self._s.state_bucket, self._s.state_path(
                     "done", f"{c.name.rsplit('/', 1)[-1]}.json")) is None]  # reported and forgotten
        window = unknown_outcome_seconds(self._s.http_timeout_seconds,
                                         self._s.retry_deadline_seconds)
        in_flight = self._starts_in_flight(exclude=set(records) | set(tracked_by_job))
        outcome: dict[str, str] = {}
        for resolution in resolve(starts, found, now=self._clock(), unknown_outcome_seconds=window,
                                  in_flight=in_flight):
            record = records[resolution.job_id]
            if resolution.action == "adopt":
                outcome[resolution.job_id] = self._adopt(record, resolution.operation)
            elif resolution.action == "requeue":
                outcome[resolution.job_id] = self._requeue_unconfirmed(record, resolution.disowned)
            else:
                outcome[resolution.job_id] = "waiting"
        return outcome

    def _starts_in_flight(self, exclude: Collection[str]) -> list[UnconfirmedStart]:
        """Slot holders being started right now (STARTING): they may have begun an operation whose
        name their starter has yet to record. One listing of the slots, one read per such holder
        (at most the cap)."""
        prefix = self._s.state_path("slots/")
        holders = {str(info.metadata.get("job", "")) for info in self._gcs.list(self._s.state_bucket, prefix)}
        starts = []
        for job_id in sorted(holders - set(exclude) - {""}):
            record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
            if record is None or record.data.get("state") != "STARTING":
                continue
            typed = JobRecord.from_json(record.data)
            starts.append(UnconfirmedStart(job_id, str(record.data["job"]["kind"]),
                                           typed.start_attempted_at(self._s.claim_lease_seconds)))
        return starts

    def _adopt(self, record: Record, name: str) -> str:
        job = Job.from_json(record.data["job"])
        attempted_at = float(record.data["attemptedAt"])
        # started_at is the attempt's start: no later than the operation's (batching relies on that).
        adopted = StartedOperation(name=name, job=job, slot=int(record.data["slot"]), started_at=attempted_at,
                                   extra={"adopted": True, "attemptedAt": attempted_at})
        path = self.operation_path(adopted.operation_id)
        generation = self._gcs.create(self._s.state_bucket, path, adopted.to_json(), _labels(job))
        if generation is None:
            return "waiting"  # somebody tracked it just now; the next run looks again
        if self._apply(job.job_id, record, Event.ADOPT) is None:
            # The job changed under us (its own starter finished after all): withdraw the guess,
            # unless that starter has made the record its own meanwhile.
            self._gcs.delete(self._s.state_bucket, path, generation)
            return "waiting"
        self._gcs.delete(self._s.state_bucket, self.unconfirmed_path(job.job_id))
        logger.info("adopted the operation an unconfirmed start began", extra=fields(job=job.job_id, operation=name))
        return name

    def _requeue_unconfirmed(self, record: Record, disowned: Sequence[str] = ()) -> str:
        job = Job.from_json(record.data["job"])
        for name in disowned:
            # Written before the job goes back: an operation this start may have begun is never
            # adopted by a later unconfirmed start. It runs untracked and holds no slot of ours.
            self._gcs.write(self._s.state_bucket, self.disowned_path(name.rsplit("/", 1)[-1]),
                            {"operation": name, "job": job.job_id})
            logger.warning("an untracked operation that this start may have begun is left to run unreported",
                           extra=fields(job=job.job_id, operation=name))
        # `attempted`: an operation of this start may still turn up, so the job never grows.
        if self._apply(job.job_id, record, Event.REQUEUE_UNCONFIRMED) is None:
            return "waiting"
        self.release_slot(int(record.data["slot"]), job.job_id)
        self._gcs.delete(self._s.state_bucket, self.unconfirmed_path(job.job_id))
        logger.warning("an unconfirmed start began no operation; the job is queued again",
                       extra=fields(job=job.job_id))
        return "requeued"

    def _start(self, job: Job) -> str:
        if job.kind == "import":
            return self._hc.import_dicom(job.import_uri, storage_class=job.storage_class)
        if job.kind == "storageClass":
            if not job.storage_class:
                raise ValueError(f"storageClass job {job.job_id} has no storage class")
            return self._hc.set_blob_storage_settings(job.filter_uri, job.storage_class)
        return self._hc.export_dicom(job.destination, mime_type=job.mime_type, filter_uri=job.filter_uri)

    def _record_refusal(self, job: Job, exc: PermanentApiError) -> str:
        """A refused start is reported like a failed LRO, so the poller publishes its event."""
        name = f"{self._s.dataset}/operations/{REFUSED_PREFIX}{job.job_id}"
        self._gcs.write(self._s.state_bucket, self._s.state_path("refusals", f"{REFUSED_PREFIX}{job.job_id}.json"), {
            "name": name, "done": True,
            # The API's message stays in the log line above: it may quote request values.
            "error": {"code": 3 if exc.status_code == 400 else 7 if exc.status_code == 403 else 5,
                      "message": (f"the job was refused before it started: {exc.message}" if exc.resource == "job"
                                  else refusal_reason(classify(exc), "the start of the operation"))},
            "metadata": {"createTime": _rfc3339(self._clock()), "endTime": _rfc3339(self._clock())},
        })
        return name

    # -- slots -------------------------------------------------------------------------------
    def _acquire_slot(self, job: Job) -> int | None:
        # List first (a read): with every slot busy, a queued job writes nothing. A random probe
        # order spreads concurrent starters over the free slots instead of all racing for one.
        prefix = self._s.state_path("slots/")
        held = {info.name[len(prefix):] for info in self._gcs.list(self._s.state_bucket, prefix)}
        first = self.first_slot_of(job)
        order = [i for i in range(first, self._s.max_concurrent_operations) if str(i) not in held]
        random.shuffle(order)
        for index in order:
            if self._gcs.create(self._s.state_bucket, self.slot_path(index),
                                {"job": job.job_id, "acquiredAt": self._clock()}, _labels(job)) is not None:
                return index
        return None

    def first_slot_of(self, job: Job) -> int:
        """The lowest slot index `job` may take: requests' jobs leave the ingest slots free."""
        reserved = INGEST_SLOTS if self._s.max_concurrent_operations > INGEST_SLOTS else 0
        return reserved if is_request(job) else 0

    def release_slot(self, index: int, job_id: str) -> None:
        """Frees slot `index` if it is still held for `job_id`."""
        record = self._gcs.read(self._s.state_bucket, self.slot_path(index))
        if record is not None and record.data.get("job") == job_id:
            self._gcs.delete(self._s.state_bucket, self.slot_path(index), record.generation)

    def slots(self) -> dict[int, Record]:
        prefix = self._s.state_path("slots/")
        held: dict[int, Record] = {}
        for info in self._gcs.list(self._s.state_bucket, prefix):
            record = self._gcs.read(self._s.state_bucket, info.name)
            if record is not None:
                held[int(info.name[len(prefix):])] = record
        return held

    def reclaim_slots(self, live_jobs: set[str]) -> int:
        """Frees slots whose holder neither runs an operation nor may have started one (it died).

        A holder whose start has an unknown outcome keeps its slot: a job STARTING past its lease
        turns UNCONFIRMED here, so the poller resolves it even when the queue in front of it is full.
        """
        freed = 0
        now = self._clock()
        for index, record in self.slots().items():
            holder = str(record.data.get("job", ""))
            stale = float(record.data.get("acquiredAt", 0)) + self._s.claim_lease_seconds < now
            if holder in live_jobs or not stale or self._holds_its_slot(holder, index, now):
                continue
            if self._gcs.delete(self._s.state_bucket, self.slot_path(index), record.generation):
                logger.warning("freed a slot whose holder died", extra=fields(slot=index,
                                                                              job=record.data.get("job")))
                freed += 1
        return freed

    def _holds_its_slot(self, job_id: str, index: int, now: float) -> bool:
        record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
        if record is None:
            # Gone: either its starter died before writing it, or the starter tracked the
            # operation and deleted the job after the caller's list of live jobs was taken (a
            # start slower than the lease). The second still runs: freeing its slot would let one
            # LRO more than the cap start. The starter tracks before it deletes, so a listing now
            # finds it.
            return job_id in self._tracked_by_job()
        if record.data.get("slot") != index:
            return False
        state = record.data.get("state")
        if state == "PENDING":
            return bool(record.data.get("closing"))  # closed with this slot; it starts (or reopens) with it
        if state == "STARTING" and Lease(float(record.data.get("leaseUntil", 0))).expired(now):
            self._mark_unconfirmed(record, "its starter stopped before it knew the outcome")
            return True
        return state in ("STARTING", "UNCONFIRMED")

    def _tracked_by_job(self) -> dict[str, str]:
        """Job id -> operation id of every tracked operation: one listing (its metadata names the
        job); a record that carries no such metadata is read to find its job."""
        prefix = self._s.state_path("operations/")
        tracked: dict[str, str] = {}
        for info in self._gcs.list(self._s.state_bucket, prefix):
            job_id = info.metadata.get("job")
            if job_id is None:
                record = self._gcs.read(self._s.state_bucket, info.name)
                job_id = record.data.get("job", {}).get("job_id") if record is not None else None
            if job_id:
                tracked[str(job_id)] = info.name[len(prefix):-len(".json")]
        return tracked

    # -- tracked operations --------------------------------------------------------------------
    def tracked(self) -> list[StartedOperation]:
        """Every tracked operation; the records are read in parallel (the poller reads them all)."""
        names = [info.name for info in self._gcs.list(self._s.state_bucket, self._s.state_path("operations/"))]
        if not names:
            return []
        with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(names))) as pool:
            records = list(pool.map(lambda name: self._gcs.read(self._s.state_bucket, name), names))
        return [StartedOperation.from_json(r.data) for r in records if r is not None]

    def refusal(self, started: StartedOperation) -> dict[str, Any] | None:
        """The stand-in operation JSON of a start the API refused (see `_record_refusal`)."""
        record = self._gcs.read(self._s.state_bucket, self._s.state_path("refusals", f"{started.operation_id}.json"))
        return record.data if record else None

    def forget(self, tracked: StartedOperation) -> None:
        """Called after the completion event is out: frees the slot and drops the record."""
        self.release_slot(tracked.slot, tracked.job.job_id)
        self._gcs.delete(self._s.state_bucket, self.operation_path(tracked.operation_id))
        if tracked.refused:
            self._gcs.delete(self._s.state_bucket, self._s.state_path("refusals", f"{tracked.operation_id}.json"))


def is_request(job: Job) -> bool:
    """A job an export request started (export, storage-class change, redrive), not an upload's import."""
    return job.kind != "import" or bool(job.redrive_of)


def _labels(job: Job) -> dict[str, str]:
    """Object metadata of a slot or a tracked operation: listings then say whose it is."""
    return {"job": job.job_id, "kind": job.kind}


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


# An operation can appear long after the client gave up (the request may sit in a queue); only
# after this long without one is the start taken to have started nothing.
MIN_UNKNOWN_OUTCOME_SECONDS = 600.0

_METHOD_SUFFIX = {"import": "ImportDicomData", "export": "ExportDicomData",
                  "storageClass": "SetBlobStorageSettings"}
_FRACTION = re.compile(r"\.(\d+)")


@dataclass(frozen=True)
class UnconfirmedStart:
    job_id: str
    kind: str  # import | export
    attempted_at: float  # epoch seconds, taken before the POST was sent


@dataclass(frozen=True)
class Candidate:
    """An operation of the dataset that might be the one an unconfirmed start began."""

    name: str
    kind: str
    created_at: float


@dataclass(frozen=True)
class Resolution:
    job_id: str
    action: Literal["adopt", "requeue", "wait"]
    operation: str = ""  # adopt: the operation name
    disowned: tuple[str, ...] = ()  # requeue: operations it can have begun, which nobody may adopt now


def unknown_outcome_seconds(http_timeout_seconds: float, retry_deadline_seconds: float) -> float:
    """How long an unconfirmed start keeps its slot before it counts as "started nothing"."""
    return max(MIN_UNKNOWN_OUTCOME_SECONDS, 2 * http_timeout_seconds + retry_deadline_seconds)


def candidates(operations: Iterable[dict[str, Any]], *, tracked: Collection[str] = frozenset(),
               since: float = float("-inf")) -> list[Candidate]:
    """Import/export operations (matched by `apiMethodName` suffix), created at `since` or later,
    whose id is not in `tracked`; oldest first."""
    found = []
    for operation in operations:
        name = str(operation.get("name", ""))
        op_id = name.rsplit("/", 1)[-1]
        metadata = operation.get("metadata") or {}
        method = str(metadata.get("apiMethodName", ""))
        kind = next((k for k, suffix in _METHOD_SUFFIX.items() if method.endswith(suffix)), None)
        created = parse_time(str(metadata.get("createTime", "")))
        if kind is None or created is None or created < since or not name or op_id in tracked:
            continue
        found.append(Candidate(name, kind, created))
    return sorted(found, key=lambda c: (c.created_at, c.name))


def resolve(starts: Sequence[UnconfirmedStart], found: Sequence[Candidate], *, now: float,
            unknown_outcome_seconds: float, clock_skew_seconds: float = CLOCK_SKEW_SECONDS,
            in_flight: Sequence[UnconfirmedStart] = ()) -> list[Resolution]:
    """Adopts an untracked operation only when exactly one start can have begun it.

    A start can have begun an operation of its kind created no earlier than its attempt (less the
    clock skew). A start adopts an operation when that operation is the only one it can have begun
    and no other start can have begun it: another unconfirmed start, or one still `in_flight`
    (STARTING: its starter may yet learn the name and track it). Pairing several candidates with
    several starts by time alone could give one job's operation to another, whose files would then
    be reported imported without having been read (docs/decisions/0300-ambiguous-lro-starts.md).
    A start adopts nothing while that is ambiguous, keeping its slot; once `unknown_outcome_seconds`
    have passed since its attempt it goes back to the queue, and the operations it can have begun
    are `disowned`: nobody adopts them later, they run untracked and the job's files may be read twice.
    """
    def could(start: UnconfirmedStart, candidate: Candidate) -> bool:
        return candidate.kind == start.kind and candidate.created_at >= start.attempted_at - clock_skew_seconds

    everyone = [*starts, *in_flight]
    resolutions = []
    for start in sorted(starts, key=lambda s: (s.attempted_at, s.job_id)):
        mine = [c for c in found if could(start, c)]
        if len(mine) == 1 and not any(other.job_id != start.job_id and could(other, mine[0]) for other in everyone):
            resolutions.append(Resolution(start.job_id, "adopt", mine[0].name))
        elif now >= start.attempted_at + unknown_outcome_seconds:
            resolutions.append(Resolution(start.job_id, "requeue", disowned=tuple(c.name for c in mine)))
        else:
            resolutions.append(Resolution(start.job_id, "wait"))
    return resolutions


def parse_time(value: str) -> float | None:
    """RFC 3339 (`2024-05-01T10:00:00.123456789Z`, any fraction length) as epoch seconds."""
    if not value:
        return None
    value = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], value, count=1)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
