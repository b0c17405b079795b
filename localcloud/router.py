"""Plays Eventarc's Pub/Sub trigger and Cloud Scheduler for the local functions.

- `StorageEventBridge`: the deployment sends uploads as Cloud Storage Pub/Sub notifications to a
  topic of its own, and the import function's Eventarc trigger is a Pub/Sub trigger on that topic
  (docs/decisions/0882). fake-gcs-server publishes the same notifications to the emulator's topic;
  the bridge streams its subscription and POSTs each message to the import function as that trigger
  does: a binary-mode `google.cloud.pubsub.topic.v1.messagePublished` CloudEvent whose data is
  `{"message": {...}, "subscription": ...}`. A 2xx acks the message. Any other answer, or none (no
  live instance), is tried again with exponential backoff; after `RETRY_BUDGET_SECONDS` the message
  is nacked and Pub/Sub redelivers it later. Nacking at once instead turned a moment without live
  instances into thousands of redeliveries a minute (the chaos benchmark).
- `Scheduler`: POSTs to the poller at a fixed interval with Cloud Scheduler's headers.

The Pub/Sub trigger of the export function needs no code: it is a push subscription.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests
from google.cloud.pubsub_v1.subscriber.futures import StreamingPullFuture
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

from localcloud import provision

logger = logging.getLogger(__name__)

PUBLISHED_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
# Eventarc allows a function up to its timeout; a local import may wait out a debounce window.
DELIVERY_TIMEOUT_SECONDS = 300.0
# Concurrent deliveries, like concurrent function instances.
MAX_CONCURRENT_DELIVERIES = 32
# Backoff between tries of one delivery (Eventarc: 10 s doubling to 600 s; scaled down locally,
# like the export push subscription's 1-10 s), and how long one message is tried before its nack.
RETRY_FIRST_DELAY_SECONDS = 0.5
RETRY_MAX_DELAY_SECONDS = 10.0
RETRY_BUDGET_SECONDS = 60.0
SCHEDULER_HEADERS: Mapping[str, str] = {
    "Content-Type": "application/json",
    "User-Agent": "Google-Cloud-Scheduler",
    "X-CloudScheduler": "true",
}


def rfc3339(moment: datetime) -> str:
    """2026-11-27T01:31:03.123456Z, as CloudEvents and Google APIs write times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def published_cloudevent(
    topic: str, subscription: str, message_id: str, data: bytes, attributes: Mapping[str, str],
    publish_time: datetime,
) -> tuple[dict[str, str], bytes]:
    """The binary-mode CloudEvent (headers, body) an Eventarc Pub/Sub trigger delivers for a message."""
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-type": PUBLISHED_EVENT_TYPE,
        "ce-source": f"//pubsub.googleapis.com/{topic}",
        "ce-id": message_id,
        "ce-time": rfc3339(publish_time),
    }
    body = {
        "message": {
            "data": base64.b64encode(data).decode("ascii"),
            "attributes": dict(attributes),
            "messageId": message_id,
            "publishTime": rfc3339(publish_time),
        },
        "subscription": subscription,
    }
    return headers, json.dumps(body).encode()


def retry_delays(
    first: float = RETRY_FIRST_DELAY_SECONDS,
    longest: float = RETRY_MAX_DELAY_SECONDS,
    budget: float = RETRY_BUDGET_SECONDS,
) -> Iterator[float]:
    """Waits before each further try of a delivery: doubling from `first` up to `longest`, for as
    long as their sum stays within `budget`."""
    delay, spent = first, 0.0
    while spent + delay <= budget:
        yield delay
        spent += delay
        delay = min(delay * 2, longest)


class StorageEventBridge:
    """Streaming pull of storage notifications -> messagePublished CloudEvents to `target_url`."""

    def __init__(
        self,
        pubsub_host: str,
        subscription_path: str,
        target_url: str,
        *,
        delays: Callable[[], Iterator[float]] = retry_delays,
    ) -> None:
        self._subscriber = provision.subscriber(pubsub_host)
        self._subscription_path = subscription_path
        self._target_url = target_url
        self._session = requests.Session()
        self._future: StreamingPullFuture | None = None
        self._delays = delays
        self._stopping = threading.Event()  # ends the backoff of deliveries in flight
        self._topic = ""

    def start(self) -> None:
        self._topic = self._subscriber.get_subscription(subscription=self._subscription_path).topic
        executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_DELIVERIES, thread_name_prefix="eventarc")
        self._future = self._subscriber.subscribe(
            self._subscription_path, callback=self._deliver, scheduler=ThreadScheduler(executor)
        )

    def stop(self) -> None:
        self._stopping.set()
        future = self._future
        if future is not None:
            future.cancel()
            future.result(timeout=10)
            self._future = None
        self._subscriber.close()
        # Open keep-alive connections would hold the function's gunicorn worker at shutdown.
        self._session.close()

    def _deliver(self, message: Message) -> None:
        headers, body = published_cloudevent(self._topic, self._subscription_path, message.message_id,
                                             message.data, message.attributes, message.publish_time)
        name = f"gs://{message.attributes.get('bucketId')}/{message.attributes.get('objectId')}"
        delays = self._delays()
        while True:
            status = self._post(message, headers, body, name)
            if status is not None and 200 <= status < 300:
                logger.info("storage event %s for %s: HTTP %s", message.message_id, name, status)
                message.ack()
                return
            delay = next(delays, None)
            if delay is None or self._stopping.wait(delay):
                logger.warning("storage event %s for %s: not delivered yet; nacked, Pub/Sub redelivers it",
                               message.message_id, name)
                message.nack()
                return

    def _post(self, message: Message, headers: dict[str, str], body: bytes, name: str) -> int | None:
        """The function's HTTP status, or None when nothing answered."""
        try:
            response = self._session.post(
                self._target_url, data=body, headers=headers, timeout=DELIVERY_TIMEOUT_SECONDS
            )
        except requests.RequestException as exc:
            logger.warning("storage event %s for %s: delivery failed (%s); will retry",
                           message.message_id, name, type(exc).__name__)
            return None
        if not 200 <= response.status_code < 300:
            logger.warning("storage event %s for %s: HTTP %s; will retry", message.message_id, name,
                           response.status_code)
        return response.status_code


class Scheduler:
    """Calls `target_url` every `interval` seconds from a daemon thread until stopped."""

    def __init__(self, target_url: str, interval: float) -> None:
        self._target_url = target_url
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cloud-scheduler", daemon=True)
        self._session = requests.Session()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=DELIVERY_TIMEOUT_SECONDS)
        # Open keep-alive connections would hold the poller's gunicorn worker at shutdown.
        self._session.close()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                response = self._session.post(
                    self._target_url,
                    data=b"{}",
                    headers=dict(SCHEDULER_HEADERS),
                    timeout=DELIVERY_TIMEOUT_SECONDS,
                )
                level = logging.DEBUG if response.ok else logging.WARNING
                logger.log(level, "scheduler -> %s: HTTP %s", self._target_url, response.status_code)
            except requests.RequestException as exc:
                logger.warning("scheduler -> %s: %s", self._target_url, exc)


class Router:
    """The bridge and the scheduler, for whichever of their targets exist."""

    def __init__(
        self,
        pubsub_host: str,
        notifications_subscription: str,
        *,
        import_url: str | None,
        poll_url: str | None,
        poll_interval: float,
    ) -> None:
        self._parts: list[StorageEventBridge | Scheduler] = []
        if import_url:
            self._parts.append(StorageEventBridge(pubsub_host, notifications_subscription, import_url))
        if poll_url:
            self._parts.append(Scheduler(poll_url, poll_interval))

    def start(self) -> None:
        for part in self._parts:
            part.start()

    def stop(self) -> None:
        for part in reversed(self._parts):
            part.stop()
