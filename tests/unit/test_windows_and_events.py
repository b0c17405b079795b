from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from functions.core.errors import InvalidEventError
from functions.core.events import PubsubMessage, StorageObjectEvent, parse_time
from functions.core.selection import ignore_reason
from functions.core.windows import object_key, window_close, window_id, window_start
from functions.settings import Settings

EVENTS = Path(__file__).parent.parent / "data" / "events"
SETTINGS = Settings.from_env({
    "DICOM_STORE": "projects/p/locations/l/datasets/d/dicomStores/s",
    "DICOM_STATE_BUCKET": "dicom-state",
    "DICOM_IMPORT_PREFIXES": "inbox/,ward/",
}, "import_dicom_on_upload")


def _eventarc() -> tuple[dict[str, str], dict[str, object]]:
    sample = json.loads((EVENTS / "storage_finalized_eventarc.json").read_text())
    return sample["attributes"], sample["data"]


def test_window_ids_are_sortable_and_invertible() -> None:
    moment = datetime(2026, 11, 27, 2, 1, 7, 900_000, tzinfo=UTC)
    window = window_id(moment, 5)
    assert window == "20261127T020105000Z"
    assert window_start(window) == datetime(2026, 11, 27, 2, 1, 5, tzinfo=UTC).timestamp()
    assert window_close(window, 5) == window_start(window) + 5
    later = window_id(datetime(2026, 11, 27, 2, 1, 10, tzinfo=UTC), 5)
    assert later > window
    assert window_id(moment, 0.5) == "20261127T020107500Z"


def test_object_key_depends_on_generation() -> None:
    assert object_key("b", "a.dcm", 1) != object_key("b", "a.dcm", 2)
    assert object_key("b", "a.dcm", 1) == object_key("b", "a.dcm", 1)
    assert len(object_key("b", "x" * 1024, 1)) == 40


def test_eventarc_storage_event_parses_string_numbers() -> None:
    attributes, data = _eventarc()
    event = StorageObjectEvent.from_cloud_event(attributes, data)
    assert event.bucket == "dicom-upload"
    assert event.name == "inbox/study1/IM0001.dcm"
    assert event.generation == 1795743063813472
    assert event.size == 39206
    assert event.time_created == datetime(2026, 11, 27, 1, 31, 3, 87_000, tzinfo=UTC)
    assert event.uri == "gs://dicom-upload/inbox/study1/IM0001.dcm"


def test_storage_event_accepts_ints_and_falls_back_to_subject_and_source() -> None:
    attributes, data = _eventarc()
    data = {k: v for k, v in data.items() if k not in ("name", "bucket")}
    data["generation"], data["size"] = 7, 10
    event = StorageObjectEvent.from_cloud_event(attributes, data)
    expected = ("dicom-upload", "inbox/study1/IM0001.dcm", 7, 10)
    assert (event.bucket, event.name, event.generation, event.size) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not an object", "not a JSON object"),
        ({"bucket": "b", "generation": "1", "timeCreated": "2026-01-01T00:00:00Z"}, "no object name"),
        ({"bucket": "b", "name": "a.dcm", "timeCreated": "2026-01-01T00:00:00Z"}, "generation"),
        ({"bucket": "b", "name": "a.dcm", "generation": "one", "timeCreated": "2026-01-01T00:00:00Z"},
         "not an integer"),
    ],
)
def test_malformed_storage_events_are_invalid(data: object, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        StorageObjectEvent.from_cloud_event({"id": "1", "type": "t", "source": "//storage.googleapis.com/x"}, data)


@pytest.mark.parametrize(
    ("name", "size", "bucket", "expected"),
    [
        ("inbox/s1/IM1.dcm", 10, "dicom-upload", None),
        ("ward/IM1.DCM", 10, "dicom-upload", None),
        ("inbox/s1/study.json", 10, "dicom-upload", "does not match"),
        ("inbox/s1/", 0, "dicom-upload", "folder placeholder"),
        ("inbox/s1/empty.dcm", 0, "dicom-upload", "zero-byte"),
        ("elsewhere/IM1.dcm", 10, "dicom-upload", "outside the configured prefixes"),
        ("inbox/seen/x.dcm", 10, "dicom-state", "own state objects"),
    ],
)
def test_ignore_reasons(name: str, size: int, bucket: str, expected: str | None) -> None:
    event = StorageObjectEvent("1", "google.cloud.storage.object.v1.finalized", bucket, name, 1, size,
                               datetime(2026, 1, 1, tzinfo=UTC), None)
    reason = ignore_reason(event, SETTINGS)
    assert (reason is None) if expected is None else (expected in (reason or ""))


def test_staged_copies_in_a_staging_bucket_are_ignored() -> None:
    staged = replace(SETTINGS, staging_bucket="dicom-staging")
    copy = StorageObjectEvent("1", "google.cloud.storage.object.v1.finalized", "dicom-staging",
                              "staging/b-1/000001.dcm", 1, 10, datetime(2026, 1, 1, tzinfo=UTC), None)
    assert "own staged copies" in (ignore_reason(copy, staged) or "")
    assert ignore_reason(replace(copy, name="inbox/IM1.dcm"), staged) is None  # not a staged copy


def test_other_event_types_are_ignored() -> None:
    event = StorageObjectEvent("1", "google.cloud.storage.object.v1.deleted", "dicom-upload", "inbox/a.dcm", 1, 5,
                               datetime(2026, 1, 1, tzinfo=UTC), None)
    assert "not a finalize" in (ignore_reason(event, SETTINGS) or "")


def test_pubsub_message_from_eventarc_and_from_converted_push() -> None:
    payload = base64.b64encode(b'{"destination":"gs://x"}').decode()
    eventarc = {"subscription": "projects/p/subscriptions/s",
                "message": {"data": payload, "messageId": "42", "publishTime": "2026-11-27T01:33:04.716Z",
                            "attributes": {"a": "b"}}}
    converted = {"message": {"@type": "type.googleapis.com/google.pubsub.v1.PubsubMessage", "data": payload,
                             "message_id": "42", "publish_time": "2026-11-27T01:33:04.716Z"}}
    for data in (eventarc, converted):
        message = PubsubMessage.from_cloud_event({"id": "42"}, data)
        assert message.message_id == "42"
        assert message.data == b'{"destination":"gs://x"}'
        assert message.publish_time == datetime(2026, 11, 27, 1, 33, 4, 716_000, tzinfo=UTC)


@pytest.mark.parametrize("data", [{}, {"message": "x"}, {"message": {"data": "%%%not-base64"}}])
def test_bad_pubsub_payloads_are_invalid(data: object) -> None:
    with pytest.raises(InvalidEventError):
        PubsubMessage.from_cloud_event({"id": "1"}, data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T01:31:03Z", datetime(2026, 11, 27, 1, 31, 3, tzinfo=UTC)),
        ("2026-11-27T01:31:03.123456789Z", datetime(2026, 11, 27, 1, 31, 3, 123456, tzinfo=UTC)),
        ("2026-11-27T02:31:03+01:00", datetime(2026, 11, 27, 1, 31, 3, tzinfo=UTC)),
        ("garbage", None),
        (None, None),
    ],
)
def test_parse_time(text: str | None, expected: datetime | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    ("bucket", "name", "expected"),
    [
        ("dicom-upload", "inbox/a.dcm", True),
        ("dicom-upload", "ward/A.DCM", True),
        ("dicom-upload", "inbox/a.json", False),
        ("dicom-upload", "elsewhere/a.dcm", False),
        ("dicom-state", "inbox/a.dcm", False),
    ],
)
def test_is_importable_matches_what_the_function_takes(bucket: str, name: str, expected: bool) -> None:
    from functions.core.selection import is_importable

    assert is_importable(bucket, name, 10, SETTINGS) is expected


def test_a_cloud_storage_notification_reads_like_the_eventarc_finalize_event() -> None:
    import base64
    import json as _json

    from functions.core.events import PUBSUB_PUBLISHED, STORAGE_FINALIZED, StorageObjectEvent

    resource = {"bucket": "up", "name": "in/a.dcm", "generation": "17", "size": "5",
                "timeCreated": "2026-01-01T00:00:00Z"}

    def event(kind: str, data: bytes) -> StorageObjectEvent:
        message = {"data": base64.b64encode(data).decode(), "messageId": "99", "publishTime": "2026-01-01T00:00:02Z",
                   "attributes": {"eventType": kind, "eventTime": "2026-01-01T00:00:01Z", "objectId": "in/a.dcm",
                                  "bucketId": "up", "payloadFormat": "JSON_API_V1"}}
        return StorageObjectEvent.from_cloud_event({"id": "ce-1", "type": PUBSUB_PUBLISHED}, {"message": message})

    finalized = event("OBJECT_FINALIZE", _json.dumps(resource).encode())
    assert (finalized.event_id, finalized.event_type, finalized.uri, finalized.generation, finalized.size) == \
        ("99", STORAGE_FINALIZED, "gs://up/in/a.dcm", 17, 5)
    assert finalized.event_time is not None and finalized.event_time.second == 1
    assert event("OBJECT_DELETE", _json.dumps(resource).encode()).event_type != STORAGE_FINALIZED
    with pytest.raises(InvalidEventError, match="not JSON"):
        event("OBJECT_FINALIZE", b"{nope")
