"""The emulator's import pipeline: parallel reads, batched index writes, and counters that always
agree with the index, also when an import stops half-way.

Reads go to a real fake-gcs-server through a gate the test opens, so "half-way" is a state the
test waits for, not a moment it hopes to hit.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from werkzeug.serving import make_server

from localcloud import components
from localcloud.healthcare.app import Emulator, create_app
from localcloud.healthcare.dicomfile import InstanceInfo
from localcloud.healthcare.gcs import GcsClient
from localcloud.healthcare.store import Blob, Indexed
from tests.integration.harness import wait_for
from tests.integration.test_healthcare_emulator import make_instance

pytestmark = pytest.mark.integration

DATASET = "projects/p/locations/l/datasets/d"
OBJECTS = 24
FREE_READS = 3  # reads that pass the gate before the test opens it


class GatedGcs(GcsClient):
    """Real reads from fake-gcs-server; every read after the first `free` waits for `gate`."""

    def __init__(self, endpoint: str, free: int) -> None:
        super().__init__(endpoint)
        self.gate = threading.Event()
        self._free = free
        self._lock = threading.Lock()

    def download(self, bucket: str, name: str) -> bytes:
        with self._lock:
            self._free -= 1
            wait = self._free < 0
        if wait:
            assert self.gate.wait(60), "the test never opened the gate"
        return super().download(bucket, name)


class Running:
    def __init__(self, url: str, emu: Emulator, bucket: str, gcs: GatedGcs) -> None:
        self.url, self.emu, self.bucket, self.gcs = url, emu, bucket, gcs
        self.store = f"{DATASET}/dicomStores/s-{uuid.uuid4().hex[:8]}"

    def start_import(self) -> dict[str, Any]:
        store_id = self.store.rsplit("/", 1)[1]
        requests.post(f"{self.url}/v1/{DATASET}/dicomStores?dicomStoreId={store_id}", timeout=10)
        body = {"gcsSource": {"uri": f"gs://{self.bucket}/in/*.dcm"}}
        response = requests.post(f"{self.url}/v1/{self.store}:import", json=body, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def operation(self, op: dict[str, Any]) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/v1/{op['name']}", timeout=10).json())

    def counter(self, op: dict[str, Any], key: str) -> int:
        return int(self.operation(op)["metadata"].get("counter", {}).get(key, "0"))

    def indexed(self) -> int:
        return len(self.emu.store.instances(self.store))

    def reads(self) -> dict[str, int]:
        return dict(requests.get(f"{self.url}/_emulator/stats", timeout=10).json()["objectReads"])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """fake-gcs-server with OBJECTS small instances under gs://BUCKET/in/."""
    component = components.start_fake_gcs(tmp_path_factory.mktemp("gcs"))
    try:
        client = storage.Client(
            project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": component.url}
        )
        bucket = client.create_bucket("batching")
        for i in range(OBJECTS):
            bucket.blob(f"in/{i:03d}.dcm").upload_from_string(make_instance())
        yield component.url, bucket.name
    finally:
        component.stop()


@pytest.fixture
def running(source: tuple[str, str], tmp_path: Path) -> Iterator[Running]:
    gcs_url, bucket = source
    app = create_app(tmp_path / "healthcare", storage_host=gcs_url)
    emu: Emulator = app.extensions["healthcare_emulator"]
    gated = GatedGcs(gcs_url, FREE_READS)
    emu.gcs = gated
    server = make_server(components.LOOPBACK, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://{components.LOOPBACK}:{server.server_port}"
    requests.post(f"{url}/v1/projects/p/locations/l/datasets?datasetId=d", timeout=10).raise_for_status()
    try:
        yield Running(url, emu, bucket, gated)
    finally:
        gated.gate.set()
        server.shutdown()


def test_an_import_indexes_every_object_once(running: Running) -> None:
    running.gcs.gate.set()
    op = running.start_import()
    done = wait_for(lambda: (o := running.operation(op)).get("done") and o, what="the import")
    assert "error" not in done and done["metadata"]["counter"] == {"success": str(OBJECTS)}
    assert running.indexed() == OBJECTS
    assert sorted(running.reads().values()) == [1] * OBJECTS


@pytest.mark.parametrize("stop", ["cancel", "fail"])
def test_an_import_stopped_half_way_indexed_exactly_what_its_counters_say(running: Running, stop: str) -> None:
    op = running.start_import()
    wait_for(lambda: running.counter(op, "success") == FREE_READS, what="the reads before the gate")
    op_id = op["name"].rsplit("/", 1)[1]
    if stop == "cancel":
        requests.post(f"{running.url}/v1/{op['name']}:cancel", timeout=10).raise_for_status()
    else:
        requests.post(f"{running.url}/_emulator/operations/{op_id}:fail", json={"code": 14}, timeout=10)
    running.gcs.gate.set()  # reads already past their checkpoint finish; no new ones start
    done = wait_for(lambda: (o := running.operation(op)).get("done") and o, what="the stopped import")

    assert done["error"]["code"] == (1 if stop == "cancel" else 14)
    success = int(done["metadata"]["counter"]["success"])
    assert FREE_READS <= success < OBJECTS
    assert running.indexed() == success
    reads = running.reads()
    assert sum(reads.values()) == success and set(reads.values()) == {1}


def test_a_batch_that_fails_to_commit_is_neither_indexed_nor_counted(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    early: set[str] = set()  # the SOP Instance UIDs read before the gate opened
    index = running.emu.store.index_instances

    def crash_after_first_row(
        store: str, items: Sequence[tuple[InstanceInfo, Blob]], storage_class: str, action: str = "StoreInstances"
    ) -> list[Indexed]:
        if not running.gcs.gate.is_set():
            early.update(info.sop for info, _ in items)
            return index(store, items, storage_class, action)

        def rows() -> Iterator[tuple[InstanceInfo, Blob]]:
            yield items[0]  # inserted inside the transaction ...
            raise OSError("disk gone")  # ... then the batch fails before its commit

        return index(store, rows(), storage_class, action)  # type: ignore[arg-type]

    monkeypatch.setattr(running.emu.store, "index_instances", crash_after_first_row)
    op = running.start_import()
    wait_for(lambda: running.counter(op, "success") == FREE_READS, what="the reads before the gate")
    running.gcs.gate.set()
    done = wait_for(lambda: (o := running.operation(op)).get("done") and o, what="the failed import")

    assert done["error"]["code"] == 13  # INTERNAL: the emulator's own fault
    assert done["metadata"]["counter"] == {"success": str(FREE_READS)}
    assert {row.sop for row in running.emu.store.instances(running.store)} == early
    assert len(early) == FREE_READS
