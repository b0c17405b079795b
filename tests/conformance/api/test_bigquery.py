"""BigQuery destinations of the Healthcare emulator, read back with google-cloud-bigquery from the
local BigQuery: `export` to `bigqueryDestination` (write dispositions, `force`, filter files),
`streamConfigs` (STOW and import), and storage classes set by `setBlobStorageSettings`."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pydicom
import pytest
import requests
from google.cloud import bigquery, storage

from localcloud import bigquery as local_bigquery
from tests.conformance.api.conftest import PROJECT, Emulators, StoreRef, create_store, stow, wait_for
from tests.dicom_factory import instance

SEED_SQL = (
    "SELECT CONCAT('/studies/', StudyInstanceUID, '/series/', SeriesInstanceUID, "
    "'/instances/', SOPInstanceUID) AS path FROM `{table}`"
)


@pytest.fixture
def bq(emulators: Emulators) -> bigquery.Client:
    return local_bigquery.client(emulators.bigquery, PROJECT)


@pytest.fixture
def dataset(bq: bigquery.Client) -> str:
    name = f"{PROJECT}.dicom_{uuid.uuid4().hex[:8]}"
    bq.create_dataset(name)
    return name


def path_of(data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def selected(bq: bigquery.Client, table: str) -> list[str]:
    return sorted(row.path for row in bq.query(SEED_SQL.format(table=table)).result())


def export(store: StoreRef, table: str, filter_uri: str | None = None, **destination: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"bigqueryDestination": {"tableUri": f"bq://{table}", **destination}}
    if filter_uri:
        body["filterConfig"] = {"resourcePathsGcsUri": filter_uri}
    response = requests.post(store.url(":export"), json=body, timeout=10)
    assert response.status_code == 200, response.text
    return store.wait(response.json()["name"])


def three_instances() -> list[bytes]:
    study = pydicom.uid.generate_uid()
    series = [pydicom.uid.generate_uid(), pydicom.uid.generate_uid()]
    return [
        instance(study, series[0], modality="CT"),
        instance(study, series[0], modality="CT"),
        instance(study, series[1], modality="MR"),
    ]


def test_export_writes_one_row_per_instance_in_googles_flattened_layout(
    store: StoreRef, bq: bigquery.Client, dataset: str
) -> None:
    instances = three_instances()
    stow(store, *instances)
    table = f"{dataset}.instances"

    done = export(store, table, schemaFlattened={})

    assert "error" not in done and done["metadata"]["counter"] == {"success": "3"}
    assert done["metadata"]["apiMethodName"].endswith("DicomService.ExportDicomData")
    assert selected(bq, table) == sorted(path_of(d) for d in instances)
    columns = {f.name: f.field_type for f in bq.get_table(table).schema}
    assert columns["Modality"] == "STRING" and columns["StudyDate"] == "DATE"
    assert columns["BlobStorageSize"] == "INTEGER" and columns["StorageClass"] == "STRING"
    rows = list(bq.query(f"SELECT Modality, StorageClass, BlobStorageSize, Type FROM `{table}`").result())
    assert sorted(r.Modality for r in rows) == ["CT", "CT", "MR"]
    assert {(r.StorageClass, r.Type) for r in rows} == {("STANDARD", "INSERT")}
    assert sorted(r.BlobStorageSize for r in rows) == sorted(len(d) for d in instances)


def test_export_honours_the_filter_file(
    store: StoreRef, bq: bigquery.Client, dataset: str, bucket: storage.Bucket
) -> None:
    instances = three_instances()
    stow(store, *instances)
    mr_series = path_of(instances[2]).rsplit("/instances/", 1)[0]
    bucket.blob("filter.txt").upload_from_string(f"{mr_series}\n{path_of(instances[0])}\n")
    table = f"{dataset}.filtered"

    done = export(store, table, filter_uri=f"gs://{bucket.name}/filter.txt")

    assert "error" not in done and done["metadata"]["counter"] == {"success": "2"}
    assert selected(bq, table) == sorted([path_of(instances[0]), path_of(instances[2])])


def test_write_dispositions_and_force(store: StoreRef, bq: bigquery.Client, dataset: str) -> None:
    instances = three_instances()[:2]
    stow(store, *instances)
    table = f"{dataset}.dispositions"
    assert "error" not in export(store, table)  # WRITE_EMPTY on a new table

    refused = export(store, table)  # unspecified = WRITE_EMPTY: the table has rows now
    appended = export(store, table, writeDisposition="WRITE_APPEND")
    after_append = len(selected(bq, table))
    truncated = export(store, table, writeDisposition="WRITE_TRUNCATE")
    after_truncate = len(selected(bq, table))
    forced = export(store, table, force=True)  # deprecated: true = WRITE_TRUNCATE
    after_force = len(selected(bq, table))
    not_forced = export(store, table, force=False)

    assert refused["error"]["code"] == 9 and "not empty" in refused["error"]["message"]
    assert "error" not in appended and after_append == 4
    assert "error" not in truncated and after_truncate == 2
    assert "error" not in forced and after_force == 2
    assert not_forced["error"]["code"] == 9


def test_bad_bigquery_destinations_are_refused(store: StoreRef, bq: bigquery.Client) -> None:
    stow(store, instance())

    def status(body: dict[str, Any]) -> int:
        return requests.post(store.url(":export"), json=body, timeout=10).status_code

    assert status({"bigqueryDestination": {"tableUri": "bigquery://x.y.z"}}) == 400
    assert status({"bigqueryDestination": {"tableUri": "bq://other-project.d.t"}}) == 400
    assert status({"bigqueryDestination": {"tableUri": f"bq://{PROJECT}.d.t", "writeDisposition": "NOPE"}}) == 400
    both = {"bigqueryDestination": {"tableUri": f"bq://{PROJECT}.d.t"}, "gcsDestination": {"uriPrefix": "gs://b"}}
    assert status(both) == 400
    missing_dataset = export(store, f"{PROJECT}.no_such_dataset_{uuid.uuid4().hex[:6]}.t")
    assert missing_dataset["error"]["code"] == 5


def test_stream_configs_write_every_stored_instance(
    emulators: Emulators, bq: bigquery.Client, dataset: str, bucket: storage.Bucket
) -> None:
    table = f"{dataset}.stream"
    store = create_store(emulators.healthcare, streamConfigs=[{"bigqueryDestination": {"tableUri": f"bq://{table}"}}])
    first, second = instance(modality="CT"), instance(modality="MR")
    stow(store, first)
    wait_for(lambda: _count(bq, dataset, "stream") == 1, what="the STOW row")
    bucket.blob("in/second.dcm").upload_from_string(second)
    import_all(store, bucket)
    wait_for(lambda: _count(bq, dataset, "stream") == 2, what="the imported row")
    assert selected(bq, table) == sorted([path_of(first), path_of(second)])

    import_all(store, bucket)  # a duplicate is ignored, not stored again: no second row
    third = instance()
    stow(store, third)  # rows stream in order, so the third row comes after any duplicate's
    wait_for(lambda: _count(bq, dataset, "stream") >= 3, what="the third row")
    assert selected(bq, table) == sorted(path_of(d) for d in (first, second, third))


def import_all(store: StoreRef, bucket: storage.Bucket) -> None:
    started = requests.post(store.url(":import"), json={"gcsSource": {"uri": f"gs://{bucket.name}/in/**"}}, timeout=10)
    assert started.status_code == 200, started.text
    assert "error" not in store.wait(started.json()["name"])


def test_stream_configs_set_by_patch_apply_to_later_instances(
    store: StoreRef, bq: bigquery.Client, dataset: str
) -> None:
    before = instance()
    stow(store, before)
    table = f"{dataset}.patched"
    patched = requests.patch(
        store.url(),
        params={"updateMask": "streamConfigs"},
        json={"streamConfigs": [{"bigqueryDestination": {"tableUri": f"bq://{table}"}}]},
        timeout=10,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["streamConfigs"][0]["bigqueryDestination"]["tableUri"] == f"bq://{table}"
    after = instance()
    stow(store, after)

    wait_for(lambda: _count(bq, dataset, "patched") == 1, what="the row of the later instance")
    assert selected(bq, table) == [path_of(after)]


def test_storage_classes_set_per_series_show_in_storage_info_and_exports(
    store: StoreRef, bq: bigquery.Client, dataset: str, bucket: storage.Bucket
) -> None:
    instances = three_instances()
    stow(store, *instances)
    ct_series = path_of(instances[0]).rsplit("/instances/", 1)[0]
    bucket.blob("series.txt").upload_from_string(ct_series + "\n")

    operation = requests.post(
        store.url(":setBlobStorageSettings"),
        json={
            "blobStorageSettings": {"blobStorageClass": "ARCHIVE"},
            "filterConfig": {"resourcePathsGcsUri": f"gs://{bucket.name}/series.txt"},
        },
        timeout=10,
    ).json()
    assert store.wait(operation["name"])["metadata"]["counter"] == {"success": "2"}
    table = f"{dataset}.classes"
    assert "error" not in export(store, table)

    def blob_info(data: bytes) -> dict[str, str]:
        url = store.url(path_of(data).replace("/studies", "/dicomWeb/studies", 1) + ":getStorageInfo")
        info: dict[str, str] = requests.get(url, timeout=10).json()["blobStorageInfo"]
        return info

    assert [blob_info(d)["storageClass"] for d in instances] == ["ARCHIVE", "ARCHIVE", "STANDARD"]
    # RFC 3339 UTC with a fixed width, so later times sort later as text.
    moved, kept = blob_info(instances[0])["storageClassUpdateTime"], blob_info(instances[2])["storageClassUpdateTime"]
    assert moved > kept
    rows = bq.query(f"SELECT SOPInstanceUID, StorageClass FROM `{table}`").result()
    by_sop = {r.SOPInstanceUID: r.StorageClass for r in rows}
    assert [by_sop[path_of(d).rsplit("/", 1)[1]] for d in instances] == ["ARCHIVE", "ARCHIVE", "STANDARD"]
    archived = bq.query(f"SELECT COUNT(*) AS n FROM `{table}` WHERE StorageClass = 'ARCHIVE'").result()
    assert next(iter(archived)).n == 2


def _count(bq: bigquery.Client, dataset: str, table: str) -> int:
    try:
        return int(next(iter(bq.query(f"SELECT COUNT(*) AS n FROM `{dataset}.{table}`").result())).n)
    except Exception:  # noqa: BLE001 - the table appears with the first streamed row
        return 0
