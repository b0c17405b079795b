"""Import on upload: record each new `.dcm` in its debounce window; the window's leader batches it.

Per event, on the normal path: a share of one create, the window record that lists the uploads of
this process's concurrent requests for the window (a group commit, `RecordGroups`, decision 0770);
the request answers once that record is written. The first request of a process for a window then
waits for the window to close and, if this process wrote the window's smallest record, plans the
window's imports (`WindowBatcher.lead_if_first`). So a window is claimed once, not once per upload,
and fewer than one object is written per event. The handler filters, drops stale events and waits; the rules of the
protocol are the batcher's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from functions.core.errors import StaleEventError
from functions.core.events import StorageObjectEvent
from functions.core.selection import ignore_reason
from functions.core.windows import window_close
from functions.gcp.clients import ObjectStore
from functions.imports import record_groups
from functions.imports.record_groups import RecordGroups
from functions.imports.window_batcher import WindowBatcher, WindowResult
from functions.imports.window_records import Entry
from functions.log import fields
from functions.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one event did, for the log line and for tests."""

    action: str  # ignored | duplicate (already batched) | recorded
    reason: str = ""
    window: str = ""
    led: WindowResult | None = None


class _ProcessWindows:
    """Records this process wrote, per window; the first writer of a window waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mine: dict[str, set[str]] = {}

    def add(self, window: str, record: str) -> bool:
        """Remembers the record; True when the caller is the first of this process (the waiter)."""
        with self._lock:
            first = window not in self._mine
            self._mine.setdefault(window, set()).add(record)
            return first

    def take(self, window: str) -> set[str]:
        with self._lock:
            return self._mine.pop(window, set())


class ImportOnUpload:
    """The finalize handler. One instance per process, shared by concurrent requests."""

    def __init__(self, settings: Settings, gcs: ObjectStore, batcher: WindowBatcher,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self._s = settings
        self._gcs = gcs
        self._batcher = batcher
        self._clock = clock
        self._sleep = sleep
        self._windows = _ProcessWindows()
        self._groups = RecordGroups(batcher.record, clock, sleep)

    def handle(self, event: StorageObjectEvent) -> Outcome:
        """Records the upload; may lead its window.

        Raises:
            StaleEventError: the event is older than DICOM_MAX_EVENT_AGE_SECONDS.
        """
        reason = ignore_reason(event, self._s)
        if reason:
            logger.debug("object ignored", extra=fields(object=event.uri, reason=reason))
            return Outcome("ignored", reason)
        sent = event.event_time or event.time_created
        if self._clock() - sent.timestamp() > self._s.max_event_age_seconds:
            raise StaleEventError(f"event for {event.uri} is older than {self._s.max_event_age_seconds:.0f} s")
        window = self._batcher.window_of(event)
        entry = Entry.of(event)
        # A duplicate delivery is recorded again (in another group): the window's leader plans each
        # upload once, and one batched before not at all (decision 0004).
        record = self._groups.record(window, entry)
        logger.info("upload recorded", extra=fields(object=event.uri, generation=event.generation,
                                                     window=window, record=record))
        if not self._windows.add(window, record):
            return Outcome("recorded", window=window)
        led = self._wait_and_lead(window)
        if led is not None and entry.key in led.batched_before:
            return Outcome("duplicate", "already batched", window, led)
        return Outcome("recorded", window=window, led=led)

    def _wait_and_lead(self, window: str) -> WindowResult | None:
        # A late event (its window already closed) still waits one settle period, so a backlog of
        # redelivered events re-leads its window a few times, not once per event.
        delay = max(window_close(window, self._s.debounce_seconds) - self._clock(), 0.0) + self._s.settle_seconds
        self._sleep(delay)
        # A group of this process still lingering or being written (an event from the window's last
        # moments) is taken along: written after `take`, its request would lead the window a second
        # time, the claim's name written again within a second of its deletion. Bounded by a lease:
        # a write that hangs longer leads on its own, as a late event does.
        waited_until = self._clock() + self._s.claim_lease_seconds
        while not self._groups.settled(window) and self._clock() < waited_until:
            self._sleep(record_groups.POLL_SECONDS)
        mine = self._windows.take(window)
        deadline = self._clock() + self._s.claim_lease_seconds
        while True:
            result = self._batcher.lead_if_first(window, mine)
            if result is None:
                return None
            if result.claimed or self._clock() > deadline:
                return result
            # A leader is still planning this window (we are late events): once it lets go of the
            # claim, take what it left, rather than leave it to the poller's lease recovery.
            self._sleep(max(self._s.settle_seconds, 0.5))
