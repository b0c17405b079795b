"""Poll operations: one completion event per finished LRO, queued jobs started, dead work taken over.

Called by Cloud Scheduler every minute. Its work grows with the operations in flight, not with the
files uploaded: one state read and one `operations.get` per tracked operation, with bounded
concurrency. A crash after publishing republishes the same `eventId` on the next run; consumers
drop duplicates by it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from google.api_core.exceptions import TooManyRequests

from functions.core import completion
from functions.core.windows import is_window_id, object_key
from functions.gcp.clients import EventPublisher, HealthcareApi, ObjectStore
from functions.imports import window_records
from functions.imports.failed_objects import LANDED, Accounting, FailedObjectFinder, Fate, KeptProgress
from functions.imports.job_queue import Job, JobQueue, StartedOperation
from functions.imports.run_budget import RunBudget
from functions.imports.window_batcher import SeenSwapLostError, WindowBatcher, add_seen, read_seen
from functions.log import fields
from functions.settings import Settings

logger = logging.getLogger(__name__)

# A run stays within half the poll function's 300 s timeout (infra/functions.tf): every step that
# grows with a migration works in bounded units and starts another only while the run's time so
# far plus the longest unit of its kind so far stays within RUN_SECONDS, and the run's objects
# (uploads planned, objects accounted for, copies deleted) stay within RUN_OBJECTS
# (functions.imports.run_budget, decision 0775). Windows it takes over are planned within
# RECOVERY_SECONDS of the run, up to RECOVERY_UPLOADS uploads (decision 0761), so that the steps
# after have time left. The rest is the next run's: a window left stays open, an import's
# accounting stays in `accounting/{operation}.json`, a growth half undone keeps its cancelled hold,
# a cleanup record stays.
RECOVERY_SECONDS = 60.0
RECOVERY_UPLOADS = 3_000
RUN_SECONDS = 120.0
RUN_OBJECTS = 60_000
# A successful import's staged copies go once it finished (decision 0750): its `cleanup/{J}.json`
# names the staging bucket and prefix, and each run deletes copies, a listing page at a time, for
# at most STAGING_CLEAN_SECONDS of the run's budget. That keeps up with a migration at 500 files/s
# (30,000 copies a minute).
STAGING_CLEAN_SECONDS = 90.0
STAGING_DELETE_THREADS = 64
_PAGE = 1000  # one listing page of Cloud Storage
_MANIFEST_THREADS = 16
_T = TypeVar("_T")
# Units of the run's budget (their longest so far is what the run expects the next to take).
_WINDOW = "a window taken over"
_STAGING_PAGE = "a page of staged copies"


@dataclass
class PollSummary:
    """The poller's JSON answer. Partial failures are reported here, not raised."""

    tracked: int = 0
    finished: int = 0
    running: int = 0
    published: list[str] = field(default_factory=list)
    jobs_started: int = 0
    jobs_queued: int = 0
    windows_recovered: int = 0
    windows_left: int = 0  # windows due for recovery that this run left to the next (its budget)
    accounting_left: int = 0  # finished imports whose objects this run did not account for all (its budget)
    slots_freed: int = 0
    staged_deleted: int = 0  # staged copies of finished imports deleted in this run
    unconfirmed: dict[str, int] = field(default_factory=dict)  # unconfirmed starts: adopted, requeued, waiting
    oldest_running_seconds: float | None = None  # age of the oldest operation still running
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Poller:
    def __init__(self, settings: Settings, gcs: ObjectStore, healthcare: HealthcareApi, queue: JobQueue,
                 batcher: WindowBatcher, publisher: EventPublisher, clock: Callable[[], float] = time.time) -> None:
        self._s = settings
        self._gcs = gcs
        self._hc = healthcare
        self._queue = queue
        self._batcher = batcher
        self._publisher = publisher
        self._finder = FailedObjectFinder(gcs, healthcare)
        self._clock = clock

    def run(self) -> PollSummary:
        summary = PollSummary()
        budget = RunBudget.from_now(self._clock, RUN_SECONDS, RUN_OBJECTS)
        tracked_jobs: set[str] = set()
        done: list[tuple[StartedOperation, dict[str, Any]]] = []
        live: set[str] = set()
        self._step(summary, "recover windows", lambda: self._recover_windows(summary, budget))
        polled = self._step(summary, "poll operations", lambda: tracked_jobs.update(self._poll(summary, done, live)))
        # Without the tracked operations a job whose starter died after starting it cannot be told
        # from one that never started, nor a slot's live holder from a dead one: then finishing,
        # freeing slots and starting jobs wait for the next run.
        if polled:
            self._step(summary, "finish operations", lambda: self._finish_all(summary, done, live, budget))
            self._step(summary, "resolve unconfirmed starts", lambda: self._resolve_unconfirmed(summary))
            self._step(summary, "start jobs", lambda: self._start_jobs(summary, tracked_jobs, budget))
        self._step(summary, "clean staging", lambda: self._clean_staging(summary, budget))
        # The run's one summary line: infra/monitoring.tf turns it into the poller's heartbeat,
        # the queue length and the oldest running operation's age.
        logger.info("poll finished", extra=fields(tracked=summary.tracked, running=summary.running,
                                                  finished=summary.finished, jobs_started=summary.jobs_started,
                                                  jobs_queued=summary.jobs_queued,
                                                  oldest_running_seconds=summary.oldest_running_seconds,
                                                  windows_left=summary.windows_left,
                                                  accounting_left=summary.accounting_left,
                                                  errors=len(summary.errors)))
        return summary

    def _resolve_unconfirmed(self, summary: PollSummary) -> None:
        outcomes = self._queue.resolve_unconfirmed().values()
        counted = Counter("waiting" if o == "waiting" else "requeued" if o == "requeued" else "adopted"
                          for o in outcomes)
        summary.unconfirmed = dict(sorted(counted.items()))

    def _step(self, summary: PollSummary, name: str, action: Callable[[], object]) -> bool:
        """Runs one step; whether it succeeded. A failure is reported by its type only: the
        message of another service's error may carry tag values or a URL with a query."""
        try:
            action()
        except Exception as exc:  # one failing step must not stop the others
            logger.error("poller step failed", extra=fields(step=name, error=type(exc).__name__))
            summary.errors.append(f"{name}: {type(exc).__name__}")
            return False
        return True

    def _recover_windows(self, summary: PollSummary, budget: RunBudget) -> None:
        """Plans windows whose leader died (or left a part), within the run's recovery budget."""
        began = self._clock()
        windows = self._batcher.open_windows()
        longest, uploads = 0.0, 0
        for window in windows:
            if not self._batcher.is_orphaned(window):
                continue
            spent = self._clock() - began
            if spent + longest > RECOVERY_SECONDS or uploads >= RECOVERY_UPLOADS or not budget.allows(_WINDOW):
                summary.windows_left += 1
                continue
            window_began = self._clock()
            result = self._batcher.run(window, seconds=min(RECOVERY_SECONDS - spent, budget.seconds_left()))
            longest = max(longest, self._clock() - window_began)
            budget.spent(_WINDOW, self._clock() - window_began, result.uploads)
            if result.claimed:
                summary.windows_recovered += 1
                uploads += result.uploads
        if summary.windows_left:
            logger.info("windows left to the next run", extra=fields(windows=summary.windows_left,
                                                                     recovered=summary.windows_recovered))
        self._batcher.drop_stale_claims(set(windows))

    def _poll(self, summary: PollSummary, done: list[tuple[StartedOperation, dict[str, Any]]],
              live: set[str]) -> set[str]:
        """Polls every tracked operation; returns the ids of their jobs (finished ones included).
        Finished operations go to `done`, the jobs of those running or not known to `live`."""
        tracked = self._queue.tracked()
        summary.tracked = len(tracked)
        with ThreadPoolExecutor(max_workers=self._s.poll_concurrency) as pool:
            outcomes = list(pool.map(self._poll_one, tracked))
        for started, outcome in zip(tracked, outcomes, strict=True):
            if isinstance(outcome, Exception):
                summary.errors.append(f"{started.name}: {type(outcome).__name__}")
                live.add(started.job.job_id)
            elif outcome is None:
                summary.running += 1
                live.add(started.job.job_id)
                age = round(max(self._clock() - started.started_at, 0.0), 1)
                summary.oldest_running_seconds = max(summary.oldest_running_seconds or 0.0, age)
            else:
                done.append((started, outcome))
        return {t.job.job_id for t in tracked}

    def _poll_one(self, started: StartedOperation) -> dict[str, Any] | Exception | None:
        """The operation when it finished; None while it runs."""
        try:
            # Only refused starts have a stand-in record; everything else asks the API (no extra read).
            operation = self._queue.refusal(started) if started.refused else self._hc.get_operation(started.name)
            if operation is None:
                raise LookupError("the record of a refused start is gone")
            return operation if operation.get("done") else None
        except Exception as exc:
            logger.warning("could not poll an operation", extra=fields(operation=started.name,
                                                                       error=type(exc).__name__))
            return exc

    def _finish_all(self, summary: PollSummary, done: list[tuple[StartedOperation, dict[str, Any]]],
                    live: set[str], budget: RunBudget) -> None:
        """Publishes each finished operation's completion event, within the run's budget; frees
        the slots of holders that died. One operation after the other: each one's own calls go
        side by side (its manifests, its objects' accounting), and the budget's arithmetic stays
        that of one unit at a time."""
        def finish(started: StartedOperation, operation: dict[str, Any]) -> str | Exception | None:
            try:
                return self._finish(started, operation, budget)
            except Exception as exc:
                logger.warning("could not finish an operation", extra=fields(operation=started.name,
                                                                             error=type(exc).__name__))
                return exc

        for started, operation in done:
            outcome = finish(started, operation)
            if isinstance(outcome, Exception):
                summary.errors.append(f"{started.name}: {type(outcome).__name__}")
                live.add(started.job.job_id)
            elif outcome is None:
                summary.accounting_left += 1
            else:
                summary.finished += 1
                summary.published.append(outcome)
        summary.slots_freed = self._queue.reclaim_slots(live)

    def _finish(self, started: StartedOperation, operation: dict[str, Any], budget: RunBudget) -> str | None:
        """The published eventId; None when the run's budget ended before the import's objects were
        all accounted for (the next run goes on)."""
        status = completion.parse_operation(operation)
        job = started.job
        accounting = None
        if job.kind == "import" and job.manifest:
            accounting = self._account(started, status, budget)
            if accounting is None:
                # The operation is done: its slot may go to the next job while its objects are
                # accounted for over the next runs (it stays tracked until then).
                self._queue.release_slot(started.slot, job.job_id)
                return None
        failed = accounting.failed if accounting else []
        undecided = accounting.undecided if accounting else []
        record = completion.TrackedOperation(
            name=started.name, kind="redrive" if job.redrive_of else job.kind, dicom_store=self._s.dicom_store,
            request_id=job.request_id, source=job.import_uri if job.kind == "import" else None,
            destination=job.destination if job.kind == "export" else None,
            failed_objects=tuple(f.uri for f in failed), failed_objects_total=len(failed),
            redrive_of=job.redrive_of or None, failures=tuple(f.to_dict() for f in failed),
            undecided=tuple(f.to_dict() for f in undecided),
            objects=completion.ObjectCounts(accounting.objects, accounting.landed, len(failed), len(undecided),
                                            accounting.held_back) if accounting else None)
        data, attributes = completion.build_completion_event(operation, record,
                                                             failed_objects_cap=self._s.failed_objects_cap)
        self._publisher.publish(data, attributes)
        self._gcs.write(self._s.state_bucket, self._s.state_path("done", f"{started.operation_id}.json"), data)
        if not failed and not undecided and status.error is None:
            self._clean_up(started)
        if started.refused and job.claim:
            # Nothing ran: the request may be sent again (its FAILED event says why).
            self._gcs.delete(self._s.state_bucket, job.claim)
        if accounting is not None:
            self._gcs.delete(self._s.state_bucket, self._accounting_path(started))
        self._queue.forget(started)
        logger.info("operation finished", extra=fields(operation=started.name, kind=job.kind,
                                                       state=attributes.get("state"), event=attributes.get("eventId"),
                                                       success=status.counters.success,
                                                       failure=status.counters.failure, failed_objects=len(failed),
                                                       undecided_objects=len(undecided)))
        return attributes["eventId"]

    def _manifests(self, job: Job) -> list[str]:
        """The job's manifest and those of later windows' uploads it read as well (`.adopted-*`)."""
        stem = job.manifest.removesuffix(".json")
        return [info.name for info in self._gcs.list(self._s.state_bucket, f"{stem}.")]

    def _account(self, started: StartedOperation, status: completion.OperationStatus,
                 budget: RunBudget) -> Accounting | None:
        """The fate of each object of the job (functions.imports.failed_objects); a receipt when some did not land.
        None when the run's budget ended first: how far it got is kept for the next run."""
        entries: list[dict[str, Any]] = []
        for manifest in self._side_by_side(lambda name: self._gcs.read(self._s.state_bucket, name),
                                           self._manifests(started.job)):
            entries.extend(manifest.data.get("objects", []) if manifest else [])
        counters = status.counters
        imported = sum(1 for e in entries if not e.get("held"))
        # The counter covers every object only when it counted at least as many as were imported
        # (a wildcard may also read older objects; an import with failed items ends with an
        # error too, so the error alone says nothing).
        complete = counters.success + counters.failure >= imported
        if started.extra.get("adopted"):
            # Adopted by time, not by name: its counters may be another start's, so every object
            # is judged against the store (docs/decisions/0300-ambiguous-lro-starts.md).
            accounting = self._judge(started, entries, None, budget)
        elif complete and counters.failure == 0 and status.error is None and imported == len(entries):
            accounting = Accounting([Fate(str(e["uri"]), LANDED) for e in entries])  # nothing to look at
        else:
            accounting = self._judge(started, entries, counters.failure if complete else None, budget)
        if accounting is None:
            return None
        if accounting.failed or accounting.undecided:
            # The receipt holds the whole lists, so exactly these files can be redriven.
            failed = accounting.failed
            self._gcs.write(self._s.state_bucket, self._s.state_path("receipts", f"{started.operation_id}.json"),
                            {"operation": started.name, "batch": started.job.request_id,
                             "failedObjects": [f.uri for f in failed], "failedObjectsTotal": len(failed),
                             "failures": [f.to_dict() for f in failed],
                             "undecidedObjects": [f.to_dict() for f in accounting.undecided]})
        return accounting

    def _judge(self, started: StartedOperation, entries: list[dict[str, Any]], api_failures: int | None,
               budget: RunBudget) -> Accounting | None:
        """Judges the objects from where an earlier run left off, within `budget`; each chunk's
        progress is written (on the generation read, so that of two overlapping runs only one goes
        on). None when objects are left."""
        kept = KeptProgress(self._gcs, self._s.state_bucket, self._accounting_path(started), len(entries),
                            api_failures)
        progress = self._finder.account_within(entries, api_failures=api_failures, progress=kept.progress,
                                               budget=budget, save=kept.save)
        if not progress.done(api_failures):
            logger.info("accounting for an import's objects is left to the next run",
                        extra=fields(operation=started.name, judged=len(progress.probed) + len(progress.compared),
                                     objects=len(entries)))
            return None
        return progress.accounting([str(e["uri"]) for e in entries], api_failures)

    def _accounting_path(self, started: StartedOperation) -> str:
        return self._s.state_path("accounting", f"{started.operation_id}.json")

    def _clean_up(self, started: StartedOperation) -> None:
        job = started.job
        if job.staging_prefix:
            # One write here; the copies go in `_clean_staging`, in this run and the next ones.
            self._gcs.write(self._s.state_bucket, self._cleanup_path(job.job_id),
                            {"prefix": job.staging_prefix, "bucket": job.staging_bucket})
        if job.manifest:
            manifests = self._manifests(job)
            if not job.redrive_of:
                # Before the manifests go: they are what a takeover of the window checks (decision 0753).
                self._drop_window_records(job, manifests)
            self._side_by_side(lambda name: self._gcs.delete(self._s.state_bucket, name), manifests)

    @staticmethod
    def _side_by_side(call: Callable[[str], _T], names: list[str], threads: int = _MANIFEST_THREADS) -> list[_T]:
        """`call` on each name, in order, on threads: an import that grew by a window every few
        seconds has a manifest per window (60 at 50 files/s), and one after the other their reads
        and deletes took a poller run over a minute at x5 latency."""
        if len(names) <= 1:
            return [call(name) for name in names]
        with ThreadPoolExecutor(max_workers=min(threads, len(names))) as pool:
            return list(pool.map(call, names))

    def _drop_window_records(self, job: Job, manifests: list[str]) -> None:
        """Deletes the window records still left of uploads this import stored (decision 0753).

        Called only for an import whose every object landed. A leader that failed after its jobs
        became durable leaves records behind; a takeover of its window skips the uploads that a
        queued or running import's manifests name, but once the import finished and its manifests
        are gone it would plan them again. So the records of uploads now in the store go with the
        manifests: one listing per window the import holds uploads of, reads only when records are
        left. The stored uploads' keys go to the window's seen file first (a record may list other
        uploads too, decision 0771), then every record whose uploads are all in it. Records of any
        other upload stay, and the window's takeover plans them.
        """
        by_window: dict[str, list[str]] = {}
        for name in manifests:
            window = _manifest_window(name, job)
            if window is not None:
                by_window.setdefault(window, []).append(name)
        for window, names in by_window.items():
            left = list(self._gcs.list(self._s.state_bucket, self._batcher.window_prefix(window)))
            if not left:
                continue
            stored: set[str] = set()
            for manifest in self._side_by_side(lambda name: self._gcs.read(self._s.state_bucket, name), names):
                for entry in manifest.data.get("objects", []) if manifest else []:
                    if entry.get("held"):
                        continue  # not imported by this job
                    bucket, _, object_name = str(entry["uri"]).removeprefix("gs://").partition("/")
                    stored.add(object_key(bucket, object_name, int(entry["generation"])))
            seen_path = self._batcher.seen_path(window)
            try:
                seen = add_seen(self._gcs, self._s.state_bucket, seen_path,
                                read_seen(self._gcs, self._s.state_bucket, seen_path), stored)
            except SeenSwapLostError:
                # Its records stay: a takeover may read these uploads again, never lose one.
                logger.warning("could not add a finished import's uploads to their window's seen file",
                               extra=fields(window=window, job=job.job_id))
                continue
            doomed = [info.name for info in left
                      if (entries := window_records.parse(info.metadata)) is not None
                      and all(e.key in seen.keys for e in entries)]
            # Up to a window of records (2,500 at 500 files/s, fewer with group records): one at a
            # time they took a poller run over 600 s at x5 latency (bench.simulate --files 300000
            # --rate 500 --latency 5).
            self._side_by_side(lambda path: self._gcs.delete(self._s.state_bucket, path), doomed,
                               threads=STAGING_DELETE_THREADS)
            dropped = len(doomed)
            if dropped:
                logger.info("window records of a finished import dropped",
                            extra=fields(window=window, job=job.job_id, records=dropped, left=len(left) - dropped))

    def _cleanup_path(self, job_id: str) -> str:
        return self._s.state_path("cleanup", f"{job_id}.json")

    def _clean_staging(self, summary: PollSummary, budget: RunBudget) -> None:
        """Deletes staged copies of successful imports, oldest import first, a page at a time
        within the run's budget and `STAGING_CLEAN_SECONDS`; a `cleanup/` record goes once its
        prefix is empty."""
        until = self._clock() + STAGING_CLEAN_SECONDS
        staging_root = self._s.state_path("staging/")

        def allowed() -> bool:
            return budget.allows(_STAGING_PAGE) and self._clock() <= until

        for info in self._gcs.list(self._s.state_bucket, self._s.state_path("cleanup/")):
            if not allowed():
                return
            record = self._gcs.read(self._s.state_bucket, info.name)
            if record is None:
                continue
            prefix = str(record.data.get("prefix", ""))
            # Records written before staging had a bucket of its own name none: the state bucket.
            bucket = str(record.data.get("bucket") or self._s.state_bucket)
            while self._s.is_staging_bucket(bucket) and prefix.startswith(staging_root) and prefix != staging_root:
                if not allowed():
                    return
                began, wanted = self._clock(), budget.take(_PAGE)
                names = [i.name for i in self._gcs.list(bucket, prefix, max_results=wanted)]
                deleted = self._delete_unless_throttled(bucket, names)
                budget.spent(_STAGING_PAGE, self._clock() - began, deleted)
                summary.staged_deleted += deleted
                if deleted < len(names):
                    # The bucket is at its write rate: the uploads' copies (or, staged in the state
                    # bucket, their records) need it more than these deletes do. The next run goes
                    # on (decision 0750).
                    logger.warning("deleting staged copies was throttled; the next run goes on",
                                   extra=fields(prefix=prefix, deleted=summary.staged_deleted))
                    return
                if len(names) < wanted:
                    break  # the prefix is empty now
            self._gcs.delete(self._s.state_bucket, info.name, record.generation)

    def _delete_unless_throttled(self, bucket: str, names: list[str]) -> int:
        """Deletes `names` in parallel until Cloud Storage answers one delete 429; how many went."""
        throttled = threading.Event()
        deleted = []

        def delete(name: str) -> None:
            if throttled.is_set():
                return
            try:
                self._gcs.delete(bucket, name)
            except TooManyRequests:
                throttled.set()
                return
            deleted.append(name)

        with ThreadPoolExecutor(max_workers=STAGING_DELETE_THREADS) as pool:
            list(pool.map(delete, names))
        return len(deleted)

    def _start_jobs(self, summary: PollSummary, tracked_jobs: set[str], budget: RunBudget) -> None:
        pending = self._queue.pending_job_ids()
        waiting = 0
        for index, job_id in enumerate(pending):
            result = self._queue.try_start(job_id, tracked_jobs, budget)
            if result.started:
                summary.jobs_started += 1
            elif result.coalescing or result.capped:
                # An import left to grow while another runs, or a request's job that found only
                # the ingest slots free: the jobs behind it may start.
                waiting += 1
            elif result.queued:
                # No free slot: trying the rest would only hammer the slot objects.
                summary.jobs_queued = len(pending) - index
                break
        summary.jobs_queued += waiting


def _manifest_window(manifest: str, job: Job) -> str | None:
    """The window whose uploads `manifest` lists: the job's own (`{W}-{generation}-{index}.json`), an
    adopting window's (`.adopted-{W}-{generation}`) or a committed growth's (`.grown-{B}`, only once
    it is in `job.grown`); None for anything else."""
    base = manifest.rsplit("/", 1)[-1].removesuffix(".json")
    job_id, _, rest = base.partition(".")
    if not rest:
        window = job_id.rsplit("-", 2)[0]
    else:
        kind, _, batch = rest.partition("-")
        if kind != "adopted" and not (kind == "grown" and batch in job.grown):
            return None
        window = batch.rsplit("-", 1)[0]
    return window if is_window_id(window) else None
