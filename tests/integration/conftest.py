"""Session-wide emulators for the integration tests.

Each emulator starts once per session on a free port and stops at the end. The fixtures return
plain endpoint strings and also export the variables the Google clients read, so code under test
finds the emulators the way it would in the local stack.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from localcloud import components, provision
from localcloud.config import LocalConfig

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Conftest hooks see every collected item, not only this folder's.
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def local_config() -> LocalConfig:
    return LocalConfig()


@pytest.fixture(scope="session")
def project_id(local_config: LocalConfig) -> str:
    return local_config.project


@pytest.fixture(scope="session")
def emulator_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs and data of the session's emulators (logs/<component>.log)."""
    return tmp_path_factory.mktemp("emulators")


@pytest.fixture(scope="session")
def pubsub_emulator(emulator_workdir: Path) -> Iterator[str]:
    """host:port of a Pub/Sub emulator; PUBSUB_EMULATOR_HOST is set for the session."""
    component = components.start_pubsub_emulator(emulator_workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", component.host)
        try:
            yield component.host
        finally:
            component.stop()


@pytest.fixture(scope="session")
def gcs_notifications_topic(pubsub_emulator: str, local_config: LocalConfig) -> str:
    """projects/P/topics/T that receives an OBJECT_FINALIZE notification for every upload to fake_gcs."""
    topic = local_config.topic_path(local_config.notifications_topic)
    provision.create_topic(pubsub_emulator, topic)
    return topic


@pytest.fixture(scope="session")
def fake_gcs(emulator_workdir: Path, pubsub_emulator: str, gcs_notifications_topic: str) -> Iterator[str]:
    """http://host:port of fake-gcs-server; STORAGE_EMULATOR_HOST is set for the session."""
    component = components.start_fake_gcs(
        emulator_workdir, pubsub_host=pubsub_emulator, event_topic=gcs_notifications_topic
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", component.url)
        try:
            yield component.url
        finally:
            component.stop()


@pytest.fixture(scope="session")
def bigquery_emulator(emulator_workdir: Path) -> Iterator[str]:
    """http://host:port of the local BigQuery; BIGQUERY_EMULATOR_URL is set for the session."""
    component = components.start_bigquery_emulator(emulator_workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BIGQUERY_EMULATOR_URL", component.url)
        try:
            yield component.url
        finally:
            component.stop()


@pytest.fixture(scope="session")
def healthcare_emulator(emulator_workdir: Path, fake_gcs: str, bigquery_emulator: str) -> Iterator[str]:
    """Base URL of the Healthcare API emulator (reading from fake_gcs, writing BigQuery rows to
    bigquery_emulator); HEALTHCARE_API_URL is set."""
    component = components.start_healthcare_emulator(
        emulator_workdir, storage_host=fake_gcs, bigquery_url=bigquery_emulator
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEALTHCARE_API_URL", component.url)
        try:
            yield component.url
        finally:
            component.stop()


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class HttpReceiver:
    """An HTTP server a test controls: records every request, answers with scripted statuses."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._statuses: list[int] = []  # answered in order; 200 once exhausted
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._record()

            def do_POST(self) -> None:
                self._record()

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = ReceivedRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                )
                with receiver._changed:
                    status = receiver._statuses.pop(0) if receiver._statuses else 200
                    receiver.requests.append(request)
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep the test output clean

        self._server = ThreadingHTTPServer((components.LOOPBACK, 0), Handler)
        self.url = f"http://{components.LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer_next(self, *statuses: int) -> None:
        self._statuses.extend(statuses)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedRequest]:
        """The first `count` requests, waiting for them; fails the test after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout=timeout):
                pytest.fail(
                    f"{len(self.requests)} of {count} expected requests reached {self.url} in {timeout} s"
                )
            return list(self.requests[:count])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    try:
        yield receiver
    finally:
        receiver.close()
