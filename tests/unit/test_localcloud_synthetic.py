"""The synthetic study set: valid DICOM, no real-looking people, the same bytes for a seed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom

from localcloud import synthetic


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_the_same_seed_gives_the_same_files(tmp_path: Path) -> None:
    synthetic.generate(tmp_path / "a", seed=5)
    synthetic.generate(tmp_path / "b", seed=5)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_different_seeds_give_different_uids(tmp_path: Path) -> None:
    a = synthetic.generate(tmp_path / "a", seed=1)
    b = synthetic.generate(tmp_path / "b", seed=2)
    assert not {s.uid for s in a.studies} & {s.uid for s in b.studies}


def test_the_set_has_the_promised_shape(tmp_path: Path) -> None:
    generated = synthetic.generate(tmp_path, seed=3)
    patients = {s.patient_id for s in generated.studies}
    assert len(patients) == 3
    for patient in patients:
        assert 1 <= sum(s.patient_id == patient for s in generated.studies) <= 2
    for study in generated.studies:
        assert len(study.series) == 2
        assert all(3 <= len(series.instances) <= 5 for series in study.series)
        assert study.study_date.startswith("2024")
        assert study.modality in {"CT", "MR"}


def test_every_file_is_valid_dicom_matching_its_place(tmp_path: Path) -> None:
    generated = synthetic.generate(tmp_path, seed=4)
    sop_uids = set()
    for study in generated.studies:
        for series in study.series:
            for path in series.instances:
                assert path.parent.parent == study.folder and path.name.startswith("IM")
                ds = pydicom.dcmread(path)
                assert ds.StudyInstanceUID == study.uid
                assert ds.SeriesInstanceUID == series.uid
                assert ds.Modality == study.modality
                assert str(ds.PatientName).startswith("SYNTHETIC^PATIENT^")
                assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
                assert ds.pixel_array.shape == (32, 32) and ds.pixel_array.dtype == np.uint16
                sop_uids.add(ds.SOPInstanceUID)
    assert len(sop_uids) == len(generated.files)


def test_each_study_folder_has_a_non_dicom_sidecar(tmp_path: Path) -> None:
    generated = synthetic.generate(tmp_path, seed=6)
    for study in generated.studies:
        sidecar = json.loads((study.folder / synthetic.SIDECAR_NAME).read_text())
        assert sidecar["studyInstanceUid"] == study.uid
        assert not pydicom.misc.is_dicom(study.folder / synthetic.SIDECAR_NAME)
