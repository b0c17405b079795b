"""Publishes completion events on the completions topic (Pub/Sub; the emulator via PUBSUB_EMULATOR_HOST)."""

from __future__ import annotations

import threading
from typing import Any

from functions.core.errors import PermanentApiError, TransientApiError
from functions.gcp.retry import classify


class Publisher:
    """Lazily creates one PublisherClient per process: its import and channel cost ~0.3 s."""

    def __init__(self, topic: str, *, timeout: float = 60.0) -> None:
        self._topic = topic
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def _publisher(self) -> Any:
        with self._lock:
            if self._client is None:
                import google.cloud.pubsub_v1 as pubsub_v1

                self._client = pubsub_v1.PublisherClient()
            return self._client

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        """Publishes and waits for the server's acknowledgement; returns the message id.

        An error answer becomes our ApiError naming the topic (retry or drop as `classify` says), so
        a missing topic or permission is one clear error line at the boundary.
        """
        try:
            future = self._publisher().publish(self._topic, data, **attributes)
            return str(future.result(timeout=self._timeout))
        except Exception as exc:
            fault = classify(exc)
            if fault.status is None:
                raise  # no answer (a timeout, a dropped channel): as it is
            cls = TransientApiError if fault.retry else PermanentApiError
            raise cls(fault.status, fault.message, status=type(exc).__name__, resource=self._topic) from exc
