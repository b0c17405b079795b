"""One deployment of the real handlers on the fakes and the simulated clock, and ways to drive it.

A `World` has function instances (each an `ImportOnUpload` with its own batcher and queue, as a
process has), uploads objects, delivers their finalize events as concurrent tasks, runs the
poller as Cloud Scheduler would, finishes operations when the test says so, and checks the
invariants of the protocol: nothing lost, nothing imported twice, the cap kept, no state left.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from functions.core.events import STORAGE_FINALIZED, StorageObjectEvent
from functions.exports.export_on_message import ExportOnMessage
from functions.gcp.clients import SqlRunner
from functions.imports import window_records
from functions.imports.import_on_upload import ImportOnUpload, Outcome
from functions.imports.job_queue import JobQueue
from functions.imports.poll_operations import Poller, PollSummary
from functions.imports.window_batcher import WindowBatcher, read_seen
from functions.settings import Settings
from tests import dicom_factory
from tests.functional.cloud_limits import CloudConditions
from tests.functional.fakes import FakeHealthcare, FakeObjectStore, FakePublisher, Published
from tests.functional.faults import Faults
from tests.functional.sim import Process, Simulation, Task

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a window boundary for every debounce length used here
UPLOADS = "uploads"
STATE = "state"
STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
TOPIC = "projects/p/topics/completions"
SCHEDULER_PERIOD = 60.0
# Prefixes that hold work in progress; all empty once the pipeline is done.
WORK_PREFIXES = ("windows/", "claims/", "jobs/", "slots/", "operations/", "refusals/", "cleanup/", "accounting/")


@dataclass
class Instance:
    """One function instance (a process) with its handler objects."""

    process: Process
    handler: ImportOnUpload
    batcher: WindowBatcher
    queue: JobQueue


@dataclass
class Delivery:
    event: StorageObjectEvent
    instance: Instance
    task: Task

    @property
    def outcome(self) -> Outcome:
        value: Outcome = self.task.value()
        return value


class World:
    def __init__(self, *, cloud: Callable[[Simulation], CloudConditions] | None = None, **overrides: Any) -> None:
        """`cloud`: the latency and Cloud Storage limits to run under (tests/functional/cloud_limits.py);
        by default calls take no time and nothing is throttled."""
        self.sim = Simulation(T0)
        self.faults = Faults(self.sim)
        self.cloud = cloud(self.sim) if cloud is not None else None
        # Under `cloud` the handlers' thread pools take simulated time too; `close` puts them back.
        self.close = self.cloud.install_pools() if self.cloud is not None else (lambda: None)
        # The handlers' clock: under latency, a task first waits for its thread pool's calls.
        self.clock: Callable[[], float] = self.cloud.clock if self.cloud is not None else self.sim.clock
        self.store = FakeObjectStore(self.sim.clock, self.faults, self.cloud)
        self.store.written_metadata = {}
        settings = Settings(dicom_store=STORE, state_bucket=STATE, completion_topic=TOPIC, debounce_seconds=5.0,
                            settle_seconds=2.0, claim_lease_seconds=30.0, max_concurrent_operations=5,
                            export_allowed_destinations=("gs://exports",), sql_allowed_datasets=("dicom_stream",),
                            upload_bucket=UPLOADS)
        self.settings = replace(settings, **overrides)
        self.hc = FakeHealthcare(self.store, self.sim.clock, self.settings.dataset, self.faults, self.cloud)
        self.publisher = FakePublisher(self.faults)
        self.deliveries: list[Delivery] = []
        self.polls: list[Task] = []
        self.sops: dict[str, str] = {}  # object name -> SOP instance UID of what was uploaded there
        self._names = itertools.count(1)
        self._replacements: dict[str, Instance] = {}

    # -- the deployment ----------------------------------------------------------------------
    def instance(self, name: str | None = None) -> Instance:
        """A new function instance of the import function."""
        queue = JobQueue(self.settings, self.store, self.hc, clock=self.clock, sleep=self.sim.sleep)
        batcher = WindowBatcher(self.settings, self.store, queue, clock=self.clock)
        handler = ImportOnUpload(self.settings, self.store, batcher, clock=self.clock, sleep=self.sim.sleep)
        return Instance(Process(name or f"import-{next(self._names)}"), handler, batcher, queue)

    def queue(self) -> JobQueue:
        return JobQueue(self.settings, self.store, self.hc, clock=self.clock, sleep=self.sim.sleep)

    def batcher(self) -> WindowBatcher:
        return WindowBatcher(self.settings, self.store, self.queue(), clock=self.clock)

    def exporter(self, bigquery: SqlRunner | None = None) -> ExportOnMessage:
        return ExportOnMessage(self.settings, self.store, self.hc, self.queue(), self.publisher,
                               clock=self.clock, bigquery=bigquery)

    def poller(self) -> Poller:
        queue = self.queue()
        batcher = WindowBatcher(self.settings, self.store, queue, clock=self.clock)
        return Poller(self.settings, self.store, self.hc, queue, batcher, self.publisher, clock=self.clock)

    # -- driving -----------------------------------------------------------------------------
    def upload(self, name: str, data: bytes | None = None, *, bucket: str = UPLOADS) -> StorageObjectEvent:
        """A user's upload now (a fresh DICOM instance unless `data` is given); its finalize event."""
        if data is None:
            data = dicom_factory.instance()
            from functions.imports.failed_objects import read_uids

            uids = read_uids(data)
            assert uids is not None
            self.sops[name] = uids[2]
        info = self.store.put(bucket, name, data)
        created = datetime.fromtimestamp(info.time_created, UTC)
        return StorageObjectEvent(event_id=f"evt-{next(self._names)}", event_type=STORAGE_FINALIZED, bucket=bucket,
                                  name=name, generation=info.generation, size=info.size, time_created=created,
                                  event_time=created)

    def deliver(self, event: StorageObjectEvent, to: Instance) -> Delivery:
        """Queues the delivery of `event` to instance `to` (it runs when time next moves); the
        platform sends it to a new instance instead when `to` has died."""
        while to.process.dead:
            if to.process.name not in self._replacements:
                self._replacements[to.process.name] = self.instance(f"{to.process.name}'")
            to = self._replacements[to.process.name]
        task = self.sim.spawn(lambda: to.handler.handle(event), name=f"{to.process.name}:{event.name}",
                              process=to.process)
        delivery = Delivery(event, to, task)
        self.deliveries.append(delivery)
        return delivery

    def upload_burst(self, names: Iterable[str], to: list[Instance], gap: float = 0.1) -> list[Delivery]:
        """Uploads one object every `gap` seconds, each event delivered at once, round robin."""
        deliveries = []
        for index, name in enumerate(names):
            if index:
                self.sim.advance(gap)
            deliveries.append(self.deliver(self.upload(name), to[index % len(to)]))
            self.sim.run_until(self.sim.clock())
        return deliveries

    def poll(self) -> Task:
        """One Cloud Scheduler tick: a fresh poller invocation, run now."""
        poller = self.poller()
        task = self.sim.call(poller.run, name=f"poll@{self.sim.clock() - T0:.0f}", process=Process("poller"))
        self.polls.append(task)
        return task

    def lost(self) -> list[Delivery]:
        """Deliveries whose process died before they were answered: the platform sends them again."""
        answered = {id(d.event) for d in self.deliveries if d.task.done and not d.task.killed}
        lost, seen = [], set()
        for delivery in self.deliveries:
            if delivery.task.killed and id(delivery.event) not in answered and id(delivery.event) not in seen:
                seen.add(id(delivery.event))
                lost.append(delivery)
        return lost

    def redeliver_lost(self, to: Instance) -> list[Delivery]:
        return [self.deliver(d.event, to) for d in self.lost()]

    def settle(self, *, ticks: int = 40, finish: bool = True) -> None:
        """Lets the deliveries finish, then ticks the scheduler (finishing every operation first when
        `finish`) until no work is left in the state bucket and no operation runs."""
        self.sim.run_until_idle()
        for _ in range(ticks):
            if finish:
                self.hc.finish_all()
            self.poll()
            self.sim.run_until_idle()
            if self.quiet() and not self.hc.running:
                return
            self.sim.advance(SCHEDULER_PERIOD)
        raise AssertionError(f"still busy after {ticks} scheduler ticks: {self.work_left()}, "
                             f"running operations {[op.name for op in self.hc.running]}")

    # -- looking -----------------------------------------------------------------------------
    def state(self, prefix: str) -> list[str]:
        return self.store.names(STATE, self.settings.state_path(prefix))

    def waiting(self, prefix: str = "windows/") -> list[str]:
        """The object names of the uploads the window records under `prefix` list (a name once per record)."""
        names = []
        for record in self.state(prefix):
            info = self.store.get(STATE, record)
            entries = window_records.parse(info.metadata if info else None)
            assert entries is not None, f"unreadable window record {record}"
            names += [e.name for e in entries]
        return names

    def unbatched(self) -> list[str]:
        """The object names of the uploads the window records list whose keys are not in their
        window's seen file (each once): what planning has still to take."""
        root = self.settings.state_path("windows/")
        names = set()
        for record in self.state("windows/"):
            window = record[len(root):].split("/", 1)[0]
            seen = read_seen(self.store, STATE, self.settings.state_path("seen", f"{window}.json")).keys
            info = self.store.get(STATE, record)
            names |= {e.name for e in window_records.parse(info.metadata if info else None) or [] if e.key not in seen}
        return sorted(names)

    def ever_recorded(self) -> set[str]:
        """The object names of the uploads any window record written so far listed (deleted ones too)."""
        assert self.store.written_metadata is not None
        root = self.settings.state_path("windows/")
        return {e.name for record, meta in self.store.written_metadata.items() if record.startswith(root)
                for e in window_records.parse(meta) or []}

    def work_left(self) -> dict[str, list[str]]:
        return {p: names for p in WORK_PREFIXES if (names := self.state(p))}

    def quiet(self) -> bool:
        return not self.work_left()

    def completions(self) -> list[Published]:
        return list(self.publisher.events)

    def reported_successes(self) -> int:
        """Instances reported as imported, counting each completion event (eventId) once."""
        by_id = {e.event_id: e for e in self.publisher.events if e.data["kind"] == "import"}
        return sum(int(e.data["counters"]["success"]) for e in by_id.values())

    def summaries(self) -> list[PollSummary]:
        return [t.result for t in self.polls if t.done and t.error is None]

    # -- invariants --------------------------------------------------------------------------
    def check_invariants(self, *, expected: Iterable[str] | None = None, may_import_twice: bool = False) -> None:
        """Nothing lost, nothing imported twice, one eventId per operation, the cap kept, no work left.

        `expected`: object names that must be in the store (default: every DICOM upload).
        `may_import_twice`: the crash fell between an LRO start and its record: the job is
        started again (documented in functions.imports.job_queue), so its objects may be read twice.
        """
        names = list(self.sops) if expected is None else list(expected)
        missing = [n for n in names if self.hc.imports_of(self.sops[n]) == 0]
        assert not missing, f"lost: {missing}"
        twice = {n: self.hc.imports_of(self.sops[n]) for n in names if self.hc.imports_of(self.sops[n]) > 1}
        if may_import_twice:
            assert all(count <= 2 for count in twice.values()), twice
        else:
            assert not twice, f"imported more than once: {twice}"
        assert self.quiet(), f"work left in the state bucket: {self.work_left()}"
        ids_by_operation: dict[str, set[str]] = defaultdict(set)
        for event in self.publisher.events:
            if "operation" in event.data:
                ids_by_operation[event.data["operation"]].add(event.event_id)
        assert all(len(ids) == 1 for ids in ids_by_operation.values()), ids_by_operation
        assert self.reported_successes() == len(set(self.sops[n] for n in names)), (
            f"completion events report {self.reported_successes()} imported, uploaded {len(names)}")
        if not may_import_twice:
            assert self.hc.max_running <= self.settings.max_concurrent_operations, self.hc.max_running
