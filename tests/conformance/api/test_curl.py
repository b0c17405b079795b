"""The curl samples of Google's "Import and export DICOM data using Cloud Storage" how-to, run with
the real curl: command lines and bodies verbatim, placeholders substituted. The endpoint
`https://healthcare.googleapis.com` becomes the emulator's URL and `$(gcloud auth ... print-access-token)`
a fixed token (nothing here can mint a Google token offline; the emulator does not check it).
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from google.cloud import storage

from tests.conformance.api.conftest import LOCATION, PROJECT, TOKEN, StoreRef, stow
from tests.dicom_factory import instance

# Request bodies and command lines as printed in the how-to.
SEED_IMPORT_BODY = '{ "gcsSource": { "uri": "gs://BUCKET/PATH/TO/FILE.dcm" } }'
SEED_IMPORT = """curl -X POST \\
-H "Authorization: Bearer $(gcloud auth print-access-token)" \\
-H "Content-Type: application/json" \\
-d @request.json \\
"https://healthcare.googleapis.com/v1/projects/PROJECT_ID/locations/LOCATION/datasets/DATASET_ID/dicomStores/DICOM_STORE_ID:import\""""
SEED_IMPORT_CLASS_BODY = (
    '{ "gcsSource": { "uri": "gs://BUCKET/PATH/TO/FILE.dcm" }, '
    '"blob_storage_settings": { "blob_storage_class": "STORAGE_CLASS" } }'
)
SEED_IMPORT_CLASS = """curl -X POST \\
-H "Authorization: Bearer $(gcloud auth print-access-token)" \\
-H "Content-Type: application/json" \\
-d @request.json \\
"https://healthcare.googleapis.com/v1beta1/projects/PROJECT_ID/locations/LOCATION/datasets/DATASET_ID/dicomStores/DICOM_STORE_ID:import\""""
SEED_GET_OPERATION = """curl -X GET \\
-H "Authorization: Bearer $(gcloud auth print-access-token)" \\
"https://healthcare.googleapis.com/v1/projects/PROJECT_ID/locations/LOCATION/datasets/DATASET_ID/operations/OPERATION_ID\""""
SEED_EXPORT = """curl -X POST \\
    -H "Authorization: Bearer $(gcloud auth application-default print-access-token)" \\
    -H "Content-Type: application/json; charset=utf-8" \\
    --data "{
      'gcsDestination': {
        'uriPrefix': 'gs://BUCKET/DIRECTORY'
      }
    }" "https://healthcare.googleapis.com/v1/projects/PROJECT_ID/locations/LOCATION/datasets/DATASET_ID/dicomStores/DICOM_STORE_ID:export\""""
SEED_FILTERED_EXPORT = """curl -X POST \\
    -H "Authorization: Bearer $(gcloud auth application-default print-access-token)" \\
    -H "Content-Type: application/json; charset=utf-8" \\
    --data "{
      'gcsDestination': {
        'uriPrefix': 'gs://BUCKET/DIRECTORY'
      },
      'filterConfig': {
        'resourcePathsGcsUri': 'gs://BUCKET/DIRECTORY/FILTER_FILE'
      }
    }" "https://healthcare.googleapis.com/v1beta1/projects/PROJECT_ID/locations/REGION/datasets/DATASET_ID/dicomStores/DICOM_STORE_ID:export\""""
# The PowerShell sample's body of the filtered export: its closing brace is missing.
SEED_POWERSHELL_FILTERED_BODY = (
    "{ 'gcsDestination': { 'uriPrefix': 'gs://BUCKET/DIRECTORY' }, "
    "'filterConfig': { 'resourcePathsGcsUri': 'gs://BUCKET/DIRECTORY/FILTER_FILE' }"
)


class Curl:
    def __init__(self, base: str, store: StoreRef, workdir: Path) -> None:
        self.base = base
        self.store = store
        self.workdir = workdir

    def run(self, command: str, request_json: str | None = None, **placeholders: str) -> tuple[int, Any]:
        """Runs a curl sample (no shell); returns (HTTP status, JSON body)."""
        values = {
            "https://healthcare.googleapis.com": self.base,
            "$(gcloud auth application-default print-access-token)": TOKEN,
            "$(gcloud auth print-access-token)": TOKEN,
            "PROJECT_ID": PROJECT,
            "DATASET_ID": self.store.dataset_id,
            "DICOM_STORE_ID": self.store.store_id,
            "LOCATION": LOCATION,
            "REGION": LOCATION,
            **placeholders,
        }
        for placeholder in sorted(values, key=len, reverse=True):
            command = command.replace(placeholder, values[placeholder])
            if request_json is not None:
                request_json = request_json.replace(placeholder, values[placeholder])
        if request_json is not None:
            (self.workdir / "request.json").write_text(request_json)
        argv = shlex.split(command.replace("\\\n", " "))
        assert argv[0] == "curl"
        result = subprocess.run(
            [*argv, "--silent", "--show-error", "--write-out", "\n%{http_code}"],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        body, _, status = result.stdout.rpartition("\n")
        return int(status), json.loads(body) if body.strip() else None

    def wait(self, operation: dict[str, Any]) -> dict[str, Any]:
        return self.store.wait(operation["name"])


@pytest.fixture
def curl(store: StoreRef, tmp_path: Path) -> Curl:
    return Curl(store.base, store, tmp_path)


def test_seed_import_body_and_operation_get(curl: Curl, bucket: storage.Bucket) -> None:
    bucket.blob("PATH/TO/FILE.dcm").upload_from_string(instance())

    status, operation = curl.run(SEED_IMPORT, SEED_IMPORT_BODY, BUCKET=bucket.name)
    assert status == 200, operation
    curl.wait(operation)
    status, done = curl.run(SEED_GET_OPERATION, OPERATION_ID=operation["name"].rsplit("/", 1)[1])

    assert status == 200 and done["done"] is True
    assert done["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert done["metadata"]["counter"] == {"success": "1"}
    assert "response" in done and "error" not in done


def test_seed_import_with_snake_case_storage_class_stores_in_that_class(
    curl: Curl, store: StoreRef, bucket: storage.Bucket
) -> None:
    data = instance()
    bucket.blob("PATH/TO/FILE.dcm").upload_from_string(data)

    status, operation = curl.run(
        SEED_IMPORT_CLASS, SEED_IMPORT_CLASS_BODY, BUCKET=bucket.name, STORAGE_CLASS="COLDLINE"
    )
    assert status == 200, operation
    assert "error" not in curl.wait(operation)

    search = search_instances(store)
    study, series, sop = (search[0][tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018"))
    info = curl_json(store, f"/dicomWeb/studies/{study}/series/{series}/instances/{sop}:getStorageInfo")
    assert info["blobStorageInfo"]["storageClass"] == "COLDLINE"


def test_seed_export_with_single_quoted_json(curl: Curl, store: StoreRef, bucket: storage.Bucket) -> None:
    stow(store, instance(), instance())

    status, operation = curl.run(SEED_EXPORT, BUCKET=bucket.name)

    assert status == 200, operation
    done = curl.wait(operation)
    assert done["metadata"]["counter"] == {"success": "2"} and "error" not in done
    assert len([b for b in bucket.list_blobs(prefix="DIRECTORY/") if b.name.endswith(".dcm")]) == 2


def test_seed_filtered_export_with_single_quoted_json(curl: Curl, store: StoreRef, bucket: storage.Bucket) -> None:
    wanted = instance()
    stow(store, wanted, instance())
    uid = study_uid(wanted)
    bucket.blob("DIRECTORY/FILTER_FILE").upload_from_string(f"/studies/{uid}\n")

    status, operation = curl.run(SEED_FILTERED_EXPORT, BUCKET=bucket.name)

    assert status == 200, operation
    done = curl.wait(operation)
    assert done["metadata"]["apiMethodName"].endswith("v1beta1.dicom.DicomService.ExportDicomData")
    exported = [b.name for b in bucket.list_blobs(prefix="DIRECTORY/") if b.name.endswith(".dcm")]
    assert len(exported) == 1 and exported[0].startswith(f"DIRECTORY/{uid}/")


def test_seed_powershell_filtered_body_misses_a_brace_and_is_refused(curl: Curl, bucket: storage.Bucket) -> None:
    command = SEED_FILTERED_EXPORT.split("--data")[0] + (
        f'--data "{SEED_POWERSHELL_FILTERED_BODY}" '
        '"https://healthcare.googleapis.com/v1beta1/projects/PROJECT_ID/locations/REGION/datasets/DATASET_ID'
        '/dicomStores/DICOM_STORE_ID:export"'
    )

    status, body = curl.run(command, BUCKET=bucket.name)

    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert body["error"]["message"].startswith("Invalid JSON payload received.")
    assert not list(bucket.list_blobs())


# --- helpers -------------------------------------------------------------------------------------


def curl_json(store: StoreRef, suffix: str) -> Any:
    result = subprocess.run(
        ["curl", "--silent", "--fail", store.url(suffix)], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(result.stdout)


def search_instances(store: StoreRef) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = curl_json(store, "/dicomWeb/instances")
    assert found, f"no instances in {store.name}"
    return found


def study_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
