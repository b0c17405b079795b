"""Queued LRO starts, a per-store semaphore of LRO slots, and tracked operations.

A job is one `dicomStores.import` or `dicomStores.export` call waiting to be made. Jobs are
durable objects (`jobs/`), started by whoever holds a free slot (`slots/i`, at most
`DICOM_MAX_CONCURRENT_OPERATIONS` of them); a started job becomes a tracked operation
(`operations/`) that the poller watches. See docs/state.md.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from functions.clients import HealthcareApi, ObjectStore, Record
from functions.errors import PermanentApiError, RetryableError
from functions.log import fields
from functions.settings import Settings

logger = logging.getLogger(__name__)

Kind = Literal["import", "export"]
REFUSED_PREFIX = "refused-"  # operation ids of starts the API refused (see `_record_refusal`)
_READ_THREADS = 16


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

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "", 0) or k == "created_at"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


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


@dataclass(frozen=True)
class StartResult:
    started: str | None  # operation name
    queued: bool  # no free slot: the job waits for the poller


class JobQueue:
    """Submits and starts jobs under the slot limit. Safe across threads and instances."""

    def __init__(self, settings: Settings, gcs: ObjectStore, healthcare: HealthcareApi,
                 clock: Callable[[], float] = time.time) -> None:
        self._s = settings
        self._gcs = gcs
        self._hc = healthcare
        self._clock = clock

    # -- paths -----------------------------------------------------------------------------
    def job_path(self, job_id: str) -> str:
        return self._s.state_path("jobs", f"{job_id}.json")

    def slot_path(self, index: int) -> str:
        return self._s.state_path("slots", str(index))

    def operation_path(self, operation_id: str) -> str:
        return self._s.state_path("operations", f"{operation_id}.json")

    # -- queue -------------------------------------------------------------------------------
    def reserve(self, job: Job) -> Reservation:
        """Queues the job durably, taking a free slot for it when there is one.

        Idempotent: a job id that exists already is left to whoever created it. The slot is taken
        before the job is written, so a job that can start is written twice (created as
        STARTING, deleted once its operation is tracked), never three times.
        """
        slot = self._acquire_slot(job.job_id)
        state: dict[str, Any] = {"job": job.to_json(), "state": "PENDING"}
        if slot is not None:
            state.update(state="STARTING", slot=slot, leaseUntil=self._clock() + self._s.claim_lease_seconds)
        generation = self._gcs.create(self._s.state_bucket, self.job_path(job.job_id), state)
        if generation is None and slot is not None:
            self.release_slot(slot, job.job_id)
        return Reservation(job, slot if generation is not None else None, generation)

    def start(self, reservation: Reservation) -> StartResult:
        """Makes the API call of a reserved job; a job without a slot stays queued for the poller."""
        if reservation.generation is None:
            return StartResult(None, queued=False)  # somebody else's job
        if reservation.slot is None:
            return StartResult(None, queued=True)
        return self._start_claimed(reservation.job, reservation.slot, reservation.generation)

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

    def pending_job_ids(self) -> list[str]:
        prefix = self._s.state_path("jobs/")
        return sorted(o.name[len(prefix):-len(".json")] for o in self._gcs.list(self._s.state_bucket, prefix))

    def try_start(self, job_id: str, tracked_jobs: Collection[str] = ()) -> StartResult:
        """Starts the job if a slot is free and nobody else is starting it.

        `tracked_jobs`: jobs whose operation is tracked (read before the job list). Such a job's
        starter died after it recorded the operation, before it deleted the job: the job record
        is dropped, not started a second time.

        A transient API failure puts the job back in the queue (the poller tries again); a
        permanent one finishes it as a failed operation so that its completion event says why.
        """
        record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
        if record is None:
            return StartResult(None, queued=False)  # started (or finished) by somebody else
        if job_id in tracked_jobs:
            logger.warning("dropping a job whose operation is already tracked", extra=fields(job=job_id))
            self._gcs.delete(self._s.state_bucket, self.job_path(job_id), record.generation)
            return StartResult(None, queued=False)
        now = self._clock()
        if record.data.get("state") == "STARTING" and float(record.data.get("leaseUntil", 0)) > now:
            return StartResult(None, queued=False)
        job = Job.from_json(record.data["job"])
        slot = self._acquire_slot(job.job_id)
        if slot is None:
            return StartResult(None, queued=True)
        starting = {"job": job.to_json(), "state": "STARTING", "slot": slot,
                    "leaseUntil": now + self._s.claim_lease_seconds}
        generation = self._gcs.replace(self._s.state_bucket, self.job_path(job_id), starting, record.generation)
        if generation is None:
            self.release_slot(slot, job.job_id)
            return StartResult(None, queued=False)
        if record.data.get("state") == "STARTING":
            # The previous starter died mid-way; its LRO may exist. A second import/export of the
            # same data is harmless (duplicates are ignored / files rewritten), losing it is not.
            logger.warning("restarting a job whose starter died", extra=fields(job=job_id))
        return self._start_claimed(job, slot, generation)

    def _start_claimed(self, job: Job, slot: int, generation: int) -> StartResult:
        """Makes the API call for a job this caller holds (state STARTING, slot taken)."""
        job_id = job.job_id
        try:
            name = self._start(job)
        except PermanentApiError as exc:
            logger.error("the API refused to start the job", extra=fields(job=job_id, status=exc.status_code,
                                                                          error=exc.message))
            name = self._record_refusal(job, exc)
        except RetryableError as exc:
            logger.warning("could not start the job; it stays queued",
                           extra=fields(job=job_id, error=str(exc)))
            self._gcs.replace(self._s.state_bucket, self.job_path(job_id),
                              {"job": job.to_json(), "state": "PENDING"}, generation)
            self.release_slot(slot, job.job_id)
            return StartResult(None, queued=True)
        tracked = StartedOperation(name=name, job=job, slot=slot, started_at=self._clock())
        self._gcs.write(self._s.state_bucket, self.operation_path(tracked.operation_id), tracked.to_json())
        self._gcs.delete(self._s.state_bucket, self.job_path(job_id))
        logger.info("operation started", extra=fields(job=job_id, kind=job.kind, operation=name, slot=slot))
        return StartResult(name, queued=False)

    def _start(self, job: Job) -> str:
        if job.kind == "import":
            return self._hc.import_dicom(job.import_uri, storage_class=job.storage_class)
        return self._hc.export_dicom(job.destination, mime_type=job.mime_type, filter_uri=job.filter_uri)

    def _record_refusal(self, job: Job, exc: PermanentApiError) -> str:
        """A refused start is reported like a failed LRO, so the poller publishes its event."""
        name = f"{self._s.dataset}/operations/{REFUSED_PREFIX}{job.job_id}"
        self._gcs.write(self._s.state_bucket, self._s.state_path("refusals", f"{REFUSED_PREFIX}{job.job_id}.json"), {
            "name": name, "done": True,
            "error": {"code": 3 if exc.status_code == 400 else 7 if exc.status_code == 403 else 5,
                      "message": f"the API refused to start the operation: HTTP {exc.status_code} {exc.message}"},
            "metadata": {"createTime": _rfc3339(self._clock()), "endTime": _rfc3339(self._clock())},
        })
        return name

    # -- slots -------------------------------------------------------------------------------
    def _acquire_slot(self, job_id: str) -> int | None:
        # List first (a read): with every slot busy, a queued job writes nothing. A random probe
        # order spreads concurrent starters over the free slots instead of all racing for one.
        prefix = self._s.state_path("slots/")
        held = {info.name[len(prefix):] for info in self._gcs.list(self._s.state_bucket, prefix)}
        order = [i for i in range(self._s.max_concurrent_operations) if str(i) not in held]
        random.shuffle(order)
        for index in order:
            if self._gcs.create(self._s.state_bucket, self.slot_path(index),
                                {"job": job_id, "acquiredAt": self._clock()}) is not None:
                return index
        return None

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
        """Frees slots whose holder neither runs an operation nor is starting one (it died)."""
        freed = 0
        now = self._clock()
        for index, record in self.slots().items():
            holder = str(record.data.get("job", ""))
            stale = float(record.data.get("acquiredAt", 0)) + self._s.claim_lease_seconds < now
            if holder not in live_jobs and stale and not self._being_started(holder, now):
                if self._gcs.delete(self._s.state_bucket, self.slot_path(index), record.generation):
                    logger.warning("freed a slot whose holder died", extra=fields(slot=index,
                                                                                  job=record.data.get("job")))
                    freed += 1
        return freed

    def _being_started(self, job_id: str, now: float) -> bool:
        record = self._gcs.read(self._s.state_bucket, self.job_path(job_id))
        return bool(record and record.data.get("state") == "STARTING"
                    and float(record.data.get("leaseUntil", 0)) > now)

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


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
