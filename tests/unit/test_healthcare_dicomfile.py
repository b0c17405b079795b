"""The index entry of an instance: what the emulator's import and STOW-RS read from each object."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset

from localcloud.healthcare.dicomfile import (
    INSTANCE_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    NotDicomError,
    read_instance,
)

TEST_FILES = sorted(Path(pydicom.data.DATA_ROOT, "test_files").rglob("*.dcm"))


def reference_attrs(data: bytes) -> dict[str, object]:
    """The straightforward way: parse everything, copy the index keywords, let pydicom write JSON."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    subset = Dataset()
    for keyword in STUDY_KEYWORDS + SERIES_KEYWORDS + INSTANCE_KEYWORDS:
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


def test_non_dicom_and_empty_objects_are_not_dicom() -> None:
    with pytest.raises(NotDicomError, match="empty"):
        read_instance(b"")
    with pytest.raises(NotDicomError, match="DICM"):
        read_instance(b"not a dicom file at all" * 10)
