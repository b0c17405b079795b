"""Which uploads the import function takes. Pure and cheap: an ignored event makes no network call.

One rule (`object_ignore_reason`) serves the finalize handler and the planner: an object the
handler ignores is one a planned wildcard must not match, or the import reads it and counts it
as a failure (a zero-byte `.dcm` next to new uploads, say).

The rule reads a few values of the deployment (`ImportScope`); `functions.settings.Settings` has them.
"""

from __future__ import annotations

import re
from typing import Protocol

from functions.core.events import STORAGE_FINALIZED, StorageObjectEvent


class ImportScope(Protocol):
    """What the rule reads of the deployment: where its own state lies and which uploads it takes."""

    @property
    def state_bucket(self) -> str: ...  # DICOM_STATE_BUCKET

    @property
    def state_prefix(self) -> str: ...  # DICOM_STATE_PREFIX

    @property
    def import_prefixes(self) -> tuple[str, ...]: ...  # DICOM_IMPORT_PREFIXES

    @property
    def import_name_pattern(self) -> re.Pattern[str]: ...  # DICOM_IMPORT_NAME_PATTERN

    @property
    def staging(self) -> str: ...  # DICOM_STAGING_BUCKET, or the state bucket

    def state_path(self, *parts: str) -> str: ...


def ignore_reason(event: StorageObjectEvent, settings: ImportScope) -> str | None:
    """Why this object is not imported, or None to import it. Pure: no network call."""
    if event.event_type and event.event_type != STORAGE_FINALIZED:
        return f"event type {event.event_type} is not a finalize"
    return object_ignore_reason(event.bucket, event.name, event.size, settings)


def object_ignore_reason(bucket: str, name: str, size: int, settings: ImportScope) -> str | None:
    """Why the object `gs://bucket/name` of `size` bytes is not importable, or None if it is."""
    if bucket == settings.state_bucket and name.startswith(settings.state_prefix):
        return "one of the pipeline's own state objects"
    if bucket == settings.staging and name.startswith(settings.state_path("staging/")):
        return "one of the pipeline's own staged copies"
    if name.endswith("/"):
        return "a folder placeholder"
    if size == 0:
        return "a zero-byte object"
    if settings.import_prefixes and not any(name.startswith(p) for p in settings.import_prefixes):
        return "outside the configured prefixes"
    if not settings.import_name_pattern.search(name):
        return "name does not match DICOM_IMPORT_NAME_PATTERN"
    return None


def is_importable(bucket: str, name: str, size: int, settings: ImportScope) -> bool:
    """Would the import function take this object? (What a planned wildcard may match.)"""
    return object_ignore_reason(bucket, name, size, settings) is None
