"""`python -m localcloud.healthcare` as a process: readiness line, state kept across a restart,
operations cut short by a restart, and no patient data in its log."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud import components
from tests.integration.harness import wait_for
from tests.integration.test_healthcare_emulator import make_instance

pytestmark = pytest.mark.integration

DATASET = "projects/p/locations/l/datasets/d"
STORE = f"{DATASET}/dicomStores/s"
PATIENT_NAME = "Secret^Patient"


class EmulatorProcess:
    def __init__(self, data_dir: Path, log: Path, storage_host: str, *extra: str) -> None:
        self.log = log
        self._out = log.open("wb")
        argv = [sys.executable, "-m", "localcloud.healthcare", "--host", components.LOOPBACK, "--port", "0"]
        argv += ["--data-dir", str(data_dir), "--storage-host", storage_host, *extra]
        self.process = subprocess.Popen(
            argv, stdout=self._out, stderr=subprocess.STDOUT, cwd=components.REPO_ROOT
        )
        line = wait_for(self._ready_line, 20, what="the readiness line")
        self.url = line.rsplit(" ", 1)[1]

    def _ready_line(self) -> str | None:
        assert self.process.poll() is None, self.log.read_text()
        lines = [ln for ln in self.log.read_text().splitlines() if "healthcare emulator ready on " in ln]
        return lines[-1] if lines else None

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(timeout=10)
        self._out.close()
        return code


@pytest.fixture
def fake_gcs(tmp_path: Path) -> Iterator[str]:
    component = components.start_fake_gcs(tmp_path / "gcs")
    try:
        yield component.url
    finally:
        component.stop()


def test_state_survives_a_restart_and_running_operations_are_aborted(tmp_path: Path, fake_gcs: str) -> None:
    gcs = storage.Client(
        project="p", credentials=AnonymousCredentials(), client_options={"api_endpoint": fake_gcs}
    )
    bucket = gcs.create_bucket("src")
    data = make_instance(PatientName=PATIENT_NAME)
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    bucket.blob("in/a.dcm").upload_from_string(data)
    bucket.blob("in/b.txt").upload_from_string(b"not dicom")
    first = EmulatorProcess(tmp_path / "data", tmp_path / "first.log", fake_gcs)
    assert requests.get(f"{first.url}/_emulator/healthz", timeout=5).status_code == 200
    requests.post(f"{first.url}/v1/projects/p/locations/l/datasets?datasetId=d", timeout=5).raise_for_status()
    requests.post(f"{first.url}/v1/{DATASET}/dicomStores?dicomStoreId=s", timeout=5).raise_for_status()
    op = requests.post(
        f"{first.url}/v1/{STORE}:import", json={"gcsSource": {"uri": "gs://src/in/*"}}, timeout=5
    ).json()
    done = wait_for(
        lambda: (o := requests.get(f"{first.url}/v1/{op['name']}", timeout=5).json()).get("done") and o
    )
    assert done["metadata"]["counter"] == {"success": "1", "failure": "1"}
    requests.post(
        f"{first.url}/_emulator/config", json={"operationDelaySeconds": 60}, timeout=5
    ).raise_for_status()
    cut_short = requests.post(
        f"{first.url}/v1/{STORE}:import", json={"gcsSource": {"uri": "gs://src/in/a.dcm"}}
    ).json()
    assert first.stop() == 0

    second = EmulatorProcess(tmp_path / "data", tmp_path / "second.log", fake_gcs)
    try:
        instances = requests.get(f"{second.url}/v1/{STORE}/dicomWeb/instances", timeout=5).json()
        assert [i["00080018"]["Value"][0] for i in instances] == [sop]
        assert requests.get(f"{second.url}/v1/{op['name']}", timeout=5).json() == done
        aborted = requests.get(f"{second.url}/v1/{cut_short['name']}", timeout=5).json()
        assert aborted["done"] is True and aborted["error"]["code"] == 10 and "endTime" in aborted["metadata"]
    finally:
        assert second.stop() == 0
    text = first.log.read_text() + second.log.read_text()
    assert "gs://src/in/b.txt" in text  # failures are logged with the object's name ...
    assert "Secret" not in text and "P-1" not in text  # ... but never tag values
    assert sop not in text
