"""Which objects of a finished import did not land: the API reports only counts.

For each object of the batch, read its UIDs (pydicom, header only) and ask the store whether it
holds that instance. An object that does not parse as DICOM failed for sure. UIDs are used for
the lookup only and never logged.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from functions.clients import HealthcareApi, ObjectStore
from functions.log import fields

logger = logging.getLogger(__name__)

_HEAD_BYTES = 256 * 1024  # enough for the header of nearly every instance; pixel data is skipped
_THREADS = 8


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    return bucket, name


def read_uids(data: bytes) -> tuple[str, str, str] | None:
    """(study, series, instance) UIDs of a DICOM Part 10 byte string; None if it is not one."""
    from pydicom import dcmread  # lazy: only the poller's failure path needs it
    from pydicom.errors import InvalidDicomError

    try:
        dataset = dcmread(io.BytesIO(data), stop_before_pixels=True,
                          specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        uids = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
    except (InvalidDicomError, AttributeError, EOFError, ValueError, OSError, KeyError, TypeError):
        return None
    return uids if all(uids) else None


class FailedObjectFinder:
    """Compares a batch's objects with the store."""

    def __init__(self, gcs: ObjectStore, healthcare: HealthcareApi) -> None:
        self._gcs = gcs
        self._hc = healthcare

    def find(self, entries: Sequence[dict[str, Any]]) -> list[str]:
        """The `uri` of every manifest entry whose instance is not in the store, in manifest order."""
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            landed = list(pool.map(self._landed, entries))
        return [str(e["uri"]) for e, ok in zip(entries, landed, strict=True) if not ok]

    def _landed(self, entry: dict[str, Any]) -> bool:
        # Read the staged copy when there is one: the original may have been replaced since.
        source = str(entry.get("staged") or entry["uri"])
        bucket, name = _split(source)
        generation = None if entry.get("staged") else int(entry.get("generation") or 0) or None
        try:
            data = self._gcs.download(bucket, name, generation=generation, end=_HEAD_BYTES - 1)
            uids = read_uids(data)
            if uids is None and len(data) >= _HEAD_BYTES:
                uids = read_uids(self._gcs.download(bucket, name, generation=generation))
        except Exception as exc:  # gone or unreadable: it cannot have been imported from here
            logger.warning("could not read an object of a failed batch",
                           extra=fields(object=entry["uri"], error=type(exc).__name__))
            return False
        if uids is None:
            return False
        return self._hc.instance_exists(*uids)
