"""Parse one DICOM Part 10 object into what the index needs.

Failure messages are fixed texts: pydicom's exception text can quote element values (patient
data), and these messages end up in logs and operation errors.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

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
_INDEX_TAGS = tuple(BaseTag(tag) for tag in sorted(_INDEXED_TAGS))
_BULK_DATA_THRESHOLD = 1024  # Dataset.to_json_dict()'s default; no index attribute is binary
# Converting an element's raw bytes is most of the cost of a small instance: convert only these.
_READ_TAGS = list(_INDEX_TAGS)  # SOPClassUID and the three UIDs are among them
_DICTIONARY_VR = {tag: dictionary_VR(tag) for tag in _READ_TAGS}
# The common case, converted here in microseconds instead of pydicom's ~70 us per element: one
# value of printable ASCII (no backslash, so one value; no ESC, so any character set reads it
# the same) plus trailing NUL padding. Anything else goes through pydicom.
_PLAIN_TEXT = re.compile(rb"[\x20-\x5b\x5d-\x7e]*\x00*")
_PLAIN_TEXT_VRS = frozenset({"UI", "DA", "TM", "CS", "SH", "LO", "IS"})
_DIGITS = re.compile(r"[0-9]+")
# File meta (group 0002, always explicit VR little endian) is walked here rather than by dcmread,
# which converts and checks every meta element and builds a FileDataset: about 4/5 of its cost
# for a small instance. Only the transfer syntaxes below take this path; anything else (deflate,
# private syntaxes, no transfer syntax, a command set, meta we do not walk cleanly) goes
# through dcmread as before, so its results and failures stay pydicom's.
_PREAMBLE_END = 132  # 128-byte preamble + b"DICM"
_LONG_LENGTH_VRS = frozenset(  # explicit VRs with a 4-byte length (PS3.5 7.1.2)
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UID_TEXT = re.compile(rb"[0-9.]+[\x00 ]?")
_ENCODINGS = {  # transfer syntax -> (is_implicit_VR, is_little_endian)
    "1.2.840.10008.1.2": (True, True),
    "1.2.840.10008.1.2.1": (False, True),
    "1.2.840.10008.1.2.2": (False, False),
}
_SPECIFIC_TAGS: list[BaseTag | int] = list(_READ_TAGS)
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # as dcmread's stop_before_pixels


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
    fast = _read_fast(data)
    if fast is not None:
        return fast
    return _read_with_dcmread(data)


def _read_with_dcmread(data: bytes) -> InstanceInfo:
    try:
        # Pixel data is not needed for the index; skipping it keeps large instances cheap.
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_READ_TAGS)
    except InvalidDicomError:
        raise NotDicomError("not a DICOM Part 10 file (no DICM prefix or file meta)") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure means "not importable"
        raise NotDicomError(f"unparseable DICOM data ({type(exc).__name__})") from None
    meta = getattr(ds, "file_meta", None)
    return info_from_dataset(ds, str(getattr(meta, "TransferSyntaxUID", "") or ""))


def _read_fast(data: bytes) -> InstanceInfo | None:
    """The common case without dcmread's file meta work; None to leave the object to dcmread."""
    found = _walk_file_meta(data)
    if found is None:
        return None
    start, transfer_syntax = found
    encoding = _ENCODINGS.get(transfer_syntax)
    if encoding is None or data[start : start + 2] == b"\x00\x00":
        return None  # another syntax, or a command set (group 0000) that dcmread merges
    fp = io.BytesIO(data)  # shares the bytes (a slice would copy a large instance)
    fp.seek(start)
    try:
        ds = read_dataset(
            fp,
            *encoding,
            stop_when=lambda tag, _vr, _length: tag in _PIXEL_TAGS,
            specific_tags=_SPECIFIC_TAGS,
        )
    except Exception:  # noqa: BLE001 - dcmread decides (and words) what is wrong with it
        return None
    return info_from_dataset(ds, transfer_syntax)


def _walk_file_meta(data: bytes) -> tuple[int, str] | None:
    """(offset of the data set, Transfer Syntax UID) of a Part 10 file whose meta elements all
    walk cleanly; None otherwise."""
    if data[128:_PREAMBLE_END] != b"DICM":
        return None
    pos, end, transfer_syntax = _PREAMBLE_END, len(data), None
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 2:
            break
        vr = data[pos + 4 : pos + 6]
        if not vr.isalpha() or not vr.isupper():
            return None  # implicit VR meta or garbage: dcmread's problem
        if vr in _LONG_LENGTH_VRS:
            if pos + 12 > end:
                return None
            length, pos = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        else:
            length, pos = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        if length == 0xFFFFFFFF or pos + length > end:
            return None
        if element == 0x0010:
            value = data[pos : pos + length]
            if vr != b"UI" or not _UID_TEXT.fullmatch(value):
                return None
            transfer_syntax = value.rstrip(b"\x00 ").decode("ascii")
        pos += length
    if transfer_syntax is None or pos >= end:
        return None
    return pos, transfer_syntax


def info_from_dataset(ds: Dataset, transfer_syntax: str) -> InstanceInfo:
    if not transfer_syntax:
        raise NotDicomError("DICOM file meta has no Transfer Syntax UID")
    try:
        plain = {tag: found for tag in _READ_TAGS if (found := _plain_value(ds, tag)) is not None}

        def text(keyword: str) -> str:
            tag = BaseTag(tag_for_keyword(keyword) or 0)
            if tag in plain:
                return str(plain[tag][1] or "")
            return str(ds.get(keyword, "") or "")

        uids = {kw: text(kw) for kw in _REQUIRED_UIDS}
        missing = [kw for kw, value in uids.items() if not value]
        if missing:
            raise NotDicomError(f"missing required attribute(s): {', '.join(missing)}")
        # Element by element, as Dataset.to_json_dict() writes them, without copying into a subset.
        attrs: dict[str, Any] = {}
        for tag in _INDEX_TAGS:
            if tag in plain:
                vr, value = plain[tag]
                attrs[f"{tag:08X}"] = {"vr": vr} if value is None else {"vr": vr, "Value": [value]}
            elif tag in ds:
                attrs[f"{tag:08X}"] = ds[tag].to_json_dict(None, _BULK_DATA_THRESHOLD)
        return InstanceInfo(
            study=uids["StudyInstanceUID"],
            series=uids["SeriesInstanceUID"],
            sop=uids["SOPInstanceUID"],
            sop_class=text("SOPClassUID"),
            transfer_syntax=transfer_syntax,
            patient_id=text("PatientID"),
            study_date=text("StudyDate"),
            modality=text("Modality"),
            attrs=attrs,
        )
    except NotDicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed element values
        raise NotDicomError(f"unparseable DICOM attributes ({type(exc).__name__})") from None


def _plain_value(ds: Dataset, tag: BaseTag) -> tuple[str, str | int | None] | None:
    """(VR, value; None if empty) of an unconverted element in the common case, converted the way
    pydicom converts it for DICOM JSON; None to leave the element to pydicom."""
    raw = ds.get_item(tag)
    if not isinstance(raw, RawDataElement):
        return None  # absent, or already converted
    vr = raw.VR or _DICTIONARY_VR[tag]
    if vr != _DICTIONARY_VR[tag]:
        return None  # e.g. UN, or a VR the file got wrong
    value = raw.value or b""
    if vr == "US":
        if len(value) != 2:
            return None
        return vr, int.from_bytes(value, "little" if raw.is_little_endian else "big")
    if vr not in _PLAIN_TEXT_VRS or not _PLAIN_TEXT.fullmatch(value):
        return None
    stripped = value.decode("ascii").rstrip(" \0")
    if vr == "IS":
        if stripped and not _DIGITS.fullmatch(stripped):
            return None  # signs, spaces, decimals: pydicom's rules
        return vr, int(stripped) if stripped else None
    return vr, stripped or None
