"""Fault injection for the fakes: kill the caller, stall it, or fail the call, at a chosen call.

Every call a handler makes on a fake goes through `Faults.check` twice (before the call takes
effect and after it), and is recorded in `trace`. A rule matches calls by client, method and a
substring of the object or operation name, and fires on its `nth` match:

- `kill`: raise `Killed` (the process dies; before: the call never happened; after: it took effect
  and the answer was lost with the process);
- `stall`: the calling task sleeps (simulated time) before the call, e.g. a leader that pauses past
  its lease while the poller runs;
- `fail`: raise the given exception (an API fault the handler should survive);
- `meanwhile`: run something else first (the clock jumping, the poller running).

`kill_at(k)` kills the caller right before the k-th call made after `arm()`: the enumeration of
crash points in the crash-point tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from tests.functional.sim import Killed, Simulation


@dataclass(frozen=True)
class Call:
    index: int  # 1-based, counted from `arm()`
    client: str  # store | healthcare | publisher
    method: str
    name: str

    def describe(self) -> str:
        return f"{self.method} {self.name}".strip()


@dataclass
class _Rule:
    client: str | None
    method: str | None
    name: str | None
    nth: int
    when: str
    action: Callable[[Call], None]
    times: int = 1
    seen: int = 0

    @property
    def spent(self) -> bool:
        return self.seen >= self.nth + self.times - 1

    def matches(self, call: Call, when: str) -> bool:
        return (when == self.when and not self.spent
                and (self.client is None or self.client == call.client)
                and (self.method is None or self.method == call.method)
                and (self.name is None or self.name in call.name))


class Faults:
    def __init__(self, sim: Simulation) -> None:
        self._sim = sim
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._armed = False
        self._count = 0
        self._kill_at: int | None = None
        self.trace: list[Call] = []
        self.fired: list[str] = []

    # -- rules -------------------------------------------------------------------------------
    def kill(self, *, client: str | None = None, method: str | None = None, name: str | None = None,
             nth: int = 1, when: str = "before") -> None:
        def action(call: Call) -> None:
            raise Killed(f"killed {when} {call.client}.{call.describe()}")

        self._add(_Rule(client, method, name, nth, when, action))

    def stall(self, seconds: float, *, client: str | None = None, method: str | None = None,
              name: str | None = None, nth: int = 1) -> None:
        self._add(_Rule(client, method, name, nth, "before", lambda call: self._sim.sleep(seconds)))

    def meanwhile(self, action: Callable[[], None], *, client: str | None = None, method: str | None = None,
                  name: str | None = None, nth: int = 1, times: int = 1) -> None:
        """Runs `action` right before `times` matching calls from the `nth` on: what happens
        elsewhere while that call is in flight (time passing with `Simulation.jump`, another
        function's run), also in a handler's thread pool, where `stall` cannot be used."""
        self._add(_Rule(client, method, name, nth, "before", lambda call: action(), times))

    def fail(self, error: BaseException | Callable[[], BaseException], *, client: str | None = None,
             method: str | None = None, name: str | None = None, nth: int = 1, times: int = 1) -> None:
        """Raises `error` (or a fresh one from the factory) on `times` matches from the `nth` on."""
        def action(call: Call) -> None:
            raise error if isinstance(error, BaseException) else error()

        self._add(_Rule(client, method, name, nth, "before", action, times))

    def arm(self) -> None:
        """Starts counting calls for `kill_at` (and the trace) from here."""
        with self._lock:
            self._armed = True
            self._count = 0
            self.trace = []

    def kill_at(self, index: int) -> None:
        """Kills the caller right before the `index`-th call after `arm()`."""
        self._kill_at = index

    # -- the fakes call this -----------------------------------------------------------------
    def check(self, client: str, method: str, name: str, when: str) -> None:
        with self._lock:
            action: Callable[[Call], None] | None = None
            if when == "before" and self._armed:
                self._count += 1
                call = Call(self._count, client, method, name)
                self.trace.append(call)
                if self._kill_at == self._count:
                    self._kill_at = None
                    self.fired.append(f"kill before #{call.index} {call.client}.{call.describe()}")
                    raise Killed(f"killed before call #{call.index}: {call.client}.{call.describe()}")
            else:
                call = Call(0, client, method, name)
            for rule in self._rules:
                if rule.matches(call, when):
                    rule.seen += 1
                    if rule.seen >= rule.nth and action is None:
                        action = rule.action
                        self.fired.append(f"{when} {client}.{call.describe()}")
        if action is not None:
            action(call)  # outside the lock: a stall lets other tasks call the fakes

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)
