"""Request parsing as Google's JSON front end does it: both proto3 field spellings, unknown fields
and query parameters refused by name, lenient JSON, system parameters on every path (DICOMweb
included), partial responses, and 501 for methods the emulator deliberately does not serve."""

from __future__ import annotations

import io
import json
from typing import Any

import httplib2
import pydicom
import pytest
import requests
from google.cloud import storage
from googleapiclient.discovery import build

from tests.conformance.api.conftest import LOCATION, PROJECT, Emulators, StoreRef, stow
from tests.dicom_factory import instance


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def error_of(response: requests.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_snake_case_mime_type_and_filter_config_are_honoured(store: StoreRef, bucket: storage.Bucket) -> None:
    wanted, other = instance(), instance()
    stow(store, wanted, other)
    study, series, sop = uids(wanted)
    bucket.blob("filter.txt").upload_from_string(f"/studies/{study}/series/{series}/instances/{sop}\n")
    body = {
        "gcs_destination": {"uri_prefix": f"gs://{bucket.name}/out", "mime_type": "image/png"},
        "filter_config": {"resource_paths_gcs_uri": f"gs://{bucket.name}/filter.txt"},
    }

    operation = requests.post(store.url(":export"), json=body, timeout=10).json()
    done = store.wait(operation["name"])

    assert "error" not in done and done["metadata"]["counter"] == {"success": "1"}
    assert [b.name for b in bucket.list_blobs(prefix="out/")] == [f"out/{study}/{series}/{sop}.png"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"gcsDestination": {"uriPrefix": "gs://b/out"}, "filterConfg": {}},
            None,
            'Invalid JSON payload received. Unknown name "filterConfg": Cannot find field.',
        ),
        (
            {"gcsDestination": {"uriPrefix": "gs://b/out", "mimetype": "image/png"}},
            "gcs_destination",
            "Invalid JSON payload received. Unknown name \"mimetype\" at 'gcs_destination': Cannot find field.",
        ),
        (
            {"gcsDestination": {"uriPrefix": "gs://b/out"}, "filterConfig": {"resourcePathsGcsUri": 5}},
            "filter_config.resource_paths_gcs_uri",
            "Invalid value at 'filter_config.resource_paths_gcs_uri' (TYPE_STRING), 5",
        ),
    ],
)
def test_unknown_or_mistyped_fields_are_a_400_naming_them(
    store: StoreRef, body: dict[str, Any], field: str | None, message: str
) -> None:
    response = requests.post(store.url(":export"), json=body, timeout=10)

    assert response.status_code == 400
    error = error_of(response)
    assert error["status"] == "INVALID_ARGUMENT" and error["message"] == message
    violation = error["details"][0]["fieldViolations"][0]
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert violation.get("field") == field and violation["description"] == message
    # Nothing started: the dataset has no export operation.
    exports = requests.get(
        f"{store.base}/v1/{store.dataset}/operations",
        params={"filter": 'metadata.api_method_name:"ExportDicomData"'},
        timeout=10,
    ).json()
    assert exports == {}


def test_unknown_enum_value_is_a_400(store: StoreRef) -> None:
    body = {"gcsSource": {"uri": "gs://b/x.dcm"}, "blobStorageSettings": {"blobStorageClass": "GLACIER"}}

    response = requests.post(store.url(":import", "v1beta1"), json=body, timeout=10)

    assert response.status_code == 400
    assert "blob_storage_settings.blob_storage_class" in error_of(response)["message"]


def test_the_same_field_in_both_spellings_is_a_400(store: StoreRef) -> None:
    body = {"gcsDestination": {"uriPrefix": "gs://b/a"}, "gcs_destination": {"uriPrefix": "gs://b/b"}}

    response = requests.post(store.url(":export"), json=body, timeout=10)

    assert response.status_code == 400 and "gcs_destination" in error_of(response)["message"]


def test_an_unknown_query_parameter_is_a_400(emulators: Emulators) -> None:
    url = f"{emulators.healthcare}/v1/projects/{PROJECT}/locations/{LOCATION}/datasets"

    response = requests.get(url, params={"page_size": "3"}, timeout=10)

    assert response.status_code == 400
    assert error_of(response)["message"] == (
        'Invalid JSON payload received. Unknown name "page_size": Cannot bind query parameter. '
        "Field 'page_size' could not be found in request message."
    )


def test_a_body_that_is_not_an_object_is_a_400(store: StoreRef) -> None:
    response = requests.post(store.url(":export"), data=b"[1, 2]", timeout=10)

    assert response.status_code == 400
    assert "Root element must be a message" in error_of(response)["message"]


def test_system_parameters_on_dicomweb_paths_as_google_api_python_client_sends_them(
    emulators: Emulators, store: StoreRef
) -> None:
    data = instance()
    stow(store, data)
    study = uids(data)[0]
    service = build(
        "healthcare",
        "v1",
        client_options={"api_endpoint": emulators.healthcare},
        http=httplib2.Http(),
        static_discovery=True,
    )
    stores = service.projects().locations().datasets().dicomStores()

    # The client adds alt=json to every request; prettyPrint and fields are system parameters too.
    request = stores.searchForStudies(parent=store.name, dicomWebPath="studies")
    request.uri += "&prettyPrint=false&fields=x&quotaUser=me&%24.xgafv=2"
    found = request.execute()

    assert [s["0020000D"]["Value"][0] for s in found] == [study]


def test_pretty_print_and_fields(emulators: Emulators, store: StoreRef) -> None:
    url = store.url()

    pretty = requests.get(url, timeout=10).text
    compact = requests.get(url, params={"prettyPrint": "false"}, timeout=10).text
    partial = requests.get(
        f"{emulators.healthcare}/v1/{store.dataset}/dicomStores", params={"fields": "dicomStores/name"}
    )

    assert "\n  " in pretty and "\n  " not in compact.strip()
    assert json.loads(pretty) == json.loads(compact)
    assert partial.json() == {"dicomStores": [{"name": store.name}]}


def test_alt_proto_is_not_emulated(store: StoreRef) -> None:
    response = requests.get(store.url(), params={"alt": "proto"}, timeout=10)

    assert response.status_code == 501 and error_of(response)["status"] == "UNIMPLEMENTED"


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("POST", ":deidentify", {"destinationStore": "x"}),
        ("POST", "/../../fhirStores?fhirStoreId=f", {}),
        ("PUT", "/dicomWeb/studies", None),
    ],
)
def test_methods_not_emulated_answer_501_naming_them(
    store: StoreRef, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    url = store.url(suffix, "v1beta1")
    if "/../../" in suffix:
        url = f"{store.base}/v1beta1/{store.dataset}/fhirStores?fhirStoreId=f"

    response = requests.request(method, url, json=body, timeout=10)

    assert response.status_code == 501, response.text
    error = error_of(response)
    assert error["status"] == "UNIMPLEMENTED" and "is not emulated" in error["message"]
    assert "healthcare.projects.locations.datasets." in error["message"]
