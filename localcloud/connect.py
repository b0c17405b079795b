"""The CLI's clients of one deployment: a real project or a running local cloud, one code path.

A `Connection` is built from a `Deployment` (localcloud.deployment). The only difference between
a real project and the local cloud is where the clients point and with what credentials: Google's
endpoints with the application default credentials (`google.auth.default()`), or the emulators'
endpoints with anonymous credentials. Everything else (names, state layout, the import function's
settings) comes from the deployment description. `LocalCloud` is a Connection to the stack
running for a state folder (`STATE_DIR/endpoints.json`).

Completion events an `export`, `ingest` or `redrive` waits for are read from a private pull
subscription (`EventStream`) that the command creates on the completion topic before it uploads
or publishes anything, and deletes when it is done (it expires by itself a day after its last use
if the command is killed). The deployment's durable subscription (`completion_subscription`) is
only pulled by `events`: a command that acked the events it does not want from a shared
subscription would take them away from whoever else reads it. Every published event is also kept
in the state bucket (`done/{event}.json`), which `status` and `events --since` read.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import google.auth
import google.cloud.pubsub_v1 as pubsub_v1
import grpc
import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage import Blob
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from functions.gcp.gcs import Gcs
from functions.settings import DEFAULT_HEALTHCARE_API_URL, Settings
from localcloud.config import IMPORT_TARGET, LocalConfig
from localcloud.deployment import Deployment
from localcloud.stack import read_endpoints

NOT_RUNNING = "no local cloud is running for {state_dir}; start one with: python -m localcloud up"
GOOGLE_STORAGE_URL = "https://storage.googleapis.com"
GOOGLE_PUBSUB_HOST = "pubsub.googleapis.com"
GOOGLE_BIGQUERY_URL = "https://bigquery.googleapis.com"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_HTTP_TIMEOUT = 30.0
PULL_BATCH = 100  # messages per pull
# A private event subscription of a command that was killed goes away by itself after this long
# unused (Pub/Sub's minimum expiration), and keeps what it got for this long (its minimum).
_PRIVATE_EXPIRATION_SECONDS = 24 * 3600
_PRIVATE_RETENTION_SECONDS = 600
# How many dead letters `backlog` counts at most (each is pulled and handed back).
BACKLOG_LIMIT = 1000

# The Pub/Sub emulator honours return_immediately (an empty pull would block otherwise). Google's
# service discourages it (pulls may then come back empty while messages wait): there a pull waits
# up to this long for a message instead, and an empty wait ends as DeadlineExceeded.
warnings.filterwarnings("ignore", "The return_immediately flag is deprecated", DeprecationWarning)
_GOOGLE_PULL_WAIT_SECONDS = 2.0


class NotRunningError(RuntimeError):
    """No stack runs for this state folder; the message says how to start one."""


class Connection:
    """Clients of one deployment, made on first use. Close it (or use `with`)."""

    def __init__(self, deployment: Deployment, credentials: Credentials | None = None) -> None:
        self.deployment = deployment
        self._credentials = credentials
        self._storage: storage.Client | None = None
        self._http: requests.Session | None = None
        self._settings: Settings | None = None

    # -- names -----------------------------------------------------------------------------
    @property
    def project(self) -> str:
        return self.deployment.project

    @property
    def upload_bucket(self) -> str:
        return self.deployment.upload_bucket

    @property
    def export_bucket(self) -> str:
        return self.deployment.export_bucket

    @property
    def state_bucket(self) -> str:
        return self.deployment.state_bucket

    @property
    def dicom_store(self) -> str:
        return self.deployment.dicom_store

    @property
    def stream_table(self) -> str | None:
        """`project.dataset.table` the local store streams its instances to; None when the stack
        was started with `--no-stream` (or for a real project: its SQL names its own table)."""
        return self.deployment.stream_table

    @property
    def healthcare_url(self) -> str:
        if self.deployment.emulators is not None:
            return self.deployment.emulators.healthcare
        return self.import_settings().healthcare_api_url or DEFAULT_HEALTHCARE_API_URL

    # -- credentials and clients -----------------------------------------------------------
    @property
    def credentials(self) -> Credentials:
        """Anonymous for the emulators; the application default credentials for Google."""
        if self._credentials is None:
            if self.deployment.emulators is not None:
                self._credentials = AnonymousCredentials()
            else:
                found, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
                self._credentials = found
        return self._credentials

    @property
    def storage(self) -> storage.Client:
        if self._storage is None:
            emulators = self.deployment.emulators
            # An explicit endpoint also for Google: STORAGE_EMULATOR_HOST in the operator's shell
            # must not send a real deployment's commands to an emulator.
            endpoint = emulators.storage if emulators is not None else GOOGLE_STORAGE_URL
            self._storage = storage.Client(project=self.project, credentials=self.credentials,
                                           client_options={"api_endpoint": endpoint})
        return self._storage

    @property
    def http(self) -> requests.Session:
        """For the Healthcare API's DICOMweb (QIDO-RS): authorized for Google, plain for the emulator."""
        if self._http is None:
            self._http = requests.Session() if self.deployment.emulators is not None \
                else AuthorizedSession(self.credentials)
        return self._http

    @property
    def gcs(self) -> Gcs:
        return Gcs(self.storage, timeout=_HTTP_TIMEOUT)

    def publisher(self) -> pubsub_v1.PublisherClient:
        """A new publisher; the caller closes it (`with`): open gRPC channels delay the exit."""
        emulators = self.deployment.emulators
        if emulators is not None:
            channel = grpc.insecure_channel(emulators.pubsub)
            return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(host=emulators.pubsub, channel=channel))
        # An explicit transport: PUBSUB_EMULATOR_HOST must not redirect a real deployment either.
        return pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(host=GOOGLE_PUBSUB_HOST, credentials=self.credentials))

    def subscriber(self) -> pubsub_v1.SubscriberClient:
        emulators = self.deployment.emulators
        if emulators is not None:
            channel = grpc.insecure_channel(emulators.pubsub)
            return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(host=emulators.pubsub, channel=channel))
        return pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(host=GOOGLE_PUBSUB_HOST, credentials=self.credentials))

    def bigquery(self) -> Any:
        """A BigQuery client (the caller closes it)."""
        from google.cloud import bigquery as bq  # only the commands that query load it

        emulators = self.deployment.emulators
        endpoint = emulators.bigquery if emulators is not None else GOOGLE_BIGQUERY_URL
        return bq.Client(project=self.project, credentials=self.credentials,
                         client_options={"api_endpoint": endpoint})

    def import_settings(self, config: LocalConfig | None = None) -> Settings:
        """The import function's settings, from the deployment's description of its environment."""
        if config is not None:
            return _local_settings(self.deployment, config)
        if self._settings is None:
            self._settings = self.deployment.import_settings()
        return self._settings

    def state_path(self, *parts: str) -> str:
        """An object name in the state bucket, under the functions' DICOM_STATE_PREFIX."""
        return self.import_settings().state_path(*parts)

    def state_objects(self, folder: str) -> list[Blob]:
        """The state bucket's objects under `folder/`, newest first (by update time)."""
        blobs = list(self.storage.list_blobs(self.state_bucket, prefix=self.state_path(folder) + "/",
                                             timeout=_HTTP_TIMEOUT))
        return sorted(blobs, key=lambda b: (b.updated is not None, b.updated, b.name), reverse=True)

    def read_state(self, blob: Blob) -> dict[str, Any] | None:
        """A JSON state object; None when it is gone or not a JSON object."""
        try:
            data = json.loads(blob.download_as_bytes(timeout=_HTTP_TIMEOUT))
        except (gexc.NotFound, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def search(self, level: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """QIDO-RS on the store; an unknown study or series (404) is an empty answer."""
        url = f"{self.healthcare_url}/v1/{self.dicom_store}/dicomWeb/{level}"
        response = self.http.get(url, params=dict(params), timeout=_HTTP_TIMEOUT,
                                 headers={"Accept": "application/dicom+json"})
        if response.status_code == 404:
            return []
        response.raise_for_status()
        if response.status_code == 204 or not response.content.strip():
            return []
        result: list[dict[str, Any]] = response.json()
        return result

    def streamed_instances(self) -> int:
        """Distinct instances in the stream table so far; 0 before the first row created it.

        The store streams in the background after an instance is stored, so a caller that wants
        to query what it just imported waits for this count first.
        """
        from localcloud import bigquery  # google-cloud-bigquery only for the commands that query

        if self.stream_table is None:
            return 0
        table = ".".join(bigquery.quote_identifier(part) for part in self.stream_table.split("."))
        client = self.bigquery()
        try:
            rows = client.query(f"SELECT COUNT(DISTINCT SOPInstanceUID) AS n FROM {table}").result()
            return int(next(iter(rows)).n)
        except gexc.NotFound:
            return 0
        finally:
            client.close()

    def instance_stored(self, study: str, series: str, instance: str) -> bool:
        level = f"studies/{study}/series/{series}/instances"
        return bool(self.search(level, {"SOPInstanceUID": instance}))

    @contextmanager
    def event_stream(self) -> Iterator[EventStream]:
        """A private subscription on the completion topic, for the lifetime of the block."""
        subscription = f"projects/{self.project}/subscriptions/dicom-events-cli-{uuid.uuid4().hex[:12]}"
        with self.subscriber() as client:
            client.create_subscription(request={
                "name": subscription, "topic": self.deployment.completion_topic, "ack_deadline_seconds": 60,
                "message_retention_duration": {"seconds": _PRIVATE_RETENTION_SECONDS},
                "expiration_policy": {"ttl": {"seconds": _PRIVATE_EXPIRATION_SECONDS}},
            })
            try:
                yield EventStream(client, subscription, emulated=self.deployment.is_local)
            finally:
                try:
                    client.delete_subscription(subscription=subscription, timeout=10)
                except gexc.GoogleAPICallError:
                    pass  # it expires by itself (and the emulator forgets it when it stops)

    @contextmanager
    def durable_events(self) -> Iterator[EventStream]:
        """The deployment's own pull subscription on the completion topic (`events`)."""
        subscription = self.deployment.completion_subscription
        if not subscription:
            raise gexc.NotFound(f"{self.deployment.origin} names no completion subscription "
                                "(infra/ output completion_subscription)")
        with self.subscriber() as client:
            yield EventStream(client, subscription, emulated=self.deployment.is_local)

    def backlog(self, subscription: str, limit: int = BACKLOG_LIMIT) -> int:
        """Messages waiting in `subscription` (counted up to `limit`), left there for their reader.

        Pub/Sub has no peek and no count without Cloud Monitoring: the messages are pulled,
        held until no pull returns more (or `limit` is reached), then handed back at once (ack
        deadline 0), so they are redelivered as if never pulled. A pull may return fewer messages
        than are waiting, so on Google's service this is a lower bound; the Monitoring metric
        `num_undelivered_messages` (the dead-letter alert of infra/monitoring.tf) is the exact
        count, a minute or two late. Meant for subscriptions nobody pushes from, such as the
        dead-letter one.
        """
        ack_ids: list[str] = []
        with self.subscriber() as client:
            stream = EventStream(client, subscription, emulated=self.deployment.is_local)
            try:
                while len(ack_ids) < limit:
                    batch = [m.ack_id for m in stream.pull_messages(min(PULL_BATCH, limit - len(ack_ids)))]
                    if not batch:
                        break
                    ack_ids.extend(batch)
            finally:
                for start in range(0, len(ack_ids), PULL_BATCH):
                    client.modify_ack_deadline(subscription=subscription, ack_ids=ack_ids[start:start + PULL_BATCH],
                                               ack_deadline_seconds=0)
        return len(ack_ids)

    def publish(self, topic: str, data: bytes) -> str:
        with self.publisher() as client:
            return str(client.publish(topic, data).result(timeout=30))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._storage is not None:
            self._storage.close()
            self._storage = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local_settings(deployment: Deployment, config: LocalConfig) -> Settings:
    emulators = deployment.emulators
    if emulators is None:
        raise ValueError("a LocalConfig describes a local cloud only")
    env = dict(deployment.import_environment)
    env.update(config.function_env(IMPORT_TARGET, storage=emulators.storage, pubsub=emulators.pubsub,
                                   healthcare=emulators.healthcare, bigquery=emulators.bigquery))
    env.update(DICOM_STORE=deployment.dicom_store, DICOM_STATE_BUCKET=deployment.state_bucket)
    return Settings.from_env(env, IMPORT_TARGET)


class LocalCloud(Connection):
    """A Connection to a running local cloud, from its endpoints.json content."""

    def __init__(self, endpoints: Mapping[str, Any]) -> None:
        self.endpoints = dict(endpoints)
        super().__init__(Deployment.from_local_endpoints(self.endpoints))

    @classmethod
    def find(cls, state_dir: Path) -> LocalCloud:
        """The stack running for `state_dir`; raises NotRunningError when there is none."""
        endpoints = read_endpoints(Path(state_dir))
        if endpoints is None:
            raise NotRunningError(NOT_RUNNING.format(state_dir=state_dir))
        return cls(endpoints)

    def __enter__(self) -> LocalCloud:
        return self


class EventStream:
    """Completion events published since the stream opened, pulled and acknowledged in batches."""

    def __init__(self, client: Any, subscription: str, *, emulated: bool = True) -> None:
        self._client = client
        self.subscription = subscription
        self._emulated = emulated

    def pull_messages(self, max_messages: int = PULL_BATCH) -> list[Any]:
        """The received messages of one pull, not acknowledged; [] when none came."""
        if self._emulated:
            response = self._client.pull(subscription=self.subscription, max_messages=max_messages, timeout=10,
                                         return_immediately=True)
            return list(response.received_messages)
        try:
            response = self._client.pull(subscription=self.subscription, max_messages=max_messages,
                                         timeout=_GOOGLE_PULL_WAIT_SECONDS, retry=None)
        except gexc.DeadlineExceeded:
            return []
        return list(response.received_messages)

    def pull(self) -> list[dict[str, Any]]:
        """What arrived so far (maybe nothing; it does not block). Undecodable messages are dropped."""
        received = self.pull_messages()
        if received:
            self._client.acknowledge(subscription=self.subscription, ack_ids=[m.ack_id for m in received])
        return _decoded(received)

    def pull_then_ack(self, handle: Callable[[list[dict[str, Any]]], None], max_messages: int = PULL_BATCH) -> int:
        """Pulls what arrived so far (at most `max_messages`), hands the events to `handle`, and
        acknowledges them only after it returned (a reader killed in between gets them again).
        Returns how many messages were pulled (undecodable ones are acknowledged and dropped)."""
        received = self.pull_messages(max_messages)
        if received:
            handle(_decoded(received))
            self._client.acknowledge(subscription=self.subscription, ack_ids=[m.ack_id for m in received])
        return len(received)

    def drain(self) -> list[dict[str, Any]]:
        """Everything waiting right now (pulls until a pull comes back empty)."""
        events: list[dict[str, Any]] = []
        while True:
            batch = self.pull()
            if not batch:
                return events
            events.extend(batch)


def _decoded(received: list[Any]) -> list[dict[str, Any]]:
    events = []
    for message in received:
        try:
            event = json.loads(message.message.data)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
