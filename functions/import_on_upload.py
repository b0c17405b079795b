"""Import on upload: record each new `.dcm` in its debounce window; the window's leader batches it.

Per event, on the normal path: two creates (window record, duplicate marker). The first request
of a process for a window then waits for the window to close and, if this process wrote the
window's smallest record, plans the window's imports (`functions.batching`). So a window is
claimed once, not once per upload, and no shared object is written per event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from functions.batching import WindowBatcher, WindowResult
from functions.clients import ObjectStore
from functions.errors import StaleEventError
from functions.events import StorageObjectEvent
from functions.log import fields
from functions.selection import ignore_reason
from functions.settings import Settings
from functions.windows import object_key, window_close, window_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one event did, for the log line and for tests."""

    action: str  # ignored | duplicate | recorded
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
        window = window_id(event.time_created, self._s.debounce_seconds)
        key = object_key(event.bucket, event.name, event.generation)
        record = self._batcher.window_prefix(window) + f"{key}.json"
        created = self._gcs.create(self._s.state_bucket, record, {}, metadata={
            "bucket": event.bucket, "name": event.name, "generation": str(event.generation),
            "timeCreated": f"{event.time_created.timestamp():.6f}"})
        if not created:
            # Still waiting in its window (a concurrent or earlier delivery, maybe one that crashed
            # right after): the window's leader, or the poller, will take it. Only the record's
            # creator touches the duplicate marker, so two concurrent deliveries cannot each take
            # the other for the duplicate and drop the object.
            return Outcome("duplicate", "already waiting in its window", window)
        first_sighting = self._gcs.create(self._s.state_bucket, self._batcher.seen_path(window, key), b"") is not None
        if not first_sighting:
            # Batched before (its window record is gone): this is a late duplicate.
            self._gcs.delete(self._s.state_bucket, record)
            return Outcome("duplicate", "already batched", window)
        logger.info("upload recorded", extra=fields(object=event.uri, generation=event.generation,
                                                     window=window))
        if not self._windows.add(window, record):
            return Outcome("recorded", window=window)
        return Outcome("recorded", window=window, led=self._wait_and_lead(window))

    def _wait_and_lead(self, window: str) -> WindowResult | None:
        # A late event (its window already closed) still waits one settle period, so a backlog of
        # redelivered events re-leads its window a few times, not once per event.
        delay = max(window_close(window, self._s.debounce_seconds) - self._clock(), 0.0) + self._s.settle_seconds
        self._sleep(delay)
        mine = self._windows.take(window)
        deadline = self._clock() + self._s.claim_lease_seconds
        while True:
            records = sorted(o.name for o in self._gcs.list(self._s.state_bucket,
                                                            self._batcher.window_prefix(window)))
            # The process that wrote the smallest record leads: one claim attempt per window.
            if not records or records[0] not in mine:
                return None
            result = self._batcher.run(window)
            if result.claimed or self._clock() > deadline:
                return result
            # A leader is still planning this window (we are late events): once it lets go of the
            # claim, take what it left, rather than leave it to the poller's lease recovery.
            self._sleep(max(self._s.settle_seconds, 0.5))
