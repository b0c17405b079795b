"""A group commit of window records: the concurrent requests of one process for one window share
one record write (decision 0770).

The first request of a group opens it and writes it once the linger has passed and no other write
of the window by this process is in flight; requests that arrive meanwhile join it (up to the
group's count and bytes, `functions.imports.window_records.fits`). Every request of a group
returns the record's name once the record is written, and raises the write's error if it failed:
its event is delivered again, nothing is lost.

Waiting is done with the injected `sleep` (a request's own turn in the simulation of
tests/functional), never by blocking on another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from functions.imports import window_records
from functions.imports.window_records import Entry

# How long a group takes new requests before its write. Events are asynchronous: half a second more
# per request is nothing next to the window's own wait (debounce plus settle, 7 s), and it stays well
# inside the settle time, so a group written after its window closed is still seen by its leader.
LINGER_SECONDS = 0.5
# How often a waiting request looks whether its group's write is done.
POLL_SECONDS = 0.05


@dataclass(eq=False)
class _Group:
    until: float  # the end of its linger
    entries: list[Entry] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    done: bool = False
    record: str = ""
    error: BaseException | None = None

    def accepts(self, entry: Entry) -> bool:
        return entry.key in self.keys or window_records.fits(self.entries, entry)

    def add(self, entry: Entry) -> None:
        if entry.key not in self.keys:  # a duplicate delivery to this process: listed once
            self.keys.add(entry.key)
            self.entries.append(entry)

    @property
    def full(self) -> bool:
        return len(self.entries) >= window_records.MAX_GROUP_UPLOADS


class RecordGroups:
    """The groups of one process. Thread-safe."""

    def __init__(self, write: Callable[[str, list[Entry]], str], clock: Callable[[], float],
                 sleep: Callable[[float], None], linger: float = LINGER_SECONDS,
                 poll: float = POLL_SECONDS) -> None:
        self._write = write  # (window, entries) -> the record's name
        self._clock = clock
        self._sleep = sleep
        self._linger = linger
        self._poll = poll
        self._lock = threading.Lock()
        self._open: dict[str, _Group] = {}
        self._writing: dict[str, int] = {}

    def record(self, window: str, entry: Entry) -> str:
        """Records `entry` in a record of `window`; the record's name once it is written.

        Raises:
            whatever the group's write raised.
        """
        with self._lock:
            group = self._open.get(window)
            opens = group is None or not group.accepts(entry)
            if group is None or opens:
                group = _Group(until=self._clock() + self._linger)
                self._open[window] = group
            group.add(entry)
        if opens:
            self._write_when_due(window, group)
        else:
            self._sleep(max(group.until - self._clock(), 0.0))
            while not group.done:
                self._sleep(self._poll)
        if group.error is not None:
            raise group.error
        return group.record

    def settled(self, window: str) -> bool:
        """True when this process has no group of `window` open or being written."""
        with self._lock:
            return window not in self._open and not self._writing.get(window)

    def _write_when_due(self, window: str, group: _Group) -> None:
        while True:
            with self._lock:
                due = group.full or (self._clock() >= group.until and not self._writing.get(window))
                if due:
                    if self._open.get(window) is group:
                        del self._open[window]  # sealed: later requests open the next group
                    self._writing[window] = self._writing.get(window, 0) + 1
                    break
            lingering = group.until - self._clock()
            self._sleep(lingering if lingering > 0 else self._poll)
        try:
            group.record = self._write(window, group.entries)
        except BaseException as exc:  # every request of the group fails with it (and is delivered again)
            group.error = exc
        finally:
            with self._lock:
                left = self._writing[window] - 1
                if left:
                    self._writing[window] = left
                else:
                    del self._writing[window]
            group.done = True
