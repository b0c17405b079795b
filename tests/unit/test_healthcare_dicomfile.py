"""The index entry of an instance: what the emulator's import and STOW-RS read from each object."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from localcloud.healthcare.dicomfile import (
    INSTANCE_KEYWORDS,
    SERIES_ALL_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_ALL_KEYWORDS,
    STUDY_KEYWORDS,
    InstanceInfo,
    NotDicomError,
    _read_fast,
    _read_with_dcmread,
    read_instance,
)

TEST_FILES = sorted(Path(pydicom.data.DATA_ROOT, "test_files").rglob("*.dcm"))


def reference_attrs(data: bytes) -> dict[str, object]:
    """The straightforward way: parse everything, copy the index keywords, let pydicom write JSON."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    subset = Dataset()
    for keyword in STUDY_KEYWORDS + STUDY_ALL_KEYWORDS + SERIES_KEYWORDS + SERIES_ALL_KEYWORDS + INSTANCE_KEYWORDS:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return subset.to_json_dict()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_index_attributes_match_pydicoms_json_for_every_pydicom_test_file() -> None:
    compared = 0
    for path in TEST_FILES:
        data = path.read_bytes()
        try:
            info = read_instance(data)
        except NotDicomError:
            continue
        assert info.attrs == reference_attrs(data), path.name
        assert info.sop == info.attrs["00080018"]["Value"][0]
        compared += 1
    assert compared > 30  # most of pydicom's test files are storable instances


def reference_fields(data: bytes) -> tuple[str, ...]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID",
                "StudyDate", "Modality")
    return tuple(str(ds.get(kw, "") or "") for kw in keywords)


def encoded(syntax: UID, charset: str | None = None, **values: object) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
               implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


EDGE_CASES = [
    {"PatientID": "P-1", "StudyDate": "20240101", "Modality": "MR", "Rows": 16, "Columns": 512,
     "InstanceNumber": "7", "SeriesNumber": "007", "NumberOfFrames": "12", "StudyTime": "101010.5"},
    {"PatientID": "P1 ", "AccessionNumber": "", "StudyDescription": "  leading and trailing  ",
     "StudyID": "S", "Modality": "CT ", "InstanceNumber": " 5", "SeriesNumber": "+3"},
    {"PatientID": "A\\B", "StudyDate": "20240101\\20240102", "InstanceNumber": "", "SeriesNumber": "-1",
     "NumberOfFrames": "1.0", "PatientName": "Doe^John", "ReferringPhysicianName": ""},
    {"PatientID": "Ünïcode", "StudyDescription": "Ärger", "PatientName": "Müller^Hans"},
    {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう", "PatientID": "ID=1"},
    {"BitsAllocated": 8, "PatientSex": "O", "PatientBirthDate": "", "SeriesDescription": "x" * 63},
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"]])
@pytest.mark.parametrize("values", EDGE_CASES)
def test_index_attributes_match_pydicom_for_padding_empties_multi_values_and_character_sets(
    syntax: UID, charset: str | None, values: dict[str, object]
) -> None:
    data = encoded(syntax, charset, **values)
    info = read_instance(data)
    assert info.attrs == reference_attrs(data)
    assert (info.study, info.series, info.sop, info.sop_class, info.patient_id, info.study_date,
            info.modality) == reference_fields(data)


def test_non_dicom_and_empty_objects_are_not_dicom() -> None:
    with pytest.raises(NotDicomError, match="empty"):
        read_instance(b"")
    with pytest.raises(NotDicomError, match="DICM"):
        read_instance(b"not a dicom file at all" * 10)


def outcome(read: Callable[[bytes], InstanceInfo | None], data: bytes) -> InstanceInfo | str | None:
    try:
        return read(data)
    except NotDicomError as exc:
        return f"NotDicomError: {exc}"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_fast_file_meta_walk_gives_what_dcmread_gives_for_every_pydicom_test_file() -> None:
    fast = 0
    for path in TEST_FILES:
        data = path.read_bytes()
        assert outcome(read_instance, data) == outcome(_read_with_dcmread, data), path.name
        fast += outcome(_read_fast, data) is not None
    assert fast > 30  # the walk is taken for the common files, not silently skipped


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_the_fast_file_meta_walk_takes_the_three_plain_syntaxes(syntax: UID) -> None:
    data = encoded(syntax, None, PatientID="P")
    assert _read_fast(data) == _read_with_dcmread(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:140],  # cut inside the file meta
        lambda d: d[:128] + b"DICX" + d[132:],  # no DICM prefix
        lambda d: d[:132] + d[132:136] + b"ul" + d[138:],  # a VR that is not one
        lambda d: d.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.1.99"),  # deflate, not deflated
        lambda d: d + b"\x00" * 3,  # trailing bytes after the data set
    ],
)
def test_damaged_objects_read_as_dcmread_reads_them(damage: Callable[[bytes], bytes]) -> None:
    data = damage(encoded(ExplicitVRLittleEndian, None, PatientID="P"))
    assert outcome(read_instance, data) == outcome(_read_with_dcmread, data)
