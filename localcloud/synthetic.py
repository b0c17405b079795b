"""A small synthetic DICOM study set for demos and tests; the same bytes for the same seed.

No real or real-looking personal data: names are SYNTHETIC^PATIENT^n, UIDs are derived from the
seed (so two seeds never collide, one seed always gives the same UIDs), pixels are noise.
Layout: `ROOT/STUDY_FOLDER/SERIES_FOLDER/IMnnnn.dcm`, plus a `study.json` sidecar per study folder
that an import must ignore (it is not DICOM).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_CLASS_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
IMAGE_SIZE = 32
SIDECAR_NAME = "study.json"


@dataclass(frozen=True)
class SyntheticSeries:
    uid: str
    folder: Path
    instances: tuple[Path, ...]


@dataclass(frozen=True)
class SyntheticStudy:
    uid: str
    patient_id: str
    patient_name: str
    study_date: str  # YYYYMMDD
    modality: str
    folder: Path
    series: tuple[SyntheticSeries, ...] = field(default=())

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


@dataclass(frozen=True)
class SyntheticSet:
    root: Path
    studies: tuple[SyntheticStudy, ...]

    @property
    def files(self) -> list[Path]:
        return [path for study in self.studies for series in study.series for path in series.instances]


def _uid(seed: int, *parts: object) -> str:
    # pydicom ignores entropy_srcs when prefix=None (it returns a random UUID UID), so keep its
    # default prefix; it concatenates the sources, hence one source with explicit separators.
    key = "/".join(["localcloud-synthetic", str(seed), *map(str, parts)])
    return str(generate_uid(entropy_srcs=[key]))


def generate(
    root: Path,
    *,
    seed: int = 1,
    patients: int = 3,
    studies_per_patient: tuple[int, int] = (1, 2),
    series_per_study: int = 2,
    instances_per_series: tuple[int, int] = (3, 5),
) -> SyntheticSet:
    """Writes the set under `root` and describes it. Ranges are inclusive (min, max)."""
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed)
    root = Path(root)
    studies = []
    for p in range(1, patients + 1):
        patient_id = f"SYN-{seed}-{p:03d}"
        patient_name = f"SYNTHETIC^PATIENT^{p}"
        for s in range(1, rng.randint(*studies_per_patient) + 1):
            modality = rng.choice(("CT", "MR"))
            study_date = (date(2024, 1, 1) + timedelta(days=rng.randrange(366))).strftime("%Y%m%d")
            study_uid = _uid(seed, p, s)
            study_folder = root / f"{patient_id}_{study_date}_{modality}"
            series_list = []
            for n in range(1, series_per_study + 1):
                series_uid = _uid(seed, p, s, n)
                series_folder = study_folder / f"series-{n}"
                series_folder.mkdir(parents=True, exist_ok=True)
                paths = []
                for i in range(1, rng.randint(*instances_per_series) + 1):
                    ds = _instance(
                        patient_id=patient_id,
                        patient_name=patient_name,
                        study_uid=study_uid,
                        study_date=study_date,
                        study_number=s,
                        series_uid=series_uid,
                        series_number=n,
                        sop_uid=_uid(seed, p, s, n, i),
                        instance_number=i,
                        modality=modality,
                        pixels=pixels.integers(0, 4096, size=(IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint16),
                    )
                    path = series_folder / f"IM{i:04d}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    paths.append(path)
                series_list.append(
                    SyntheticSeries(uid=series_uid, folder=series_folder, instances=tuple(paths))
                )
            study = SyntheticStudy(
                uid=study_uid,
                patient_id=patient_id,
                patient_name=patient_name,
                study_date=study_date,
                modality=modality,
                folder=study_folder,
                series=tuple(series_list),
            )
            _write_sidecar(study)
            studies.append(study)
    return SyntheticSet(root=root, studies=tuple(studies))


def _write_sidecar(study: SyntheticStudy) -> None:
    sidecar = {
        "studyInstanceUid": study.uid,
        "patientId": study.patient_id,
        "studyDate": study.study_date,
        "modality": study.modality,
        "series": [{"seriesInstanceUid": s.uid, "instances": len(s.instances)} for s in study.series],
    }
    (study.folder / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2) + "\n")


def _instance(
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    study_date: str,
    study_number: int,
    series_uid: str,
    series_number: int,
    sop_uid: str,
    instance_number: int,
    modality: str,
    pixels: np.ndarray,
) -> Dataset:
    sop_class = SOP_CLASS_BY_MODALITY[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = "120000"
    ds.StudyID = str(study_number)
    ds.AccessionNumber = f"ACC{study_uid[-8:]}"
    ds.StudyDescription = f"SYNTHETIC {modality} STUDY {study_number}"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"SYNTHETIC SERIES {series_number}"
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds
