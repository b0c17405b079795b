"""The budget of one poller run: the time and the objects that its steps growing with a migration
may take (decision 0775).

Each such step works in units of bounded size (a window's part, a chunk of an import's objects to
account for, a page of copies to delete) and starts another unit only while the time now plus the
longest unit of its kind so far stays within the run's deadline and objects are left. A unit that
has started finishes, so a run ends within its deadline plus one unit; what is left is the next
run's, and each step leaves it in a state a crash there could leave too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RunBudget:
    clock: Callable[[], float]
    until: float  # clock time after which no unit starts whose kind has taken that long before
    objects: int  # objects (uploads planned, objects accounted for, copies deleted) still allowed
    _longest: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # steps finish imports side by side

    @classmethod
    def from_now(cls, clock: Callable[[], float], seconds: float, objects: int) -> RunBudget:
        return cls(clock, clock() + seconds, objects)

    def allows(self, kind: str) -> bool:
        """May a step start another unit of `kind`? Objects are left, and it would end by `until`
        if it took as long as the longest of its kind so far (a first one always may, in time)."""
        with self._lock:
            return self.objects > 0 and self.clock() + self._longest.get(kind, 0.0) <= self.until

    def take(self, wanted: int) -> int:
        """How many of `wanted` objects the next unit may touch."""
        with self._lock:
            return max(0, min(wanted, self.objects))

    def spent(self, kind: str, seconds: float, objects: int) -> None:
        """A unit of `kind` took `seconds` and touched `objects` objects."""
        with self._lock:
            self._longest[kind] = max(self._longest.get(kind, 0.0), seconds)
            self.objects -= objects

    def seconds_left(self) -> float:
        return max(self.until - self.clock(), 0.0)


def unlimited(clock: Callable[[], float]) -> RunBudget:
    """No bound: callers outside a poller run (a leader undoing a growth it found) do all of it."""
    return RunBudget(clock, float("inf"), 1 << 62)
