"""The Healthcare emulator's REST front end and management methods, driven by clients nobody here
wrote: gcloud, curl and google-api-python-client (with its bundled discovery documents).

Session processes, each on a free loopback port: the Pub/Sub emulator (store notifications go
there), fake-gcs-server, the Healthcare emulator as users start it (`python -m
localcloud.healthcare`), and a second one with `--require-auth`.

gcloud runs offline from a throwaway configuration directory (CLOUDSDK_CONFIG) whose properties
are `api_endpoint_overrides/healthcare` = the emulator and either `auth/disable_credentials`
(the default emulator) or `auth/access_token_file` (the `--require-auth` one, which only checks
that a bearer token is present).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

from localcloud import components
from tests.integration import harness

_HERE = Path(__file__).resolve().parent
PROJECT = "conformance"
LOCATION = "us-central1"
TOKEN = "ya29.conformance-token"  # any bearer token satisfies --require-auth
GCLOUD_TIMEOUT = 120.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """The harness's wait, with the longer default these slower, whole-API calls need."""
    return harness.wait_for(condition, timeout=timeout, what=what)


@dataclass(frozen=True)
class Emulators:
    healthcare: str  # http://127.0.0.1:PORT of the default emulator
    healthcare_auth: str  # the one started with --require-auth
    gcs: str
    pubsub: str  # host:port
    bigquery: str = ""  # http://127.0.0.1:PORT of the local BigQuery the default emulator writes to

    def storage(self) -> storage.Client:
        return storage.Client(
            project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.gcs}
        )


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    workdir = tmp_path_factory.mktemp("conformance-api")
    started: list[components.Component] = []
    try:
        pubsub = components.start_pubsub_emulator(workdir)
        started.append(pubsub)
        gcs = components.start_fake_gcs(workdir)
        started.append(gcs)
        bigquery = components.start_bigquery_emulator(workdir)
        started.append(bigquery)
        healthcare = components.start_healthcare_emulator(
            workdir, storage_host=gcs.url, pubsub_host=pubsub.host, bigquery_url=bigquery.url
        )
        started.append(healthcare)
        guarded = components.start_healthcare_emulator(
            workdir, storage_host=gcs.url, pubsub_host=pubsub.host, require_auth=True, name="healthcare-auth"
        )
        started.append(guarded)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PUBSUB_EMULATOR_HOST", pubsub.host)
            patch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
            yield Emulators(healthcare.url, guarded.url, gcs.url, pubsub.host, bigquery.url)
    finally:
        for component in reversed(started):
            component.stop()


@dataclass(frozen=True)
class StoreRef:
    """A fresh dataset and DICOM store of one test, created over plain REST."""

    base: str
    dataset_id: str
    store_id: str

    @property
    def dataset(self) -> str:
        return f"projects/{PROJECT}/locations/{LOCATION}/datasets/{self.dataset_id}"

    @property
    def name(self) -> str:
        return f"{self.dataset}/dicomStores/{self.store_id}"

    def url(self, suffix: str = "", version: str = "v1") -> str:
        return f"{self.base}/{version}/{self.name}{suffix}"

    def wait(self, operation_name: str, timeout: float = 60.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = requests.get(f"{self.base}/v1/{operation_name}", timeout=10).json()
            return body if body.get("done") else None

        return wait_for(done, timeout, what=f"operation {operation_name}")


def create_store(base: str, headers: dict[str, str] | None = None, **store_body: Any) -> StoreRef:
    ref = StoreRef(base, f"ds-{uuid.uuid4().hex[:10]}", f"st-{uuid.uuid4().hex[:8]}")
    parent = f"{base}/v1/projects/{PROJECT}/locations/{LOCATION}/datasets"
    response = requests.post(parent, params={"datasetId": ref.dataset_id}, json={}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    response = requests.post(
        f"{base}/v1/{ref.dataset}/dicomStores",
        params={"dicomStoreId": ref.store_id},
        json=store_body,
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return ref


@pytest.fixture
def store(emulators: Emulators) -> StoreRef:
    return create_store(emulators.healthcare)


@pytest.fixture
def bucket(emulators: Emulators) -> storage.Bucket:
    return emulators.storage().create_bucket(f"b-{uuid.uuid4().hex[:12]}")


@dataclass
class Subscription:
    """A topic with one pull subscription on the Pub/Sub emulator."""

    topic: str
    name: str
    client: pubsub_v1.SubscriberClient

    def pull(self, count: int, timeout: float = 60.0) -> list[pubsub_v1.types.PubsubMessage]:
        received: list[pubsub_v1.types.PubsubMessage] = []

        def enough() -> bool:
            response = self.client.pull(subscription=self.name, max_messages=100, timeout=5, return_immediately=True)
            if response.received_messages:
                self.client.acknowledge(subscription=self.name, ack_ids=[m.ack_id for m in response.received_messages])
            received.extend(m.message for m in response.received_messages)
            return len(received) >= count

        wait_for(enough, timeout, what=f"{count} messages on {self.topic} (got {len(received)})")
        return received

    def drained(self, settle_seconds: float = 0.0) -> list[pubsub_v1.types.PubsubMessage]:
        """What is on the subscription right now (after optionally letting in-flight messages land)."""
        if settle_seconds:
            time.sleep(settle_seconds)
        response = self.client.pull(subscription=self.name, max_messages=100, timeout=5, return_immediately=True)
        return [m.message for m in response.received_messages]


@pytest.fixture
def new_subscription(emulators: Emulators) -> Iterator[Callable[[], Subscription]]:
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()

    def make() -> Subscription:
        suffix = uuid.uuid4().hex[:10]
        topic = f"projects/{PROJECT}/topics/t-{suffix}"
        name = f"projects/{PROJECT}/subscriptions/s-{suffix}"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=name, topic=topic)
        return Subscription(topic, name, subscriber)

    yield make
    subscriber.close()


class Gcloud:
    """The real gcloud CLI against an emulator, from a throwaway configuration directory."""

    def __init__(self, config_dir: Path, endpoint: str, auth: dict[str, str]) -> None:
        self.config_dir = config_dir
        (config_dir / "configurations").mkdir(parents=True, exist_ok=True)
        (config_dir / "active_config").write_text("default")
        # The properties file that `gcloud config set` writes (configurations/config_default).
        properties = {
            "core": {"project": PROJECT, "disable_usage_reporting": "True"},
            "component_manager": {"disable_update_check": "True"},
            "survey": {"disable_prompts": "True"},
            "api_endpoint_overrides": {"healthcare": f"{endpoint}/"},
            "auth": auth,
        }
        text = "".join(
            f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
            for section, values in properties.items()
        )
        (config_dir / "configurations" / "config_default").write_text(text)

    def run(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs a gcloud command line given as text (shell quoting, no shell)."""
        env = dict(os.environ, CLOUDSDK_CONFIG=str(self.config_dir), CLOUDSDK_CORE_DISABLE_PROMPTS="1")
        result = subprocess.run(
            shlex.split(command.replace("\\\n", " ")),
            env=env,
            capture_output=True,
            text=True,
            timeout=GCLOUD_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{command!r} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="session")
def gcloud(emulators: Emulators, tmp_path_factory: pytest.TempPathFactory) -> Gcloud:
    return Gcloud(tmp_path_factory.mktemp("gcloud"), emulators.healthcare, {"disable_credentials": "True"})


@pytest.fixture(scope="session")
def gcloud_with_token(emulators: Emulators, tmp_path_factory: pytest.TempPathFactory) -> Gcloud:
    token_file = tmp_path_factory.mktemp("token") / "access-token"
    token_file.write_text(TOKEN)
    return Gcloud(
        tmp_path_factory.mktemp("gcloud-auth"), emulators.healthcare_auth, {"access_token_file": str(token_file)}
    )


@pytest.fixture(scope="session")
def gcloud_without_credentials(emulators: Emulators, tmp_path_factory: pytest.TempPathFactory) -> Gcloud:
    return Gcloud(tmp_path_factory.mktemp("gcloud-anon"), emulators.healthcare_auth, {"disable_credentials": "True"})


def stow(store: StoreRef, *instances: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    """STOW-RS of the instances in one multipart/related request (asserts success; the answer in
    DICOM JSON, asked for explicitly since Google's default is XML)."""
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in instances
        )
        + f"--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = requests.post(
        store.url("/dicomWeb/studies"),
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json", **(headers or {})},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response
