"""Pure logic of the Healthcare emulator's JSON front end and management methods, with plain inputs:
body checking against the discovery documents, list filters, partial responses, IAM bindings,
store patches, page tokens."""

from __future__ import annotations

from typing import Any

import pytest

from localcloud.healthcare import iam, management, sysparams
from localcloud.healthcare.body import parse_json, parse_request
from localcloud.healthcare.discovery import discovery, snake_case
from localcloud.healthcare.errors import ApiError
from localcloud.healthcare.listfilter import compile_filter

V1 = discovery("v1")


def refused(call: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call()
    return raised.value


# --- bodies --------------------------------------------------------------------------------------


def test_single_quoted_json_is_read_as_google_reads_it() -> None:
    assert parse_json(b"{ 'gcsDestination': { 'uriPrefix': 'gs://b/d' } }") == {
        "gcsDestination": {"uriPrefix": "gs://b/d"}
    }


def test_both_spellings_come_out_camel_case() -> None:
    body = b'{"gcs_destination": {"uri_prefix": "gs://b", "mimeType": "image/png"}, "filter_config": {}}'

    parsed = parse_request(body, V1, "ExportDicomDataRequest")

    assert parsed == {"gcsDestination": {"uriPrefix": "gs://b", "mimeType": "image/png"}, "filterConfig": {}}


def test_all_unknown_fields_are_named_with_their_paths() -> None:
    body = b'{"gcsDestination": {"uriPrefx": "gs://b"}, "nope": 1}'

    error = refused(lambda: parse_request(body, V1, "ExportDicomDataRequest"))

    assert error.http_code == 400
    assert error.message.split("\n") == [
        "Invalid JSON payload received. Unknown name \"uriPrefx\" at 'gcs_destination': Cannot find field.",
        'Invalid JSON payload received. Unknown name "nope": Cannot find field.',
    ]
    assert [v.get("field") for v in error.details[0]["fieldViolations"]] == ["gcs_destination", None]


def test_enums_integers_maps_and_nulls() -> None:
    body = b'{"labels": {"a": "b"}, "notificationConfigs": [{"pubsubTopic": "projects/p/topics/t"}], "name": null}'
    assert parse_request(body, V1, "DicomStore") == {
        "labels": {"a": "b"},
        "notificationConfigs": [{"pubsubTopic": "projects/p/topics/t"}],
    }
    assert parse_request(b'{"blobStorageClass": 2}', V1, "BlobStorageSettings") == {"blobStorageClass": "NEARLINE"}
    assert refused(lambda: parse_request(b'{"labels": {"a": 1}}', V1, "DicomStore")).http_code == 400
    assert refused(lambda: parse_request(b'{"sendForBulkImport": "yes"}', V1, "NotificationConfig")).http_code == 400


def test_malformed_json_is_a_400_in_googles_words() -> None:
    error = refused(lambda: parse_json(b"{ 'a': { 'b': 1 }"))

    assert error.message.startswith("Invalid JSON payload received.")


def test_snake_case_is_the_proto_name() -> None:
    assert [snake_case(n) for n in ("resourcePathsGcsUri", "uriPrefix", "labels")] == [
        "resource_paths_gcs_uri",
        "uri_prefix",
        "labels",
    ]


# --- discovery -----------------------------------------------------------------------------------


def test_discovery_matches_paths_to_methods_preferring_literals_and_verbs() -> None:
    store = "projects/p/locations/l/datasets/d/dicomStores/s"

    assert V1.match("GET", f"{store}:getIamPolicy").id == "datasets.dicomStores.getIamPolicy"  # type: ignore[union-attr]
    assert V1.match("GET", store).id == "datasets.dicomStores.get"  # type: ignore[union-attr]
    assert V1.match("POST", "projects/p/locations/l/datasets/d/fhirStores/f/fhir/_search").id == (  # type: ignore[union-attr]
        "datasets.fhirStores.fhir.search"
    )
    assert V1.match("GET", "not/a/path") is None


# --- list filters --------------------------------------------------------------------------------

OPERATION = {
    "name": "projects/p/locations/l/datasets/d/operations/1",
    "done": True,
    "metadata": {"apiMethodName": "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData", "counter": {}},
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("done = true", True),
        ("done = false", False),
        ("NOT done = true", False),
        ("-done = true", False),
        ('metadata.api_method_name = "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"', True),
        ("metadata.apiMethodName:ImportDicomData", True),
        ("metadata.apiMethodName:ExportDicomData OR done = true", True),
        ("metadata.apiMethodName:ExportDicomData AND done = true", False),
        ("done = true metadata.apiMethodName:Export", False),  # juxtaposition is AND
        ("(done = false OR name:operations/1) AND done = true", True),
        ("error:*", False),
        ("metadata:*", True),
    ],
)
def test_filter_expressions(expression: str, expected: bool) -> None:
    predicate = compile_filter(expression, lambda path: path[0] in ("done", "metadata", "name", "error"))

    assert predicate(OPERATION) is expected


@pytest.mark.parametrize("expression", ["done =", "(done = true", "colour = red", "done = true)"])
def test_bad_filters_are_a_400(expression: str) -> None:
    assert refused(lambda: compile_filter(expression, lambda path: path[0] == "done")).http_code == 400


# --- system parameters ---------------------------------------------------------------------------


def test_fields_selects_a_partial_response() -> None:
    value = {"operations": [{"name": "a", "done": True, "metadata": {"x": 1, "y": 2}}], "nextPageToken": "t"}

    assert sysparams.select(value, sysparams.parse_fields("operations(name,metadata/x)")) == {
        "operations": [{"name": "a", "metadata": {"x": 1}}]
    }
    assert sysparams.select(value, sysparams.parse_fields("nextPageToken")) == {"nextPageToken": "t"}
    assert refused(lambda: sysparams.parse_fields("a(b")).http_code == 400


# --- IAM bindings, store patches, paging ----------------------------------------------------------


def test_bindings_of_one_role_are_merged_and_members_deduplicated() -> None:
    merged = iam._checked_bindings(
        [
            {"role": "roles/viewer", "members": ["user:a@x.y", "user:b@x.y"]},
            {"role": "roles/viewer", "members": ["user:a@x.y", "group:g@x.y"]},
        ]
    )

    assert merged == [{"role": "roles/viewer", "members": ["user:a@x.y", "user:b@x.y", "group:g@x.y"]}]


def test_patch_takes_masked_fields_only_and_clears_absent_ones() -> None:
    current = {"name": "n", "labels": {"a": "b"}, "notificationConfig": {"pubsubTopic": "t", "sendForBulkImport": True}}

    updated = management.patched_store(current, {"labels": {"c": "d"}}, "notification_config.send_for_bulk_import")

    assert updated == {"labels": {"a": "b"}, "notificationConfig": {"pubsubTopic": "t"}}
    assert refused(lambda: management.patched_store(current, {}, "")).http_code == 400


def test_proto3_json_leaves_defaults_out_but_keeps_set_messages() -> None:
    assert management.proto3_json({"notificationConfig": {"sendForBulkImport": False}, "labels": {}, "x": ""}) == {
        "notificationConfig": {},
        "labels": {},
    }


def test_page_tokens_round_trip_and_are_opaque() -> None:
    items = list(range(5))
    first = management.page(items, 0, 2, "items")
    offset, size = management.page_request({"pageToken": first["nextPageToken"], "pageSize": "2"})

    assert first["items"] == [0, 1] and (offset, size) == (2, 2)
    assert not first["nextPageToken"].isdigit()
    assert management.page(items, 4, 2, "items") == {"items": [4]}
    assert management.page_request({"pageSize": "5000"}) == (0, 1000)
