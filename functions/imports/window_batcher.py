"""Turns one debounce window's uploads into import jobs: claim, plan, stage, queue, start.

Run by the window's leader on the finalize path, and by the poller for windows whose leader died.
The claim (`claims/{W}.json`) is the only shared object here and is written a few times per
window, not per upload.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from functions.core import planning
from functions.core.errors import RetryableError
from functions.core.events import StorageObjectEvent
from functions.core.gcs_wildcards import compile_matcher, has_wildcard_chars
from functions.core.lease import CLOCK_SKEW_SECONDS, Lease, renewal_margin
from functions.core.selection import is_importable
from functions.core.windows import object_key, window_close, window_id
from functions.gcp import streaming
from functions.gcp.clients import ObjectInfo, ObjectStore, Record
from functions.gcp.retry import is_transient
from functions.imports import job_record, window_records
from functions.imports.job_queue import Job, JobQueue, Reservation
from functions.imports.job_record import Change, Event
from functions.log import fields
from functions.settings import Settings

logger = logging.getLogger(__name__)

# A scope with more objects than this is treated as "unknown": no glob may reach into it.
LISTING_CAP = 20_000
# Below that, a scope is listed up to the batch's size plus this many other objects. A glob that
# reaches further matches over a thousand objects outside the batch, and such a glob never wins:
# an older importable one is a re-read (REIMPORT_COST, as much as a thousand copies), anything else
# may not be matched at all. Only uploads after the window are free to match, and the folder scopes
# still allow globs confined to one folder. In a migration the root scope is the whole tree: paging
# through it up to LISTING_CAP for every window would be a leader's slowest work (decision 0700).
OTHERS_LISTED = 1_000
# Re-reading an old object inside an import costs more than staging a new one: the LRO fetches,
# parses and compares it, and an object that changed since fails the import. In a migration the
# "old" objects are mostly the previous window's uploads (a folder split across windows), and a
# glob over their folder would read them twice. A re-read is priced at a tenth of an LRO, so a glob
# never re-reads to save copies (a window would need over 1,000 uploads per object read again);
# it still may to save a whole operation. See docs/decisions/0700.
REIMPORT_COST = 1_000.0
STAGE_COST = 1.0
# Workers of a leader's stream of copies and record deletions (decision 0760): with 16, a window of
# 2,500 took about 150 s to copy and delete at x5 latency; Cloud Storage calls are I/O-bound.
_IO_THREADS = 64
# Uploads one claim plans (decision 0761): a whole window at 500 files/s, which 64 workers plan in
# about 50 s with every Cloud Storage call five times slower (`bench.simulate --rate 500 --latency
# 5`), inside half the import function's 120 s timeout. A larger window is planned in parts; what a
# run has no time left for stays in the window for the poller.
PLAN_UPLOADS = 2_500
# A run plans another part of its window only while the time so far plus its longest part so far
# stays within this: half the import function's timeout (infra/functions.tf, 120 s), so that a
# run is never killed mid-plan. What is left the poller's recovery takes (decision 0761).
PLAN_SECONDS = 60.0
# Swaps of a job record that other growers change too: each loss is followed by a fresh read.
_SWAP_ATTEMPTS = 5
# Calls for one item that Cloud Storage throttled (decision 0752): with the client's 8 s per call
# and a look at the lease before each, about a minute of throttling.
_ROUND_ATTEMPTS = 6


@dataclass(frozen=True)
class Upload:
    """One recorded upload waiting in a window."""

    bucket: str
    name: str
    generation: int
    time_created: float | None = None  # epoch seconds; None for records written without it

    @property
    def key(self) -> str:
        return object_key(self.bucket, self.name, self.generation)


@dataclass(frozen=True)
class _Listed:
    """A window's records as listed: each record's upload keys, and the uploads once each."""

    records: dict[str, frozenset[str]]
    uploads: list[Upload]


@dataclass(frozen=True)
class _Covering:
    """An import of an earlier window whose wildcard URI will also read some of our uploads."""

    job: Job
    matches: Callable[[str], bool]
    started_at: float | None  # None: still queued, so it will list the bucket after now


@dataclass(frozen=True)
class WindowResult:
    window: str
    claimed: bool
    uploads: int = 0  # planned by this round (late duplicates of batched uploads not counted)
    jobs: tuple[str, ...] = ()
    started: tuple[str, ...] = ()
    staged: int = 0
    grown: str | None = None  # the queued job this window's uploads were staged into (coalescing)
    batched_before: tuple[str, ...] = ()  # keys of late duplicates: uploads an earlier round batched
    left: int = 0  # uploads left in the window for a later part (decision 0761)

    def then(self, later: WindowResult) -> WindowResult:
        """This part's result followed by a later part's, as one run's."""
        if not later.claimed:
            return replace(self, left=later.left or self.left)
        return WindowResult(self.window, True, self.uploads + later.uploads, self.jobs + later.jobs,
                            self.started + later.started, self.staged + later.staged,
                            self.grown or later.grown, self.batched_before + later.batched_before,
                            left=later.left)


@dataclass
class _Lease:
    """What a leader knows of its own claim while it plans: renewed as its staging goes on."""

    path: str
    generation: int
    lease: Lease
    lost: bool = False


@dataclass
class _HeldJob:
    """A queued job this window holds while it copies into it: the record as last swapped."""

    job: Job
    batch: str
    data: dict[str, Any]
    generation: int
    lease: Lease
    lost: bool = False


@dataclass(frozen=True)
class _Growth:
    """A queued job held by this window, its copies made, not yet committed."""

    job: Job
    batch: str
    held: dict[str, Any]  # the job record as held
    generation: int
    entries: list[dict[str, object]]
    complete: bool = True  # False: staging stopped early (claim or hold lost); never committed


class WindowBatcher:
    """Plans and queues the imports of a window. Thread-safe; holds no per-window state."""

    def __init__(self, settings: Settings, gcs: ObjectStore, queue: JobQueue,
                 clock: Callable[[], float] = time.time) -> None:
        self._s = settings
        self._gcs = gcs
        self._queue = queue
        self._clock = clock
        self._holder = uuid.uuid4().hex[:12]

    def window_prefix(self, window: str) -> str:
        return self._s.state_path("windows", window) + "/"

    def seen_path(self, window: str) -> str:
        """The keys of the window's batched uploads (the seen file, end of this module): one per window."""
        return self._s.state_path("seen", f"{window}.json")

    def claim_path(self, window: str) -> str:
        return self._s.state_path("claims", f"{window}.json")

    def open_windows(self) -> list[str]:
        """Windows that hold records (the poller's view of unfinished work)."""
        root = self._s.state_path("windows/")
        return [p[len(root):].rstrip("/") for p in self._gcs.list_prefixes(self._s.state_bucket, root)]

    def drop_stale_claims(self, open_windows: set[str]) -> int:
        """Deletes claims of windows without records whose lease is over (their leader died after
        deleting the records, before deleting the claim); how many."""
        root = self._s.state_path("claims/")
        dropped = 0
        for info in self._gcs.list(self._s.state_bucket, root):
            window = info.name[len(root):].removesuffix(".json")
            if window in open_windows:
                continue  # the window's own recovery takes over its claim
            claim = self._gcs.read(self._s.state_bucket, info.name)
            if claim is not None and float(claim.data.get("leaseUntil", 0)) < self._clock() \
                    and self._gcs.delete(self._s.state_bucket, info.name, claim.generation):
                logger.warning("deleted the claim of a dead leader", extra=fields(window=window))
                dropped += 1
        return dropped

    def is_orphaned(self, window: str) -> bool:
        """True once a live leader would long have claimed the window."""
        deadline = window_close(window, self._s.debounce_seconds) + self._s.settle_seconds
        return self._clock() > deadline + self._s.claim_lease_seconds

    def window_of(self, event: StorageObjectEvent) -> str:
        return window_id(event.time_created, self._s.debounce_seconds)

    def record(self, window: str, entries: list[window_records.Entry]) -> str:
        """Writes one record of `window` listing `entries` (a group, decision 0770); its name.

        A duplicate delivery writes its upload again, in another record: the window's leader
        plans each key once, and one batched before (its key in the window's seen file) not at
        all (decision 0004).
        """
        for _ in range(3):
            record = window_records.record_name(self.window_prefix(window))
            if self._gcs.create(self._s.state_bucket, record, {}, metadata=window_records.encode(entries)):
                return record
        raise RetryableError(f"no free record name under {self.window_prefix(window)}")

    def lead_if_first(self, window: str, mine: set[str]) -> WindowResult | None:
        """Leads `window` when `mine` (the records this process wrote) holds its smallest record;
        None when another process leads it, or nothing is left in it."""
        records = sorted(o.name for o in self._gcs.list(self._s.state_bucket, self.window_prefix(window)))
        # The process that wrote the smallest record leads: one claim attempt per window.
        if not records or records[0] not in mine:
            return None
        return self.run(window)

    def run(self, window: str, seconds: float = PLAN_SECONDS) -> WindowResult:
        """Turns the window's uploads into jobs, a part of at most `PLAN_UPLOADS` per claim, while
        the run's time so far plus its longest part stays within `seconds` (decision 0761); the
        first part always. Uploads left stay in the window (`left`) for the poller's recovery."""
        dropped = self._drop_late_duplicates(window)
        if dropped is not None:
            return dropped
        began = self._clock()
        planned: set[str] = set()  # keys of uploads this run planned: a late duplicate may list one again
        result = self._plan_part(window, planned)
        longest = self._clock() - began
        while result.claimed and result.left and (self._clock() - began) + longest <= seconds:
            part_began = self._clock()
            part = self._plan_part(window, planned)
            result = result.then(part)
            longest = max(longest, self._clock() - part_began)
            if not part.claimed:
                break  # another leader holds the window now (or took it over): the rest is its
        if result.left:
            logger.info("window planned in part; the rest is left for a later run",
                        extra=fields(window=window, uploads=result.uploads, left=result.left))
        return result

    def _plan_part(self, window: str, planned: set[str]) -> WindowResult:
        """Claims the window (or takes over an expired claim) and turns up to `PLAN_UPLOADS` of its
        uploads, the first by name, into jobs; adds their keys to `planned`, and leaves out
        those in it already (a late duplicate's record, there until its handler finds the upload
        batched, would be planned twice)."""
        claimed = self._claim(window)
        if claimed is None:
            return WindowResult(window, claimed=False)
        claim, took_over = claimed
        records = self._records(window)
        listed = [u for u in records.uploads if u.key not in planned]
        # A late duplicate records an upload an earlier round batched again: its key is in the
        # seen file, and it is planned nowhere (decision 0004).
        batched = read_seen(self._gcs, self._s.state_bucket, self.seen_path(window))
        fresh = [u for u in listed if u.key not in batched.keys]
        again = [u for u in listed if u.key in batched.keys]
        # By name, so that a part keeps folders together (record names are hashes).
        by_name = sorted(fresh, key=lambda u: (u.bucket, u.name))
        batch_id = f"{window}-{claim.generation % 10**8:08d}"
        window_closed = window_close(window, self._s.debounce_seconds)
        waiting = self._queue.pending_records() if by_name else []
        if took_over and waiting:
            # The leader we take over from may be alive and committing a growth it checked its claim
            # for (a commit throttled past its lease): its hold is cancelled first, so that commit is
            # refused and its uploads are planned here once. When that cannot be done, the window is
            # left for a later takeover.
            cancelled = self._cancel_holds_of_earlier_leaders(window, waiting)
            if cancelled is None:
                self._gcs.delete(self._s.state_bucket, claim.path, claim.generation)
                return WindowResult(window, claimed=False)
            if cancelled:
                waiting = self._queue.pending_records()
        # A leader that died after its jobs (or its growth) became durable, before it deleted the
        # records, left uploads that are covered already: planning them again would read them twice.
        # All of them go with this part (their keys to the seen file): the dead leader's part need
        # not be this one (a late upload may sort first), and a later part's claim is no takeover.
        if took_over:
            rest = self._not_covered(by_name, waiting)
            to_plan = rest[:PLAN_UPLOADS]
            uncovered = set(rest)
            uploads = [u for u in by_name if u not in uncovered] + to_plan
        else:
            uploads = to_plan = by_name[:PLAN_UPLOADS]
        covering = self._covering(waiting) if to_plan else []
        target = _growth_target(waiting)
        self._keep_claim(claim)  # the reads above can be slow too (one listing per kind of record)
        jobs: list[Job] = []
        adoptions: dict[str, list[Upload]] = defaultdict(list)
        to_grow: list[Upload] = []
        staged = 0
        for (bucket, storage_class), group in _group(to_plan, self._s).items():
            rest = self._adopt(bucket, storage_class, group, covering, adoptions)
            if rest and target is not None and job_record.growable(target.data, storage_class):
                to_grow.extend(rest)
            elif rest:
                group_jobs, group_staged = self._plan_group(batch_id, window_closed, len(jobs), bucket,
                                                            storage_class, rest, claim)
                jobs.extend(group_jobs)
                staged += group_staged
        growth = self._grow(target, batch_id, to_grow, claim) if target is not None and to_grow else None
        if to_grow and growth is None and target is not None:
            # It started, closed or filled up since we read it: the job that grows next is the one
            # queued after it, if any (decision 0783), not a job of our own beside that one.
            target = _growth_target(self._queue.pending_records(), after=target)
            growth = self._grow(target, batch_id, to_grow, claim) if target is not None else None
        if to_grow and growth is None:
            # The job started (or another window grows it) since we read it: a job of our own.
            for (bucket, storage_class), group in _group(to_grow, self._s).items():
                group_jobs, group_staged = self._plan_group(batch_id, window_closed, len(jobs), bucket,
                                                            storage_class, group, claim)
                jobs.extend(group_jobs)
                staged += group_staged
        elif growth is not None:
            staged += len(growth.entries)
        if not self._fence(claim):
            # Planning outlived the lease and the poller took the window over: it plans the same
            # uploads, so queueing ours too would import them twice. What we wrote so far (staged
            # copies, manifests of jobs that never exist) is garbage the lifecycle rules remove.
            logger.warning("lost the window's claim while planning; its new holder batches it",
                           extra=fields(window=window, batch=batch_id))
            if growth is not None:
                self._abandon(growth)
            return WindowResult(window, claimed=False)
        if growth is not None and not self._commit(growth):
            # A starter found our hold expired and undid it (or our copying stopped early): nothing
            # of this window is durable yet, so the window is left to be planned again (its claim
            # goes, its records stay).
            self._gcs.delete(self._s.state_bucket, claim.path, claim.generation)
            return WindowResult(window, claimed=False)
        for job_id, taken in adoptions.items():
            self._gcs.write(self._s.state_bucket, self._s.state_path("manifests", f"{job_id}.adopted-{batch_id}.json"),
                            {"objects": [_manifest_entry(u) for u in taken]})
        reservations: list[Reservation] = []
        try:
            for job in jobs:
                reservations.append(self._queue.reserve(job))
            self._let_records_go(window, claim, batched, uploads, again, records)
        except Exception:
            # Throttled past its retries: the window's takeover finishes this (the seen file and
            # the jobs' manifests say what is batched), but the jobs reserved are durable and start now. A
            # job left STARTING would wait out its lease and be taken for an unconfirmed start,
            # which may be paired with another job's operation (decisions 0300, 0755).
            self._start_reserved_anyway(reservations)
            raise
        started = tuple(r.started for r in (self._queue.start(res) for res in reservations) if r.started)
        if growth is not None:
            # The import it waited for may be done: then the grown job need not wait for the poller.
            started += tuple(filter(None, [self._queue.try_start(growth.job.job_id).started]))
        adopted = sum(len(taken) for taken in adoptions.values())
        grown = growth.job.job_id if growth is not None else None
        logger.info("window batched", extra=fields(window=window, batch=batch_id, uploads=len(uploads),
                                                    jobs=len(jobs), started=len(started), staged=staged,
                                                    adopted=adopted, grown=grown or "",
                                                    grown_by=len(growth.entries) if growth else 0))
        planned.update(u.key for u in uploads)
        return WindowResult(window, True, len(uploads), tuple(j.job_id for j in jobs), started, staged, grown,
                            tuple(u.key for u in again), left=len(fresh) - len(uploads))

    def _cancel_holds_of_earlier_leaders(self, window: str, waiting: list[Record]) -> int | None:
        """Cancels every live hold an earlier leader of `window` has on a queued job (its batches are
        named after the window); the number cancelled, or None when a swap was refused or lost (the
        hold was committed meanwhile, or the job record stayed throttled)."""
        prefix = f"{window}-"
        cancelled = 0
        for record in waiting:
            for hold in job_record.holds_of(record.data).values():
                if not hold.batch.startswith(prefix) or hold.cancelled:
                    continue
                job_id = str(record.data["job"]["job_id"])
                if self._swap_job(job_id, record, Event.CANCEL_HOLD, Change(batch=hold.batch)) is None:
                    logger.warning("could not cancel an earlier leader's hold on takeover; the window waits",
                                   extra=fields(window=window, job=job_id, batch=hold.batch))
                    return None
                logger.info("cancelled an earlier leader's hold on takeover",
                            extra=fields(window=window, job=job_id, batch=hold.batch))
                cancelled += 1
        return cancelled

    def _drop_late_duplicates(self, window: str) -> WindowResult | None:
        """When nobody holds the window's claim and every record of the window is a late duplicate of
        an upload batched before (its key in the seen file): deletes them, and the window needs no
        claim and no round (None otherwise: a round of its own, or the wait for a live leader).

        A batched upload is in a durable job, so its record may go without the claim; and a
        duplicate's round without a claim does not write the claim's name again right after the
        round before deleted it (Cloud Storage takes about one write a second per name).
        """
        if self._gcs.read(self._s.state_bucket, self.claim_path(window)) is not None:
            return None  # a leader is at work (or died): the claim decides
        listed = self._records(window)
        if not listed.records:
            return None
        batched = read_seen(self._gcs, self._s.state_bucket, self.seen_path(window))
        if any(u.key not in batched.keys for u in listed.uploads):
            return None
        self._parallel(lambda record: self._gcs.delete(self._s.state_bucket, record), list(listed.records))
        logger.info("deleting window records of uploads batched before",
                    extra=fields(window=window, records=len(listed.records)))
        return WindowResult(window, True, batched_before=tuple(u.key for u in listed.uploads))

    def _let_records_go(self, window: str, claim: _Lease, batched: Seen, uploads: list[Upload],
                        again: list[Upload], listed: _Listed) -> None:
        """Adds the round's keys to the seen file, then deletes the window's records whose every
        upload is batched (decision 0771), and its claim."""
        # Only now, with every upload of the round in a durable job (or growth, or adoption), may a
        # later round take their keys for batched; before the records go, so a duplicate that
        # records one again after its deletion is known for what it is (decision 0004).
        seen = add_seen(self._gcs, self._s.state_bucket, self.seen_path(window), batched, (u.key for u in uploads))
        # A record listing an upload this part left for the next stays whole: the next part finds
        # the rest of it batched (in the seen file) and plans only what is not.
        done = [record for record, keys in listed.records.items() if keys <= seen.keys]
        if again:
            logger.info("deleting window records of uploads batched before",
                        extra=fields(window=window, uploads=len(again)))
        # The jobs are durable now: the window records and the claim have done their part. They
        # go before any API call, so a crash while starting cannot make the window plan again
        # (a job left STARTING is restarted by the poller when its lease ends).
        # As a stream that renews the claim: deleting a large window's records takes as long as
        # copying it, and a claim that ran out meanwhile would have the poller take over a live
        # leader (decision 0751). A lost claim changes nothing here: the jobs exist already.
        self._in_stream(lambda record: self._gcs.delete(self._s.state_bucket, record), done,
                        keep=lambda ahead: self._keep_claim(claim, ahead) or True)
        self._gcs.delete(self._s.state_bucket, claim.path, claim.generation)

    def _start_reserved_anyway(self, reservations: list[Reservation]) -> None:
        for reservation in reservations:
            try:
                self._queue.start(reservation)
            except Exception as exc:  # the poller starts it, as for a leader that died
                logger.warning("could not start a reserved job after the round failed",
                               extra=fields(job=reservation.job.job_id, error=type(exc).__name__))

    def _not_covered(self, uploads: list[Upload], waiting: list[Record]) -> list[Upload]:
        """The uploads no queued or running import lists in its manifests (read on takeover only).

        Only manifests of jobs that exist count (a job's own is written before the job, an adoption's
        after the claim check), and a growth's only once committed (`job.grown`).
        """
        jobs = [Job.from_json(r.data["job"]) for r in waiting] + [t.job for t in self._queue.tracked()]
        active = {j.job_id: j for j in jobs if j.kind == "import" and j.manifest}
        covered: set[tuple[str, int]] = set()
        for info in self._gcs.list(self._s.state_bucket, self._s.state_path("manifests/")):
            job = active.get(job_record.manifest_job_id(info.name))
            batch = job_record.manifest_batch(info.name)
            if job is None or (batch is not None and batch not in job.grown):
                continue
            manifest = self._gcs.read(self._s.state_bucket, info.name)
            for entry in manifest.data.get("objects", []) if manifest else []:
                covered.add((str(entry["uri"]), int(entry["generation"])))
        rest = [u for u in uploads if (f"gs://{u.bucket}/{u.name}", u.generation) not in covered]
        if len(rest) < len(uploads):
            logger.warning("uploads of a taken-over window were covered already",
                           extra=fields(covered=len(uploads) - len(rest)))
        return rest

    def _grow(self, target: Record, batch_id: str, uploads: list[Upload], claim: _Lease) -> _Growth | None:
        """Holds the queued job and copies `uploads` into its staging prefix; None if it is no longer
        growable (it started, a starter waits for it, or it has all the growers it may have). See
        functions.imports.job_record."""
        job = Job.from_json(target.data["job"])
        if not self._s.is_staging_bucket(job.staging_bucket):
            return None  # not a job of ours to copy into: the checks refuse it when it starts
        hold_lease = Lease.starting(self._clock(), self._s.claim_lease_seconds)
        swapped = self._swap_job(job.job_id, target, Event.HOLD,
                                 Change(batch=batch_id, until=hold_lease.until, storage_class=job.storage_class))
        if swapped is None:
            return None
        hold = _HeldJob(job, batch_id, *swapped, hold_lease)
        entries = self.stage(uploads, job_record.batch_prefix(job.staging_prefix, batch_id),
                             keep=lambda ahead: self._keep_claim(claim, ahead) and self._keep_hold(hold, ahead),
                             bucket=job.staging_bucket)
        return _Growth(job, batch_id, hold.data, hold.generation, entries, complete=not (hold.lost or claim.lost))

    def _commit(self, growth: _Growth) -> bool:
        """Writes the growth's manifest, then makes it part of the job: a swap that takes our hold
        out, given up once a starter cancelled (or removed) our hold. A growth whose copying
        stopped early is taken back instead: its manifest would name copies never made."""
        if not growth.complete:
            self._abandon(growth)
            return False
        manifest = job_record.grown_manifest(growth.job.manifest, growth.batch)
        self._gcs.write(self._s.state_bucket, manifest, {"objects": growth.entries})
        if self._swap_job(growth.job.job_id, Record(growth.held, growth.generation), Event.COMMIT_GROWTH,
                          Change(batch=growth.batch, added=len(growth.entries))) is not None:
            return True
        # Undone by a starter (our hold ran out), or out of attempts: then our hold stays until it
        # runs out and a starter undoes it; copies and manifest are gone already either way.
        logger.warning("could not commit our growth of a queued job; the window is planned again",
                       extra=fields(job=growth.job.job_id, batch=growth.batch))
        self._gcs.delete(self._s.state_bucket, manifest)
        self._delete_copies(growth)
        return False

    def _abandon(self, growth: _Growth) -> None:
        """Takes back a growth that will not be committed: copies first, then our hold (if a swap
        keeps failing, the hold runs out and a starter removes it)."""
        self._delete_copies(growth)
        self._swap_job(growth.job.job_id, Record(growth.held, growth.generation), Event.RELEASE_HOLD,
                       Change(batch=growth.batch))

    def _swap_job(self, job_id: str, record: Record | None, event: Event,
                  change: Change) -> tuple[dict[str, Any], int] | None:
        """Applies `event` to a queued job's record (functions.imports.job_record): the new data and generation.

        Other growers change the record too, so a lost swap is retried on a fresh read. Growers and
        starters write one job record, and Cloud Storage takes about one write per second per name:
        a 429 (a refusal, nothing was written) counts as a lost swap, not as a failed window
        (decision 0752). None when the table refuses the event, the record is gone, or
        `_SWAP_ATTEMPTS` swaps were lost.
        """
        applied = job_record.apply(self._gcs, self._s.state_bucket, self._queue.job_path(job_id), record, event,
                                   change, attempts=_SWAP_ATTEMPTS, throttle_is_loss=True)
        if applied is None or applied.generation is None:
            return None
        return applied.data, applied.generation

    def _delete_copies(self, growth: _Growth) -> None:
        copies = [str(e["staged"]).removeprefix("gs://").split("/", 1) for e in growth.entries]
        self._parallel(lambda copy: self._gcs.delete(copy[0], copy[1]), copies)

    def _keep_claim(self, claim: _Lease, ahead: float = 0.0) -> bool:
        """Renews the window's claim when it is due (`Lease.due_for_renewal` with the renewal margin
        and `ahead`); no call before.

        A leader that is slow, not dead (a large window, a throttled or saturated Cloud Storage),
        keeps its window instead of having the poller plan it again: decision 0700. False once the
        claim is somebody else's.
        """
        now = self._clock()
        if claim.lost or not claim.lease.due_for_renewal(now, renewal_margin(self._s.claim_lease_seconds), ahead):
            return not claim.lost
        while True:
            renewed = claim.lease.renewed(self._clock(), self._s.claim_lease_seconds)
            try:
                generation = self._gcs.replace(self._s.state_bucket, claim.path,
                                               {"holder": self._holder, "leaseUntil": renewed.until}, claim.generation)
                break
            except Exception as exc:
                # A throttled renewal is tried again while the lease lasts (decision 0752); after
                # that the claim may be somebody else's, and a late swap would fail anyway.
                if not is_transient(exc) or claim.lease.expired(self._clock()):
                    raise
                logger.warning("renewing the window's claim was throttled; trying again",
                               extra=fields(claim=claim.path, error=type(exc).__name__))
        if generation is None:
            claim.lost = True  # `run` says so once it stops
            return False
        claim.generation, claim.lease = generation, renewed
        return True

    def _keep_hold(self, held: _HeldJob, ahead: float = 0.0) -> bool:
        """Renews this window's hold on the job it grows, as `_keep_claim` does its claim. False
        once a starter has cancelled (or removed) the hold: the copies would not be read."""
        now = self._clock()
        if held.lost or not held.lease.due_for_renewal(now, renewal_margin(self._s.claim_lease_seconds), ahead):
            return not held.lost
        renewed = held.lease.renewed(now, self._s.claim_lease_seconds)
        swapped = self._swap_job(held.job.job_id, Record(held.data, held.generation), Event.RENEW_HOLD,
                                 Change(batch=held.batch, until=renewed.until))
        if swapped is None:
            held.lost = True  # `_commit` fails on it and says so
            return False
        (held.data, held.generation), held.lease = swapped, renewed
        return True

    def _fence(self, claim: _Lease) -> bool:
        """Checks, before anything of the plan becomes durable, that the claim is still ours.

        False when it was taken over (its lease ran out while we planned). With less than the
        renewal margin (`functions.core.lease.renewal_margin`) left the claim is renewed (`_keep_claim`),
        so the few calls up to the deletion of the records all fall inside the lease. (A pause longer
        than that margin between the check and the queued jobs can still double a batch: Cloud Storage has
        no fencing tokens.) Unlike `_keep_claim`, it reads the claim: a takeover shows here even
        when our lease looked long enough.
        """
        if claim.lost:
            return False
        current = self._gcs.read(self._s.state_bucket, claim.path)
        if current is None or current.generation != claim.generation:
            claim.lost = True
            return False
        return self._keep_claim(claim)

    def _claim(self, window: str) -> tuple[_Lease, bool] | None:
        """The claim, and whether it was taken over from a leader that died."""
        now = self._clock()
        lease = Lease.starting(now, self._s.claim_lease_seconds)
        body = {"holder": self._holder, "leaseUntil": lease.until}
        path = self.claim_path(window)
        generation = self._gcs.create(self._s.state_bucket, path, body)
        if generation is not None:
            return _Lease(path, generation, lease), False
        current = self._gcs.read(self._s.state_bucket, path)
        if current is None or Lease(float(current.data.get("leaseUntil", 0))).live(now):
            return None  # planned just now, or being planned by a live leader
        logger.warning("taking over a window whose leader died", extra=fields(window=window))
        generation = self._gcs.replace(self._s.state_bucket, path, body, current.generation)
        return None if generation is None else (_Lease(path, generation, lease), True)

    def _records(self, window: str) -> _Listed:
        """The window's records (group records and one-upload records alike, `window_records`) and
        their uploads, each key once: a redelivered event lists its upload in a second record."""
        records: dict[str, frozenset[str]] = {}
        uploads: dict[str, Upload] = {}
        for info in self._gcs.list(self._s.state_bucket, self.window_prefix(window)):
            entries = window_records.parse(info.metadata)
            if entries is None:
                # Nothing in it says which object it stood for; left alone it would keep the window
                # open (and the poller re-running it) forever.
                logger.error("deleting an unreadable window record", extra=fields(record=info.name))
                self._gcs.delete(self._s.state_bucket, info.name)
                continue
            records[info.name] = frozenset(e.key for e in entries)
            for e in entries:
                uploads.setdefault(e.key, Upload(e.bucket, e.name, e.generation, e.time_created))
        return _Listed(records, list(uploads.values()))

    def _adopt(self, bucket: str, storage_class: str | None, uploads: list[Upload], covering: list[_Covering],
               adoptions: dict[str, list[Upload]]) -> list[Upload]:
        """Leaves out uploads that an earlier window's wildcard import reads anyway; returns the rest.

        The ones left out go into `adoptions` (job id -> uploads); `run` writes them down once it
        knows the window is still its own.

        A wildcard is evaluated when the LRO lists the bucket, not when it was planned: an import
        still queued, or started after an object was created, reads that object too. Such objects
        are added to that import's manifest (so its completion event accounts for them) instead
        of being imported a second time.
        """
        prefix = f"gs://{bucket}/"
        covering = [c for c in covering if c.job.import_uri.startswith(prefix) and c.job.storage_class == storage_class]
        if not covering:
            return uploads
        rest: list[Upload] = []
        for upload in uploads:
            cover = next((c for c in covering if c.matches(upload.name) and _listed_after(c, upload)), None)
            if cover is None:
                rest.append(upload)
            else:
                adoptions[cover.job.job_id].append(upload)
        return rest

    def _covering(self, waiting: list[Record]) -> list[_Covering]:
        """Wildcard imports that are queued or running: they may read uploads of later windows."""
        candidates: list[tuple[Job, float | None]] = [(t.job, t.started_at) for t in self._queue.tracked()]
        candidates += self._queue.pending_jobs_since(waiting)
        covering = []
        for job, started_at in candidates:
            pattern = job.import_uri.split("/", 3)[3] if job.import_uri.count("/") >= 3 else ""
            if job.kind == "import" and has_wildcard_chars(pattern):
                covering.append(_Covering(job, compile_matcher(pattern), started_at))
        return covering

    def _plan_group(self, batch_id: str, window_closed: float, first_index: int, bucket: str,
                    storage_class: str | None, uploads: list[Upload], claim: _Lease) -> tuple[list[Job], int]:
        names = {u.name: u for u in uploads}
        others, incomplete = self._others(bucket, names, window_closed, keep=lambda: self._keep_claim(claim))

        def eligible(name: str) -> bool:  # the handler's rule, sizes included
            return is_importable(bucket, name, others[name], self._s)

        plan = planning.plan_import(list(names), others, eligible=eligible, incomplete_scopes=incomplete,
                                    reimport_cost=REIMPORT_COST, stage_cost=STAGE_COST)
        jobs: list[Job] = []
        now = self._clock()

        def job(index: int, uri: str, objects: list[dict[str, object]], staging_prefix: str = "") -> Job:
            job_id = f"{batch_id}-{first_index + index:02d}"
            manifest = self._s.state_path("manifests", f"{job_id}.json")
            self._gcs.write(self._s.state_bucket, manifest, {"objects": objects})
            return Job(job_id=job_id, kind="import", request_id=batch_id, created_at=now, import_uri=uri,
                       storage_class=storage_class, manifest=manifest, object_count=len(objects),
                       staging_prefix=staging_prefix)

        for planned in plan.uris:
            objects = [_manifest_entry(names[n]) for n in planned.new_objects]
            jobs.append(job(len(jobs), f"gs://{bucket}/{planned.pattern}", objects))
        if plan.staged:
            staging_prefix = self._s.state_path("staging", f"{batch_id}-{first_index + len(jobs):02d}") + "/"
            objects = self.stage([names[n] for n in plan.staged], staging_prefix,
                                 keep=lambda ahead: self._keep_claim(claim, ahead))
            uri = f"gs://{self._s.staging}/{staging_prefix}**"
            jobs.append(job(len(jobs), uri, objects, staging_prefix))
        return jobs, len(plan.staged)

    def _others(self, bucket: str, names: dict[str, Upload], window_closed: float,
                keep: Callable[[], bool] = lambda: True) -> tuple[dict[str, int], list[planning.ListingScope]]:
        """What else a glob could reach that matters to the plan, and the scopes too big to list.

        Importable objects uploaded after this window closed (and before the last seconds of clock
        allowance) are left out: they belong to a later window, whose leader hands them to the
        import that reads them anyway (`_adopt`, same allowance), so a glob matching them costs no
        second read. Everything else counts: older importable objects as re-reads, the rest as
        objects a glob must not match. Returns the names with their sizes (a zero-byte object is
        one a glob must not match either).
        """
        adoptable_until = self._clock() - CLOCK_SKEW_SECONDS
        others: dict[str, int] = {}
        incomplete = []
        cap = min(LISTING_CAP, len(names) + OTHERS_LISTED)
        root, *folders = planning.listing_scopes(list(names))
        for scope in (root, *folders):
            keep()  # listings of a large bucket are a leader's slowest calls after its copies
            listed: list[ObjectInfo] = list(self._gcs.list(bucket, scope.prefix, recursive=scope.recursive,
                                                           max_results=cap + 1))
            if len(listed) > cap:
                incomplete.append(scope)
            others.update(
                (info.name, info.size) for info in listed
                if info.name not in names
                and not (window_closed <= info.time_created < adoptable_until
                         and is_importable(bucket, info.name, info.size, self._s))
            )
            if scope == root and not incomplete:
                break  # the folder scopes are subsets of the root: only needed when it was too big
        return others, incomplete

    def stage(self, uploads: list[Upload], prefix: str,
              keep: Callable[[float], bool] = lambda ahead: True, *,
              bucket: str | None = None) -> list[dict[str, object]]:
        """Server-side copies under a batch-unique prefix that one `**` import covers; their manifest.

        `bucket`: where the copies go, by default the staging bucket (`DICOM_STAGING_BUCKET`).

        `keep(ahead)` is asked before every copy (`_in_stream`), with twice the longest copy so
        far: it renews what the caller holds unless that lasts longer than `ahead` (and the usual
        margin), and False (it was taken over) stops the copying. The manifest
        then names copies never made; the caller finds its claim or hold gone and discards it.
        """
        entries = []
        for index, upload in enumerate(uploads):
            entry = _manifest_entry(upload)
            entry["staged"] = f"gs://{bucket or self._s.staging}/{prefix}{index:06d}.dcm"
            entries.append(entry)

        def copy(item: tuple[Upload, dict[str, object]]) -> None:
            upload, entry = item
            target_bucket, target = str(entry["staged"]).removeprefix("gs://").split("/", 1)
            self._gcs.copy(upload.bucket, upload.name, upload.generation, target_bucket, target)

        self._in_stream(copy, list(zip(uploads, entries, strict=True)), keep)
        return entries

    def _in_stream(self, action: Callable[[Any], object], items: list[Any], keep: Callable[[float], bool]) -> bool:
        """`action` over `items` on `_IO_THREADS` workers, each call started as soon as one is free,
        `keep(ahead)` asked before each (functions.gcp.streaming, decision 0760); False when `keep`
        refused and the rest was left.

        Items whose call failed with a transient fault (429, 503 after the client's own retries,
        `functions.gcp.gcs.STORAGE_RETRY_SECONDS`) are tried again after a later `keep`: a throttled
        Cloud Storage slows the leader down but never costs it its claim (decision 0752). After
        `_ROUND_ATTEMPTS` calls for one item its fault is raised.
        """
        return streaming.stream(action, items, workers=_IO_THREADS, between=keep, clock=self._clock,
                                attempts=_ROUND_ATTEMPTS)

    @staticmethod
    def _parallel(action: Callable[..., object], items: Iterable[object]) -> None:
        items = list(items)
        if len(items) <= 1:
            for item in items:
                action(item)
            return
        with ThreadPoolExecutor(max_workers=min(_IO_THREADS, len(items))) as pool:
            list(pool.map(action, items))


def _listed_after(cover: _Covering, upload: Upload) -> bool:
    """Will (or did) the covering import list the bucket after this upload was created?"""
    if cover.started_at is None:
        return True
    return upload.time_created is not None and upload.time_created < cover.started_at - CLOCK_SKEW_SECONDS


def _growth_target(waiting: list[Record], after: Record | None = None) -> Record | None:
    """The oldest queued job a window may grow (whatever its storage class; checked per group).
    `after`: a job that refused a hold; the next one must be younger and of its storage class.

    The oldest, because jobs start oldest first: two leaders that planned at once may each have
    queued a job, and growing the younger would leave the older one small, started before it or
    beside it once it reaches its coalescing age (decision 0781)."""
    for record in waiting:
        job = record.data.get("job", {})
        if after is not None and (str(job.get("job_id", "")) <= str(after.data["job"]["job_id"])
                                  or job.get("storage_class") != after.data["job"].get("storage_class")):
            continue
        if job_record.growable(record.data, job.get("storage_class")):
            return record
    return None


def _manifest_entry(upload: Upload) -> dict[str, object]:
    return {"uri": f"gs://{upload.bucket}/{upload.name}", "generation": upload.generation}


def _group(uploads: list[Upload], settings: Settings) -> dict[tuple[str, str | None], list[Upload]]:
    """One import per bucket and storage class: blobStorageSettings applies to a whole call."""
    groups: dict[tuple[str, str | None], list[Upload]] = defaultdict(list)
    for upload in uploads:
        groups[(upload.bucket, settings.storage_class_for(upload.name))].append(upload)
    return dict(groups)


# --- The window's seen file -------------------------------------------------------------------
# The uploads a window's leaders have batched: one object per window, `seen/{W}.json`.
# 
# The event path writes only window records, `windows/{W}/{R}.json`, each listing the uploads of a
# group of requests (decision 0770). A duplicate delivered after its window was batched lists its
# upload in a new record; the window's next leader finds its key here and plans it nowhere, and
# deletes each record whose every key is here (docs/decisions/0004). The file is written once per planning round, after
# the round's jobs are durable and before its records are deleted, with a generation precondition,
# so two leaders of one window (a takeover) never drop each other's keys.

# A leader of the window holds its claim while it writes, so a lost swap means a leader whose
# claim was taken over wrote meanwhile; a few fresh reads settle it.
_SEEN_SWAP_ATTEMPTS = 5


class SeenSwapLostError(RetryableError):
    """The window's seen file changed under every attempt to add to it: the round fails before
    its records go, and the window's takeover plans what no job covers (`WindowBatcher`)."""


@dataclass(frozen=True)
class Seen:
    """The keys (`functions.core.windows.object_key`) of a window's batched uploads."""

    keys: frozenset[str]
    generation: int | None  # None: no leader of the window has batched anything yet


def parse_seen(record: Record | None) -> Seen:
    """A seen file as read (None: absent). Entries that are not strings are ignored."""
    if record is None:
        return Seen(frozenset(), None)
    keys = record.data.get("keys", [])
    return Seen(frozenset(k for k in keys if isinstance(k, str)) if isinstance(keys, list) else frozenset(),
                record.generation)


def seen_body(keys: Iterable[str]) -> dict[str, list[str]]:
    return {"keys": sorted(set(keys))}


def read_seen(gcs: ObjectStore, bucket: str, path: str) -> Seen:
    return parse_seen(gcs.read(bucket, path))


def add_seen(gcs: ObjectStore, bucket: str, path: str, seen: Seen, keys: Iterable[str]) -> Seen:
    """Adds `keys` to the file last read as `seen`: a create or a replace at its generation, and on a
    lost race a fresh read merged with ours. No write when nothing is new.

    Raises:
        SeenSwapLostError: `_SEEN_SWAP_ATTEMPTS` writes were lost.
    """
    new = frozenset(keys)
    for _ in range(_SEEN_SWAP_ATTEMPTS):
        if new <= seen.keys:
            return seen
        merged = seen.keys | new
        if seen.generation is None:
            generation = gcs.create(bucket, path, seen_body(merged))
        else:
            generation = gcs.replace(bucket, path, seen_body(merged), seen.generation)
        if generation is not None:
            return Seen(merged, generation)
        seen = read_seen(gcs, bucket, path)
    raise SeenSwapLostError(f"{path} changed under {_SEEN_SWAP_ATTEMPTS} writes")
