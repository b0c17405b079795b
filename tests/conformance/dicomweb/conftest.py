"""The DICOMweb conformance suite: the emulator as its own process (`python -m
localcloud.healthcare`), driven over HTTP by dicomweb-client (and by requests where a test needs
raw headers or a call dicomweb-client does not make). Each test gets its own dataset and store.

Every expectation cites Google's DICOM conformance statement
(https://cloud.google.com/healthcare-api/docs/dicom) or its DICOMweb guide
(https://cloud.google.com/healthcare-api/docs/how-tos/dicomweb); see localcloud/healthcare/README.md.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from localcloud import components
from localcloud.healthcare.multipart import encode
from tests import dicom_factory
from tests.integration.harness import wait_for

_HERE = Path(__file__).resolve().parent
TEST_FILES = Path(pydicom.data.DATA_ROOT, "test_files")
PROJECT, LOCATION = "conformance", "us-central1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # DICOMweb reads no Cloud Storage: the storage host is never dialled.
    component = components.start_healthcare_emulator(
        tmp_path_factory.mktemp("dicomweb-conformance"), storage_host="http://127.0.0.1:9"
    )
    try:
        yield component.url
    finally:
        component.stop()


@dataclass
class Store:
    emulator: str
    dataset: str
    name: str

    @property
    def url(self) -> str:
        """The dicomWeb root, as a user passes it to dicomweb-client."""
        return f"{self.emulator}/v1/{self.name}/dicomWeb"

    @property
    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.url)

    def instance_url(self, ds: Dataset) -> str:
        return f"{self.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    def get(self, path: str, accept: str | None = None, **params: Any) -> requests.Response:
        headers = {"Accept": accept} if accept else {}
        return requests.get(f"{self.url}/{path}", headers=headers, params=params, timeout=30)

    def operation(self, name: str) -> dict[str, Any]:
        response = requests.get(f"{self.emulator}/v1/{name}", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def wait(self, operation: dict[str, Any]) -> dict[str, Any]:
        done: dict[str, Any] = wait_for(
            lambda: (op := self.operation(operation["name"])).get("done") and op,
            timeout=30,
            interval=0.05,
            what=f"operation {operation['name']}",
        )
        return done

    def stow_bytes(self, instances: list[bytes]) -> None:
        """Bulk setup: Part 10 bytes straight to STOW-RS (no client-side parsing)."""
        body, content_type = encode(instances, "application/dicom")
        response = requests.post(f"{self.url}/studies", data=body, headers={"Content-Type": content_type}, timeout=120)
        response.raise_for_status()

    def control(self, path: str, body: dict[str, Any]) -> None:
        requests.post(f"{self.emulator}/_emulator/{path}", json=body, timeout=10).raise_for_status()


@pytest.fixture
def store(emulator_url: str) -> Store:
    dataset_id, store_id = f"ds-{uuid.uuid4().hex[:8]}", f"st-{uuid.uuid4().hex[:8]}"
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    requests.post(
        f"{emulator_url}/v1/{parent}/datasets", params={"datasetId": dataset_id}, json={}, timeout=10
    ).raise_for_status()
    dataset = f"{parent}/datasets/{dataset_id}"
    requests.post(
        f"{emulator_url}/v1/{dataset}/dicomStores", params={"dicomStoreId": store_id}, json={}, timeout=10
    ).raise_for_status()
    return Store(emulator_url, dataset, f"{dataset}/dicomStores/{store_id}")


def instance(study: str | None = None, series: str | None = None, **attrs: Any) -> Dataset:
    """A tiny instance (tests/dicom_factory) with fresh UIDs unless given, plus `attrs`."""
    ds = pydicom.dcmread(io.BytesIO(dicom_factory.instance(study, series)))
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def sample(name: str) -> Dataset:
    """One of pydicom's bundled test files."""
    return pydicom.dcmread(TEST_FILES / name)
