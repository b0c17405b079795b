"""Completion events: state rules, counters, times, optional keys, stable ids, REJECTED."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from functions.core.completion import (
    Counters,
    OperationError,
    TrackedOperation,
    build_completion_event,
    completion_payload,
    event_id_for_operation,
    kind_from_method,
    parse_operation,
    rejected_event,
)
from functions.core.export_request import short_hash

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
OP_NAME = "projects/p/locations/l/datasets/d/operations/1234567890"
IMPORT_METHOD = "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
EXPORT_METHOD = "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"
CREATE = "2024-05-01T10:00:00.250Z"
END = "2024-05-01T10:02:03.750Z"

IMPORT_RECORD = TrackedOperation(
    name=OP_NAME, kind="import", dicom_store=STORE, request_id="batch-1", source="gs://up/in/**.dcm"
)
EXPORT_RECORD = TrackedOperation(
    name=OP_NAME, kind="export", dicom_store=STORE, request_id="req-1", destination="gs://exports/out"
)


def operation(
    *,
    done: bool = True,
    error: dict[str, Any] | None = None,
    counter: dict[str, Any] | None = None,
    method: str | None = IMPORT_METHOD,
    create: str | None = CREATE,
    end: str | None = END,
    logs: str | None = "https://console.cloud.google.com/logs?x",
    metadata: Any = ...,
) -> dict[str, Any]:
    op: dict[str, Any] = {"name": OP_NAME}
    if done:
        op["done"] = True
    if metadata is ...:
        metadata = {"@type": "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"}
        for key, value in (
            ("apiMethodName", method),
            ("createTime", create),
            ("endTime", end),
            ("logsUrl", logs),
        ):
            if value is not None:
                metadata[key] = value
        if counter is not None:
            metadata["counter"] = counter
    if metadata is not None:
        op["metadata"] = metadata
    if error is not None:
        op["error"] = error
    elif done:
        op["response"] = {
            "@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"
        }
    return op


def event(op: dict[str, Any], record: TrackedOperation = IMPORT_RECORD, **kwargs: Any) -> dict[str, Any]:
    data, attributes = build_completion_event(op, record, **kwargs)
    body = json.loads(data)
    assert attributes == {
        "kind": body["kind"],
        "state": body["state"],
        "dicomStore": body["dicomStore"],
        "eventId": body["eventId"],
    }
    assert all(isinstance(v, str) for v in attributes.values())
    assert None not in body.values()
    return body


# --- state rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "counter", "state"),
    [
        (None, None, "SUCCEEDED"),
        (None, {"success": "10"}, "SUCCEEDED"),
        (None, {"success": "10", "failure": "0"}, "SUCCEEDED"),
        (None, {"success": "10", "failure": "2"}, "SUCCEEDED_WITH_ERRORS"),
        (None, {"failure": "3"}, "SUCCEEDED_WITH_ERRORS"),
        (None, {"success": "10", "pending": "4"}, "SUCCEEDED"),
        ({"code": 1, "message": "cancelled"}, None, "CANCELLED"),
        ({"code": 1, "message": "cancelled"}, {"success": "5", "failure": "1"}, "CANCELLED"),
        ({"code": "1"}, None, "CANCELLED"),
        ({"code": 3, "message": "bad"}, None, "FAILED"),
        ({"code": 13, "message": "internal"}, {"failure": "7"}, "FAILED"),
        # an import that stopped with an error but landed some instances is still FAILED
        ({"code": 2, "message": "partial"}, {"success": "8", "failure": "2"}, "FAILED"),
        ({"message": "no code: proto3 omits 0"}, None, "FAILED"),
        ({"code": "garbage"}, None, "FAILED"),
        ({"code": True}, None, "FAILED"),
        ({}, None, "FAILED"),
        ("not an object", None, "FAILED"),
    ],
)
def test_state(error: Any, counter: dict[str, Any] | None, state: str) -> None:
    op = operation(error=error, counter=counter)
    assert event(op)["state"] == state
    assert parse_operation(op).state == state


def test_failed_import_keeps_its_counters() -> None:
    body = event(operation(error={"code": 2, "message": "stopped"}, counter={"success": "8", "failure": "2"}))
    assert body["state"] == "FAILED"
    assert body["counters"] == {"success": 8, "failure": 2, "pending": 0}
    assert body["error"] == {"code": 2, "message": "stopped"}


# --- counters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counter", "expected"),
    [
        (None, {"success": 0, "failure": 0, "pending": 0}),
        ({}, {"success": 0, "failure": 0, "pending": 0}),
        ({"success": "12", "failure": "3", "pending": "4"}, {"success": 12, "failure": 3, "pending": 4}),
        ({"success": 12, "failure": 3}, {"success": 12, "failure": 3, "pending": 0}),
        ({"success": "9223372036854775807"}, {"success": 9223372036854775807, "failure": 0, "pending": 0}),
        ({"success": " 5 ", "failure": "+2"}, {"success": 5, "failure": 2, "pending": 0}),
        ({"secondarySuccess": "4", "secondaryFailure": "1"}, {"success": 0, "failure": 0, "pending": 0}),
        # garbage becomes 0
        ({"success": "abc", "failure": "1.5", "pending": None}, {"success": 0, "failure": 0, "pending": 0}),
        ({"success": -4, "failure": "-1", "pending": True}, {"success": 0, "failure": 0, "pending": 0}),
        ({"success": 1.0, "failure": [], "pending": {}}, {"success": 0, "failure": 0, "pending": 0}),
        ({"success": "1" * 25}, {"success": 0, "failure": 0, "pending": 0}),
        ("not an object", {"success": 0, "failure": 0, "pending": 0}),
    ],
)
def test_counters(counter: Any, expected: dict[str, int]) -> None:
    body = event(operation(counter=counter))
    assert body["counters"] == expected
    assert all(type(v) is int for v in body["counters"].values())
    assert parse_operation(operation(counter=counter)).counters == Counters(**expected)


def test_garbage_failure_counter_does_not_flip_state() -> None:
    assert event(operation(counter={"failure": "lots"}))["state"] == "SUCCEEDED"


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("create", "end", "duration"),
    [
        (CREATE, END, 123.5),
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z", 0.0),
        ("2024-05-01T10:00:00.123456789Z", "2024-05-01T10:00:01.987654321Z", 1.864),
        ("2024-05-01T10:00:00Z", "2024-05-01T12:00:00+02:00", 0.0),  # same instant, other offset
        ("2024-05-01T10:00:00-01:00", "2024-05-01T11:00:30Z", 30.0),
        ("2024-12-31T23:59:59.5Z", "2025-01-01T00:00:00.5Z", 1.0),
        ("2024-05-01T10:00:05Z", "2024-05-01T10:00:00Z", 0.0),  # clock skew is clamped, not negative
    ],
)
def test_duration(create: str, end: str, duration: float) -> None:
    body = event(operation(create=create, end=end))
    assert body["createTime"] == create
    assert body["endTime"] == end
    assert body["durationSeconds"] == duration
    assert isinstance(body["durationSeconds"], float)


@pytest.mark.parametrize(
    ("create", "end", "present"),
    [
        (None, END, {"endTime"}),
        (CREATE, None, {"createTime"}),
        (None, None, set()),
        ("yesterday", END, {"endTime"}),
        (CREATE, "2024-05-01 10:02:03Z", {"createTime"}),  # no T: not RFC 3339
        (CREATE, "2024-13-01T10:00:00Z", {"createTime"}),  # month 13
        (CREATE, 1714557723, {"createTime"}),
    ],
)
def test_missing_or_bad_times_are_left_out(create: Any, end: Any, present: set[str]) -> None:
    body = event(operation(create=create, end=end))
    assert {"createTime", "endTime"} & set(body) == present
    assert "durationSeconds" not in body


# --- missing metadata pieces, optional keys ------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, {}, "garbage", []])
def test_missing_metadata(metadata: Any) -> None:
    body = event(operation(metadata=metadata))
    assert body == {
        "eventId": "op-1234567890",
        "kind": "import",
        "state": "SUCCEEDED",
        "operation": OP_NAME,
        "dicomStore": STORE,
        "source": "gs://up/in/**.dcm",
        "requestId": "batch-1",
        "counters": {"success": 0, "failure": 0, "pending": 0},
    }


def test_full_import_event_in_contract_order() -> None:
    record = TrackedOperation(
        name=OP_NAME,
        kind="import",
        dicom_store=STORE,
        request_id="batch-1",
        source="gs://up/in/**.dcm",
        failed_objects=("gs://up/in/a.dcm", "gs://up/in/b.dcm"),
        failed_objects_total=2,
    )
    op = operation(counter={"success": "10", "failure": "2"})
    data, attributes = build_completion_event(op, record)
    assert data == (
        b'{"eventId":"op-1234567890","kind":"import","state":"SUCCEEDED_WITH_ERRORS",'
        b'"operation":"projects/p/locations/l/datasets/d/operations/1234567890",'
        b'"dicomStore":"projects/p/locations/l/datasets/d/dicomStores/s","source":"gs://up/in/**.dcm",'
        b'"requestId":"batch-1","counters":{"success":10,"failure":2,"pending":0},'
        b'"createTime":"2024-05-01T10:00:00.250Z","endTime":"2024-05-01T10:02:03.750Z",'
        b'"durationSeconds":123.5,"logsUrl":"https://console.cloud.google.com/logs?x",'
        b'"failedObjects":["gs://up/in/a.dcm","gs://up/in/b.dcm"],"failedObjectsTotal":2}'
    )
    assert attributes == {
        "kind": "import",
        "state": "SUCCEEDED_WITH_ERRORS",
        "dicomStore": STORE,
        "eventId": "op-1234567890",
    }


def test_export_event_has_destination_not_source() -> None:
    record = TrackedOperation(
        name=OP_NAME, kind="export", dicom_store=STORE, request_id="req-1",
        source="gs://ignored", destination="gs://exports/out",
    )  # fmt: skip
    body = event(operation(method=EXPORT_METHOD), record)
    assert body["kind"] == "export"
    assert body["destination"] == "gs://exports/out"
    assert "source" not in body


def test_import_event_has_source_not_destination() -> None:
    record = TrackedOperation(
        name=OP_NAME, kind="import", dicom_store=STORE, source="gs://up/x", destination="gs://y"
    )
    body = event(operation(), record)
    assert body["source"] == "gs://up/x"
    assert "destination" not in body
    assert "requestId" not in body  # no batch id recorded: left out, not null


def test_error_is_passed_through_and_only_when_present() -> None:
    assert "error" not in event(operation())
    body = event(operation(error={"code": 9, "message": "m", "details": [{"@type": "x"}]}))
    assert body["error"] == {"code": 9, "message": "m"}
    body = event(operation(error={"code": 9, "message": "x" * 10_000}))
    assert len(body["error"]["message"]) == 2000
    assert "logsUrl" in body


def test_logs_url_left_out_when_absent_or_garbage() -> None:
    assert "logsUrl" not in event(operation(logs=None))
    assert "logsUrl" not in event(operation(logs=""))


@pytest.mark.parametrize(
    ("failed", "total", "cap", "listed", "reported_total"),
    [
        ((), 0, 100, None, None),
        (("gs://b/1", "gs://b/2", "gs://b/3"), 3, 100, ["gs://b/1", "gs://b/2", "gs://b/3"], 3),
        (("gs://b/1", "gs://b/2", "gs://b/3"), 3, 2, ["gs://b/1", "gs://b/2"], 3),
        (("gs://b/1", "gs://b/2"), 250, 100, ["gs://b/1", "gs://b/2"], 250),  # record holds a partial list
        (("gs://b/1", "gs://b/2"), 0, 100, ["gs://b/1", "gs://b/2"], 2),  # total never below the list
        ((), 40, 100, None, 40),  # a count without names (receipt elsewhere)
        (("gs://b/1",), 1, 0, None, 1),
    ],
)
def test_failed_objects_capped(
    failed: tuple[str, ...], total: int, cap: int, listed: list[str] | None, reported_total: int | None
) -> None:
    record = TrackedOperation(
        name=OP_NAME, kind="import", dicom_store=STORE, failed_objects=failed, failed_objects_total=total
    )
    body = event(operation(counter={"failure": str(max(total, 1))}), record, failed_objects_cap=cap)
    assert body.get("failedObjects") == listed
    assert body.get("failedObjectsTotal") == reported_total


# --- kind ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record_kind", "method", "kind"),
    [
        ("import", EXPORT_METHOD, "import"),  # the record wins
        ("export", IMPORT_METHOD, "export"),
        (None, IMPORT_METHOD, "import"),
        (None, EXPORT_METHOD, "export"),
        ("", "google.cloud.healthcare.v1beta1.dicom.DicomService.ExportDicomData", "export"),
        ("bogus", "ImportDicomData", "import"),
    ],
)
def test_kind(record_kind: str | None, method: str, kind: str) -> None:
    record = TrackedOperation(name=OP_NAME, kind=record_kind, dicom_store=STORE)
    assert event(operation(method=method), record)["kind"] == kind


@pytest.mark.parametrize("method", [None, "", "google.cloud.healthcare.v1.dicom.DicomService.DeleteStudy"])
def test_unknown_kind_raises(method: str | None) -> None:
    record = TrackedOperation(name=OP_NAME, kind=None, dicom_store=STORE)
    with pytest.raises(ValueError, match="neither import nor export"):
        build_completion_event(operation(method=method), record)


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        (IMPORT_METHOD, "import"),
        (EXPORT_METHOD, "export"),
        ("ImportDicomDataX", None),
        (None, None),
        ("", None),
    ],
)
def test_kind_from_method(method: str | None, kind: str | None) -> None:
    assert kind_from_method(method) == kind


# --- event ids, determinism ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (OP_NAME, "op-1234567890"),
        ("projects/p/locations/l/datasets/d/operations/abc_DEF-9", "op-abc_DEF-9"),
        ("projects/p/locations/l/datasets/d/operations/1234567890/", "op-1234567890"),
    ],
)
def test_event_id(name: str, expected: str) -> None:
    assert event_id_for_operation(name) == expected


def test_event_id_hashes_unsafe_ids() -> None:
    odd = "projects/p/locations/l/datasets/d/operations/a b:c"
    event_id = event_id_for_operation(odd)
    assert event_id.startswith("op-") and len(event_id) == 35
    assert event_id == event_id_for_operation(odd)
    assert event_id != event_id_for_operation(odd + "x")


def test_same_inputs_same_bytes() -> None:
    op = operation(counter={"success": "3", "failure": "1"})
    first = build_completion_event(op, IMPORT_RECORD)
    second = build_completion_event(json.loads(json.dumps(op)), IMPORT_RECORD)
    assert first == second


def test_non_ascii_is_utf8_not_escaped() -> None:
    record = TrackedOperation(name=OP_NAME, kind="import", dicom_store=STORE, source="gs://up/ünï/**.dcm")
    data, _ = build_completion_event(operation(), record)
    assert "gs://up/ünï/**.dcm".encode() in data


def test_not_done_raises() -> None:
    with pytest.raises(ValueError, match="not done"):
        build_completion_event(operation(done=False), IMPORT_RECORD)


# --- parse_operation -----------------------------------------------------------------------------


def test_parse_running_operation() -> None:
    status = parse_operation(operation(done=False, end=None, counter={"success": "5", "pending": "20"}))
    assert status.done is False
    assert status.state is None
    assert status.counters == Counters(success=5, failure=0, pending=20)
    assert status.create_time == CREATE
    assert status.end_time is None
    assert status.duration_seconds is None
    assert status.kind == "import"
    assert status.name == OP_NAME


def test_parse_finished_operation() -> None:
    status = parse_operation(operation(error={"code": 1, "message": "Operation was cancelled"}))
    assert status.done is True
    assert status.state == "CANCELLED"
    assert status.error == OperationError(1, "Operation was cancelled")
    assert status.duration_seconds == 123.5
    assert status.logs_url == "https://console.cloud.google.com/logs?x"
    assert status.api_method_name == IMPORT_METHOD


@pytest.mark.parametrize("done", [False, None, "true", 1])
def test_only_true_means_done(done: Any) -> None:
    op = operation()
    op["done"] = done
    assert parse_operation(op).done is False
    assert parse_operation(op).state is None


def test_parse_minimal_and_garbage_operations() -> None:
    status = parse_operation({})
    assert (status.done, status.state, status.name, status.counters) == (False, None, "", Counters())
    status = parse_operation({"name": 5, "done": True, "metadata": {"counter": {"failure": "x"}}})
    assert (status.name, status.state) == ("", "SUCCEEDED")
    with pytest.raises(ValueError):
        parse_operation(["not", "an", "object"])  # type: ignore[arg-type]


# --- tracked record ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        IMPORT_RECORD,
        EXPORT_RECORD,
        TrackedOperation(name=OP_NAME, kind=None, dicom_store=STORE),
        TrackedOperation(
            name=OP_NAME,
            kind="import",
            dicom_store=STORE,
            failed_objects=("gs://b/x",),
            failed_objects_total=9,
        ),
    ],
)
def test_tracked_operation_round_trip(record: TrackedOperation) -> None:
    assert TrackedOperation.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_tracked_operation_rejects_malformed_failed_objects() -> None:
    with pytest.raises(ValueError):
        TrackedOperation.from_dict({"name": OP_NAME, "dicomStore": STORE, "failedObjects": [1]})


# --- REJECTED ------------------------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def rejected(**kwargs: Any) -> tuple[dict[str, Any], dict[str, str]]:
    args: dict[str, Any] = {
        "request_id": "req-1",
        "message_id": "m-1",
        "destination": "gs://evil/x",
        "dicom_store": STORE,
        "now": NOW,
    }
    args.update(kwargs)
    data, attributes = rejected_event(args.pop("reason", "destination is not allowed"), **args)
    return json.loads(data), attributes


def test_rejected_event() -> None:
    body, attributes = rejected()
    assert body == {
        "eventId": "rejected-" + short_hash("messageId", "m-1"),
        "kind": "export",
        "state": "REJECTED",
        "dicomStore": STORE,
        "destination": "gs://evil/x",
        "requestId": "req-1",
        "createTime": "2024-05-01T10:00:00.123Z",
        "endTime": "2024-05-01T10:00:00.123Z",
        "reason": "destination is not allowed",
    }
    assert attributes == {
        "kind": "export",
        "state": "REJECTED",
        "dicomStore": STORE,
        "eventId": body["eventId"],
    }


def test_rejected_event_key_order() -> None:
    data, _ = rejected_event(
        "r", request_id="req-1", message_id="m", destination="gs://d", dicom_store=STORE, now=NOW
    )
    keys = list(json.loads(data))
    assert keys == [
        "eventId",
        "kind",
        "state",
        "dicomStore",
        "destination",
        "requestId",
        "createTime",
        "endTime",
        "reason",
    ]


@pytest.mark.parametrize(
    ("request_id", "message_id", "key_of"),
    [
        ("req-1", "m-1", ("messageId", "m-1")),
        ("req-1", None, ("requestId", "req-1")),
        (None, "m-1", ("messageId", "m-1")),
        ("", "m-1", ("messageId", "m-1")),
        ("bad id with spaces", "m-1", ("messageId", "m-1")),
        ("x" * 300, "m-1", ("messageId", "m-1")),
    ],
)
def test_rejected_event_id(request_id: str | None, message_id: str | None, key_of: tuple[str, str]) -> None:
    body, _ = rejected(request_id=request_id, message_id=message_id)
    assert body["eventId"] == "rejected-" + short_hash(*key_of)
    # Only a valid requestId is echoed: an invalid one is not trusted.
    assert body.get("requestId") == (request_id if request_id in ("req-1",) else None)


def test_rejected_event_is_stable_per_message() -> None:
    first, _ = rejected(message_id="m-1")
    again, _ = rejected(message_id="m-1", now=NOW + timedelta(minutes=5))
    assert first["eventId"] == again["eventId"]  # a redelivered message: the same event id
    other, _ = rejected(message_id="m-2")
    assert other["eventId"] != first["eventId"]  # the same requestId sent again: a new rejection


def test_rejected_event_needs_an_id() -> None:
    with pytest.raises(ValueError):
        rejected_event("r", request_id=None, message_id=None, destination=None, dicom_store=STORE, now=NOW)


@pytest.mark.parametrize(
    ("now", "stamp"),
    [
        (datetime(2024, 5, 1, 10, 0, 0), "2024-05-01T10:00:00.000Z"),  # naive = UTC
        (datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=2))), "2024-05-01T10:00:00.000Z"),
    ],
)
def test_rejected_event_times(now: datetime, stamp: str) -> None:
    body, _ = rejected(now=now)
    assert body["createTime"] == body["endTime"] == stamp


def test_rejected_event_bounds_echoed_input() -> None:
    body, _ = rejected(destination="gs://x/" + "a" * 5000, reason="r" * 5000)
    assert len(body["destination"]) == 1024
    assert len(body["reason"]) == 2000
    body, _ = rejected(destination=None)
    assert "destination" not in body
    body, _ = rejected(destination=["not", "a", "string"])
    assert "destination" not in body
    data, _ = rejected_event(
        "r", request_id=None, message_id="m", destination="gs://x/\ud800", dicom_store=STORE, now=NOW
    )
    assert json.loads(data)["destination"] == "gs://x/?"


def test_completion_payload_is_the_decoded_event() -> None:
    op = operation(counter={"success": "1"})
    data, _ = build_completion_event(op, EXPORT_RECORD)
    assert json.loads(data) == completion_payload(op, EXPORT_RECORD)


def test_refused_start_record_from_the_job_queue() -> None:
    """The shape `JobQueue` writes when the API refuses to start an LRO: no apiMethodName, no counters."""
    name = "projects/p/locations/l/datasets/d/operations/refused-1714557600.123-abc"
    op: dict[str, Any] = {
        "name": name,
        "done": True,
        "error": {"code": 3, "message": "the API refused to start the operation: HTTP 400 bad"},
        "metadata": {"createTime": "2024-05-01T10:00:00.000Z", "endTime": "2024-05-01T10:00:00.000Z"},
    }
    record = TrackedOperation(
        name=op["name"], kind="export", dicom_store=STORE, destination="gs://exports/out"
    )
    body = event(op, record)
    assert body["state"] == "FAILED"
    assert body["kind"] == "export"
    assert body["error"]["code"] == 3
    assert body["durationSeconds"] == 0.0
    assert body["eventId"].startswith("op-") and body["eventId"] == event_id_for_operation(name)
