"""Which uploads the import function takes. Pure and cheap: an ignored event makes no network call."""

from __future__ import annotations

from functions.events import STORAGE_FINALIZED, StorageObjectEvent
from functions.settings import Settings


def ignore_reason(event: StorageObjectEvent, settings: Settings) -> str | None:
    """Why this object is not imported, or None to import it. Pure: no network call."""
    if event.event_type and event.event_type != STORAGE_FINALIZED:
        return f"event type {event.event_type} is not a finalize"
    if event.bucket == settings.state_bucket and event.name.startswith(settings.state_prefix):
        return "one of the pipeline's own state objects"
    if event.name.endswith("/"):
        return "a folder placeholder"
    if event.size == 0:
        return "a zero-byte object"
    if settings.import_prefixes and not any(event.name.startswith(p) for p in settings.import_prefixes):
        return "outside the configured prefixes"
    if not settings.import_name_pattern.search(event.name):
        return "name does not match DICOM_IMPORT_NAME_PATTERN"
    return None


def is_importable(bucket: str, name: str, settings: Settings) -> bool:
    """Would the import function take this object? (What a planned wildcard may match.)"""
    if bucket == settings.state_bucket and name.startswith(settings.state_prefix):
        return False
    if settings.import_prefixes and not any(name.startswith(p) for p in settings.import_prefixes):
        return False
    return bool(settings.import_name_pattern.search(name)) and not name.endswith("/")
