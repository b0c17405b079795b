"""The import path at any size, on the functional fakes and the simulated clock.

    python -m bench.simulate [--pattern bulk|burst|trickle] [--files N] [--rate FILES_PER_S]
                             [--latency SCALE] [--tail SHARE] [--no-limits] [--staging-in-state] [--json] [--lros]

Runs the real `ImportOnUpload`, `WindowBatcher`, `JobQueue` and `Poller` on the in-memory fakes of
tests/functional with the production settings (debounce 5 s, settle 2 s, claim lease 30 s, at
most 5 LROs, imports wait up to 300 s to coalesce), the poller every 60 s as Cloud Scheduler runs
it, and Cloud Storage's limits on (tests/functional/cloud_limits.py: one write per second per
object name, the bucket's write ramp from 1,000/s, listings in pages of 1,000; 429s retried as
google-cloud-storage does). Every call takes a time from the latency model, scaled by --latency
(x1, x5), with a tail (--tail of the calls take 20 times longer). An import LRO runs 60 s plus 1 s
per 1,000 files. Uploads arrive at --rate files per second, each finalize event delivered at once
to one of --instances function instances, and --duplicates of them delivered a second time within
30 s (Eventarc delivers at least once); an event whose handler fails (a 429 that outlasted the
retries) is delivered again after 10 s, 20 s ... up to 600 s, as Eventarc does. Staged copies go
to a bucket of their own (`DICOM_STAGING_BUCKET`, as infra/ deploys it; --staging-in-state: the
state bucket), and each bucket has its own write ramp.

Patterns:
  bulk     a migration tree bulk/<a>/<b>/<n>.dcm, 100 files a folder, at a steady rate
  burst    studies of 200 files (inbox/<study>/S<s>/IM<i>.dcm) at the rate, 30 s apart
  trickle  scattered names (ward/<hash>.dcm) at the rate

Time is simulated: 1,000,000 files at 50/s are 5.6 hours of uploads, run in minutes. Prints one
block of numbers per run (or JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import itertools
import json
import random
import resource
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from functions.core.events import STORAGE_FINALIZED, StorageObjectEvent
from functions.gcp.clients import Record
from functions.imports.import_on_upload import ImportOnUpload
from functions.imports.job_queue import Job, JobQueue, Reservation
from functions.imports.job_record import JobRecord
from functions.imports.poll_operations import Poller, PollSummary
from functions.imports.window_batcher import PLAN_SECONDS, Upload, WindowBatcher, WindowResult, _Growth, _Lease
from tests.functional.cloud_limits import WRITES, CloudConditions, Latency, Limits, Meter
from tests.functional.fakes import FakeHealthcare, FakeObjectStore, FakeOperation
from tests.functional.sim import Process
from tests.functional.world import SCHEDULER_PERIOD, STATE, T0, UPLOADS, WORK_PREFIXES, World

IMPORT_TIMEOUT = 120.0  # infra/functions.tf: the import function's timeout
POLL_TIMEOUT = 300.0  # and the poller's
LRO_BASE_SECONDS = 60.0
LRO_SECONDS_PER_1000 = 1.0
STUDY_FILES = 200
STUDY_GAP_SECONDS = 30.0
STAGING = "staging"  # the staging bucket (DICOM_STAGING_BUCKET)
DRAIN_LIMIT_SECONDS = 6 * 3600.0
# Eventarc (a Pub/Sub push subscription) delivers an event again after an error answer, backing
# off from about 10 s to 600 s.
REDELIVERY_FIRST_SECONDS = 10.0
REDELIVERY_MAX_SECONDS = 600.0
_PREFIX = b"SIM:"


# -- the Healthcare API: imports that take their time ------------------------------------------

class SimHealthcare(FakeHealthcare):
    """Reads files by their index (no DICOM parsing) and remembers when each was first imported."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: array[int] = array("i")
        self.started_at: array[float] = array("d")
        self.imports = 0
        self.readers: list[str] = []  # imports that read a file, as "uri @created"
        self.first_reader: array[int] = array("i")  # file index -> its first reader in `readers`
        self.read_again: list[tuple[int, str, str]] = []  # (file index, first import, this import)
        self.uncommitted: Counter[str] = Counter()  # "job/batch" -> copies of an uncommitted growth read

    def size(self, files: int) -> None:
        self.reads = array("i", bytes(4 * files))
        self.started_at = array("d", bytes(8 * files))
        self.first_reader = array("i", bytes(4 * files))

    def _run_import(self, op: FakeOperation) -> None:
        reader = len(self.readers)
        self.readers.append(f"{op.uri} @{op.created - T0:.0f}s")
        for bucket, name, generation in op.objects:
            data = self._store.peek(bucket, name, generation)
            if data is None or not data.startswith(_PREFIX):
                op.failure += 1
                continue
            index = int(data[len(_PREFIX):])
            if self.reads[index] == 0:
                self.started_at[index] = op.created
                self.first_reader[index] = reader
            else:
                self.read_again.append((index, self.readers[self.first_reader[index]], self.readers[reader]))
            self.reads[index] += 1
            op.success += 1

    def due(self, now: float) -> list[str]:
        return [op.name for op in self.running
                if op.kind == "import" and now >= op.created + lro_seconds(len(op.objects))]

    def _start(self, kind: str, uri: str, objects: list[tuple[str, str, int]]) -> str:
        if kind == "import":
            self.imports += 1
            self._uncommitted(uri, objects)
        return super()._start(kind, uri, objects)

    def _uncommitted(self, uri: str, objects: list[tuple[str, str, int]]) -> None:
        """Counts copies a staging import lists that belong to no committed growth of its job
        (`staging/{J}/{batch}/` with `batch` not in the job's `grown`): copies of a growth that was
        undone or never committed, which its window plans again."""
        prefix = f"gs://{STATE}/staging/"
        if not uri.startswith(prefix) or not uri.endswith("/**"):
            return
        job_id = uri[len(prefix):-3]
        record = self._store.get(STATE, f"jobs/{job_id}.json")
        if record is None:
            return
        grown = set(self._store.json(STATE, f"jobs/{job_id}.json").get("job", {}).get("grown", []))
        for _, name, _ in objects:
            rest = name[len("staging/") + len(job_id) + 1:]
            batch, _, leaf = rest.partition("/")
            if leaf and batch not in grown:
                self.uncommitted[f"{job_id}/{batch}"] += 1


def lro_seconds(files: int) -> float:
    return LRO_BASE_SECONDS + LRO_SECONDS_PER_1000 * files / 1000


def lro_period(rate: float) -> float:
    """How long an LRO runs that imports what arrives at `rate` while it runs (the target allows one
    LRO per such period of uploads, plus 2)."""
    return LRO_BASE_SECONDS / max(1.0 - rate * LRO_SECONDS_PER_1000 / 1000, 0.05)


# -- the leaders, measured -----------------------------------------------------------------------

@dataclass
class Plans:
    """What leaders did: plan times, takeovers of leaders still at work, the largest windows."""

    leader_seconds: list[float] = field(default_factory=list)
    poller_plan_seconds: list[float] = field(default_factory=list)
    live_takeovers: int = 0
    takeovers: int = 0
    most_uploads: int = 0
    planning: Counter[str] = field(default_factory=Counter)  # window -> runs holding its claim now


@dataclass
class Lro:
    """Why one job (and so one LRO) exists: what its leader found when it made it, and its life."""

    job: str
    queued_at: float
    why: str  # why its uploads did not grow a queued job
    by: str  # leader | poller
    waited: bool  # queued without a slot (it waits for the running import, or for a slot)
    started_at: float | None = None
    started_by: str = ""
    grown: int = 0  # windows that grew it
    objects: int = 0  # what its LRO read
    running: int = 0  # LROs running when it started (itself included)


class Lros:
    """The jobs the queues made, by id, and what the leader making one knew (per thread)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Lro] = {}
        self.local = threading.local()  # one leader run (or poller run) is one thread

    def planning(self) -> None:
        """A leader's part begins: what it learns next is about its own jobs."""
        self.local.waiting, self.local.growth = [], ""

    def saw_queue(self, waiting: list[Record]) -> None:
        if not getattr(self.local, "waiting", None):  # the first read decided; a re-read follows a refused hold
            self.local.waiting = waiting

    def growth(self, outcome: str) -> None:
        self.local.growth = outcome

    def why(self, job: Job) -> str:
        """Why `job` is a job of its own rather than a growth of a queued one."""
        if getattr(self.local, "growth", ""):
            return self.local.growth
        kind = "glob" if job.kind == "import" and not job.staging_prefix else "staging"
        if job.kind != "import" or job.redrive_of:
            return "a request's job"
        staging = [r for r in getattr(self.local, "waiting", []) if r.data["job"].get("staging_prefix")
                   and not r.data["job"].get("redrive_of") and r.data["job"]["job_id"] != job.job_id]
        if not staging:
            return f"{kind}: no import queued"
        records = [JobRecord.from_json(r.data) for r in staging]
        reasons = sorted({r.why_not_growable(r.job.get("storage_class")) or "growable (another window's hold "
                          "came first)" for r in records})
        return f"{kind}: {'the queued one' if len(records) == 1 else 'the queued ones'} {', '.join(reasons)}"


class MeasuredQueue(JobQueue):
    def __init__(self, *args: Any, lros: Lros, by: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lros = lros
        self._by = by

    def pending_records(self) -> list[Record]:
        records = super().pending_records()
        self._lros.saw_queue(records)
        return records

    def reserve(self, job: Job) -> Reservation:
        why = self._lros.why(job)
        reservation = super().reserve(job)
        if reservation.generation is not None:
            self._lros.jobs[job.job_id] = Lro(job.job_id, self._clock() - T0, why, self._by,
                                              waited=reservation.slot is None)
        return reservation

    def _start(self, job: Job) -> str:
        name = super()._start(job)
        lro = self._lros.jobs.get(job.job_id)
        hc = self._hc
        if lro is not None and isinstance(hc, FakeHealthcare) and name in hc.operations:
            lro.started_at, lro.started_by = self._clock() - T0, self._by
            lro.grown, lro.objects = len(job.grown), len(hc.operations[name].objects)
            lro.running = len(hc.running)
        return name


class MeasuredBatcher(WindowBatcher):
    def __init__(self, *args: Any, plans: Plans, by_poller: bool, lros: Lros, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plans = plans
        self._by_poller = by_poller
        self._lros = lros
        self._local = threading.local()  # concurrent runs share this batcher; each is one thread

    def _grow(self, target: Record, batch_id: str, uploads: list[Upload], claim: _Lease) -> _Growth | None:
        growth = super()._grow(target, batch_id, uploads, claim)
        if growth is None:
            path = self._queue.job_path(str(target.data["job"]["job_id"]))
            data = self._gcs.peek(self._s.state_bucket, path) if isinstance(self._gcs, FakeObjectStore) else None
            if data is None:
                why = "started"
            else:
                record = JobRecord.from_json(json.loads(data))
                why = record.why_not_growable(record.job.get("storage_class")) or "swaps lost (429s, other growers)"
            self._lros.growth(f"staging: the hold on the queued one failed: {why}")
        else:
            self._lros.growth("")
        return growth

    def run(self, window: str, seconds: float = PLAN_SECONDS) -> WindowResult:
        began = self._clock()
        held = [False]
        self._local.held = held
        try:
            result = super().run(window, seconds)
        finally:
            if held[0]:
                self._plans.planning[window] -= 1
        if result.claimed or held[0]:
            seconds = self._clock() - began
            (self._plans.poller_plan_seconds if self._by_poller else self._plans.leader_seconds).append(seconds)
            self._plans.most_uploads = max(self._plans.most_uploads, result.uploads)
        return result

    def _claim(self, window: str) -> tuple[_Lease, bool] | None:
        self._lros.planning()
        claimed = super()._claim(window)
        if claimed is not None:
            if claimed[1]:
                self._plans.takeovers += 1
                if self._plans.planning[window] > 0:
                    self._plans.live_takeovers += 1
            if not self._local.held[0]:  # a run that plans its window in parts claims it per part
                self._plans.planning[window] += 1
            self._local.held[0] = True
        return claimed


# -- the poller, measured step by step -----------------------------------------------------------

@dataclass
class StepMeter:
    """One step of one poller run: its time and its Cloud Storage calls."""

    seconds: float
    meter: Meter


class MeasuredPoller(Poller):
    """Meters each of its run's steps (`Poller._step`) on its own, then adds it to the run's meter."""

    def __init__(self, world: World, queue: JobQueue, batcher: WindowBatcher) -> None:
        super().__init__(world.settings, world.store, world.hc, queue, batcher, world.publisher, clock=world.clock)
        self._sim = world.sim
        self.steps: dict[str, StepMeter] = {}

    def _step(self, summary: PollSummary, name: str, action: Any) -> bool:
        task: Any = self._sim.current  # a poller run's task carries its meter (see `Bench._poll`)
        outer: Meter = task.meter
        meter = Meter()
        task.meter = meter
        began = self._sim.clock()
        try:
            return super()._step(summary, name, action)
        finally:
            task.meter = outer
            seconds = self._sim.clock() - began
            known = self.steps.get(name)
            if known is not None:  # a step run twice in one run: its parts add up
                seconds += known.seconds
                _add(meter, known.meter)
            self.steps[name] = StepMeter(seconds, meter)
            _add(outer, meter)


def _add(into: Meter, meter: Meter) -> None:
    into.calls.update(meter.calls)
    into.listed += meter.listed
    for kind, seconds in meter.waited.items():
        into.waited[kind] += seconds


# -- upload patterns -----------------------------------------------------------------------------

def names(pattern: str, files: int, seed: int) -> Iterator[str]:
    if pattern == "bulk":
        for index in range(files):
            a, rest = divmod(index, 10_000)
            b, n = divmod(rest, 100)
            yield f"bulk/{a:03d}/{b:03d}/{n:03d}.dcm"
    elif pattern == "burst":
        for index in range(files):
            study, rest = divmod(index, STUDY_FILES)
            series, image = divmod(rest, 50)
            yield f"inbox/{_hash(seed, study)}/S{series + 1}/IM{image + 1:04d}.dcm"
    elif pattern == "trickle":
        for index in range(files):
            yield f"ward/{_hash(seed, index)}.dcm"
    else:
        raise SystemExit(f"unknown pattern {pattern!r}")


def upload_times(pattern: str, files: int, rate: float) -> Iterator[float]:
    """Seconds after the start at which each file is uploaded."""
    for index in range(files):
        at = index / rate
        if pattern == "burst":
            at += (index // STUDY_FILES) * STUDY_GAP_SECONDS
        yield at


def _hash(seed: int, value: int) -> str:
    return hashlib.sha256(f"{seed}-{value}".encode()).hexdigest()[:24]


# -- the run -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    pattern: str = "bulk"
    files: int = 10_000
    rate: float = 50.0
    latency: float = 1.0
    tail: float = 0.01
    limits: bool = True
    instances: int = 8
    duplicates: float = 0.01
    seed: int = 1
    staging_bucket: bool = True  # staged copies in a bucket of their own, as infra/ deploys it


class Bench:
    def __init__(self, config: Config) -> None:
        self.config = config
        latency = Latency(scale=config.latency, tail_share=config.tail, seed=config.seed)
        limits = Limits() if config.limits else None
        self.world = World(cloud=lambda sim: CloudConditions(sim, latency=latency, limits=limits),
                           poll_concurrency=16, staging_bucket=STAGING if config.staging_bucket else "")
        w = self.world
        assert w.cloud is not None
        self.cloud = w.cloud
        self.hc = SimHealthcare(w.store, w.sim.clock, w.settings.dataset, w.faults, w.cloud)
        self.hc.size(config.files)
        w.hc = self.hc
        self.plans = Plans()
        self.lros = Lros()
        self.rng = random.Random(config.seed)
        self.instances = [self._instance(i) for i in range(config.instances)]
        self.uploaded_at: array[float] = array("d", bytes(8 * config.files))
        self.poll_seconds: list[float] = []
        self.poll_meters: list[Meter] = []
        self.poll_steps: list[dict[str, StepMeter]] = []  # per poller run, in `poll_seconds` order
        self.leader_meters: list[Meter] = []
        self.errors: Counter[str] = Counter()
        self.unconfirmed: Counter[str] = Counter()  # the poller runs' unconfirmed starts: adopted, requeued
        self.redelivered = 0
        self._later: list[tuple[float, int, StorageObjectEvent, int]] = []  # (when, order, event, attempt)
        self._order = itertools.count()

    def _instance(self, index: int) -> tuple[str, ImportOnUpload]:
        w = self.world
        queue = MeasuredQueue(w.settings, w.store, w.hc, clock=w.clock, sleep=w.sim.sleep, lros=self.lros, by="leader")
        batcher = MeasuredBatcher(w.settings, w.store, queue, clock=w.clock, plans=self.plans, by_poller=False,
                                  lros=self.lros)
        handler = ImportOnUpload(w.settings, w.store, batcher, clock=w.clock, sleep=w.sim.sleep)
        return f"import-{index}", handler

    def _deliver(self, event: StorageObjectEvent, attempt: int = 0) -> None:
        process, handler = self.instances[self.rng.randrange(len(self.instances))]

        def serve() -> None:
            meter = Meter()
            began = self.world.sim.clock()

            self.world.sim.current.meter = meter  # type: ignore[union-attr]
            try:
                outcome = handler.handle(event)
            except Exception as exc:  # an error answer: Eventarc delivers the event again, backing off
                self.errors[type(exc).__name__] += 1
                delay = min(REDELIVERY_FIRST_SECONDS * 2 ** attempt, REDELIVERY_MAX_SECONDS)
                self._later_deliver(self.world.sim.clock() + delay, event, attempt + 1)
                return
            if outcome.led is not None and outcome.led.claimed:
                self.leader_meters.append(meter)
                meter.waited["total"] = self.world.sim.clock() - began

        # No `process`: a process keeps its tasks (to kill them), and a million would stay in memory.
        self.world.sim.spawn(serve, name=event.name)

    def _later_deliver(self, when: float, event: StorageObjectEvent, attempt: int) -> None:
        heapq.heappush(self._later, (when, next(self._order), event, attempt))

    def _deliver_due(self) -> None:
        now = self.world.sim.clock()
        while self._later and self._later[0][0] <= now:
            _, _, event, attempt = heapq.heappop(self._later)
            self.redelivered += attempt > 0
            self._deliver(event, attempt)

    def _poll(self) -> None:
        w = self.world
        queue = MeasuredQueue(w.settings, w.store, w.hc, clock=w.clock, sleep=w.sim.sleep, lros=self.lros, by="poller")
        batcher = MeasuredBatcher(w.settings, w.store, queue, clock=w.clock, plans=self.plans, by_poller=True,
                                  lros=self.lros)
        poller = MeasuredPoller(w, queue, batcher)

        def run() -> None:
            meter = Meter()
            self.world.sim.current.meter = meter  # type: ignore[union-attr]
            began = w.sim.clock()
            summary = poller.run()
            self.poll_seconds.append(w.sim.clock() - began)
            self.poll_meters.append(meter)
            self.poll_steps.append(poller.steps)
            for error in summary.errors:
                self.errors[f"poller: {error.split(':', 2)[1].strip()}"] += 1
            self.unconfirmed.update({k: v for k, v in summary.unconfirmed.items() if k != "waiting"})

        w.sim.spawn(run, name=f"poll@{w.sim.clock() - T0:.0f}", process=Process("poller"))

    def _finish_due(self) -> None:
        for name in self.hc.due(self.world.sim.clock()):
            self.hc.finish(name)

    def _advance_to(self, target: float, next_poll: float) -> float:
        """Runs the simulation to `target`, ticking the poller and finishing LROs on the way."""
        sim = self.world.sim
        while True:
            step = min(target, next_poll, float(int(sim.clock()) + 1))
            sim.run_until(step)
            self._finish_due()
            self._deliver_due()
            if sim.clock() >= next_poll:
                self._poll()
                next_poll += SCHEDULER_PERIOD
            if sim.clock() >= target:
                return next_poll

    def run(self) -> dict[str, Any]:
        c, w = self.config, self.world
        started = time.monotonic()
        next_poll = T0 + SCHEDULER_PERIOD
        for index, (name, at) in enumerate(zip(names(c.pattern, c.files, c.seed),
                                               upload_times(c.pattern, c.files, c.rate), strict=True)):
            next_poll = self._advance_to(T0 + at, next_poll)
            if index and index % max(c.files // 10, 1) == 0:
                print(f"  {index:,} uploaded, {w.sim.clock() - T0:,.0f} s simulated, "
                      f"{time.monotonic() - started:,.0f} s wall", file=sys.stderr, flush=True)
            info = w.store.put(UPLOADS, name, _PREFIX + str(index).encode())
            self.uploaded_at[index] = info.time_created
            created = datetime.fromtimestamp(info.time_created, UTC)
            event = StorageObjectEvent(event_id=f"e{index}", event_type=STORAGE_FINALIZED, bucket=UPLOADS,
                                       name=name, generation=info.generation, size=info.size,
                                       time_created=created, event_time=created)
            self._deliver(event)
            if self.rng.random() < c.duplicates:  # delivered twice although it was answered
                self._later_deliver(w.sim.clock() + self.rng.uniform(0.5, 30.0), event, 0)
        uploads_done = w.sim.clock()
        deadline = w.sim.clock() + DRAIN_LIMIT_SECONDS
        while not self._quiet() and w.sim.clock() < deadline:
            next_poll = self._advance_to(w.sim.clock() + SCHEDULER_PERIOD, next_poll)
        w.sim.run_until_idle()
        return self._report(time.monotonic() - started, uploads_done)

    def _slowest_run_by_step(self) -> dict[str, Any]:
        """The longest poller run, step by step: seconds, objects listed, reads, writes, deletes."""
        if not self.poll_seconds:
            return {}
        index = max(range(len(self.poll_seconds)), key=self.poll_seconds.__getitem__)
        return {name: _step_row(step) for name, step in self.poll_steps[index].items()}

    def _quiet(self) -> bool:
        w = self.world
        return (not self.hc.running and w.sim.pending == 0 and not self._later
                and not any(w.store.names(STATE, w.settings.state_path(p)) for p in WORK_PREFIXES))

    def _report(self, wall: float, uploads_done: float) -> dict[str, Any]:
        c, w, o = self.config, self.world, self.cloud.observed
        files = c.files
        reads = self.hc.reads
        twice = sum(1 for r in reads if r > 1)
        missing = sum(1 for r in reads if r == 0)
        waits = sorted(self.hc.started_at[i] - self.uploaded_at[i] for i in range(files) if reads[i])
        store_calls = {k.split(".", 1)[1]: v for k, v in o.calls.items() if k.startswith("store.")}
        state_writes = o.writes_per_second.get(STATE, Counter())
        staging_writes = o.writes_per_second.get(STAGING, Counter()) if c.staging_bucket else Counter()
        left = w.store.names(w.settings.staging, w.settings.state_path("staging/"))
        upload_seconds = uploads_done - T0
        unconfirmed, disowned = w.settings.state_path("unconfirmed/"), w.settings.state_path("disowned/")
        started = sorted((lro for lro in self.lros.jobs.values() if lro.started_at is not None),
                         key=lambda lro: lro.started_at or 0.0)
        return {
            "pattern": c.pattern, "files": files, "rate": c.rate, "latency": c.latency, "tail": c.tail,
            "limits": c.limits, "simulated_hours": round((w.sim.clock() - T0) / 3600, 2),
            "lros": self.hc.imports, "lros_at_once": self.hc.max_running,
            "lro_target": int(upload_seconds // lro_period(c.rate)) + 2,
            "read_twice": twice, "missing": missing,
            # Starts whose outcome was unknown (each job once per unknown start), how many of them
            # adopted an untracked operation, went back to the queue, and operations left untracked.
            "unconfirmed_starts": sum(1 for name in w.store.writes if name.startswith(unconfirmed)),
            "unconfirmed_adopted": self.unconfirmed["adopted"],
            "unconfirmed_requeued": self.unconfirmed["requeued"],
            "operations_disowned": sum(1 for name in w.store.writes if name.startswith(disowned)),
            "read_again_by": dict(Counter(f"{first} -> {again}" for _, first, again in self.hc.read_again)),
            "uncommitted_growth_copies_read": dict(self.hc.uncommitted),
            "staged_copies": store_calls.get("copy", 0), "copies_left": len(left),
            # By batch: `staging/{B}` (a plan's copies) or `staging/{J}/{B}` (a growth of job J).
            "copies_left_by_batch": dict(Counter(name.rsplit("/", 1)[0] for name in left).most_common(5)),
            "gcs_calls_per_file": round(sum(store_calls.values()) / files, 2),
            "gcs_calls_per_file_by_kind": {k: round(v / files, 3) for k, v in sorted(store_calls.items())},
            "list_calls": store_calls.get("list", 0) + store_calls.get("list_prefixes", 0),
            "items_listed": o.listed, "largest_listing": o.largest_listing,
            "most_writes_one_name_per_s": o.most_writes_one_name,
            "names_written_twice_in_1s": len(o.hot_names),
            "hot_names": _kinds(o.hot_names), "throttled_429": sum(o.throttled.values()),
            "throttled_by_kind": dict(o.throttled.most_common()), "gave_up_429": o.gave_up,
            "staging_bucket": c.staging_bucket,
            "state_peak_writes_per_s": max(state_writes.values(), default=0),
            "state_writes_per_file": round(sum(state_writes.values()) / files, 2),
            "staging_peak_writes_per_s": max(staging_writes.values(), default=0),
            "staging_writes_per_file": round(sum(staging_writes.values()) / files, 2),
            "longest_leader_plan_s": round(max(self.plans.leader_seconds, default=0.0), 1),
            "longest_poller_plan_s": round(max(self.plans.poller_plan_seconds, default=0.0), 1),
            "longest_poller_run_s": round(max(self.poll_seconds, default=0.0), 1),
            "takeovers": self.plans.takeovers, "live_leader_takeovers": self.plans.live_takeovers,
            "most_uploads_one_window": self.plans.most_uploads,
            "leader_most_listed": max((m.listed for m in self.leader_meters), default=0),
            "leader_most_calls": max((sum(m.calls.values()) for m in self.leader_meters), default=0),
            "poller_most_listed": max((m.listed for m in self.poll_meters), default=0),
            "poller_most_calls": max((sum(m.calls.values()) for m in self.poll_meters), default=0),
            "poller_most_reads": max((_calls(m, READS) for m in self.poll_meters), default=0),
            "poller_most_writes": max((_calls(m, WRITES) for m in self.poll_meters), default=0),
            "poller_most_deletes": max((_calls(m, frozenset({"delete"})) for m in self.poll_meters), default=0),
            "slowest_poller_run_by_step": self._slowest_run_by_step(),
            "poller_step_longest_s": _longest_by_step(self.poll_steps),
            "upload_to_start_p50_s": round(_pct(waits, 0.50), 1), "upload_to_start_p95_s": round(_pct(waits, 0.95), 1),
            "slowest_leader_seconds_by_kind": _slowest(self.leader_meters),
            "slowest_poller_seconds_by_kind": _slowest(self.poll_meters),
            # Why each LRO's job was made rather than grown, and each LRO (--lros prints them).
            "lro_reasons": dict(Counter(lro.why for lro in started).most_common()),
            "lro_list": [asdict(lro) for lro in started],
            "errors": dict(self.errors), "redelivered": self.redelivered, "wall_s": round(wall, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }


def _step_row(step: StepMeter) -> dict[str, float | int]:
    m = step.meter
    return {"s": round(step.seconds, 1), "listed": m.listed, "reads": _calls(m, READS - {"list", "list_prefixes"}),
            "writes": _calls(m, WRITES - {"delete"}), "deletes": _calls(m, frozenset({"delete"})),
            "other_s": round(sum(v for k, v in m.waited.items() if not k.startswith("store.") and k != "pool"), 1),
            "pool_s": round(m.waited.get("pool", 0.0), 1), "429_s": round(m.waited.get("429", 0.0), 1)}


def _longest_by_step(runs: list[dict[str, StepMeter]]) -> dict[str, float]:
    """Each step's longest time in any run."""
    longest: dict[str, float] = {}
    for steps in runs:
        for name, step in steps.items():
            longest[name] = max(longest.get(name, 0.0), round(step.seconds, 1))
    return longest


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


READS = frozenset({"read", "download", "list", "list_prefixes"})


def _calls(meter: Meter, kinds: frozenset[str]) -> int:
    return sum(n for kind, n in meter.calls.items() if kind.startswith("store.") and kind[6:] in kinds)


def _slowest(meters: list[Meter]) -> dict[str, float]:
    if not meters:
        return {}
    slowest = max(meters, key=lambda m: sum(v for k, v in m.waited.items() if k != "total"))
    return {k: round(v, 1) for k, v in sorted(slowest.waited.items(), key=lambda kv: -kv[1])}


def _kinds(names: Counter[str]) -> dict[str, int]:
    """Names written twice within a second, by kind (`jobs/`, `slots/` ...), with one example each."""
    kinds: Counter[str] = Counter()
    example: dict[str, str] = {}
    for name in names:
        kind = name.split("/", 1)[0]
        kinds[kind] += 1
        example.setdefault(kind, name)
    return {f"{k} (e.g. {example[k]})": v for k, v in kinds.most_common()}


def print_report(r: dict[str, Any]) -> None:
    print(f"\n{r['pattern']} {r['files']:,} files at {r['rate']:g}/s, latency x{r['latency']:g} "
          f"(tail {r['tail']:.0%}), limits {'on' if r['limits'] else 'off'}: "
          f"{r['simulated_hours']} h simulated in {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB")
    for key, value in r.items():
        if key not in ("pattern", "files", "rate", "latency", "tail", "limits", "simulated_hours", "wall_s",
                       "peak_rss_mb", "lro_list"):
            print(f"  {key:32s} {value}")


def print_lros(r: dict[str, Any], out: Any = sys.stdout) -> None:
    """One line per LRO: when its job was queued and started (simulated seconds), by whom, its size,
    the windows that grew it, and why its job was made rather than grown."""
    print("  queued  started  by      waited objects grown at-once why", file=out)
    for lro in r["lro_list"]:
        print(f"  {lro['queued_at']:6.0f} {lro['started_at']:8.0f}  {lro['started_by']:7s} "
              f"{'yes' if lro['waited'] else 'no':6s} {lro['objects']:7,} {lro['grown']:5} {lro['running']:7} "
              f"{lro['why']}", file=out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pattern", default="bulk", choices=("bulk", "burst", "trickle"))
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=50.0, help="uploads per second")
    parser.add_argument("--latency", type=float, default=1.0, help="scale of every call's latency (1, 5)")
    parser.add_argument("--tail", type=float, default=0.01, help="share of calls that take 20 times longer")
    parser.add_argument("--no-limits", action="store_true", help="without Cloud Storage's request limits")
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--duplicates", type=float, default=0.01, help="share of events delivered twice")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--staging-in-state", action="store_true",
                        help="staged copies in the state bucket (DICOM_STAGING_BUCKET unset)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--lros", action="store_true", help="list every LRO and why its job was made "
                        "(to stderr with --json)")
    args = parser.parse_args(argv)
    config = Config(args.pattern, args.files, args.rate, args.latency, args.tail, not args.no_limits,
                    args.instances, args.duplicates, args.seed, not args.staging_in_state)
    import logging
    logging.disable(logging.WARNING)  # the handlers' log lines, a million of them
    report = Bench(config).run()
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    if args.lros:
        print_lros(report, sys.stderr if args.json else sys.stdout)
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)

