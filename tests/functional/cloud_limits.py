"""Cloud Storage's request limits and the time calls take, for the functional fakes (switchable).

Off by default: a `World` without `CloudConditions` answers every call at once and never throttles.
On (the simulation bench, and the functional tests that need it), every call of a fake goes
through `CloudConditions.before` first:

- **Latency.** Each call takes a time from `Latency` (per kind of call, scaled, with a seeded tail:
  a few calls take many times longer). A task sleeps it (other tasks run meanwhile). The
  handlers' thread pools become `SimulatedPool`s (`install_pools`): the items run one after the
  other in the task's turn, each on the simulated worker free first, and the task then sleeps the
  busiest worker's time, as threads working side by side take.
- **One write per second per object name** (Cloud Storage's quotas page: "maximum rate of writes
  to the same object name"). A create, replace, write, copy to or delete of a name that was
  changed less than a second ago is answered 429.
- **The bucket's write rate with its ramp** (Cloud Storage's request-rate guidance): about 1,000
  object writes per second at first; the capacity doubles each 20 minutes the bucket is in use.
  A write beyond the capacity of its second is answered 429.
- **Listings come in pages of 1,000** objects: each page is one call (and one call's latency).

A 429 is retried as the `functions.gcp.gcs` wrapper does (google-cloud-storage's backoff, waits of 1,
2, 4 ... s, with our deadline `STORAGE_RETRY_SECONDS`), then `TooManyRequests` reaches the caller.
Every 429 is counted, with the name it hit.
"""

from __future__ import annotations

import heapq
import random
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc

from functions.gcp.gcs import STORAGE_RETRY_SECONDS
from tests.functional.sim import Simulation

WRITES = frozenset({"create", "replace", "write", "delete", "copy"})
PAGE_SIZE = 1000
SAME_NAME_INTERVAL = 1.0
INITIAL_BUCKET_WRITES = 1000.0
RAMP_DOUBLING_SECONDS = 20 * 60.0
# functions.gcp.gcs.DEFAULT_RETRY: google-cloud-storage's backoff (1 s doubling to 60 s), our deadline.
RETRY_INITIAL, RETRY_MULTIPLIER, RETRY_MAXIMUM = 1.0, 2.0, 60.0
RETRY_DEADLINE = STORAGE_RETRY_SECONDS

# Median seconds per call (x1). Cloud Storage metadata calls take tens of milliseconds, a copy of a
# small object a little more; an API call to the Healthcare API around a hundred.
BASE_SECONDS: dict[tuple[str, str], float] = {
    ("store", "read"): 0.03, ("store", "download"): 0.04, ("store", "list"): 0.05,
    ("store", "list_prefixes"): 0.05, ("store", "create"): 0.05, ("store", "replace"): 0.05,
    ("store", "write"): 0.05, ("store", "delete"): 0.04, ("store", "copy"): 0.08,
    ("healthcare", "import_dicom"): 0.3, ("healthcare", "get_operation"): 0.1,
    ("healthcare", "list_operations"): 0.2, ("publisher", "publish"): 0.03,
}
DEFAULT_SECONDS = 0.05


@dataclass(frozen=True)
class Latency:
    """How long calls take: `BASE_SECONDS` x `scale`; one call in `1 / tail_share` takes
    `tail_factor` times longer (a slow server, a retried connection)."""

    scale: float = 1.0
    tail_share: float = 0.01
    tail_factor: float = 20.0
    seed: int = 7

    def seconds(self, client: str, method: str, rng: random.Random) -> float:
        base = BASE_SECONDS.get((client, method), DEFAULT_SECONDS) * self.scale
        return base * self.tail_factor if rng.random() < self.tail_share else base


@dataclass(frozen=True)
class Limits:
    """Cloud Storage's limits; each can be switched off."""

    same_name: bool = True
    bucket_rate: bool = True
    pages: bool = True


@dataclass
class Meter:
    """What one task did (a delivery, a poller run): the calls it made and the objects it listed."""

    calls: Counter[str] = field(default_factory=Counter)
    listed: int = 0
    waited: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # seconds by call kind


@dataclass
class Observed:
    """What the store saw over a whole run."""

    calls: Counter[str] = field(default_factory=Counter)  # "store.create" -> calls (pages for lists)
    listed: int = 0  # objects returned by listings
    largest_listing: int = 0
    throttled: Counter[str] = field(default_factory=Counter)  # 429s by first path segment of the name
    throttled_names: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0  # 429s that outlasted the retry deadline (reached the caller)
    writes_per_second: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    most_writes_one_name: int = 0  # within any second
    hot_names: Counter[str] = field(default_factory=Counter)  # names written twice within a second


class CloudConditions:
    def __init__(self, sim: Simulation, *, latency: Latency | None = None, limits: Limits | None = None,
                 observe: bool = True) -> None:
        self._sim = sim
        self.latency = latency
        self.limits = limits
        self._observe = observe
        self._rng = random.Random(latency.seed if latency else 0)
        self._lock = threading.Lock()
        self._local = threading.local()  # `pool`: the workers of the pool the task runs now
        # bucket -> second -> name -> write times (only the last two seconds are kept)
        self._recent: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(dict)
        self._first_write: dict[str, float] = {}
        # bucket -> second -> writes in it (a pool's workers run ahead of the task: several seconds)
        self._per_second: dict[str, dict[int, int]] = defaultdict(dict)
        self.observed = Observed()

    # -- time ----------------------------------------------------------------------------------
    def clock(self) -> float:
        """The handlers' clock (inside a pool: the time of the worker running the current item)."""
        return self._now()

    def _now(self) -> float:
        pool: _Lanes | None = getattr(self._local, "pool", None)
        return self._sim.clock() + (pool.current if pool is not None else 0.0)

    def _wait(self, seconds: float, kind: str = "") -> None:
        if seconds <= 0:
            return
        pool: _Lanes | None = getattr(self._local, "pool", None)
        if pool is not None:
            pool.current += seconds  # the worker's time; the pool's wall time is waited at its end
            return
        if self._sim.in_task():
            meter = self._meter()
            if meter is not None:
                meter.waited[kind] += seconds
            self._sim.sleep(seconds)

    def run_pool(self, workers: int, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        """Runs `fn` over `items` as `workers` threads would, one item after the other on the
        calling task's thread: each item goes to the worker free first, and the task then sleeps
        the time the busiest worker took (the pool's wall time). Exceptions come back as results."""
        if not self._sim.in_task() or getattr(self._local, "pool", None) is not None:
            return [_outcome(fn, item) for item in items]
        lanes = _Lanes(workers)
        self._local.pool = lanes
        try:
            results = []
            for item in items:
                lanes.take()
                results.append(_outcome(fn, item))
                lanes.give_back()
        finally:
            self._local.pool = None
        if lanes.wall > 0:
            meter = self._meter()
            if meter is not None:
                meter.waited["pool"] += lanes.wall
            self._sim.sleep(lanes.wall)
        return results

    def enter_stream(self) -> _Lanes | None:
        """The caller's time inside a `SimulatedWorkers` (None where its calls take no time of
        their own: outside a task, or inside another pool)."""
        if not self._sim.in_task() or getattr(self._local, "pool", None) is not None:
            return None
        lanes = _Lanes(1)
        self._local.pool = lanes
        return lanes

    def leave_stream(self, wall: float) -> None:
        """Ends a `SimulatedWorkers`: the task sleeps the time its calls and its own looks took."""
        self._local.pool = None
        if wall > 0:
            meter = self._meter()
            if meter is not None:
                meter.waited["pool"] += wall
            self._sim.sleep(wall)

    # -- the fakes call these --------------------------------------------------------------------
    def before(self, client: str, method: str, bucket: str, name: str) -> None:
        """Before a call takes effect: its latency, and for a write the limits (429 and retries)."""
        if self.latency is not None:
            with self._lock:
                seconds = self.latency.seconds(client, method, self._rng)
            self._wait(seconds, f"{client}.{method}")
        if client != "store" or method not in WRITES:
            return
        waited, delay = 0.0, RETRY_INITIAL
        while (refused := self._refusal(bucket, name)) is not None:
            with self._lock:
                self.observed.throttled[name.split("/", 1)[0]] += 1
                self.observed.throttled_names[name] += 1
            if waited + delay > RETRY_DEADLINE:
                with self._lock:
                    self.observed.gave_up += 1
                raise gexc.TooManyRequests(f"{refused}: gs://{bucket}/{name}")
            self._wait(delay, "429")
            waited += delay
            delay = min(delay * RETRY_MULTIPLIER, RETRY_MAXIMUM)

    def counted(self, client: str, method: str, listed: int = 0) -> int:
        """Counts a call (a listing as its pages); the extra pages' latency is the caller's to wait."""
        pages = max(1, -(-listed // PAGE_SIZE)) if method in ("list", "list_prefixes") else 1
        with self._lock:
            if self._observe:
                self.observed.calls[f"{client}.{method}"] += pages
                self.observed.listed += listed
                self.observed.largest_listing = max(self.observed.largest_listing, listed)
            meter = self._meter()
            if meter is not None:
                meter.calls[f"{client}.{method}"] += pages
                meter.listed += listed
        return pages

    def paged(self, client: str, method: str, listed: int) -> None:
        """A listing of `listed` objects: one call per page of 1,000 (the first one's latency was
        waited in `before`)."""
        pages = self.counted(client, method, listed)
        if self.limits is not None and self.limits.pages and self.latency is not None and pages > 1:
            with self._lock:
                seconds = sum(self.latency.seconds(client, method, self._rng) for _ in range(pages - 1))
            self._wait(seconds, f"{client}.{method}")

    def wrote(self, bucket: str, name: str) -> None:
        """A write (or delete) of `name` took effect now."""
        at = self._now()
        second = int(at)
        with self._lock:
            self._first_write.setdefault(bucket, at)
            counts = self._per_second[bucket]
            counts[second] = counts.get(second, 0) + 1
            if len(counts) > 600:
                for old in sorted(counts)[:300]:
                    del counts[old]
            by_second = self._recent[bucket]
            if len(by_second) > 120:  # a pool's workers write seconds ahead: keep a margin
                for old in sorted(by_second)[:60]:
                    del by_second[old]
            times = [t for s in (second - 1, second) for t in by_second.get(s, {}).get(name, ())
                     if at - t < SAME_NAME_INTERVAL]
            by_second.setdefault(second, {}).setdefault(name, []).append(at)
            if self._observe:
                self.observed.writes_per_second[bucket][second] += 1
                if times:
                    self.observed.hot_names[name] += 1
                self.observed.most_writes_one_name = max(self.observed.most_writes_one_name, len(times) + 1)

    # -- limits --------------------------------------------------------------------------------
    def _refusal(self, bucket: str, name: str) -> str | None:
        if self.limits is None:
            return None
        now = self._now()
        second = int(now)
        with self._lock:
            by_second = self._recent.get(bucket, {})
            if self.limits.same_name and any(now - t < SAME_NAME_INTERVAL for s in (second - 1, second)
                                             for t in by_second.get(s, {}).get(name, ())):
                return "429 rate of writes to one object name"
            if self.limits.bucket_rate:
                if self._per_second.get(bucket, {}).get(second, 0) >= self.capacity(bucket, now):
                    return "429 rate of writes to the bucket"
        return None

    def capacity(self, bucket: str, now: float) -> float:
        """Writes per second the bucket takes now: 1,000, doubling each 20 minutes of use."""
        first = self._first_write.get(bucket)
        doublings = 0 if first is None else int(max(now - first, 0.0) // RAMP_DOUBLING_SECONDS)
        return INITIAL_BUCKET_WRITES * 2 ** min(doublings, 20)

    def install_pools(self) -> Callable[[], None]:
        """Makes the handlers' thread pools `SimulatedPool`s on this simulation; returns the undo."""
        import functions.gcp.streaming
        import functions.imports.failed_objects
        import functions.imports.job_queue
        import functions.imports.poll_operations
        import functions.imports.window_batcher

        modules = (functions.imports.window_batcher, functions.imports.failed_objects, functions.imports.job_queue,
                   functions.imports.poll_operations)
        before = [m.ThreadPoolExecutor for m in modules]  # type: ignore[attr-defined]
        workers_before = functions.gcp.streaming.Workers
        conditions = self

        class Pool(SimulatedPool):
            def __init__(self, max_workers: int | None = None, **_: Any) -> None:
                super().__init__(conditions, max_workers or 1)

        class Workers(SimulatedWorkers):
            def __init__(self, count: int) -> None:
                super().__init__(conditions, count)

        for module in modules:
            module.ThreadPoolExecutor = Pool  # type: ignore[attr-defined]
        functions.gcp.streaming.Workers = Workers  # type: ignore[misc, assignment]

        def undo() -> None:
            for module, original in zip(modules, before, strict=True):
                module.ThreadPoolExecutor = original  # type: ignore[attr-defined]
            functions.gcp.streaming.Workers = workers_before  # type: ignore[misc]

        return undo

    def _meter(self) -> Meter | None:
        task: Any = self._sim.current
        return getattr(task, "meter", None) if task is not None else None


class SimulatedWorkers:
    """A stand-in for `functions.gcp.streaming.Workers` under `CloudConditions`: a call runs at once, in
    the task's own turn, from the caller's time on; waiting for one to finish moves the caller's time
    to the earliest finish. So each call starts when a worker is free, and what the caller does
    between calls (its lease renewals) takes its own time, as with threads working side by side.
    Without conditions (or outside a task) each call simply runs when submitted."""

    def __init__(self, conditions: CloudConditions | None, count: int) -> None:
        self.count = count
        self._conditions = conditions
        self._finishes: list[float] = []  # a heap of the running calls' finish times
        self._caller: _Lanes | None = None

    def __enter__(self) -> SimulatedWorkers:
        self._caller = self._conditions.enter_stream() if self._conditions is not None else None
        return self

    def __exit__(self, *_: object) -> None:
        if self._caller is not None and self._conditions is not None:
            self._conditions.leave_stream(max([self._caller.current, *self._finishes]))

    @property
    def busy(self) -> int:
        return len(self._finishes)

    def submit(self, call: Callable[[], None]) -> None:
        caller = self._caller
        if caller is None:
            call()
            return
        began = caller.current
        try:
            call()
        finally:
            finished, caller.current = caller.current, began
            heapq.heappush(self._finishes, finished)

    def wait_one(self) -> None:
        if self._caller is not None and self._finishes:
            self._caller.current = max(self._caller.current, heapq.heappop(self._finishes))


class _Lanes:
    """The workers of one simulated pool: how long each has been busy."""

    def __init__(self, workers: int) -> None:
        self._busy = [0.0] * max(workers, 1)
        self._taken = 0
        self.current = 0.0  # busy time of the worker running the current item

    def take(self) -> None:
        self._taken = min(range(len(self._busy)), key=self._busy.__getitem__)
        self.current = self._busy[self._taken]

    def give_back(self) -> None:
        self._busy[self._taken] = self.current

    @property
    def wall(self) -> float:
        return max(self._busy)


def _outcome(fn: Callable[..., Any], item: tuple[Any, ...]) -> Any:
    try:
        return fn(*item)
    except Exception as exc:
        return _Raised(exc)


@dataclass(frozen=True)
class _Raised:
    error: Exception


class SimulatedPool:
    """A stand-in for `ThreadPoolExecutor` (its `map`) under `CloudConditions`: the work runs in the
    task's own turn and takes the time `max_workers` threads would (`CloudConditions.run_pool`)."""

    def __init__(self, conditions: CloudConditions, max_workers: int) -> None:
        self._conditions = conditions
        self._workers = max_workers

    def __enter__(self) -> SimulatedPool:
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def map(self, fn: Callable[..., Any], *iterables: Any) -> Iterator[Any]:
        results = self._conditions.run_pool(self._workers, fn, list(zip(*iterables, strict=False)))

        def unwrap() -> Iterator[Any]:
            for result in results:
                if isinstance(result, _Raised):
                    raise result.error
                yield result

        return unwrap()
