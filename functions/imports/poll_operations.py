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
from typing import Any

from google.api_core.exceptions import TooManyRequests

from functions.core import completion
from functions.core.windows import is_window_id, object_key
from functions.gcp.clients import EventPublisher, HealthcareApi, ObjectStore
from functions.imports import window_records
from functions.imports.failed_objects import LANDED, Accounting, FailedObjectFinder, Fate
from functions.imports.job_queue import Job, JobQueue, StartedOperation
from functions.imports.window_batcher import SeenSwapLostError, WindowBatcher, add_seen, read_seen
from functions.log import fields
from functions.settings import Settings

logger = logging.getLogger(__name__)

# A successful import's staged copies go once it finished (decision 0750): its `cleanup/{J}.json`
# names the staging bucket and prefix, and each run deletes copies, a listing page at a time, until one of
# these bounds is reached; the next run goes on. Together they keep up with a migration at 500
# files/s (30,000 copies a minute) while a run stays well inside the poller's timeout.
STAGING_DELETES_PER_RUN = 60_000
STAGING_CLEAN_SECONDS = 90.0
# A run stays within half the poll function's 300 s timeout (infra/functions.tf) with what grows
# with a migration bounded (decision 0761): windows it takes over are planned while the run's
# recovery time so far plus its longest window so far stays within RECOVERY_SECONDS, up to
# RECOVERY_UPLOADS uploads (each plan a part of at most `batching.PLAN_UPLOADS`); staged copies are
# deleted until the run has taken RUN_SECONDS (the last page of deletions then finishes). The rest
# is the next run's: a window left stays open, a cleanup record stays.
RECOVERY_SECONDS = 60.0
RECOVERY_UPLOADS = 3_000
RUN_SECONDS = 120.0
STAGING_DELETE_THREADS = 64
_PAGE = 1000  # one listing page of Cloud Storage


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
        began = self._clock()
        tracked_jobs: set[str] = set()
        self._step(summary, "recover windows", lambda: self._recover_windows(summary))
        self._step(summary, "poll operations", lambda: tracked_jobs.update(self._poll(summary)))
        # Without the tracked operations a job whose starter died after starting it cannot be told
        # from one that never started: then starting jobs waits for the next run.
        if not any(error.startswith("poll operations:") for error in summary.errors):
            self._step(summary, "resolve unconfirmed starts", lambda: self._resolve_unconfirmed(summary))
            self._step(summary, "start jobs", lambda: self._start_jobs(summary, tracked_jobs))
        self._step(summary, "clean staging", lambda: self._clean_staging(summary, began + RUN_SECONDS))
        # The run's one summary line: infra/monitoring.tf turns it into the poller's heartbeat,
        # the queue length and the oldest running operation's age.
        logger.info("poll finished", extra=fields(tracked=summary.tracked, running=summary.running,
                                                  finished=summary.finished, jobs_started=summary.jobs_started,
                                                  jobs_queued=summary.jobs_queued,
                                                  oldest_running_seconds=summary.oldest_running_seconds,
                                                  errors=len(summary.errors)))
        return summary

    def _resolve_unconfirmed(self, summary: PollSummary) -> None:
        outcomes = self._queue.resolve_unconfirmed().values()
        counted = Counter("waiting" if o == "waiting" else "requeued" if o == "requeued" else "adopted"
                          for o in outcomes)
        summary.unconfirmed = dict(sorted(counted.items()))

    @staticmethod
    def _step(summary: PollSummary, name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # one failing step must not stop the others
            logger.exception("poller step failed", extra=fields(step=name))
            summary.errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")

    def _recover_windows(self, summary: PollSummary) -> None:
        """Plans windows whose leader died (or left a part), within the run's recovery budget."""
        began = self._clock()
        windows = self._batcher.open_windows()
        longest, uploads = 0.0, 0
        for window in windows:
            if not self._batcher.is_orphaned(window):
                continue
            spent = self._clock() - began
            if spent + longest > RECOVERY_SECONDS or uploads >= RECOVERY_UPLOADS:
                summary.windows_left += 1
                continue
            window_began = self._clock()
            result = self._batcher.run(window, seconds=RECOVERY_SECONDS - spent)
            longest = max(longest, self._clock() - window_began)
            if result.claimed:
                summary.windows_recovered += 1
                uploads += result.uploads
        if summary.windows_left:
            logger.info("windows left to the next run", extra=fields(windows=summary.windows_left,
                                                                     recovered=summary.windows_recovered))
        self._batcher.drop_stale_claims(set(windows))

    def _poll(self, summary: PollSummary) -> set[str]:
        """Polls every tracked operation; returns the ids of their jobs (finished ones included)."""
        tracked = self._queue.tracked()
        summary.tracked = len(tracked)
        with ThreadPoolExecutor(max_workers=self._s.poll_concurrency) as pool:
            outcomes = list(pool.map(self._poll_one, tracked))
        for started, outcome in zip(tracked, outcomes, strict=True):
            if isinstance(outcome, Exception):
                summary.errors.append(f"{started.name}: {type(outcome).__name__}: {str(outcome)[:200]}")
            elif outcome is None:
                summary.running += 1
                age = round(max(self._clock() - started.started_at, 0.0), 1)
                summary.oldest_running_seconds = max(summary.oldest_running_seconds or 0.0, age)
            else:
                summary.finished += 1
                summary.published.append(outcome)
        live = {t.job.job_id for t, o in zip(tracked, outcomes, strict=True) if o is None or isinstance(o, Exception)}
        summary.slots_freed = self._queue.reclaim_slots(live)
        return {t.job.job_id for t in tracked}

    def _poll_one(self, started: StartedOperation) -> str | Exception | None:
        """The published eventId when the operation finished; None while it runs."""
        try:
            # Only refused starts have a stand-in record; everything else asks the API (no extra read).
            operation = self._queue.refusal(started) if started.refused else self._hc.get_operation(started.name)
            if operation is None:
                raise LookupError(f"the record of refused start {started.name} is gone")
            if not operation.get("done"):
                return None
            return self._finish(started, operation)
        except Exception as exc:
            logger.warning("could not poll an operation", extra=fields(operation=started.name, error=str(exc)[:300]))
            return exc

    def _finish(self, started: StartedOperation, operation: dict[str, Any]) -> str:
        status = completion.parse_operation(operation)
        job = started.job
        accounting = self._account(started, status) if job.kind == "import" and job.manifest else None
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

    def _account(self, started: StartedOperation, status: completion.OperationStatus) -> Accounting:
        """The fate of each object of the job (functions.imports.failed_objects); a receipt when some did not land."""
        entries: list[dict[str, Any]] = []
        for name in self._manifests(started.job):
            manifest = self._gcs.read(self._s.state_bucket, name)
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
            accounting = self._finder.account(entries, api_failures=None)
        elif complete and counters.failure == 0 and status.error is None and imported == len(entries):
            accounting = Accounting([Fate(str(e["uri"]), LANDED) for e in entries])  # nothing to look at
        else:
            accounting = self._finder.account(entries, api_failures=counters.failure if complete else None)
        if accounting.failed or accounting.undecided:
            # The receipt holds the whole lists, so exactly these files can be redriven.
            failed = accounting.failed
            self._gcs.write(self._s.state_bucket, self._s.state_path("receipts", f"{started.operation_id}.json"),
                            {"operation": started.name, "batch": started.job.request_id,
                             "failedObjects": [f.uri for f in failed], "failedObjectsTotal": len(failed),
                             "failures": [f.to_dict() for f in failed],
                             "undecidedObjects": [f.to_dict() for f in accounting.undecided]})
        return accounting

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
            for name in manifests:
                self._gcs.delete(self._s.state_bucket, name)

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
            for name in names:
                manifest = self._gcs.read(self._s.state_bucket, name)
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
            dropped = 0
            for info in left:
                entries = window_records.parse(info.metadata)
                if entries is not None and all(e.key in seen.keys for e in entries):
                    self._gcs.delete(self._s.state_bucket, info.name)
                    dropped += 1
            if dropped:
                logger.info("window records of a finished import dropped",
                            extra=fields(window=window, job=job.job_id, records=dropped, left=len(left) - dropped))

    def _cleanup_path(self, job_id: str) -> str:
        return self._s.state_path("cleanup", f"{job_id}.json")

    def _clean_staging(self, summary: PollSummary, run_until: float) -> None:
        """Deletes staged copies of successful imports, oldest import first, within this run's bounds
        (until `run_until` at the latest); a `cleanup/` record goes once its prefix is empty."""
        began = self._clock()
        until = min(began + STAGING_CLEAN_SECONDS, run_until)
        budget = STAGING_DELETES_PER_RUN
        staging_root = self._s.state_path("staging/")
        for info in self._gcs.list(self._s.state_bucket, self._s.state_path("cleanup/")):
            if budget <= 0 or self._clock() > until:
                return
            record = self._gcs.read(self._s.state_bucket, info.name)
            if record is None:
                continue
            prefix = str(record.data.get("prefix", ""))
            # Records written before staging had a bucket of its own name none: the state bucket.
            bucket = str(record.data.get("bucket") or self._s.state_bucket)
            while self._s.is_staging_bucket(bucket) and prefix.startswith(staging_root) and prefix != staging_root:
                if budget <= 0 or self._clock() > until:
                    return
                wanted = min(_PAGE, budget)
                names = [i.name for i in self._gcs.list(bucket, prefix, max_results=wanted)]
                deleted = self._delete_unless_throttled(bucket, names)
                budget -= deleted
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

    def _start_jobs(self, summary: PollSummary, tracked_jobs: set[str]) -> None:
        pending = self._queue.pending_job_ids()
        waiting = 0
        for index, job_id in enumerate(pending):
            result = self._queue.try_start(job_id, tracked_jobs)
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
