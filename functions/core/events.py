"""Typed views of the CloudEvents the functions receive; payloads are decoded once, here.

Eventarc sends the Cloud Storage object resource as data, with int64 fields as strings (test
payloads often use ints: both are accepted). The deployment delivers uploads as Cloud Storage
Pub/Sub notifications (JSON_API_V1) on a topic of its own, so that the Cloud Storage service
agent may publish to that one topic only (docs/decisions/0882): a `messagePublished` event whose
message carries the same object resource and the attributes `eventType`, `eventTime`; both
forms give the same `StorageObjectEvent`. A Pub/Sub event carries the message under
`message`, with snake_case twins of some keys and no `subscription` when functions-framework
converted a raw push.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from functions.core.errors import InvalidEventError

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 (with `Z`, offsets, any fraction) to an aware datetime; None if absent/garbled."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # Python wants at most 6 fraction digits
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if value is None:
        raise InvalidEventError(f"object data has no {key!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidEventError(f"object field {key!r} is not an integer: {str(value)[:40]!r}") from None


@dataclass(frozen=True)
class StorageObjectEvent:
    """An object finalize event: which generation of which object, and when."""

    event_id: str
    event_type: str
    bucket: str
    name: str
    generation: int
    size: int
    time_created: datetime
    event_time: datetime | None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"

    @classmethod
    def from_cloud_event(cls, attributes: Mapping[str, Any], data: Any) -> StorageObjectEvent:
        """Builds the view from CloudEvent attributes and data.

        Raises:
            InvalidEventError: a required field is missing or malformed.
        """
        if attributes.get("type") == PUBSUB_PUBLISHED:
            return cls._from_notification(PubsubMessage.from_cloud_event(attributes, data))
        if not isinstance(data, Mapping):
            raise InvalidEventError(f"storage event data is not a JSON object ({type(data).__name__})")
        name = data.get("name")
        if not name and str(attributes.get("subject", "")).startswith("objects/"):
            name = str(attributes["subject"])[len("objects/"):]
        bucket = data.get("bucket")
        if not bucket:
            source = str(attributes.get("source", ""))
            bucket = source.rsplit("/buckets/", 1)[-1] if "/buckets/" in source else None
        if not isinstance(name, str) or not name:
            raise InvalidEventError("storage event has no object name")
        if not isinstance(bucket, str) or not bucket:
            raise InvalidEventError("storage event has no bucket")
        event_time = parse_time(attributes.get("time"))
        created = parse_time(data.get("timeCreated")) or parse_time(data.get("updated")) or event_time
        if created is None:
            raise InvalidEventError("storage event has neither timeCreated nor a time")
        return cls(
            event_id=str(attributes.get("id", "")),
            event_type=str(attributes.get("type", "")),
            bucket=bucket,
            name=name,
            generation=_int(data, "generation"),
            size=_int(data, "size", 0),
            time_created=created,
            event_time=event_time,
        )


    @classmethod
    def _from_notification(cls, message: PubsubMessage) -> StorageObjectEvent:
        """A Cloud Storage Pub/Sub notification (payload JSON_API_V1) as the Eventarc event it mirrors."""
        try:
            resource = json.loads(message.data) if message.data else None
        except (ValueError, UnicodeDecodeError):
            raise InvalidEventError("the Cloud Storage notification's data is not JSON") from None
        kind = message.attributes.get("eventType", "")
        event_type = _NOTIFICATION_TYPES.get(kind, kind)
        event_time = message.attributes.get("eventTime") or (
            message.publish_time.isoformat() if message.publish_time else None)
        return cls.from_cloud_event({"id": message.message_id, "type": event_type, "time": event_time,
                                     "subject": f"objects/{message.attributes.get('objectId', '')}"}, resource)


# Cloud Storage notification eventType -> the Eventarc event type of the same change.
_NOTIFICATION_TYPES = {
    "OBJECT_FINALIZE": STORAGE_FINALIZED,
    "OBJECT_DELETE": "google.cloud.storage.object.v1.deleted",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived",
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
}


@dataclass(frozen=True)
class PubsubMessage:
    """A Pub/Sub message delivered as a messagePublished CloudEvent."""

    event_id: str
    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: datetime | None

    @classmethod
    def from_cloud_event(cls, attributes: Mapping[str, Any], data: Any) -> PubsubMessage:
        """Builds the view from CloudEvent attributes and data.

        Raises:
            InvalidEventError: no `message`, or `message.data` is not base64.
        """
        message = data.get("message") if isinstance(data, Mapping) else None
        if not isinstance(message, Mapping):
            raise InvalidEventError("Pub/Sub event has no message")
        raw = message.get("data") or ""
        try:
            payload = base64.b64decode(raw, validate=True) if raw else b""
        except (binascii.Error, ValueError, TypeError):
            raise InvalidEventError("Pub/Sub message data is not base64") from None
        message_id = message.get("messageId") or message.get("message_id") or attributes.get("id") or ""
        publish = message.get("publishTime") or message.get("publish_time") or attributes.get("time")
        attrs = message.get("attributes") or {}
        return cls(
            event_id=str(attributes.get("id", "")),
            message_id=str(message_id),
            data=payload,
            attributes={str(k): str(v) for k, v in attrs.items()} if isinstance(attrs, Mapping) else {},
            publish_time=parse_time(publish),
        )
