"""Notification -> CloudEvent mapping of the router, checked against functions-framework itself."""

from __future__ import annotations

import base64
import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import functions_framework

from functions.core.events import STORAGE_FINALIZED, StorageObjectEvent
from localcloud.router import PUBLISHED_EVENT_TYPE, published_cloudevent

TOPIC = "projects/local-project/topics/gcs-notifications"
SUBSCRIPTION = "projects/local-project/subscriptions/gcs-notifications-router"
ATTRIBUTES = {
    "eventType": "OBJECT_FINALIZE",
    "payloadFormat": "JSON_API_V1",
    "bucketId": "dicom-upload",
    "objectId": "study/series/IM0001.dcm",
    "objectGeneration": "1795743063813472",
    "eventTime": "2026-11-27T01:31:03.100000Z",
}
RESOURCE = {"bucket": "dicom-upload", "name": "study/series/IM0001.dcm", "generation": "1795743063813472",
            "size": "10", "timeCreated": "2026-11-27T01:31:03.000000Z"}
PUBLISHED = datetime(2026, 11, 27, 1, 31, 3, 123456, tzinfo=UTC)


def _published(attributes: dict[str, str] = ATTRIBUTES) -> tuple[dict[str, str], bytes]:
    return published_cloudevent(TOPIC, SUBSCRIPTION, "42", json.dumps(RESOURCE).encode(), attributes, PUBLISHED)


def test_a_notification_maps_to_the_binary_event_of_an_eventarc_pubsub_trigger() -> None:
    headers, body = _published()

    assert headers == {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": f"//pubsub.googleapis.com/{TOPIC}",
        "ce-id": "42",
        "ce-time": "2026-11-27T01:31:03.123456Z",
    }
    message = json.loads(body)
    assert message["subscription"] == SUBSCRIPTION
    assert message["message"]["messageId"] == "42"
    assert message["message"]["attributes"] == ATTRIBUTES
    assert message["message"]["publishTime"] == "2026-11-27T01:31:03.123456Z"
    assert json.loads(base64.b64decode(message["message"]["data"])) == RESOURCE


def test_functions_framework_hands_the_import_function_the_upload(tmp_path: Path) -> None:
    source = tmp_path / "main.py"
    source.write_text(
        textwrap.dedent(
            """
            import json, pathlib
            import functions_framework

            @functions_framework.cloud_event
            def on_upload(event):
                seen = {k: event[k] for k in ("type", "source", "id", "time")}
                seen["data"] = event.data
                pathlib.Path(__file__).with_name("seen.json").write_text(json.dumps(seen))
            """
        )
    )
    app = functions_framework.create_app("on_upload", str(source), "cloudevent")
    headers, body = _published()

    response = app.test_client().post("/", data=body, headers=headers)

    assert response.status_code == 200
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert (seen["type"], seen["id"]) == (PUBLISHED_EVENT_TYPE, "42")
    event = StorageObjectEvent.from_cloud_event(seen, seen["data"])
    assert (event.event_type, event.bucket, event.name) == (STORAGE_FINALIZED, "dicom-upload",
                                                           "study/series/IM0001.dcm")
    assert (event.generation, event.size, event.event_id) == (1795743063813472, 10, "42")
    assert event.event_time == datetime(2026, 11, 27, 1, 31, 3, 100000, tzinfo=UTC)


def test_other_notifications_reach_the_function_as_what_they_are() -> None:
    # The deployment's notification sends finalizes only; the function ignores anything else itself.
    for kind, event_type in (("OBJECT_DELETE", "google.cloud.storage.object.v1.deleted"),
                             ("OBJECT_METADATA_UPDATE", "google.cloud.storage.object.v1.metadataUpdated")):
        headers, body = _published({**ATTRIBUTES, "eventType": kind})
        event = StorageObjectEvent.from_cloud_event({"type": headers["ce-type"], "id": headers["ce-id"]},
                                                    json.loads(body))
        assert event.event_type == event_type
