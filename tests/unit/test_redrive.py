"""Redrive requests and events: pure parsing and building, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from functions.core.completion import redrive_noop_event
from functions.core.errors import InvalidExportRequestError
from functions.exports.redrive import is_redrive, operation_id_of, parse_redrive_request

OP = "projects/p/locations/l/datasets/d/operations/123456789"


@pytest.mark.parametrize("reference", [
    "123456789", "op-123456789", OP, "receipts/123456789.json", "state/prefix/receipts/123456789.json",
    "gs://state-bucket/receipts/123456789.json", "gs://state-bucket/some/prefix/receipts/123456789.json",
    "  op-123456789 ",
])
def test_every_receipt_reference_names_the_operation(reference: str) -> None:
    assert operation_id_of(reference) == "123456789"


@pytest.mark.parametrize("reference", ["", "a/b/c", "receipts/x y.json", "gs://b/receipts/", "x" * 200,
                                       "projects/p/locations/l/datasets/d/operations/"])
def test_a_reference_without_an_operation_id_is_rejected(reference: str) -> None:
    with pytest.raises(InvalidExportRequestError, match="names no operation id"):
        operation_id_of(reference)


def test_a_valid_request_parses() -> None:
    request = parse_redrive_request(json.dumps({"action": "redrive", "receipt": "op-1", "requestId": "r:1"}).encode())
    assert (request.operation_id, request.request_id, request.part) == ("1", "r:1", None)
    with_part = parse_redrive_request(json.dumps({"action": "redrive", "receipt": "1", "part": 2}).encode())
    assert with_part.part == 2


@pytest.mark.parametrize("body,reason", [
    ({"action": "redrive"}, "receipt is required"),
    ({"action": "redrive", "receipt": 5}, "receipt is required"),
    ({"action": "redrive", "receipt": "1", "destination": "gs://b"}, "unknown field"),
    ({"action": "redrive", "receipt": "1", "requestId": "has space"}, "requestId"),
    ({"action": "export", "receipt": "1"}, "action must be"),
    ({"action": "redrive", "receipt": "1", "part": 0}, "part must be an integer from 1"),
    ({"action": "redrive", "receipt": "1", "part": "2"}, "part must be an integer from 1"),
    ({"action": "redrive", "receipt": "1", "part": True}, "part must be an integer from 1"),
])
def test_bad_requests_are_rejected_with_a_reason(body: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidExportRequestError, match=reason):
        parse_redrive_request(json.dumps(body).encode())


def test_only_messages_asking_for_a_redrive_are_routed_to_it() -> None:
    assert is_redrive(b'{"action": "redrive", "receipt": "1"}')
    assert not is_redrive(b'{"destination": "gs://b/x"}')
    assert not is_redrive(b'{"action": "export"}')
    assert not is_redrive(b'not json "action"')
    assert not is_redrive(b'["action", "redrive"]')


def test_the_nothing_to_do_event_is_stable_per_message_and_says_why() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    data, attributes = redrive_noop_event("all 2 objects of the receipt are in the store; nothing to redrive",
                                          request_id="r-1", message_id="m-1", redrive_of=OP,
                                          dicom_store="projects/p/locations/l/datasets/d/dicomStores/s", now=now)
    again, _ = redrive_noop_event("all 2 objects of the receipt are in the store; nothing to redrive",
                                  request_id="r-1", message_id="m-1", redrive_of=OP,
                                  dicom_store="projects/p/locations/l/datasets/d/dicomStores/s", now=now)
    event = json.loads(data)
    assert data == again
    assert event["eventId"].startswith("redrive-") and attributes["eventId"] == event["eventId"]
    assert (event["kind"], event["state"], event["redriveOf"]) == ("redrive", "SUCCEEDED", OP)
    assert event["counters"] == {"success": 0, "failure": 0, "pending": 0}
    assert "operation" not in event and event["reason"].endswith("nothing to redrive")
    assert attributes == {"kind": "redrive", "state": "SUCCEEDED", "dicomStore": event["dicomStore"],
                          "eventId": event["eventId"]}
