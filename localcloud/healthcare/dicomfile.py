"""Parse one DICOM Part 10 object into what the index needs.

Failure messages are fixed texts: pydicom's exception text can quote element values (patient
data), and these messages end up in logs and operation errors.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

# Attributes kept in the index to answer QIDO-RS without reading blobs (DICOM JSON, per level).
STUDY_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
)
SERIES_KEYWORDS = ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber")
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_INDEX_TAGS = tuple(
    BaseTag(tag_for_keyword(kw) or 0) for kw in STUDY_KEYWORDS + SERIES_KEYWORDS + INSTANCE_KEYWORDS
)
_BULK_DATA_THRESHOLD = 1024  # Dataset.to_json_dict()'s default; no index attribute is binary
# Converting an element's raw bytes is most of the cost of a small instance: convert only these.
_READ_TAGS = [*_INDEX_TAGS, BaseTag(tag_for_keyword("SOPClassUID") or 0)]


class NotDicomError(ValueError):
    """The object is not a storable DICOM instance; the message is safe to log."""


@dataclass(frozen=True)
class InstanceInfo:
    study: str
    series: str
    sop: str
    sop_class: str
    transfer_syntax: str
    patient_id: str
    study_date: str
    modality: str
    attrs: dict[str, Any]  # DICOM JSON of the *_KEYWORDS attributes present


def read_instance(data: bytes) -> InstanceInfo:
    if not data:
        raise NotDicomError("empty DICOM instance found")
    try:
        # Pixel data is not needed for the index; skipping it keeps large instances cheap.
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_READ_TAGS)
    except InvalidDicomError:
        raise NotDicomError("not a DICOM Part 10 file (no DICM prefix or file meta)") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure means "not importable"
        raise NotDicomError(f"unparseable DICOM data ({type(exc).__name__})") from None
    return info_from_dataset(ds)


def info_from_dataset(ds: Dataset) -> InstanceInfo:
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not transfer_syntax:
        raise NotDicomError("DICOM file meta has no Transfer Syntax UID")
    try:
        uids = {kw: str(ds.get(kw, "") or "") for kw in _REQUIRED_UIDS}
        missing = [kw for kw, value in uids.items() if not value]
        if missing:
            raise NotDicomError(f"missing required attribute(s): {', '.join(missing)}")
        # Element by element, as Dataset.to_json_dict() writes them, without copying into a subset.
        attrs = {f"{tag:08X}": ds[tag].to_json_dict(None, _BULK_DATA_THRESHOLD) for tag in _INDEX_TAGS if tag in ds}
        return InstanceInfo(
            study=uids["StudyInstanceUID"],
            series=uids["SeriesInstanceUID"],
            sop=uids["SOPInstanceUID"],
            sop_class=str(ds.get("SOPClassUID", "") or ""),
            transfer_syntax=transfer_syntax,
            patient_id=str(ds.get("PatientID", "") or ""),
            study_date=str(ds.get("StudyDate", "") or ""),
            modality=str(ds.get("Modality", "") or ""),
            attrs=attrs,
        )
    except NotDicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed element values
        raise NotDicomError(f"unparseable DICOM attributes ({type(exc).__name__})") from None
