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

# What QIDO-RS returns per level, from Google's DICOM conformance statement ("Returned results"):
# the default attributes, and the ones `includefield=all` adds (instances: every attribute).
STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
)
STUDY_ALL_KEYWORDS = (
    "PersonIdentificationCodeSequence",
    "PersonAddress",
    "PersonTelephoneNumbers",
    "PersonTelecomInformation",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionCodeSequence",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence",
    "IssuerOfAccessionNumberSequence",
    "LocalNamespaceEntityID",
    "UniversalEntityID",
    "UniversalEntityIDType",
    "StudyDescription",
    "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence",
    "RequestingServiceCodeSequence",
    "ReferencedStudySequence",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
)
SERIES_KEYWORDS = (
    "SpecificCharacterSet",
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "SeriesInstanceUID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
SERIES_ALL_KEYWORDS = ("SeriesNumber", "Laterality", "SeriesDate", "SeriesTime")
INSTANCE_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
# Kept in the index (DICOM JSON) so that searches never read blobs, except for instance-level
# attributes outside these lists.
_INDEXED_TAGS: frozenset[int] = frozenset(
    int(tag_for_keyword(k) or 0)
    for k in STUDY_KEYWORDS + STUDY_ALL_KEYWORDS + SERIES_KEYWORDS + SERIES_ALL_KEYWORDS + INSTANCE_KEYWORDS
)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


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
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
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
        subset = Dataset()
        # Intersecting tags converts only the wanted raw elements (iterating would convert all).
        for tag in sorted(_INDEXED_TAGS.intersection(ds.keys())):
            subset[tag] = ds[tag]
        attrs = subset.to_json_dict()
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
