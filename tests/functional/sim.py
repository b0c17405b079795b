"""A fake clock that is also a tiny scheduler: time moves only when the test (or a sleeper) moves it.

The handlers take `clock` and `sleep`. Concurrent deliveries are *tasks*: real threads, but only
one runs at a time, and a task gives up its turn only by sleeping or finishing. So a scenario
runs the same way on any machine, however loaded:

- `spawn(fn)` queues a task; it runs at the current time once the test lets time move.
- `sleep(d)` inside a task parks it until `now + d`; `sleep(d)` on the test's own thread is
  `advance(d)` (time passes, and everything due in between runs).
- `advance(d)` / `run_until(t)` run every task that is ready or wakes before the target, in wake
  time order (ties in arrival order), then set the clock to the target.
- `run_until_idle()` runs until no task is left, the clock following each wake-up.

A task belongs to a `Process` (one function instance). When a task raises `Killed` (crash
injection), its process is dead: its other tasks die when they next wake, as requests in flight
in a killed instance do. Thread pools inside a handler run within the turn of the task that owns
them; they must not sleep.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TURN_TIMEOUT_SECONDS = 60.0  # a task that neither sleeps nor ends this long is hung: fail loudly


class Killed(BaseException):
    """The process died at this point (crash injection).

    A BaseException, like SystemExit: nothing in the handlers may catch it and carry on, just as
    no code runs in a process after a SIGKILL.
    """


@dataclass(eq=False)
class Process:
    """One function instance: its in-flight tasks die with it."""

    name: str
    dead: bool = False
    tasks: list[Task] = field(default_factory=list)


class Task:
    """One request being served (or any other unit of concurrent work)."""

    def __init__(self, sim: Simulation, fn: Callable[[], Any], name: str, process: Process | None) -> None:
        self.name = name
        self.process = process
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self._sim = sim
        self._fn = fn
        self._go = threading.Event()  # set by the scheduler: this task's turn
        self._thread = threading.Thread(target=self._main, name=f"task-{name}", daemon=True)

    @property
    def killed(self) -> bool:
        return isinstance(self.error, Killed)

    def value(self) -> Any:
        """The result; re-raises what the task raised. Fails if it has not finished."""
        assert self.done, f"task {self.name} has not finished"
        if self.error is not None:
            raise self.error
        return self.result

    def _main(self) -> None:
        sim = self._sim
        self._wait_for_turn()
        sim._local.task = self
        try:
            self.result = self._fn()
        except BaseException as exc:  # the test inspects it; Killed marks the process dead
            self.error = exc
            if isinstance(exc, Killed) and self.process is not None:
                self.process.dead = True
        finally:
            self.done = True
            sim._yielded.set()

    def _wait_for_turn(self) -> None:
        self._go.wait()
        self._go.clear()


class Simulation:
    def __init__(self, start: float) -> None:
        self._now = start
        # Each task parks on its own event and the scheduler on `_yielded`: a turn wakes only the
        # task whose turn it is, however many are parked (a migration parks thousands).
        self._lock = threading.Lock()
        self._yielded = threading.Event()
        self._ready: deque[Task] = deque()
        self._sleepers: list[tuple[float, int, Task]] = []
        self._order = itertools.count()
        self._local = threading.local()
        self._main_thread = threading.get_ident()
        self._current: Task | None = None

    # -- what the handlers get ---------------------------------------------------------------
    def clock(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        task: Task | None = getattr(self._local, "task", None)
        if task is None:
            if threading.get_ident() != self._main_thread:
                raise RuntimeError("sleep() from a thread that is neither the test nor a task (a pool worker?)")
            self.advance(seconds)
            return
        with self._lock:
            heapq.heappush(self._sleepers, (self._now + max(seconds, 0.0), next(self._order), task))
        self._yielded.set()
        task._wait_for_turn()
        if task.process is not None and task.process.dead:
            raise Killed(f"{task.process.name} died while {task.name} slept")

    def in_task(self) -> bool:
        """Is the caller a task's own thread (one that may sleep)?"""
        return getattr(self._local, "task", None) is not None

    def on_main_thread(self) -> bool:
        return threading.get_ident() == self._main_thread

    @property
    def current(self) -> Task | None:
        """The task whose turn it is (its thread-pool workers run within that turn)."""
        return self._current

    # -- what the test does ------------------------------------------------------------------
    def spawn(self, fn: Callable[[], Any], *, name: str, process: Process | None = None) -> Task:
        """Queues `fn` to run at the current time (when the test next lets time move)."""
        if process is not None and process.dead:
            raise AssertionError(f"{process.name} is dead: deliver to another process")
        task = Task(self, fn, name, process)
        if process is not None:
            process.tasks.append(task)
        self._ready.append(task)
        return task

    def advance(self, seconds: float) -> None:
        self.run_until(self._now + seconds)

    def jump(self, seconds: float) -> None:
        """Moves the clock on without running anything: the time a call in flight takes, from any
        thread (a handler's pool worker too, which must not sleep). Tasks due meanwhile run when
        time next moves."""
        with self._lock:
            self._now += seconds

    def run_until(self, target: float) -> None:
        while (task := self._next(target)) is not None:
            self._run_turn(task)
        self._now = max(self._now, target)

    def run_until_idle(self, limit: float = 24 * 3600.0) -> None:
        """Runs until no task is ready or sleeping; fails if that needs more than `limit` seconds."""
        deadline = self._now + limit
        while (task := self._next(deadline)) is not None:
            self._run_turn(task)
        assert not self._sleepers, f"tasks still sleeping after {limit} s: {[t.name for _, _, t in self._sleepers]}"

    def call(self, fn: Callable[[], Any], *, name: str, process: Process | None = None) -> Task:
        """Runs `fn` as a task right now, with whatever else is due at this moment; returns the task."""
        task = self.spawn(fn, name=name, process=process)
        self.run_until(self._now)
        return task

    @property
    def pending(self) -> int:
        """Tasks that have not finished (ready or sleeping)."""
        return len(self._ready) + len(self._sleepers)

    # -- scheduling --------------------------------------------------------------------------
    def _next(self, target: float) -> Task | None:
        with self._lock:
            if self._ready:
                return self._ready.popleft()
            if self._sleepers and self._sleepers[0][0] <= target:
                wake, _, task = heapq.heappop(self._sleepers)
                self._now = max(self._now, wake)
                return task
            return None

    def _run_turn(self, task: Task) -> None:
        self._yielded.clear()
        self._current = task
        task._go.set()
        if not task._thread.is_alive() and not task.done:
            task._thread.start()
        finished = self._yielded.wait(timeout=_TURN_TIMEOUT_SECONDS)
        self._current = None
        if not finished:
            raise AssertionError(f"task {task.name} neither slept nor finished within "
                                 f"{_TURN_TIMEOUT_SECONDS:.0f} s of real time (a deadlock?)")
