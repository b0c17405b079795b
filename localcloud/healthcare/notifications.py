"""Pub/Sub notifications of a DICOM store, published to the Pub/Sub emulator.

Two kinds of configuration, as on Google:
- `notificationConfig` (NotificationConfig): `data` is the instance's resource name, no
  attributes; sent for stored instances, and for imported ones only with `sendForBulkImport`.
- `notificationConfigs[]` (DicomNotificationConfig): the same `data`, plus the attributes
  `action`, `lastUpdatedTime` (RFC 1123), `storeName`, `studyInstanceUID`, `seriesInstanceUID`,
  `sopInstanceUID`, `versionId`, `modality`, `storageClass` (and `previousStorageClass` when the
  storage class changed); sent for every change (store, import, storage class).

Messages are queued and published by one background thread (in order, in batches), so storing an
instance never waits for Pub/Sub. A failed publish is logged (Google logs to Cloud Logging) and
the message dropped after a few tries, as Google drops notifications it cannot deliver.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import requests

from .dicomfile import InstanceInfo

log = logging.getLogger("localcloud.healthcare.notifications")

_BATCH = 500  # messages per publish call (Pub/Sub allows 1,000)
_TRIES = 3


@dataclass(frozen=True)
class StoreNotifications:
    """The topics of one store, from its DicomStore resource."""

    legacy_topic: str | None = None  # notificationConfig.pubsubTopic
    send_for_bulk_import: bool = False
    topics: tuple[str, ...] = ()  # notificationConfigs[].pubsubTopic

    @classmethod
    def from_store(cls, store: dict[str, Any]) -> StoreNotifications:
        legacy = store.get("notificationConfig") or {}
        return cls(
            legacy_topic=legacy.get("pubsubTopic") or None,
            send_for_bulk_import=bool(legacy.get("sendForBulkImport")),
            topics=tuple(c["pubsubTopic"] for c in store.get("notificationConfigs", []) if c.get("pubsubTopic")),
        )

    @property
    def empty(self) -> bool:
        return not self.legacy_topic and not self.topics


@dataclass
class _Counters:
    published: int = 0
    failed: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


class Notifier:
    """Publishes store notifications; `configure` it whenever a store's resource changes."""

    def __init__(self, pubsub_host: str | None = None) -> None:
        self._host = pubsub_host or os.environ.get("PUBSUB_EMULATOR_HOST")
        self._configs: dict[str, StoreNotifications] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._counters = _Counters()
        self._warned_no_host = False
        self._session = requests.Session()

    # --- configuration ---------------------------------------------------------------------------

    def configure(self, store_name: str, store: dict[str, Any]) -> None:
        config = StoreNotifications.from_store(store)
        with self._lock:
            self._configs[store_name] = config

    def forget(self, store_name: str) -> None:
        with self._lock:
            self._configs.pop(store_name, None)

    def config(self, store_name: str) -> StoreNotifications:
        with self._lock:
            return self._configs.get(store_name) or StoreNotifications()

    # --- events ----------------------------------------------------------------------------------

    def instance_stored(self, store_name: str, info: InstanceInfo, storage_class: str, action: str) -> None:
        """A new instance: `action` is StoreInstances (STOW-RS) or ImportDicomData."""
        config = self.config(store_name)
        if config.empty:
            return
        data = f"{store_name}/dicomWeb/studies/{info.study}/series/{info.series}/instances/{info.sop}"
        if config.legacy_topic and (action != "ImportDicomData" or config.send_for_bulk_import):
            self._enqueue(config.legacy_topic, {"data": _b64(data)})
        if config.topics:
            attributes = _attributes(store_name, action, info.study, info.series, info.sop, info.modality)
            attributes["storageClass"] = storage_class
            for topic in config.topics:
                self._enqueue(topic, {"data": _b64(data), "attributes": attributes})

    def storage_class_changed(
        self, store_name: str, study: str, series: str, sop: str, modality: str, previous: str, current: str
    ) -> None:
        """setBlobStorageSettings moved an instance: only notificationConfigs carry this."""
        config = self.config(store_name)
        if not config.topics:
            return
        data = f"{store_name}/dicomWeb/studies/{study}/series/{series}/instances/{sop}"
        attributes = _attributes(store_name, "SetBlobSettings", study, series, sop, modality)
        attributes.update(previousStorageClass=previous, storageClass=current)
        for topic in config.topics:
            self._enqueue(topic, {"data": _b64(data), "attributes": attributes})

    # --- publishing ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "published": self._counters.published,
                "failed": self._counters.failed,
                "pending": self._queue.unfinished_tasks,
                "publishedByTopic": dict(self._counters.by_topic),
            }

    def _enqueue(self, topic: str, message: dict[str, Any]) -> None:
        if not self._host:
            if not self._warned_no_host:
                self._warned_no_host = True
                log.warning("PUBSUB_EMULATOR_HOST is not set: store notifications to %s are dropped", topic)
            return
        self._queue.put((topic, message))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="notifications", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_topic: dict[str, list[dict[str, Any]]] = {}
            for topic, message in batch:
                by_topic.setdefault(topic, []).append(message)
            for topic, messages in by_topic.items():
                self._publish(topic, messages)
            for _ in batch:
                self._queue.task_done()

    def _publish(self, topic: str, messages: list[dict[str, Any]]) -> None:
        url = f"http://{self._host}/v1/{topic}:publish"
        problem = ""
        for attempt in range(_TRIES):
            try:
                response = self._session.post(url, json={"messages": messages}, timeout=30)
            except requests.RequestException as exc:
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    with self._lock:
                        self._counters.published += len(messages)
                        self._counters.by_topic[topic] = self._counters.by_topic.get(topic, 0) + len(messages)
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code in (400, 403, 404):
                    break  # no such topic, or no permission: a retry cannot help
            time.sleep(0.2 * 2**attempt)
        # Google: "If a notification can't be published to Pub/Sub, errors are logged".
        log.warning("could not publish %d store notification(s) to %s: %s", len(messages), topic, problem)
        with self._lock:
            self._counters.failed += len(messages)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _attributes(store_name: str, action: str, study: str, series: str, sop: str, modality: str) -> dict[str, str]:
    now = time.time()
    attributes = {
        "action": action,
        "lastUpdatedTime": formatdate(now, usegmt=True),
        "storeName": store_name,
        "studyInstanceUID": study,
        "seriesInstanceUID": series,
        "sopInstanceUID": sop,
        "versionId": str(int(now * 1_000_000)),
    }
    if modality:
        attributes["modality"] = modality
    return attributes
