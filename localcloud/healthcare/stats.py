"""Counters for `GET /_emulator/stats`: calls per method, object reads by imports, LRO concurrency."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._object_reads: Counter[str] = Counter()
        self._running: set[str] = set()
        self._max_running = 0

    def count_call(self, method: str) -> None:
        with self._lock:
            self._calls[method] += 1

    def count_object_read(self, uri: str) -> None:
        with self._lock:
            self._object_reads[uri] += 1

    def operation_started(self, name: str) -> None:
        with self._lock:
            self._running.add(name)
            self._max_running = max(self._max_running, len(self._running))

    def operation_finished(self, name: str) -> None:
        with self._lock:
            self._running.discard(name)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self._calls),
                "objectReads": dict(self._object_reads),
                "objectsReadMoreThanOnce": {k: n for k, n in self._object_reads.items() if n > 1},
                "maxConcurrentOperations": self._max_running,
                "runningOperations": sorted(self._running),
            }

    def reset(self) -> None:
        """Forget counters; operations still running stay counted as running."""
        with self._lock:
            self._calls.clear()
            self._object_reads.clear()
            self._max_running = len(self._running)
