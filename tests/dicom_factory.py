"""Tiny, unique DICOM instances for tests (Part 10 bytes), with no patient-like data."""

from __future__ import annotations

import io
import itertools

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

_COUNTER = itertools.count(1)


def instance(study: str | None = None, series: str | None = None, sop: str | None = None,
             *, patient_id: str = "TEST-1", study_date: str = "20240101", modality: str = "OT") -> bytes:
    """A 4x4 8-bit secondary capture; UIDs are generated unless given."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop) if sop else generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID = patient_id
    ds.StudyDate = study_date
    ds.Modality = modality
    ds.InstanceNumber = next(_COUNTER)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(16))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study(series: int, instances: int) -> list[bytes]:
    """One study of `series` x `instances` instances."""
    study_uid = generate_uid()
    return [instance(study_uid, series_uid) for series_uid in (generate_uid() for _ in range(series))
            for _ in range(instances)]
