"""The public contracts: schemas, the examples of docs/contracts.md, and the code that emits and parses.

- Every JSON example of docs/contracts.md is validated against the schema its fence names.
- Every completion event the code can build (a spread of operation shapes) validates.
- The export-request schema and `parse_export_request` agree on a corpus and on seeded
  mutations of it, except where docs/contracts.md says they differ (tested here too).
"""

from __future__ import annotations

import itertools
import json
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from functions.core.completion import (
    ObjectCounts,
    TrackedOperation,
    build_completion_event,
    redrive_noop_event,
    rejected_event,
)
from functions.core.errors import InvalidExportRequestError
from functions.core.export_request import SUPPORTED_MIME_TYPES, parse_export_request
from functions.exports.redrive import parse_redrive_request
from tests.contracts import (
    COMPLETION_ATTRIBUTES,
    COMPLETION_EVENT,
    EXPORT_REQUEST,
    REDRIVE_REQUEST,
    SCHEMA_NAMES,
    errors,
    schema,
    validate_completion_message,
    validator,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
_FENCE = re.compile(r"^```json ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TAGS = {
    "export-request": EXPORT_REQUEST,
    "invalid-export-request": EXPORT_REQUEST,
    "completion-event": COMPLETION_EVENT,
    "completion-attributes": COMPLETION_ATTRIBUTES,
    "redrive-request": REDRIVE_REQUEST,
}

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
DATASET = "projects/p/locations/l/datasets/d"


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_are_draft_2020_12_and_name_their_version(name: str) -> None:
    loaded = schema(name)
    validator(name)  # check_schema
    assert loaded["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    base, version = name.rsplit(".", 1)
    assert loaded["$id"] == f"urn:dicom-events:schema:{base}:{version}"
    assert loaded.get("additionalProperties") is False, "the contracts are closed"
    refs = re.findall(r'"\$ref": "([^"]*)"', json.dumps(loaded))
    assert all(ref.startswith("#/$defs/") for ref in refs), f"self-contained: no reference leaves the file {refs}"


def test_every_pattern_is_anchored_against_a_final_line_break() -> None:
    def patterns(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
            return found + [p for value in node.values() for p in patterns(value)]
        if isinstance(node, list):
            return [p for item in node for p in patterns(item)]
        return []

    for name in SCHEMA_NAMES:
        for pattern in patterns(schema(name)):
            if pattern.endswith("$(?!\\n)"):
                continue
            prefixes = ("^gs://", "^op-", "^rejected-", "^redrive-")
            assert "$" not in pattern and not pattern.startswith("^") or pattern in prefixes, (name, pattern)


def test_the_mime_types_of_the_schema_are_the_canonical_ones_the_function_produces() -> None:
    canonical = {mime if syntax is None else f"{mime}; transfer-syntax={syntax}"
                 for mime, syntaxes in SUPPORTED_MIME_TYPES.items() for syntax in syntaxes}
    assert set(schema(EXPORT_REQUEST)["properties"]["mimeType"]["enum"]) == canonical


# --------------------------------------------------------------------------- the documented examples


def _examples() -> list[tuple[str, Any]]:
    text = DOC.read_text(encoding="utf-8")
    found = [(tag, json.loads(body)) for tag, body in _FENCE.findall(text)]
    # Every ```json block is tagged, so none escapes validation.
    assert text.count("```json") == len(found)
    return found


def test_the_doc_has_examples_of_every_kind() -> None:
    tags = [tag for tag, _ in _examples()]
    assert set(tags) == set(TAGS), tags
    assert tags.count("export-request") >= 3 and tags.count("completion-event") >= 3


@pytest.mark.parametrize(("tag", "example"), _examples())
def test_every_documented_example_is_what_the_schema_and_the_code_say(tag: str, example: Any) -> None:
    problems = errors(TAGS[tag], example)
    data = json.dumps(example).encode()
    if tag == "invalid-export-request":
        assert problems, example
        with pytest.raises(InvalidExportRequestError):
            parse_export_request(data)
        return
    assert not problems, problems
    if tag == "export-request":
        assert parse_export_request(data).to_dict() == example  # the examples are in canonical form
    if tag == "redrive-request":
        assert parse_redrive_request(data).operation_id
    if tag == "completion-event":
        attributes = {key: example[key] for key in ("kind", "state", "dicomStore", "eventId")}
        validate_completion_message(data, attributes)


# --------------------------------------------------------------------------- every event the code builds


def _operations() -> list[dict[str, Any]]:
    errors_ = [None, {"code": 1, "message": "cancelled"}, {"code": 13, "message": "internal"},
               {"message": "no code"}, {"code": "7", "message": "string code"}, {"code": True},
               {"code": 3, "message": "x" * 5000}, "not an object"]
    counters = [None, {}, {"success": "3"}, {"success": "10", "failure": "2", "pending": "1"},
                {"success": -1, "failure": "garbage"}, {"failure": "99999999999999999999"}]
    times = [(None, None), ("2026-05-01T10:00:00Z", "2026-05-01T10:02:03.750123456Z"),
             ("2026-05-01T10:00:00+02:00", "2026-05-01T08:00:01Z"), ("2026-13-40T99:00:00Z", "yesterday"),
             ("2026-05-01T10:05:00Z", "2026-05-01T10:00:00Z")]
    methods = ["google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData",
               "google.cloud.healthcare.v1beta1.dicom.DicomService.ExportDicomData", None]
    ops = []
    for error, counter, (create, end), method in itertools.product(errors_, counters, times, methods):
        metadata: dict[str, Any] = {}
        for key, value in (("apiMethodName", method), ("createTime", create), ("endTime", end),
                           ("counter", counter)):
            if value is not None:
                metadata[key] = value
        if error is None and counter is None:
            metadata["logsUrl"] = "https://console.cloud.google.com/logs/query/x"
        op: dict[str, Any] = {"name": f"{DATASET}/operations/1", "done": True, "metadata": metadata}
        if error is not None:
            op["error"] = error
        ops.append(op)
    return ops


def _records() -> list[TrackedOperation]:
    names = [f"{DATASET}/operations/6786312487218733057", f"{DATASET}/operations/refused-20260101T000000000Z-1-00",
             f"{DATASET}/operations/odd id with spaces", f"{DATASET}/operations/" + "9" * 200]
    failed = [(), ("gs://up/a.dcm",), tuple(f"gs://up/{i}.dcm" for i in range(150))]
    records = []
    for name, objects in itertools.product(names, failed):
        records.append(TrackedOperation(name=name, kind="import", dicom_store=STORE, request_id="20260101T000000000Z-1",
                                        source="gs://up/in/**.dcm", failed_objects=objects,
                                        failed_objects_total=len(objects) + (5 if objects else 0)))
        records.append(TrackedOperation(name=name, kind="export", dicom_store=STORE, request_id="req:1",
                                        destination="gs://exports/" + "x" * 2000))
    for name in names:
        records.append(TrackedOperation(name=name, kind="redrive", dicom_store=STORE, request_id="fix-1",
                                        source="gs://state/staging/20260101T000000000000Z-redrive-0123/**",
                                        redrive_of=f"{DATASET}/operations/42", failed_objects=failed[1],
                                        failed_objects_total=1))
    records.append(TrackedOperation(name=names[0], kind=None, dicom_store=STORE))
    fate = {"object": "gs://up/a.dcm", "reason": "UID_CONFLICT", "message": "delete the stored instance first"}
    unknown = {"object": "gs://up/u.dcm", "reason": "UNREADABLE", "message": "could not be read"}
    for kind, counts in (("import", ObjectCounts(4, 2, 1, 1)), ("redrive", ObjectCounts(2, 0, 1, 1, held_back=1))):
        records.append(TrackedOperation(name=names[0], kind=kind, dicom_store=STORE, source="gs://up/in/**",
                                        redrive_of=f"{DATASET}/operations/42" if kind == "redrive" else None,
                                        failed_objects=("gs://up/a.dcm",), failed_objects_total=1, failures=(fate,),
                                        undecided=(unknown,), objects=counts))
    records.append(TrackedOperation(name=names[0], kind="import", dicom_store=STORE, source=None, request_id="",
                                    objects=ObjectCounts(0, 0, 0, 0)))
    records.append(TrackedOperation(name=names[0], kind="import", dicom_store=STORE, failed_objects_total=3))
    return records


def test_every_completion_event_the_code_builds_is_valid() -> None:
    built = 0
    states: set[str] = set()
    ops, records = _operations(), _records()
    # Every operation shape with some record, and every record with a spread of operations.
    pairs = [(op, records[i % len(records)]) for i, op in enumerate(ops)]
    pairs += [(ops[(i * 37 + j * 101) % len(ops)], record) for i, record in enumerate(records) for j in range(12)]
    for op, record in pairs:
        for cap in (100, 1):
            try:
                data, attributes = build_completion_event(op, record, failed_objects_cap=cap)
            except ValueError:
                # A kind that neither the record nor apiMethodName tells: no event (and no contract).
                assert record.kind is None
                continue
            event = validate_completion_message(data, attributes)
            states.add(event["state"])
            built += 1
    assert built > 1000
    assert states == {"SUCCEEDED", "SUCCEEDED_WITH_ERRORS", "FAILED", "CANCELLED"}


@pytest.mark.parametrize("reason", ["unknown field(s) 'x'", "r" * 3000, "ünïcødé \u2028 reason"])
@pytest.mark.parametrize("request_id", [None, "req-1", "bad id with spaces", "x" * 300])
@pytest.mark.parametrize("message_id", [None, "1234567890"])
@pytest.mark.parametrize("destination", [None, "gs://exports/a", "s3://nowhere", "", "d" * 5000, "gs://x/\ud800"])
def test_every_rejected_event_is_valid(reason: str, request_id: str | None, message_id: str | None,
                                       destination: str | None) -> None:
    for now in (datetime(2026, 5, 1, 10, 0, tzinfo=UTC), datetime(2026, 5, 1, 10, 0),
                datetime(2026, 5, 1, 12, 0, 0, 999999, tzinfo=timezone(timedelta(hours=2)))):
        try:
            data, attributes = rejected_event(reason, request_id=request_id, message_id=message_id,
                                              destination=destination, dicom_store=STORE, now=now)
        except ValueError:
            assert message_id is None and request_id not in ("req-1",)
            continue
        event = validate_completion_message(data, attributes)
        assert event["state"] == "REJECTED"


@pytest.mark.parametrize("request_id", [None, "fix-1", "bad id"])
def test_every_redrive_event_without_an_operation_is_valid(request_id: str | None) -> None:
    now = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    data, attributes = redrive_noop_event("all 3 objects of the receipt are in the store; nothing to redrive",
                                          request_id=request_id, message_id="77", redrive_of=f"{DATASET}/operations/42",
                                          dicom_store=STORE, now=now)
    assert validate_completion_message(data, attributes)["state"] == "SUCCEEDED"
    data, attributes = rejected_event("no receipt for operation 42", request_id=request_id, message_id="77",
                                      destination=None, dicom_store=STORE, now=now, kind="redrive")
    assert validate_completion_message(data, attributes)["kind"] == "redrive"


@pytest.mark.parametrize("body", [
    {"action": "redrive", "receipt": "op-1", "requestId": "fix-1"},
    {"action": "redrive", "receipt": "gs://state/prefix/receipts/123.json"},
    {"action": "redrive", "receipt": "projects/p/locations/l/datasets/d/operations/9"},
    {"action": "redrive"},
    {"action": "redrive", "receipt": "a/b/c"},
    {"action": "redrive", "receipt": "1", "extra": True},
    {"action": "export", "receipt": "1"},
    {"action": "redrive", "receipt": "1", "requestId": "has space"},
])
def test_the_redrive_schema_and_parser_agree(body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    try:
        parse_redrive_request(data)
        parsed = True
    except InvalidExportRequestError:
        parsed = False
    assert (errors(REDRIVE_REQUEST, body) == []) is parsed, body


def test_the_event_schema_refuses_what_the_contract_rules_out() -> None:
    base = {"eventId": "op-1", "kind": "import", "state": "SUCCEEDED", "operation": f"{DATASET}/operations/1",
            "dicomStore": STORE, "counters": {"success": 1, "failure": 0, "pending": 0}}
    assert errors(COMPLETION_EVENT, base) == []
    broken = [
        {**base, "counters": {"success": "1", "failure": 0, "pending": 0}},  # counters are integers
        {**base, "state": "SUCCEEDED", "counters": {"success": 1, "failure": 2, "pending": 0}},
        {**base, "state": "SUCCEEDED_WITH_ERRORS"},  # no failure
        {**base, "state": "FAILED"},  # no error
        {**base, "state": "CANCELLED", "error": {"code": 13, "message": "x"}},
        {**base, "error": {"code": 13, "message": "x"}},  # SUCCEEDED with an error
        {**base, "reason": "only for REJECTED"},
        {**base, "destination": "gs://exports"},  # an import has no destination
        {**base, "failedObjects": ["gs://up/a.dcm"]},  # without failedObjectsTotal
        {**base, "kind": "storageClass", "destination": "gs://exports"},  # a storage-class change has none
        {**base, "kind": "archive"},
        {**base, "logsUrl": None},  # optional keys are left out, never null
        {**base, "extra": 1},
        {key: value for key, value in base.items() if key != "counters"},
        {"eventId": "rejected-" + "0" * 32, "kind": "export", "state": "REJECTED", "dicomStore": STORE,
         "createTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:00Z"},  # no reason
    ]
    for event in broken:
        assert errors(COMPLETION_EVENT, event), event


# --------------------------------------------------------------------------- export request: schema == parser


def _function_accepts(data: bytes) -> bool:
    try:
        parse_export_request(data)
    except InvalidExportRequestError:
        return False
    return True


def _schema_accepts(data: bytes) -> bool:
    try:
        body = json.loads(data)
    except ValueError:
        return False
    return not errors(EXPORT_REQUEST, body)


D = "gs://exports/out"
AGREE = [
    {"destination": D},
    {"destination": "gs://exports"},
    {"destination": "gs://exports/a/b/"},
    {"destination": "gs://exports/a b/ü/日本"},
    {"destination": "gs://my.exports.bucket/x"},
    {"destination": "gs://" + "a" * 63},
    {"destination": "gs://" + "a" * 64},
    {"destination": "gs://" + ".".join(["b" * 63] * 3) + "/p"},
    {"destination": "gs://" + ".".join(["b" * 63] * 4)},
    {"destination": "gs://ab"},
    {"destination": "gs://Exports/x"},
    {"destination": "gs://exports_/x"},
    {"destination": "gs://_exports/x"},
    {"destination": "gs://a..b/x"},
    {"destination": "gs://a.-b/x"},
    {"destination": "gs://goog-exports"},
    {"destination": "gs://my-google-bucket"},
    {"destination": "gs://10.0.0.1/x"},
    {"destination": "gs://10.0.0.1a/x"},
    {"destination": "gs://exports//x"},
    {"destination": "gs://exports/./x"},
    {"destination": "gs://exports/x/.."},
    {"destination": "gs://exports/..x"},
    {"destination": "gs://exports/x*"},
    {"destination": "gs://exports/x#y"},
    {"destination": "gs://exports/x\ny"},
    {"destination": "gs://exports/x\n"},
    {"destination": "gs://exports/x\u007f"},
    {"destination": "s3://exports"},
    {"destination": "gs:/exports"},
    {"destination": ""},
    {"destination": 7},
    {"destination": None},
    {},
    {"destination": D, "extra": 1},
    {"destination": D, "requestId": "a"},
    {"destination": D, "requestId": "A-z_0.9:x"},
    {"destination": D, "requestId": "x" * 256},
    {"destination": D, "requestId": "x" * 257},
    {"destination": D, "requestId": ""},
    {"destination": D, "requestId": "with space"},
    {"destination": D, "requestId": "new\n"},
    {"destination": D, "requestId": "ünï"},
    {"destination": D, "requestId": 5},
    {"destination": D, "resources": ["/studies/1.2.3"]},
    {"destination": D, "resources": ["/studies/1.2.3", "/studies/1.2.3"]},
    {"destination": D, "resources": ["/studies/0.1/series/2/instances/30"]},
    {"destination": D, "resources": ["/studies/" + "1." * 31 + "1"]},
    {"destination": D, "resources": ["/studies/" + "1." * 32 + "1"]},
    {"destination": D, "resources": ["/studies/1.2/series/" + "9" * 64]},
    {"destination": D, "resources": ["/studies/1.2/series/" + "9" * 65]},
    {"destination": D, "resources": ["/studies/1.02"]},
    {"destination": D, "resources": ["/studies/1..2"]},
    {"destination": D, "resources": ["/studies/1.2."]},
    {"destination": D, "resources": ["/studies/1.2/"]},
    {"destination": D, "resources": ["/studies/1.2/instances/3"]},
    {"destination": D, "resources": ["/studies/1.2/series/3/instances/4/frames/1"]},
    {"destination": D, "resources": ["/studies/1.2\n"]},
    {"destination": D, "resources": ["studies/1.2"]},
    {"destination": D, "resources": ["/studies/1.2?x=1"]},
    {"destination": D, "resources": []},
    {"destination": D, "resources": "/studies/1.2"},
    {"destination": D, "resources": [1]},
    {"destination": D, "filterUri": "gs://exports/f.txt"},
    {"destination": D, "filterUri": "gs://exports/a/b c/f.txt"},
    {"destination": D, "filterUri": "gs://exports"},
    {"destination": D, "filterUri": "gs://exports/"},
    {"destination": D, "filterUri": "gs://exports/f/"},
    {"destination": D, "filterUri": "gs://exports/*.txt"},
    {"destination": D, "filterUri": "gs://exports//f.txt"},
    {"destination": D, "query": {"PatientID": "P1"}},
    {"destination": D, "query": {"PatientID": "P" * 64}},
    {"destination": D, "query": {"PatientID": "P" * 65}},
    {"destination": D, "query": {"PatientID": "Doe Jane"}},
    {"destination": D, "query": {"PatientID": " P1"}},
    {"destination": D, "query": {"PatientID": "P1 "}},
    {"destination": D, "query": {"PatientID": "P*"}},
    {"destination": D, "query": {"PatientID": "P?"}},
    {"destination": D, "query": {"PatientID": "P1\\P2"}},
    {"destination": D, "query": {"PatientID": "P\t1"}},
    {"destination": D, "query": {"PatientID": ""}},
    {"destination": D, "query": {"PatientID": 1}},
    {"destination": D, "query": {"StudyInstanceUID": "1.2.3"}},
    {"destination": D, "query": {"StudyInstanceUID": "1.02"}},
    {"destination": D, "query": {"StudyDate": "20240101"}},
    {"destination": D, "query": {"StudyDate": "20240101-20241231"}},
    {"destination": D, "query": {"StudyDate": "20240101-"}},
    {"destination": D, "query": {"StudyDate": "-20240101"}},
    {"destination": D, "query": {"StudyDate": "-"}},
    {"destination": D, "query": {"StudyDate": "2024-01-01"}},
    {"destination": D, "query": {"StudyDate": "2024010"}},
    {"destination": D, "query": {"AccessionNumber": "A" * 16}},
    {"destination": D, "query": {"AccessionNumber": "A" * 17}},
    {"destination": D, "query": {"ModalitiesInStudy": "CT"}},
    {"destination": D, "query": {"ModalitiesInStudy": "SR_DOC 2"}},
    {"destination": D, "query": {"ModalitiesInStudy": "ct"}},
    {"destination": D, "query": {"ModalitiesInStudy": "CT "}},
    {"destination": D, "query": {"ModalitiesInStudy": "M" * 17}},
    {"destination": D, "query": {"PatientName": "Doe"}},
    {"destination": D, "query": {}},
    {"destination": D, "query": []},
    {"destination": D, "query": {"PatientID": "P1", "StudyDate": "20240101", "ModalitiesInStudy": "MR"}},
    {"destination": D, "resources": ["/studies/1"], "filterUri": "gs://exports/f"},
    {"destination": D, "resources": ["/studies/1"], "query": {"PatientID": "P"}},
    {"destination": D, "filterUri": "gs://exports/f", "query": {"PatientID": "P"}},
    {"destination": D, "mimeType": "application/dicom"},
    {"destination": D, "mimeType": "application/dicom; transfer-syntax=*"},
    {"destination": D, "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"},
    {"destination": D, "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.99"},
    {"destination": D, "mimeType": "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"},
    {"destination": D, "mimeType": "application/octet-stream"},
    {"destination": D, "mimeType": "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"},
    {"destination": D, "mimeType": "image/jpeg"},
    {"destination": D, "mimeType": "image/png"},
    {"destination": D, "mimeType": "image/png; transfer-syntax=*"},
    {"destination": D, "mimeType": "image/gif"},
    {"destination": D, "mimeType": "application/dicom; charset=utf-8"},
    {"destination": D, "mimeType": None},
    {"destination": D, "sql": "SELECT 1"},
    {"destination": D, "sql": "WITH s AS (SELECT 1) SELECT * FROM s;"},
    {"destination": D, "sql": "SELECT CONCAT('/studies/', StudyInstanceUID) FROM `p.d.t`"},
    {"destination": D, "sql": ""},
    {"destination": D, "sql": " \n\t"},
    {"destination": D, "sql": 5},
    {"destination": D, "sql": ["SELECT 1"]},
    {"destination": D, "sql": "SELECT 1", "resources": ["/studies/1"]},
    {"destination": D, "sql": "SELECT 1", "filterUri": "gs://exports/f"},
    {"destination": D, "sql": "SELECT 1", "query": {"PatientID": "P"}},
    {"destination": D, "action": "export"},
    {"destination": D, "action": "export", "sql": "SELECT 1", "mimeType": "image/png"},
    {"action": "export"},
    {"destination": D, "action": "export", "storageClass": "ARCHIVE"},
    {"destination": D, "storageClass": "ARCHIVE"},
    {"destination": D, "action": "setStorageClass", "storageClass": "ARCHIVE"},
    {"action": "setStorageClass", "storageClass": "ARCHIVE"},
    {"action": "setStorageClass", "storageClass": "NEARLINE", "requestId": "move-1"},
    {"action": "setStorageClass", "storageClass": "COLDLINE", "resources": ["/studies/1.2/series/3"]},
    {"action": "setStorageClass", "storageClass": "STANDARD", "filterUri": "gs://exports/f"},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "query": {"PatientID": "P"}},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "sql": "SELECT 1"},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "sql": "SELECT 1", "resources": ["/studies/1"]},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "mimeType": "image/png"},
    {"action": "setStorageClass", "storageClass": "archive"},
    {"action": "setStorageClass", "storageClass": "BLOB_STORAGE_CLASS_UNSPECIFIED"},
    {"action": "setStorageClass", "storageClass": None},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": True},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": True, "requestId": "all-1"},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": False},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": "true"},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": True, "resources": ["/studies/1"]},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "wholeStore": True, "sql": "SELECT 1"},
    {"destination": D, "wholeStore": True},
    {"action": "setStorageClass"},
    {"action": "setStorageClass", "storageClass": "ARCHIVE", "resources": []},
    {"action": "redrive", "destination": D},
    {"action": "delete", "destination": D},
    {"action": 1, "destination": D},
    {"action": None, "destination": D},
    {"storageClass": "ARCHIVE"},
    [],
    "gs://exports",
    None,
]

# The function also takes these non-canonical spellings and normalises them (docs/contracts.md).
LENIENT = [
    {"destination": D, "mimeType": "Application/DICOM"},
    {"destination": D, "mimeType": "application/dicom;transfer-syntax=*"},
    {"destination": D, "mimeType": " image/png "},
    {"destination": D, "mimeType": 'application/dicom; Transfer-Syntax="1.2.840.10008.1.2.1"'},
]

# Rules only the function can check (docs/contracts.md, "What only the function checks").
FUNCTION_ONLY: list[bytes] = [
    json.dumps({"destination": "gs://exports/" + "ü" * 400}).encode(),  # 800 bytes, 400 characters
    json.dumps({"destination": D, "filterUri": "gs://exports/" + "ü" * 600}).encode(),
    json.dumps({"destination": D, "query": {"StudyDate": "20240231"}}).encode(),
    json.dumps({"destination": D, "query": {"StudyDate": "20241231-20240101"}}).encode(),
    b'{"destination": "gs://exports/a", "destination": "gs://exports/b"}',
    # sql: the schema only knows it is a non-blank string; a NUL is refused when parsed, and what
    # the statement is, BigQuery's dry run says when it is handled (functions.core.sql_gate).
    json.dumps({"destination": D, "sql": "SELECT 'a\u0000'"}).encode(),
]


@pytest.mark.parametrize("body", AGREE, ids=range(len(AGREE)))
def test_schema_and_parser_agree(body: Any) -> None:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert _schema_accepts(data) == _function_accepts(data), body


def test_the_agreement_corpus_holds_both_verdicts() -> None:
    verdicts = [_function_accepts(json.dumps(body).encode()) for body in AGREE]
    assert 20 < sum(verdicts) < len(verdicts) - 40


@pytest.mark.parametrize("body", LENIENT)
def test_non_canonical_mime_types_are_accepted_and_normalised_to_the_schema(body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    assert not _schema_accepts(data)
    normalised = parse_export_request(data).to_dict()
    assert errors(EXPORT_REQUEST, normalised) == []


@pytest.mark.parametrize("data", FUNCTION_ONLY)
def test_what_only_the_function_checks(data: bytes) -> None:
    assert not _function_accepts(data)
    body = json.loads(data)  # duplicate keys survive Python's lenient parser
    assert not errors(EXPORT_REQUEST, body), body


_POOL: dict[str, list[Any]] = {
    "destination": [D, "gs://exports", "gs://ex", "gs://exports//x", "gs://exports/x/", "gs://e/x", "gs://exports/.",
                    "gs://EXPORTS", "gs://exports/a?b", "gs://exports/x\t", "gs://exports/日本", 1, None],
    "requestId": ["r", "r-1:2.3_4", "", "r 1", "r/1", "r" * 256, "r" * 257, None, 3],
    "resources": [["/studies/1"], ["/studies/1.2/series/3"], ["/studies/01"], ["/studies/1/series/"], [],
                  ["/studies/1", "/studies/x"], ["/series/1"], "x", None],
    "filterUri": ["gs://exports/f", "gs://exports/", "gs://exports", "gs://exports/a/../f", "gs://exports/f?", None],
    "query": [{"PatientID": "P"}, {"StudyInstanceUID": "1.2"}, {"StudyInstanceUID": "1.2.x"}, {"StudyDate": "2024"},
              {"ModalitiesInStudy": "US"}, {"ModalitiesInStudy": " US"}, {"AccessionNumber": ""}, {}, {"X": "1"},
              None],
    "mimeType": ["image/png", "application/dicom", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
                 "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.51", "application/dicom; transfer-syntax=1.2",
                 "text/plain", "", None],
    "sql": ["SELECT 1", "SELECT a FROM t;", "", " ", 3, None],
    "action": ["export", "setStorageClass", "redrive", "", None],
    "storageClass": ["ARCHIVE", "COLDLINE", "cold", "", None],
    "unknown": ["x"],
}


@pytest.mark.parametrize("seed", range(40))
def test_schema_and_parser_agree_on_random_requests(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        body = {key: rng.choice(values) for key, values in _POOL.items() if rng.random() < 0.35}
        data = json.dumps(body, ensure_ascii=False).encode()
        assert _schema_accepts(data) == _function_accepts(data), body


def test_object_counts_and_fates_belong_to_imports_and_redrives_only() -> None:
    fate = {"object": "gs://up/a.dcm", "reason": "NOT_DICOM", "message": "not DICOM"}
    event = {"eventId": "op-1", "kind": "import", "state": "SUCCEEDED_WITH_ERRORS",
             "operation": f"{DATASET}/operations/1", "dicomStore": STORE,
             "counters": {"success": 1, "failure": 1, "pending": 0},
             "objects": {"total": 2, "landed": 1, "failed": 1, "undecided": 0, "countersAgree": True},
             "failedObjects": ["gs://up/a.dcm"], "failedObjectsTotal": 1, "failures": [fate]}
    assert errors("completion-event.v1", event) == []
    assert errors("completion-event.v1", {**event, "kind": "export"})
    assert errors("completion-event.v1", {**event, "failures": [{**fate, "reason": "SOMETHING"}]})
    assert errors("completion-event.v1", {**event, "undecidedObjects": [fate]})  # without its total


def test_a_redrive_that_held_everything_back_is_failed_and_names_the_objects() -> None:
    now = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    held = [{"object": "gs://up/ward/broken.dcm", "reason": "NOT_DICOM", "message": "not a DICOM Part 10 file"}]
    data, attributes = redrive_noop_event("0 of the receipt's 1 objects are in the store; nothing to redrive",
                                          request_id="fix-1", message_id="77", redrive_of=f"{DATASET}/operations/42",
                                          dicom_store=STORE, now=now, held=held)
    event = validate_completion_message(data, attributes)
    assert (event["state"], attributes["state"]) == ("FAILED", "FAILED")
    assert event["failedObjects"] == ["gs://up/ward/broken.dcm"] and event["failedObjectsTotal"] == 1
    assert event["failures"] == held and event["error"]["code"] == 9
    assert event["counters"] == {"success": 0, "failure": 0, "pending": 0} and "operation" not in event
