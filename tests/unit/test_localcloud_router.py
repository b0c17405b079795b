"""Notification -> CloudEvent mapping of the router, checked against functions-framework itself."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import functions_framework

from localcloud.router import FINALIZED_EVENT_TYPE, storage_cloudevent_headers

ATTRIBUTES = {
    "eventType": "OBJECT_FINALIZE",
    "payloadFormat": "JSON_API_V1",
    "bucketId": "dicom-upload",
    "objectId": "study/series/IM0001.dcm",
    "objectGeneration": "1795743063813472",
}
PUBLISHED = datetime(2026, 11, 27, 1, 31, 3, 123456, tzinfo=UTC)


def test_finalize_notification_maps_to_eventarc_binary_headers() -> None:
    assert storage_cloudevent_headers(ATTRIBUTES, "42", PUBLISHED) == {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-source": "//storage.googleapis.com/projects/_/buckets/dicom-upload",
        "ce-subject": "objects/study/series/IM0001.dcm",
        "ce-id": "42",
        "ce-time": "2026-11-27T01:31:03.123456Z",
    }


def test_other_notifications_are_not_delivered() -> None:
    for event_type in ("OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_ARCHIVE"):
        assert storage_cloudevent_headers({**ATTRIBUTES, "eventType": event_type}, "1", PUBLISHED) is None


def test_functions_framework_reads_the_headers_as_a_storage_event(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text(
        textwrap.dedent(
            """
            import json, pathlib
            import functions_framework

            @functions_framework.cloud_event
            def on_upload(event):
                seen = {k: event[k] for k in ("type", "source", "subject", "id", "time")}
                seen["data"] = event.data
                pathlib.Path(__file__).with_name("seen.json").write_text(json.dumps(seen))
            """
        )
    )
    app = functions_framework.create_app("on_upload", str(source), "cloudevent")
    headers = storage_cloudevent_headers(ATTRIBUTES, "42", PUBLISHED)
    assert headers is not None
    data = {"bucket": "dicom-upload", "name": "study/series/IM0001.dcm", "generation": "1795743063813472"}

    response = app.test_client().post("/", data=json.dumps(data), headers=headers)

    assert response.status_code == 200
    assert json.loads((tmp_path / "seen.json").read_text()) == {
        "type": FINALIZED_EVENT_TYPE,
        "source": "//storage.googleapis.com/projects/_/buckets/dicom-upload",
        "subject": "objects/study/series/IM0001.dcm",
        "id": "42",
        "time": "2026-11-27T01:31:03.123456Z",
        "data": data,
    }
