"""The router against the real emulators: storage events, Pub/Sub push, scheduler calls."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from functions.core.events import StorageObjectEvent
from localcloud import provision
from localcloud.config import LocalConfig
from localcloud.router import PUBLISHED_EVENT_TYPE, Scheduler, StorageEventBridge, retry_delays
from tests.integration.conftest import HttpReceiver


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class RecordedDelays:
    """The bridge's backoff with every wait it asked for written down (and short, for the test)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self) -> Iterator[float]:
        for delay in retry_delays():
            self.asked.append(delay)
            yield delay / 100


@pytest.fixture
def delays() -> RecordedDelays:
    return RecordedDelays()


@pytest.fixture
def bridge_to_receiver(
    pubsub_emulator: str,
    gcs_notifications_topic: str,
    fake_gcs: str,
    local_config: LocalConfig,
    http_receiver: HttpReceiver,
    delays: RecordedDelays,
) -> Iterator[str]:
    """A bridge on a fresh subscription of the notification topic; yields a fresh bucket."""
    subscription = local_config.subscription_path(_unique("router-test"))
    # No retry policy, as `localcloud up` provisions it: the bridge backs off itself.
    provision.create_subscription(pubsub_emulator, subscription, gcs_notifications_topic)
    bucket = _unique("router-test")
    provision.create_bucket(fake_gcs, local_config.project, bucket)
    bridge = StorageEventBridge(pubsub_emulator, subscription, http_receiver.url, delays=delays)
    bridge.start()
    try:
        yield bucket
    finally:
        bridge.stop()


def _upload(fake_gcs: str, bucket: str, name: str, data: bytes) -> None:
    response = requests.post(
        f"{fake_gcs}/upload/storage/v1/b/{bucket}/o",
        params={"uploadType": "media", "name": name},
        data=data,
        headers={"Content-Type": "application/dicom"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_an_upload_reaches_the_function_as_eventarcs_pubsub_trigger_delivers_it(
    bridge_to_receiver: str, fake_gcs: str, gcs_notifications_topic: str, http_receiver: HttpReceiver
) -> None:
    bucket = bridge_to_receiver
    _upload(fake_gcs, bucket, "study/series/IM0001.dcm", b"DICM-bytes")

    (request,) = http_receiver.wait_for(1)
    assert request.method == "POST"
    assert request.headers["ce-specversion"] == "1.0"
    assert request.headers["ce-type"] == PUBLISHED_EVENT_TYPE
    assert request.headers["ce-source"] == f"//pubsub.googleapis.com/{gcs_notifications_topic}"
    assert request.headers["ce-id"]
    assert request.headers["ce-time"].endswith("Z")
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    message = body["message"]
    assert body["subscription"].startswith("projects/") and "/subscriptions/router-test-" in body["subscription"]
    assert message["messageId"] == request.headers["ce-id"]
    assert message["attributes"]["eventType"] == "OBJECT_FINALIZE"
    resource = json.loads(base64.b64decode(message["data"]))
    assert (resource["bucket"], resource["name"], resource["size"]) == (bucket, "study/series/IM0001.dcm", "10")
    # What the import function makes of it: the upload, with the message id as the event id.
    attributes = {"type": request.headers["ce-type"], "id": request.headers["ce-id"],
                  "source": request.headers["ce-source"], "time": request.headers["ce-time"]}
    event = StorageObjectEvent.from_cloud_event(attributes, body)
    assert (event.bucket, event.name, event.size) == (bucket, "study/series/IM0001.dcm", 10)
    assert event.event_id == message["messageId"]
    assert event.event_type == "google.cloud.storage.object.v1.finalized"
    assert event.generation == int(resource["generation"])


def test_a_failed_delivery_is_retried_with_the_same_event_id(
    bridge_to_receiver: str, fake_gcs: str, http_receiver: HttpReceiver
) -> None:
    http_receiver.answer_next(500)  # like a function that crashed: Eventarc redelivers
    _upload(fake_gcs, bridge_to_receiver, "retry/IM0001.dcm", b"DICM")

    first, second = http_receiver.wait_for(2, timeout=20)
    assert first.headers["ce-id"] == second.headers["ce-id"]
    assert first.body == second.body


def test_a_function_that_keeps_failing_is_retried_with_growing_backoff(
    bridge_to_receiver: str, fake_gcs: str, http_receiver: HttpReceiver, delays: RecordedDelays
) -> None:
    # Every instance down for a while (chaos): retries back off instead of storming, as Eventarc's do.
    http_receiver.answer_next(503, 500, 502, 429)
    _upload(fake_gcs, bridge_to_receiver, "backoff/IM0001.dcm", b"DICM")

    calls = http_receiver.wait_for(5, timeout=30)
    assert {c.headers["ce-id"] for c in calls} == {calls[0].headers["ce-id"]}
    assert delays.asked == [0.5, 1.0, 2.0, 4.0]  # one wait before each further try, doubling


def test_retry_delays_double_up_to_a_cap_within_a_budget() -> None:
    assert list(retry_delays(first=1, longest=4, budget=20)) == [1, 2, 4, 4, 4, 4]
    assert sum(retry_delays()) <= 60
    assert list(retry_delays(first=5, longest=10, budget=4)) == []


def test_a_message_on_a_push_subscription_reaches_the_topic_path(
    pubsub_emulator: str, local_config: LocalConfig, http_receiver: HttpReceiver
) -> None:
    topic = local_config.topic_path(_unique("export-requests"))
    provision.create_topic(pubsub_emulator, topic)
    endpoint = f"{http_receiver.url}/{topic}"
    subscription = local_config.subscription_path(_unique("export-push"))
    provision.create_subscription(
        pubsub_emulator,
        subscription,
        topic,
        push_endpoint=endpoint,
        policy=provision.DeliveryPolicy(1, 10, dead_letter_topic=None),
    )
    with provision.publisher(pubsub_emulator) as publisher:
        publisher.publish(topic, b'{"studies": ["1.2.3"]}', origin="test").result(10)

    (request,) = http_receiver.wait_for(1)
    assert request.path == f"/{topic}"
    envelope = json.loads(request.body)
    assert envelope["subscription"] == subscription
    assert base64.b64decode(envelope["message"]["data"]) == b'{"studies": ["1.2.3"]}'
    assert envelope["message"]["attributes"] == {"origin": "test"}


def test_the_scheduler_calls_the_poller_with_cloud_scheduler_headers(http_receiver: HttpReceiver) -> None:
    scheduler = Scheduler(http_receiver.url, interval=0.1)
    scheduler.start()
    try:
        calls = http_receiver.wait_for(2, timeout=5)
    finally:
        scheduler.stop()
    for call in calls:
        assert call.method == "POST"
        assert call.headers["user-agent"] == "Google-Cloud-Scheduler"
        assert call.headers["x-cloudscheduler"] == "true"
        assert call.headers["content-type"] == "application/json"
