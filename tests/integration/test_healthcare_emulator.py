"""The Healthcare API emulator against real clients: google-api-python-client (bundled v1 and
v1beta1 discovery documents), dicomweb-client, and google-cloud-storage on a real fake-gcs-server.

The emulator runs in this process (create_app behind a threaded werkzeug server on a free loopback
port); fake-gcs-server is its own process. Every test works in its own dataset, store and buckets.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httplib2
import numpy as np
import pydicom
import pydicom.data
import pytest
import requests
from dicomweb_client import DICOMwebClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from werkzeug.serving import make_server

from localcloud import components
from localcloud.healthcare.app import create_app
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration

PROJECT = "emu-test"
LOCATION = "us-central1"
TEST_FILES = Path(pydicom.data.DATA_ROOT, "test_files")
# One image in several transfer syntaxes, plus other kinds of objects (pydicom's bundled test files).
SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",
    "SC_rgb_rle_2frame.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
]


def make_instance(study: str | None = None, series: str | None = None, **attrs: Any) -> bytes:
    """A small valid DICOM Part 10 file (16x16 MR): fresh UIDs unless study/series are given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID, ds.StudyDate, ds.Modality = "P-1", "20200115", "MR"
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass
class Emulator:
    url: str
    gcs: storage.Client

    def api(self, version: str = "v1") -> Any:
        service = build(
            "healthcare",
            version,
            client_options={"api_endpoint": self.url},
            http=httplib2.Http(),
            static_discovery=True,
        )
        return service.projects().locations().datasets()

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.url}/_emulator/{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def bucket(self) -> storage.Bucket:
        return self.gcs.create_bucket(f"b-{uuid.uuid4().hex[:12]}")


@dataclass
class Store:
    """A fresh dataset + DICOM store of one test."""

    emu: Emulator
    dataset: str
    name: str
    version: str = "v1"

    @property
    def api(self) -> Any:
        return self.emu.api(self.version)

    @property
    def dicomweb_url(self) -> str:
        return f"{self.emu.url}/{self.version}/{self.name}/dicomWeb"

    @property
    def dicomweb(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.dicomweb_url)

    def wait(self, operation: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        get = self.api.operations().get
        return wait_for(
            lambda: (op := get(name=operation["name"]).execute()).get("done") and op,
            timeout,
            interval=0.02,
            what=f"operation {operation['name']}",
        )

    def import_(self, uri: str, **body: Any) -> dict[str, Any]:
        operation = (
            self.api.dicomStores().import_(name=self.name, body={"gcsSource": {"uri": uri}, **body}).execute()
        )
        return self.wait(operation)

    def export(self, uri_prefix: str, mime_type: str | None = None, **body: Any) -> dict[str, Any]:
        destination = {"uriPrefix": uri_prefix, **({"mimeType": mime_type} if mime_type else {})}
        request = self.api.dicomStores().export(name=self.name, body={"gcsDestination": destination, **body})
        return self.wait(request.execute())

    def sops(self) -> set[str]:
        return {i["00080018"]["Value"][0] for i in self.dicomweb.search_for_instances()}

    def logs(self, operation: dict[str, Any]) -> list[dict[str, Any]]:
        entries = self.emu.control("GET", f"operations/{operation['name'].rsplit('/', 1)[1]}/logs")["entries"]
        return [entry["jsonPayload"] for entry in entries]


@pytest.fixture(scope="module")
def fake_gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Own fake-gcs without Pub/Sub events: the emulator only reads and writes objects.
    component = components.start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        yield component.url
    finally:
        component.stop()


@pytest.fixture(scope="module")
def emulator(fake_gcs_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    app = create_app(tmp_path_factory.mktemp("healthcare"), storage_host=fake_gcs_url)
    server = make_server(components.LOOPBACK, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gcs = storage.Client(
        project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": fake_gcs_url}
    )
    try:
        yield Emulator(f"http://{components.LOOPBACK}:{server.server_port}", gcs)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _clean_control_state(emulator: Emulator) -> Iterator[None]:
    emulator.control("POST", "reset", json={})
    emulator.control("POST", "config", json={"operationDelaySeconds": 0})
    yield
    emulator.control("POST", "reset", json={})


def new_store(emulator: Emulator, version: str = "v1") -> Store:
    dataset_id, store_id = f"ds-{uuid.uuid4().hex[:8]}", f"st-{uuid.uuid4().hex[:8]}"
    api = emulator.api(version)
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    api.create(parent=parent, datasetId=dataset_id, body={}).execute()
    dataset = f"{parent}/datasets/{dataset_id}"
    api.dicomStores().create(parent=dataset, dicomStoreId=store_id, body={}).execute()
    return Store(emulator, dataset, f"{dataset}/dicomStores/{store_id}", version)


@pytest.fixture
def store(emulator: Emulator) -> Store:
    return new_store(emulator)


def http_error(call: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
    with pytest.raises(HttpError) as caught:
        call()
    return caught.value.resp.status, json.loads(caught.value.content)["error"]


# --- resources -----------------------------------------------------------------------------------


def test_datasets_and_stores_through_the_discovery_client(emulator: Emulator) -> None:
    api = emulator.api("v1")
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    dataset_id = f"ds-{uuid.uuid4().hex[:8]}"
    created = api.create(parent=parent, datasetId=dataset_id, body={"timeZone": "Europe/Paris"}).execute()
    dataset = f"{parent}/datasets/{dataset_id}"
    # datasets.create answers with an Operation, already done, whose response is the dataset.
    assert created["done"] is True
    assert created["name"].startswith(f"{dataset}/operations/")
    assert created["response"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.Dataset"
    assert created["response"]["name"] == dataset
    assert api.get(name=dataset).execute() == {"name": dataset, "timeZone": "Europe/Paris"}
    assert dataset in [d["name"] for d in api.list(parent=parent).execute()["datasets"]]
    assert http_error(lambda: api.create(parent=parent, datasetId=dataset_id, body={}).execute())[0] == 409

    stores = api.dicomStores()
    created_store = stores.create(parent=dataset, dicomStoreId="s1", body={"labels": {"k": "v"}}).execute()
    assert created_store == {"name": f"{dataset}/dicomStores/s1", "labels": {"k": "v"}}
    stores.create(parent=dataset, dicomStoreId="s2", body={}).execute()
    listed = [s["name"] for s in stores.list(parent=dataset).execute()["dicomStores"]]
    assert listed == [f"{dataset}/dicomStores/s1", f"{dataset}/dicomStores/s2"]
    assert stores.get(name=f"{dataset}/dicomStores/s2").execute()["name"] == f"{dataset}/dicomStores/s2"
    stores.delete(name=f"{dataset}/dicomStores/s2").execute()
    status, error = http_error(lambda: stores.get(name=f"{dataset}/dicomStores/s2").execute())
    assert (status, error["code"], error["status"]) == (404, 404, "NOT_FOUND")
    status, error = http_error(
        lambda: stores.create(parent=f"{parent}/datasets/nope", dicomStoreId="x").execute()
    )
    assert (status, error["status"]) == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nowhere", 404),
        ("GET", "/v2/projects/p", 404),
        ("GET", "/", 404),
        ("GET", "/_emulator/nothing", 404),
        ("PUT", f"/v1/projects/{PROJECT}/locations/{LOCATION}/datasets", 405),
    ],
)
def test_every_error_has_google_error_json(emulator: Emulator, method: str, path: str, status: int) -> None:
    response = requests.request(method, emulator.url + path, timeout=10)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["status"] and error["message"]


# --- import --------------------------------------------------------------------------------------


def test_import_of_pydicom_files_counts_failures_duplicates_and_conflicts(
    emulator: Emulator, store: Store
) -> None:
    bucket = emulator.bucket()
    for name in SAMPLES:
        bucket.blob(f"in/{name}").upload_from_filename(str(TEST_FILES / name))
    bucket.blob("in/copy/CT_small.dcm").upload_from_filename(
        str(TEST_FILES / "CT_small.dcm")
    )  # identical duplicate
    bucket.blob("in/notes.txt").upload_from_string(b"not dicom")
    bucket.blob("in/empty.dcm").upload_from_string(b"")

    op = store.import_(f"gs://{bucket.name}/in/**")
    # MR_small_bigendian.dcm has MR_small.dcm's SOP Instance UID with other bytes: whichever of the
    # two is stored second is the conflict.
    assert op["metadata"]["counter"] == {"success": "7", "failure": "3"}
    assert op["error"]["code"] == 3 and "3 of 10" in op["error"]["message"]
    assert "response" not in op
    assert op["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert op["metadata"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
    assert op["metadata"]["createTime"] <= op["metadata"]["endTime"]
    assert op["metadata"]["logsUrl"].startswith("https://console.cloud.google.com/logs/")
    logged = {entry["source"]: entry["error"]["message"] for entry in store.logs(op)}
    assert logged[f"gs://{bucket.name}/in/notes.txt"].startswith("not a DICOM")
    assert logged[f"gs://{bucket.name}/in/empty.dcm"] == "empty DICOM instance found"
    conflicts = {f"gs://{bucket.name}/in/MR_small.dcm", f"gs://{bucket.name}/in/MR_small_bigendian.dcm"}
    assert len(conflicts & set(logged)) == 1
    # Each entry has the shape of the Healthcare API's Cloud Logging entries for import errors.
    entry = emulator.control("GET", f"operations/{op['name'].rsplit('/', 1)[1]}/logs")["entries"][0]
    assert entry["jsonPayload"]["@type"] == "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry"
    assert entry["jsonPayload"]["source"] in logged and entry["jsonPayload"]["error"]["code"] == 3
    assert entry["operation"]["id"] == op["name"] and entry["severity"] == "ERROR"
    assert entry["resource"] == {"type": "healthcare_dicom_store", "labels": {
        "project_id": store.name.split("/")[1], "location": store.name.split("/")[3],
        "dataset_id": store.name.split("/")[5], "dicom_store_id": store.name.split("/")[7]}}
    expected = {pydicom.dcmread(TEST_FILES / name).SOPInstanceUID for name in SAMPLES}
    assert store.sops() == expected

    # Re-importing stored instances: identical duplicates are ignored and count as successes.
    again = store.import_(f"gs://{bucket.name}/in/CT_small.dcm")
    assert again["done"] and "error" not in again and again["metadata"]["counter"] == {"success": "1"}
    assert again["response"]["@type"].endswith("google.cloud.healthcare.v1.dicom.ImportDicomDataResponse")
    stored = store.dicomweb.retrieve_instance(*_uids(TEST_FILES / "CT_small.dcm"))
    assert stored.SOPInstanceUID == pydicom.dcmread(TEST_FILES / "CT_small.dcm").SOPInstanceUID


def _uids(path: Path | io.BytesIO) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.mark.parametrize(
    ("pattern", "selected"),
    [
        ("d/a.dcm", {"d/a.dcm"}),
        ("d/*.dcm", {"d/a.dcm", "d/ab.dcm"}),
        ("d/?.dcm", {"d/a.dcm"}),
        ("d/**.dcm", {"d/a.dcm", "d/ab.dcm", "d/s/c.dcm", "d/s/t/e.dcm"}),
        ("d/**", {"d/a.dcm", "d/ab.dcm", "d/s/c.dcm", "d/s/t/e.dcm", "d/x.txt"}),
        ("d/s/*", {"d/s/c.dcm"}),
        ("d/*/c.dcm", {"d/s/c.dcm"}),
    ],
)
def test_import_wildcards_read_exactly_the_matching_objects(
    emulator: Emulator, store: Store, pattern: str, selected: set[str]
) -> None:
    bucket = emulator.bucket()
    names = ["d/a.dcm", "d/ab.dcm", "d/s/c.dcm", "d/s/t/e.dcm", "d/x.txt", "dd/a.dcm", "e/a.dcm"]
    sops = {}
    for name in names:
        data = make_instance()
        sops[name] = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        bucket.blob(name).upload_from_string(data)
    op = store.import_(f"gs://{bucket.name}/{pattern}")
    assert op["metadata"]["counter"] == {"success": str(len(selected))}
    reads = emulator.control("GET", "stats")["objectReads"]
    assert {uri.split("/", 3)[3] for uri in reads if uri.startswith(f"gs://{bucket.name}/")} == selected
    assert store.sops() == {sops[name] for name in selected}


@pytest.mark.parametrize(
    "uri", ["gs://b/d/**/x.dcm", "gs://b/d/*/**", "gs://b", "gs://b/", "/local/file.dcm", "gs://b*/x.dcm"]
)
def test_import_rejects_undocumented_uri_forms(store: Store, uri: str) -> None:
    status, error = http_error(
        lambda: store.api.dicomStores().import_(name=store.name, body={"gcsSource": {"uri": uri}}).execute()
    )
    assert (status, error["status"]) == (400, "INVALID_ARGUMENT")


def test_import_matching_nothing_fails_not_found(emulator: Emulator, store: Store) -> None:
    bucket = emulator.bucket()
    bucket.blob("d/a.txt").upload_from_string(b"x")
    op = store.import_(f"gs://{bucket.name}/d/*.dcm")
    assert op["error"]["code"] == 5 and "no objects match" in op["error"]["message"]
    assert "counter" not in op["metadata"]


def test_v1beta1_import_records_the_blob_storage_class(emulator: Emulator) -> None:
    store = new_store(emulator, "v1beta1")
    bucket = emulator.bucket()
    first, second = make_instance(), make_instance()
    bucket.blob("a/1.dcm").upload_from_string(first)
    bucket.blob("b/2.dcm").upload_from_string(second)
    op = store.import_(f"gs://{bucket.name}/a/*", blobStorageSettings={"blobStorageClass": "NEARLINE"})
    assert op["metadata"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1beta1.OperationMetadata"
    assert (
        op["metadata"]["apiMethodName"]
        == "google.cloud.healthcare.v1beta1.dicom.DicomService.ImportDicomData"
    )
    # The proto field names are accepted too.
    raw = requests.post(
        f"{emulator.url}/v1beta1/{store.name}:import",
        json={
            "gcsSource": {"uri": f"gs://{bucket.name}/b/*"},
            "blob_storage_settings": {"blob_storage_class": "COLDLINE"},
        },
        timeout=10,
    ).json()
    store.wait(raw)
    instances = store.api.dicomStores().dicomWeb().studies().series().instances()
    classes = []
    for data in (first, second, make_instance()):
        study, series, sop = _uids(io.BytesIO(data))
        resource = f"{store.name}/dicomWeb/studies/{study}/series/{series}/instances/{sop}"
        try:
            info = instances.getStorageInfo(resource=resource).execute()
            classes.append(info["blobStorageInfo"]["storageClass"])
            assert info["blobStorageInfo"]["sizeBytes"] == str(len(data))
        except HttpError as exc:
            classes.append(exc.resp.status)
    assert classes == ["NEARLINE", "COLDLINE", 404]
    status, _ = http_error(
        lambda: (
            store.api.dicomStores()
            .import_(
                name=store.name,
                body={"gcsSource": {"uri": "gs://b/x"}, "blobStorageSettings": {"blobStorageClass": "HOT"}},
            )
            .execute()
        )
    )
    assert status == 400


# --- export --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_store(emulator: Emulator) -> Store:
    """A store holding the SAMPLES except the big-endian twin of MR_small (same SOP Instance UID)."""
    store = new_store(emulator)
    bucket = emulator.bucket()
    for name in SAMPLES:
        if name != "MR_small_bigendian.dcm":
            bucket.blob(f"in/{name}").upload_from_filename(str(TEST_FILES / name))
    assert store.import_(f"gs://{bucket.name}/in/*.dcm")["metadata"]["counter"] == {"success": "6"}
    return store


def _exported(emulator: Emulator, bucket: storage.Bucket, prefix: str = "out/") -> dict[str, bytes]:
    return {
        b.name.removeprefix(prefix): b.download_as_bytes()
        for b in emulator.gcs.list_blobs(bucket, prefix=prefix)
    }


def _path(name: str, ext: str = ".dcm") -> str:
    study, series, sop = _uids(TEST_FILES / name)
    return f"{study}/{series}/{sop}{ext}"


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.5",
    ],
)
def test_export_transcodes_to_the_requested_transfer_syntax(
    emulator: Emulator, loaded_store: Store, transfer_syntax: str
) -> None:
    bucket = emulator.bucket()
    op = loaded_store.export(
        f"gs://{bucket.name}/out", f"application/dicom; transfer-syntax={transfer_syntax}"
    )
    assert op["metadata"]["counter"] == {"success": "6"} and "error" not in op
    assert op["response"]["@type"].endswith("google.cloud.healthcare.v1.dicom.ExportDicomDataResponse")
    objects = _exported(emulator, bucket)
    for name in SAMPLES:
        if name == "MR_small_bigendian.dcm":
            continue
        exported = pydicom.dcmread(io.BytesIO(objects[_path(name)]))
        original = pydicom.dcmread(TEST_FILES / name)
        assert exported.file_meta.TransferSyntaxUID == transfer_syntax, name
        assert exported.SOPInstanceUID == original.SOPInstanceUID
        if "PixelData" in original:
            assert np.array_equal(exported.pixel_array, original.pixel_array), name


MR_VARIANTS = sorted(p.name for p in TEST_FILES.glob("MR_small*.dcm"))


@pytest.mark.parametrize("name", MR_VARIANTS)
def test_one_image_in_every_stored_syntax_exports_to_explicit_little_endian(
    emulator: Emulator, name: str
) -> None:
    """The same MR image stored in 8 transfer syntaxes; JPEG-LS has no decoder here."""
    store = new_store(emulator)
    source, out = emulator.bucket(), emulator.bucket()
    source.blob(name).upload_from_filename(str(TEST_FILES / name))
    assert store.import_(f"gs://{source.name}/{name}")["metadata"]["counter"] == {"success": "1"}
    op = store.export(f"gs://{out.name}", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1")
    if pydicom.dcmread(TEST_FILES / name).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80":
        assert op["metadata"]["counter"] == {"failure": "1"}
        assert (
            "cannot decode stored transfer syntax 1.2.840.10008.1.2.4.80"
            in store.logs(op)[0]["error"]["message"]
        )
        return
    assert op["metadata"]["counter"] == {"success": "1"}
    [exported] = _exported(emulator, out, "").values()
    ds = pydicom.dcmread(io.BytesIO(exported))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(TEST_FILES / "MR_small.dcm").pixel_array)


def test_export_as_stored_keeps_the_bytes_and_unsupported_targets_fail_per_instance(
    emulator: Emulator, loaded_store: Store
) -> None:
    bucket = emulator.bucket()
    op = loaded_store.export(f"gs://{bucket.name}/out/", "application/dicom; transfer-syntax=*")
    objects = _exported(emulator, bucket)
    assert op["metadata"]["counter"] == {"success": "6"}
    assert objects[_path("JPEG2000.dcm")] == (TEST_FILES / "JPEG2000.dcm").read_bytes()
    assert objects[_path("CT_small.dcm")] == (TEST_FILES / "CT_small.dcm").read_bytes()

    bucket = emulator.bucket()
    op = loaded_store.export(
        f"gs://{bucket.name}/out", "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91"
    )
    # The one instance already in JPEG 2000 passes through; no encoder for the others.
    assert op["metadata"]["counter"] == {"success": "1", "failure": "5"}
    assert op["error"]["code"] == 3
    assert all("1.2.840.10008.1.2.4.91" in e["error"]["message"] for e in loaded_store.logs(op))
    assert set(_exported(emulator, bucket)) == {_path("JPEG2000.dcm")}


@pytest.mark.parametrize(
    ("mime_type", "ext", "pil_format"), [("image/png", ".png", "PNG"), ("image/jpeg", ".jpg", "JPEG")]
)
def test_export_renders_frames_as_consumer_images(
    emulator: Emulator, loaded_store: Store, mime_type: str, ext: str, pil_format: str
) -> None:
    bucket = emulator.bucket()
    op = loaded_store.export(f"gs://{bucket.name}/out", mime_type)
    # rtplan.dcm has no pixel data: a counted failure.
    assert op["metadata"]["counter"] == {"success": "5", "failure": "1"}
    objects = _exported(emulator, bucket)
    multi = _path("SC_rgb_rle_2frame.dcm", "")
    expected = {_path(n, ext) for n in ("CT_small.dcm", "MR_small.dcm", "image_dfl.dcm", "JPEG2000.dcm")}
    assert set(objects) == expected | {f"{multi}/1{ext}", f"{multi}/2{ext}"}
    ct = Image.open(io.BytesIO(objects[_path("CT_small.dcm", ext)]))
    assert (ct.format, ct.size, ct.mode) == (pil_format, (128, 128), "L")
    frame = Image.open(io.BytesIO(objects[f"{multi}/2{ext}"]))
    assert (frame.format, frame.size, frame.mode) == (pil_format, (100, 100), "RGB")
    if pil_format == "PNG":  # lossless: the rendering must keep the original colours
        original = pydicom.dcmread(TEST_FILES / "SC_rgb_rle_2frame.dcm").pixel_array[1]
        assert np.array_equal(np.asarray(frame), original)


def test_export_raw_pixel_data_per_frame(emulator: Emulator, loaded_store: Store) -> None:
    bucket = emulator.bucket()
    op = loaded_store.export(
        f"gs://{bucket.name}/raw", "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert op["metadata"]["counter"] == {"success": "5", "failure": "1"}
    objects = _exported(emulator, bucket, "raw/")
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert objects[_path("CT_small.dcm", "")] == ct.pixel_array.astype("<i2").tobytes()
    multi = pydicom.dcmread(TEST_FILES / "SC_rgb_rle_2frame.dcm")
    second = objects[_path("SC_rgb_rle_2frame.dcm", "") + "/2"]
    assert second == multi.pixel_array[1].tobytes()


def test_export_filter_file_selects_studies_series_and_instances(emulator: Emulator, store: Store) -> None:
    study, series = generate_uid(), generate_uid()
    same_series = [make_instance(study, series) for _ in range(3)]
    same_study = make_instance(study)
    other = make_instance()
    bucket = emulator.bucket()
    for i, data in enumerate([*same_series, same_study, other]):
        bucket.blob(f"in/{i}.dcm").upload_from_string(data)
    store.import_(f"gs://{bucket.name}/in/*.dcm")
    uids = [_uids(io.BytesIO(d)) for d in [*same_series, same_study, other]]

    def export_with(filter_text: str) -> tuple[dict[str, Any], set[str]]:
        out = emulator.bucket()
        out.blob("filter.txt").upload_from_string(filter_text)
        op = store.export(
            f"gs://{out.name}/x", filterConfig={"resourcePathsGcsUri": f"gs://{out.name}/filter.txt"}
        )
        return op, {name.split("/")[2].removesuffix(".dcm") for name in _exported(emulator, out, "x/")}

    op, sops = export_with(
        f"/studies/{study}/series/{series}/instances/{uids[0][2]}\r\n\r\n/studies/{uids[4][0]}\n"
    )
    assert sops == {uids[0][2], uids[4][2]} and op["metadata"]["counter"] == {"success": "2"}
    _, sops = export_with(f"/studies/{study}/series/{series}\n")
    assert sops == {u[2] for u in uids[:3]}
    _, sops = export_with(f"/studies/{study}\n")
    assert sops == {u[2] for u in uids[:4]}
    op, sops = export_with("/studies/1.2.3.4\n")  # selects nothing: success with 0
    assert sops == set() and "error" not in op and "counter" not in op["metadata"]
    op, sops = export_with(f"/studies/{study}\n\n/series/{series}\n")
    assert op["error"]["code"] == 3 and "line 3" in op["error"]["message"] and sops == set()


# --- operations ----------------------------------------------------------------------------------


def test_operation_in_flight_can_be_observed_and_cancelled(emulator: Emulator, store: Store) -> None:
    bucket = emulator.bucket()
    bucket.blob("a.dcm").upload_from_string(make_instance())
    emulator.control("POST", "config", json={"operationDelaySeconds": 30})
    started = (
        store.api.dicomStores()
        .import_(name=store.name, body={"gcsSource": {"uri": f"gs://{bucket.name}/a.dcm"}})
        .execute()
    )
    assert started["name"].rsplit("/", 1)[1].isdigit()
    assert started["name"].startswith(f"{store.dataset}/operations/")
    in_flight = store.api.operations().get(name=started["name"]).execute()
    assert "done" not in in_flight and "endTime" not in in_flight["metadata"]
    assert emulator.control("GET", "stats")["runningOperations"] == [started["name"]]
    assert store.api.operations().cancel(name=started["name"], body={}).execute() == {}
    done = store.wait(started, timeout=5)
    assert done["error"]["code"] == 1 and done["metadata"]["cancelRequested"] is True
    assert store.sops() == set()
    assert emulator.control("GET", "stats")["runningOperations"] == []


def test_operations_list_pages_through_every_operation(emulator: Emulator, store: Store) -> None:
    bucket = emulator.bucket()
    bucket.blob("a.dcm").upload_from_string(make_instance())
    names = [store.import_(f"gs://{bucket.name}/a.dcm")["name"] for _ in range(5)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = store.api.operations().list(name=store.dataset, pageSize=2, pageToken=token).execute()
        seen += [op["name"] for op in page["operations"]]
        assert len(page["operations"]) <= 2
        pages += 1
        token = page.get("nextPageToken")
        if not token:
            break
    # The dataset's create operation is listed too.
    assert len(seen) == len(set(seen)) == 6 and set(names) <= set(seen) and pages == 3


def test_concurrent_operations_and_repeated_reads_show_in_stats(emulator: Emulator, store: Store) -> None:
    bucket = emulator.bucket()
    bucket.blob("a.dcm").upload_from_string(make_instance())
    emulator.control("POST", "config", json={"operationDelaySeconds": 1.0})
    started = [
        store.api.dicomStores()
        .import_(name=store.name, body={"gcsSource": {"uri": f"gs://{bucket.name}/a.dcm"}})
        .execute()
        for _ in range(3)
    ]
    for op in started:
        assert store.wait(op)["metadata"]["counter"] == {"success": "1"}
    stats = emulator.control("GET", "stats")
    assert stats["maxConcurrentOperations"] == 3
    assert stats["objectsReadMoreThanOnce"] == {f"gs://{bucket.name}/a.dcm": 3}
    assert stats["calls"]["import"] == 3 and stats["runningOperations"] == []


# --- fault injection -----------------------------------------------------------------------------


def _response(caught: pytest.ExceptionInfo[requests.HTTPError]) -> requests.Response:
    assert caught.value.response is not None
    return caught.value.response


def test_injected_errors_hit_the_next_n_calls_of_a_method(emulator: Emulator, store: Store) -> None:
    emulator.control("POST", "faults", json={"method": "dicomStores.get", "count": 2, "status": 503})
    get = store.api.dicomStores().get(name=store.name)
    for _ in range(2):
        status, error = http_error(get.execute)
        assert (status, error["status"]) == (503, "UNAVAILABLE")
    assert get.execute()["name"] == store.name
    emulator.control("POST", "faults", json={"method": "*", "count": 1, "status": 429})
    status, error = http_error(lambda: store.api.get(name=store.dataset).execute())
    assert (status, error["status"]) == (429, "RESOURCE_EXHAUSTED")
    emulator.control("POST", "faults", json={"method": "dicomWeb.search", "count": 1, "status": 500})
    with pytest.raises(requests.HTTPError) as caught:
        store.dicomweb.search_for_studies()
    assert _response(caught).status_code == 500
    assert store.dicomweb.search_for_studies() == []
    assert emulator.control("GET", "faults") == {"methods": [], "operations": []}


def test_injected_delay_slows_a_call(emulator: Emulator, store: Store) -> None:
    emulator.control("POST", "faults", json={"method": "operations.list", "count": 1, "delaySeconds": 0.4})
    started = time.monotonic()
    store.api.operations().list(name=store.dataset).execute()
    assert time.monotonic() - started >= 0.4  # a lower bound: a slow machine only adds to it
    # The delay was for one call: it is used up (no upper bound on the next call's time, which
    # would depend on the machine's speed).
    assert emulator.control("GET", "faults") == {"methods": [], "operations": []}


def test_a_held_operation_can_be_released_to_do_its_work(emulator: Emulator, store: Store) -> None:
    bucket = emulator.bucket()
    bucket.blob("held.dcm").upload_from_string(make_instance())
    emulator.control("POST", "config", json={"operationDelaySeconds": 600})
    try:
        running = store.api.dicomStores().import_(
            name=store.name, body={"gcsSource": {"uri": f"gs://{bucket.name}/held.dcm"}}).execute()
        op_id = running["name"].rsplit("/", 1)[1]
        assert not store.api.operations().get(name=running["name"]).execute().get("done")
        emulator.control("POST", f"operations/{op_id}:release", json={})
        finished = store.wait(running, timeout=60)
        assert "error" not in finished and len(store.sops()) == 1
        with pytest.raises(requests.HTTPError) as raised:
            emulator.control("POST", f"operations/{op_id}:release", json={})  # not running any more
        assert raised.value.response.status_code == 404
    finally:
        emulator.control("POST", "config", json={"operationDelaySeconds": 0})


def test_operations_can_be_made_to_fail(emulator: Emulator, store: Store) -> None:
    bucket = emulator.bucket()
    bucket.blob("a.dcm").upload_from_string(make_instance())
    body = {"gcsSource": {"uri": f"gs://{bucket.name}/a.dcm"}}
    emulator.control("POST", "faults/operations", json={"count": 1, "code": 14, "message": "backend down"})
    op = store.wait(store.api.dicomStores().import_(name=store.name, body=body).execute())
    assert op["error"] == {"code": 14, "message": "backend down"}
    assert store.sops() == set()

    emulator.control("POST", "config", json={"operationDelaySeconds": 30})
    running = store.api.dicomStores().import_(name=store.name, body=body).execute()
    emulator.control("POST", f"operations/{running['name'].rsplit('/', 1)[1]}:fail", json={"code": 13})
    assert store.wait(running, timeout=5)["error"]["code"] == 13
