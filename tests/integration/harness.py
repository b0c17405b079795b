"""A fresh, isolated deployment per test on the session's emulators, and ways to drive it.

Each `Deployment` has its own buckets, dataset, DICOM store and completions topic, so tests do
not see each other's objects or events. Events are built from the real uploaded objects
(generation, timeCreated) exactly as Eventarc would deliver them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
import requests
from google.cloud import storage

from functions.core.events import StorageObjectEvent
from functions.gcp.gcs import Gcs
from functions.imports.import_on_upload import ImportOnUpload
from functions.imports.poll_operations import Poller
from functions.settings import Settings
from functions.wiring import Deps
from tests.contracts import validate_completion_message

PROJECT = "local-project"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str | Callable[[], str] = "") -> Any:
    """Polls `condition` until it returns something truthy; fails the test with `what` (a string, or a
    function that describes the state at the time) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {described or condition}")
        time.sleep(interval)


class CountingGcs(Gcs):
    """Real Cloud Storage calls, counted per object name and second (the emulator has no write limit)."""

    def __init__(self, inner: Gcs) -> None:
        super().__init__(inner._client, timeout=inner._timeout)
        self.writes: list[tuple[str, float]] = []
        self.calls = 0

    def _count(self, name: str, write: bool) -> None:
        self.calls += 1
        if write:
            self.writes.append((name, time.monotonic()))

    def create(self, bucket: str, name: str, data: Any, metadata: dict[str, str] | None = None) -> int | None:
        self._count(name, True)
        return super().create(bucket, name, data, metadata)

    def replace(self, bucket: str, name: str, data: dict[str, Any], generation: int) -> int | None:
        self._count(name, True)
        return super().replace(bucket, name, data, generation)

    def write(self, bucket: str, name: str, data: Any) -> None:
        self._count(name, True)
        super().write(bucket, name, data)

    def delete(self, bucket: str, name: str, generation: int | None = None) -> bool:
        self._count(name, True)
        return super().delete(bucket, name, generation)

    def read(self, bucket: str, name: str) -> Any:
        self._count(name, False)
        return super().read(bucket, name)

    def list(self, *args: Any, **kwargs: Any) -> Any:
        self._count("<list>", False)
        return super().list(*args, **kwargs)

    def max_writes_per_second(self) -> tuple[int, str]:
        """The most writes any one object name got within one second, and which name."""
        per_name: dict[str, list[float]] = {}
        for name, at in self.writes:
            per_name.setdefault(name, []).append(at)
        best = (0, "")
        for name, times in per_name.items():
            times.sort()
            start = 0
            for end, moment in enumerate(times):
                while moment - times[start] >= 1.0:
                    start += 1
                best = max(best, (end - start + 1, name))
        return best


@dataclass
class Deployment:
    """One isolated pipeline deployment on the emulators."""

    settings: Settings
    healthcare_url: str
    upload_bucket: str
    export_bucket: str
    completions_subscription: str
    storage_client: storage.Client
    deps: Deps
    seen_event_ids: set[str] = field(default_factory=set)  # every eventId pulled from the completions topic
    poll_summaries: list[Any] = field(default_factory=list)

    @classmethod
    def create(cls, healthcare_url: str, **overrides: Any) -> Deployment:
        suffix = uuid.uuid4().hex[:10]
        client = storage.Client(project=PROJECT)
        upload, export, state = f"upload-{suffix}", f"export-{suffix}", f"state-{suffix}"
        for name in (upload, export, state):
            client.create_bucket(name)
        dataset = f"projects/{PROJECT}/locations/us-central1/datasets/ds-{suffix}"
        _ok(requests.post(f"{healthcare_url}/v1/projects/{PROJECT}/locations/us-central1/datasets",
                          params={"datasetId": f"ds-{suffix}"}, json={}, timeout=10))
        _ok(requests.post(f"{healthcare_url}/v1/{dataset}/dicomStores", params={"dicomStoreId": "store"},
                          json={}, timeout=10))
        topic = f"projects/{PROJECT}/topics/completions-{suffix}"
        subscription = f"projects/{PROJECT}/subscriptions/completions-{suffix}"
        pubsub_v1.PublisherClient().create_topic(name=topic)
        pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
        settings = Settings(
            dicom_store=f"{dataset}/dicomStores/store", state_bucket=state, completion_topic=topic,
            healthcare_api_url=healthcare_url, debounce_seconds=1.0, settle_seconds=0.3,
            claim_lease_seconds=3.0, retry_deadline_seconds=10.0, http_timeout_seconds=20.0,
            export_allowed_destinations=(f"gs://{export}",),
        )
        settings = replace(settings, **overrides)
        return cls(settings, healthcare_url, upload, export, subscription, client, Deps.from_settings(settings))

    # -- driving -----------------------------------------------------------------------------
    def counting(self) -> CountingGcs:
        """Swaps in a call-counting Cloud Storage gateway for every component."""
        counting = CountingGcs(self.deps.gcs)
        self.deps = Deps.from_settings(self.settings)
        object.__setattr__(self.deps, "gcs", counting)
        from functions.imports.job_queue import JobQueue
        from functions.imports.window_batcher import WindowBatcher

        queue = JobQueue(self.settings, counting, self.deps.healthcare)
        object.__setattr__(self.deps, "queue", queue)
        object.__setattr__(self.deps, "batcher", WindowBatcher(self.settings, counting, queue))
        return counting

    def stream_to(self, table: str) -> None:
        """Gives the store a `streamConfigs` entry to BigQuery table `project.dataset.table` (its
        dataset must exist): every instance stored from now on becomes a row there."""
        url = f"{self.healthcare_url}/v1/{self.settings.dicom_store}"
        body = {"streamConfigs": [{"bigqueryDestination": {"tableUri": f"bq://{table}"}}]}
        _ok(requests.patch(url, params={"updateMask": "streamConfigs"}, json=body, timeout=10))

    def handler(self) -> ImportOnUpload:
        return ImportOnUpload(self.settings, self.deps.gcs, self.deps.batcher)

    def poller(self) -> Poller:
        d = self.deps
        return Poller(self.settings, d.gcs, d.healthcare, d.queue, d.batcher, d.publisher)

    def upload(self, name: str, data: bytes, bucket: str | None = None) -> StorageObjectEvent:
        """Uploads and returns the finalize event Eventarc would deliver for it."""
        blob = self.storage_client.bucket(bucket or self.upload_bucket).blob(name)
        blob.upload_from_string(data)
        return event_for(blob)

    def emulator(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """Calls the emulator's control API (`/_emulator/...`)."""
        url = f"{self.healthcare_url}/_emulator/{path}"
        response = requests.post(url, json=body, timeout=10) if body is not None else requests.get(url, timeout=10)
        _ok(response)
        return response.json() if response.content else None

    def pull_completions(self, expected: int, timeout: float = 60.0, *, poll: bool = True) -> list[dict[str, Any]]:
        """Runs the poller until `expected` completion events arrived; returns them (data + attributes).

        Only for work whose number of events does not depend on timing (one upload, one export
        request); for batches use `completions_until_quiet`.
        """
        subscriber = pubsub_v1.SubscriberClient()
        events: list[dict[str, Any]] = []

        def more() -> bool:
            if poll:
                self.poller().run()
            events.extend(self._pull(subscriber))
            return len(events) >= expected

        wait_for(more, timeout=timeout, interval=0.3, what=f"{expected} completion events (got {len(events)})")
        return events

    def completions_until_quiet(self, timeout: float = 60.0,
                                until: Callable[[list[dict[str, Any]]], bool] | None = None) -> list[dict[str, Any]]:
        """Runs the poller until no import or export work is left, and returns every completion event
        published meanwhile (a republished one as often as it came).

        How many windows, imports and events an upload makes depends on timing; this does not:
        quiet means no window record, no job and no tracked operation (read in that order: each is
        deleted only after the next exists), and every event the poller recorded in `done/` has
        arrived (now or in an earlier call). `until`, if given, must hold for the events as well.
        """
        subscriber = pubsub_v1.SubscriberClient()
        events: list[dict[str, Any]] = []

        def done() -> bool:
            self.poll_summaries.append(self.poller().run())
            events.extend(self._pull(subscriber))
            if any(self.state_objects(prefix) for prefix in ("windows/", "jobs/", "operations/")):
                return False
            bucket = self.storage_client.bucket(self.settings.state_bucket)
            reported = {json.loads(bucket.blob(name).download_as_bytes())["eventId"]
                        for name in self.state_objects("done/")}
            return reported <= self.seen_event_ids and (until is None or until(events))

        def state() -> str:
            left = {p: self.state_objects(p) for p in ("windows/", "claims/", "jobs/", "slots/", "operations/")}
            return (f"the pipeline to go quiet: left {({p: n for p, n in left.items() if n})}, "
                    f"{len(events)} events, last poll {self.poll_summaries[-1] if self.poll_summaries else None}")

        wait_for(done, timeout=timeout, interval=0.3, what=state)
        return events

    def _pull(self, subscriber: Any) -> list[dict[str, Any]]:
        response = subscriber.pull(subscription=self.completions_subscription, max_messages=100,
                                   timeout=5, return_immediately=True)
        if response.received_messages:
            subscriber.acknowledge(subscription=self.completions_subscription,
                                   ack_ids=[m.ack_id for m in response.received_messages])
        pulled = []
        for received in response.received_messages:
            event = validate_completion_message(received.message.data, received.message.attributes)
            event["_attributes"] = dict(received.message.attributes)
            pulled.append(event)
            self.seen_event_ids.add(str(event.get("eventId")))
        return pulled

    def stored_instances(self) -> list[dict[str, Any]]:
        """QIDO-RS instances search over the whole store."""
        url = f"{self.healthcare_url}/v1/{self.settings.dicom_store}/dicomWeb/instances"
        response = requests.get(url, params={"limit": "5000"}, timeout=10)
        _ok(response)
        return response.json() if response.content.strip() else []

    def state_objects(self, prefix: str) -> list[str]:
        return [b.name for b in self.storage_client.list_blobs(self.settings.state_bucket,
                                                               prefix=self.settings.state_path(prefix))]


def event_for(blob: storage.Blob) -> StorageObjectEvent:
    attributes = {"id": uuid.uuid4().hex, "type": "google.cloud.storage.object.v1.finalized",
                  "source": f"//storage.googleapis.com/projects/_/buckets/{blob.bucket.name}",
                  "subject": f"objects/{blob.name}", "time": blob.time_created.isoformat()}
    data = {"bucket": blob.bucket.name, "name": blob.name, "generation": str(blob.generation),
            "size": str(blob.size), "timeCreated": blob.time_created.isoformat()}
    return StorageObjectEvent.from_cloud_event(attributes, data)


def deliver_all(handler: ImportOnUpload, events: Iterable[StorageObjectEvent], threads: int = 16) -> list[Any]:
    """Delivers events concurrently, as a function instance with request concurrency would."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(handler.handle, events))


def upload_and_deliver(d: Deployment, files: Iterable[tuple[str, bytes]], threads: int = 16
                       ) -> tuple[list[StorageObjectEvent], list[Any]]:
    """Uploads files one after another and delivers each event as soon as its object exists."""
    from concurrent.futures import ThreadPoolExecutor

    handler = d.handler()
    events, futures = [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for name, data in files:
            event = d.upload(name, data)
            events.append(event)
            futures.append(pool.submit(handler.handle, event))
        return events, [f.result() for f in futures]


def distinct(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One event per eventId (consumers drop republished copies by it)."""
    return list({e["eventId"]: e for e in events}.values())


def successes(events: Iterable[dict[str, Any]]) -> int:
    """Instances the operations reported done, each event counted once. For imports: the uploads,
    plus any older object a planned glob read again."""
    return sum(e["counters"]["success"] for e in distinct(events))


def windows_of(d: Deployment, events: Iterable[StorageObjectEvent]) -> set[str]:
    from functions.core.windows import window_id

    return {window_id(e.time_created, d.settings.debounce_seconds) for e in events}


def _ok(response: requests.Response) -> None:
    if response.status_code >= 400:
        request = f"{response.request.method} {response.url}"
        raise AssertionError(f"{request} -> {response.status_code} {response.text[:300]}")


# -- export and entry-point helpers (appended for tests/integration/test_export_pipeline.py and
# test_entry_points.py) ----------------------------------------------------------------------------


def pubsub_message(data: bytes, *, message_id: str | None = None, publish_time: str | None = None,
                   topic: str = f"projects/{PROJECT}/topics/export-requests") -> Any:
    """A `PubsubMessage` built exactly as the export function builds it from a messagePublished event."""
    import base64
    from datetime import UTC, datetime

    from functions.core.events import PUBSUB_PUBLISHED, PubsubMessage

    message_id = message_id or str(uuid.uuid4().int)[:16]
    publish_time = publish_time or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    attributes = {"id": message_id, "type": PUBSUB_PUBLISHED, "specversion": "1.0",
                  "source": f"//pubsub.googleapis.com/{topic}", "time": publish_time}
    payload = {"message": {"data": base64.b64encode(data).decode(), "messageId": message_id,
                           "publishTime": publish_time, "attributes": {}},
               "subscription": f"projects/{PROJECT}/subscriptions/export-requests"}
    return PubsubMessage.from_cloud_event(attributes, payload)


def export_handler(d: Deployment) -> Any:
    """The export function's handler on the deployment's clients."""
    from functions.exports.export_on_message import ExportOnMessage

    return ExportOnMessage.from_deps(d.deps)


def stow(d: Deployment, instances: Iterable[bytes]) -> None:
    """Stores Part 10 instances with STOW-RS on the emulator's DICOMweb endpoint."""
    from localcloud.healthcare.multipart import encode

    body, content_type = encode(list(instances), "application/dicom")
    url = f"{d.healthcare_url}/v1/{d.settings.dicom_store}/dicomWeb/studies"
    _ok(requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30))


def bucket_objects(d: Deployment, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """name -> bytes of every object under `prefix` in `bucket`."""
    return {b.name: b.download_as_bytes() for b in d.storage_client.list_blobs(bucket, prefix=prefix or None)}


def emulator_calls(d: Deployment, method: str) -> int:
    """How many calls of `method` the Healthcare emulator answered (faulted ones included)."""
    return int(d.emulator("stats")["calls"].get(method, 0))


def clear_faults(d: Deployment) -> None:
    _ok(requests.delete(f"{d.healthcare_url}/_emulator/faults", timeout=10))


def no_more_completions(d: Deployment, rounds: int = 3) -> list[dict[str, Any]]:
    """Runs the poller `rounds` more times and returns any completion event that still arrives."""
    subscriber = pubsub_v1.SubscriberClient()
    extra: list[dict[str, Any]] = []
    for _ in range(rounds):
        d.poller().run()
        response = subscriber.pull(subscription=d.completions_subscription, max_messages=100, timeout=5,
                                   return_immediately=True)
        if response.received_messages:
            subscriber.acknowledge(subscription=d.completions_subscription,
                                   ack_ids=[m.ack_id for m in response.received_messages])
        extra.extend(validate_completion_message(m.message.data, m.message.attributes)
                     for m in response.received_messages)
    return extra


def function_env(d: Deployment, target: str) -> dict[str, str]:
    """The environment variables `infra/` would give function `target` for this deployment."""
    s = d.settings
    env = {
        "FUNCTION_TARGET": target,
        "DICOM_STORE": s.dicom_store,
        "DICOM_STATE_BUCKET": s.state_bucket,
        "HEALTHCARE_API_URL": s.healthcare_api_url,
        "DICOM_MAX_CONCURRENT_OPERATIONS": str(s.max_concurrent_operations),
        "DICOM_CLAIM_LEASE_SECONDS": str(s.claim_lease_seconds),
        "DICOM_HTTP_TIMEOUT_SECONDS": str(s.http_timeout_seconds),
        "DICOM_RETRY_DEADLINE_SECONDS": str(s.retry_deadline_seconds),
        "DICOM_DEBOUNCE_SECONDS": str(s.debounce_seconds),
        "DICOM_SETTLE_SECONDS": str(s.settle_seconds),
        "DICOM_IMPORT_COALESCE_SECONDS": str(s.import_coalesce_seconds),
        "DICOM_COMPLETION_TOPIC": s.completion_topic,
        "DICOM_EXPORT_ALLOWED_DESTINATIONS": ",".join(s.export_allowed_destinations),
        "LOG_LEVEL": s.log_level,
    }
    if s.state_prefix:
        env["DICOM_STATE_PREFIX"] = s.state_prefix
    return env
