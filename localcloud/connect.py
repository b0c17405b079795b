"""A client's handle on a running local cloud, found through `STATE_DIR/endpoints.json`.

The CLI commands (`ingest`, `export`, `status`) and the demo talk to the stack only through this:
Cloud Storage (the state bucket is read with the functions' own `Gcs` wrapper), the Healthcare
API's QIDO-RS search, and Pub/Sub.

Completion events are read from a private pull subscription (`EventStream`) that the command
creates on the completions topic before it uploads or publishes anything, and deletes when it is
done. The stack's own `subscriptions.completions` is never pulled here: a command that acked the
events it does not want from a shared subscription would take them away from whoever else reads
it. Every published event is also kept in the state bucket (`done/{operation id}.json`, written
by the poller), which `status` reads.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import Blob

from functions.gcs import Gcs
from functions.settings import Settings
from localcloud import provision
from localcloud.config import IMPORT_TARGET, LocalConfig
from localcloud.stack import read_endpoints

NOT_RUNNING = "no local cloud is running for {state_dir}; start one with: python -m localcloud up"
_HTTP_TIMEOUT = 30.0
_PULL_BATCH = 100

# The Pub/Sub emulator honours return_immediately (an empty pull would block otherwise).
warnings.filterwarnings("ignore", "The return_immediately flag is deprecated", DeprecationWarning)


class NotRunningError(RuntimeError):
    """No stack runs for this state folder; the message says how to start one."""


class LocalCloud:
    """Endpoints, buckets and clients of one running stack. Close it (or use `with`)."""

    def __init__(self, endpoints: Mapping[str, Any]) -> None:
        self.endpoints = dict(endpoints)
        self._storage: storage.Client | None = None
        self._http = requests.Session()
        self._state_prefix: str | None = None

    @classmethod
    def find(cls, state_dir: Path) -> LocalCloud:
        """The stack running for `state_dir`; raises NotRunningError when there is none."""
        endpoints = read_endpoints(Path(state_dir))
        if endpoints is None:
            raise NotRunningError(NOT_RUNNING.format(state_dir=state_dir))
        return cls(endpoints)

    # -- names -----------------------------------------------------------------------------
    @property
    def project(self) -> str:
        return str(self.endpoints["project"])

    @property
    def upload_bucket(self) -> str:
        return str(self.endpoints["buckets"]["upload"])

    @property
    def export_bucket(self) -> str:
        return str(self.endpoints["buckets"]["export"])

    @property
    def state_bucket(self) -> str:
        return str(self.endpoints["buckets"]["state"])

    @property
    def dicom_store(self) -> str:
        return str(self.endpoints["dicomStore"])

    @property
    def stream_table(self) -> str | None:
        """`project.dataset.table` the store streams its instances to (`sql` selectors query it);
        None when the stack was started with `--no-stream`."""
        table = self.endpoints.get("streamTable")
        return str(table) if table else None

    # -- clients ---------------------------------------------------------------------------
    @property
    def storage(self) -> storage.Client:
        if self._storage is None:
            self._storage = storage.Client(
                project=self.project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.endpoints["storage"]},
            )
        return self._storage

    @property
    def gcs(self) -> Gcs:
        return Gcs(self.storage, timeout=_HTTP_TIMEOUT)

    def import_settings(self, config: LocalConfig | None = None) -> Settings:
        """The import function's settings, built as the stack builds them (`LocalConfig.function_env`).

        endpoints.json does not carry the functions' environment, so settings that a caller of
        `Stack.start` overrode through `extra_function_env` are only known if `config` is given.
        """
        base = config or LocalConfig()
        env = base.function_env(
            IMPORT_TARGET,
            storage=self.endpoints["storage"],
            pubsub=self.endpoints["pubsub"],
            healthcare=self.endpoints["healthcare"],
            bigquery=self.endpoints["bigquery"],
        )
        env.update(DICOM_STORE=self.dicom_store, DICOM_STATE_BUCKET=self.state_bucket)
        return Settings.from_env(env, IMPORT_TARGET)

    def state_path(self, *parts: str) -> str:
        """An object name in the state bucket, under the functions' DICOM_STATE_PREFIX."""
        if self._state_prefix is None:
            self._state_prefix = self.import_settings().state_prefix
        return self._state_prefix + "/".join(parts)

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
        url = f"{self.endpoints['healthcare']}/v1/{self.dicom_store}/dicomWeb/{level}"
        response = self._http.get(url, params=dict(params), timeout=_HTTP_TIMEOUT)
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
        client = bigquery.client(self.endpoints["bigquery"], self.project)
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
        """A private subscription on the completions topic, for the lifetime of the block."""
        pubsub = self.endpoints["pubsub"]
        subscription = f"projects/{self.project}/subscriptions/localcloud-cli-{uuid.uuid4().hex[:12]}"
        provision.create_subscription(pubsub, subscription, self.endpoints["topics"]["completions"])
        with provision.subscriber(pubsub) as client:
            try:
                yield EventStream(client, subscription)
            finally:
                try:
                    client.delete_subscription(subscription=subscription, timeout=10)
                except gexc.GoogleAPICallError:
                    pass  # the emulator forgets it when it stops

    def backlog(self, subscription: str, limit: int = 1000) -> int:
        """Messages waiting in `subscription` (up to `limit`), left there for their reader.

        Pub/Sub has no peek: the messages are pulled and at once handed back (ack deadline 0),
        so they are redelivered as if never pulled. Meant for subscriptions nobody pushes from,
        such as the dead-letter one.
        """
        with provision.subscriber(self.endpoints["pubsub"]) as client:
            response = client.pull(subscription=subscription, max_messages=limit, timeout=10,
                                   return_immediately=True)
            ack_ids = [m.ack_id for m in response.received_messages]
            if ack_ids:
                client.modify_ack_deadline(subscription=subscription, ack_ids=ack_ids, ack_deadline_seconds=0)
        return len(ack_ids)

    def publish(self, topic: str, data: bytes) -> str:
        with provision.publisher(self.endpoints["pubsub"]) as client:
            return str(client.publish(topic, data).result(timeout=30))

    def close(self) -> None:
        self._http.close()
        if self._storage is not None:
            self._storage.close()
            self._storage = None

    def __enter__(self) -> LocalCloud:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream:
    """Completion events published since the stream opened, pulled and acknowledged in batches."""

    def __init__(self, client: Any, subscription: str) -> None:
        self._client = client
        self.subscription = subscription

    def pull(self) -> list[dict[str, Any]]:
        """What arrived so far (maybe nothing; it does not block). Undecodable messages are dropped."""
        response = self._client.pull(
            subscription=self.subscription, max_messages=_PULL_BATCH, timeout=10, return_immediately=True
        )
        received = list(response.received_messages)
        if received:
            self._client.acknowledge(subscription=self.subscription, ack_ids=[m.ack_id for m in received])
        events = []
        for message in received:
            try:
                event = json.loads(message.message.data)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def drain(self) -> list[dict[str, Any]]:
        """Everything waiting right now (pulls until a pull comes back empty)."""
        events: list[dict[str, Any]] = []
        while True:
            batch = self.pull()
            if not batch:
                return events
            events.extend(batch)
