"""DICOMweb on the Healthcare API emulator, driven by dicomweb-client (STOW-RS, QIDO-RS, WADO-RS)."""

from __future__ import annotations

import io
import json

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.integration.test_healthcare_emulator import (  # noqa: F401 - fixtures
    TEST_FILES,
    Emulator,
    Store,
    _clean_control_state,
    _response,
    emulator,
    fake_gcs_url,
    make_instance,
    new_store,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def catalog(emulator: Emulator) -> tuple[Store, dict[str, str]]:  # noqa: F811
    """Study A (2020-01-01, CT + MR series, patient P1), B (2020-06-15, MR, P1), C (2021-01-01, CT, P2)."""
    store = new_store(emulator)
    uid = {key: str(generate_uid()) for key in ("A", "A_ct", "A_mr", "B", "B_mr", "C", "C_ct")}
    datasets = [
        make_instance(uid["A"], uid["A_ct"], StudyDate="20200101", Modality="CT", PatientID="P1"),
        make_instance(uid["A"], uid["A_ct"], StudyDate="20200101", Modality="CT", PatientID="P1"),
        make_instance(uid["A"], uid["A_mr"], StudyDate="20200101", Modality="MR", PatientID="P1"),
        make_instance(uid["B"], uid["B_mr"], StudyDate="20200615", Modality="MR", PatientID="P1"),
        make_instance(
            uid["C"], uid["C_ct"], StudyDate="20210101", Modality="CT", PatientID="P2", InstitutionName="X"
        ),
    ]
    response = store.dicomweb.store_instances([pydicom.dcmread(io.BytesIO(d)) for d in datasets])
    assert len(response.ReferencedSOPSequence) == 5
    assert "FailedSOPSequence" not in response
    return store, uid


def _studies(results: list[dict]) -> set[str]:
    return {r["0020000D"]["Value"][0] for r in results}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, {"A", "B", "C"}),
        ({"PatientID": "P1"}, {"A", "B"}),
        ({"PatientID": "P*"}, {"A", "B", "C"}),
        ({"StudyDate": "20200101"}, {"A"}),
        ({"StudyDate": "20200101-20201231"}, {"A", "B"}),
        ({"StudyDate": "20200601-"}, {"B", "C"}),
        ({"StudyDate": "-20200101"}, {"A"}),
        ({"ModalitiesInStudy": "CT"}, {"A", "C"}),
        ({"Modality": "MR"}, {"A", "B"}),
        ({"StudyDate": "20200101-20201231", "ModalitiesInStudy": "CT"}, {"A"}),
        ({"PatientID": "nobody"}, set()),
    ],
)
def test_search_for_studies(catalog: tuple[Store, dict[str, str]], filters: dict, expected: set[str]) -> None:
    store, uid = catalog
    assert _studies(store.dicomweb.search_for_studies(search_filters=filters)) == {uid[k] for k in expected}


def test_study_results_carry_counts_and_modalities(catalog: tuple[Store, dict[str, str]]) -> None:
    store, uid = catalog
    [study] = store.dicomweb.search_for_studies(search_filters={"StudyInstanceUID": uid["A"]})
    assert study["00080061"]["Value"] == ["CT", "MR"]  # ModalitiesInStudy
    assert study["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert study["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    assert study["00100020"]["Value"] == ["P1"] and study["00080020"]["Value"] == ["20200101"]


def test_search_for_series_and_instances(catalog: tuple[Store, dict[str, str]]) -> None:
    store, uid = catalog
    series = store.dicomweb.search_for_series(uid["A"])
    assert {s["0020000E"]["Value"][0] for s in series} == {uid["A_ct"], uid["A_mr"]}
    assert {
        s["0020000E"]["Value"][0] for s in store.dicomweb.search_for_series(search_filters={"Modality": "MR"})
    } == {
        uid["A_mr"],
        uid["B_mr"],
    }
    assert len(store.dicomweb.search_for_instances(uid["A"], uid["A_ct"])) == 2
    assert len(store.dicomweb.search_for_instances(uid["A"])) == 3
    everything = store.dicomweb.search_for_instances()
    assert len(everything) == 5
    page = store.dicomweb.search_for_instances(limit=2, offset=1)
    assert page == everything[1:3]
    wanted = everything[0]["00080018"]["Value"][0]
    assert len(store.dicomweb.search_for_instances(search_filters={"SOPInstanceUID": wanted})) == 1


def test_includefield_adds_attributes(catalog: tuple[Store, dict[str, str]]) -> None:
    store, uid = catalog
    [plain] = store.dicomweb.search_for_studies(search_filters={"StudyInstanceUID": uid["C"]})
    [wide] = store.dicomweb.search_for_studies(
        search_filters={"StudyInstanceUID": uid["C"]}, fields=["InstitutionName"]
    )
    assert "00080080" not in plain and wide["00080080"]["Value"] == ["X"]
    [everything] = store.dicomweb.search_for_studies(
        search_filters={"StudyInstanceUID": uid["C"]}, fields=["all"]
    )
    assert everything["00080080"]["Value"] == ["X"] and "00280010" in everything


def test_empty_search_is_200_with_an_empty_array(catalog: tuple[Store, dict[str, str]]) -> None:
    store, _ = catalog
    response = requests.get(f"{store.dicomweb_url}/studies?PatientID=nobody", timeout=10)
    assert (response.status_code, response.json()) == (200, [])
    assert response.headers["Content-Type"] == "application/dicom+json"


def test_bad_search_parameter_is_400_google_error(catalog: tuple[Store, dict[str, str]]) -> None:
    store, _ = catalog
    response = requests.get(f"{store.dicomweb_url}/studies?StudyDate=2020-01-01", timeout=10)
    assert response.status_code == 400 and response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_retrieve_instance_metadata_series_and_study(emulator: Emulator) -> None:  # noqa: F811
    store = new_store(emulator)
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    store.dicomweb.store_instances([ct])
    study, series, sop = ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID
    retrieved = store.dicomweb.retrieve_instance(study, series, sop)
    assert retrieved.SOPInstanceUID == sop and (retrieved.pixel_array == ct.pixel_array).all()
    metadata = store.dicomweb.retrieve_instance_metadata(study, series, sop)
    assert metadata["00080018"]["Value"] == [sop] and "7FE00010" not in metadata
    assert metadata["00020010"]["Value"] == [ct.file_meta.TransferSyntaxUID]
    assert [i.SOPInstanceUID for i in store.dicomweb.retrieve_series(study, series)] == [sop]
    assert [i.SOPInstanceUID for i in store.dicomweb.retrieve_study(study)] == [sop]
    assert len(store.dicomweb.retrieve_study_metadata(study)) == 1

    url = f"{store.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}"
    as_stored = requests.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    )
    assert (TEST_FILES / "CT_small.dcm").read_bytes() in as_stored.content
    rle = store.dicomweb.retrieve_instance(
        study, series, sop, media_types=(("application/dicom", "1.2.840.10008.1.2.5"),)
    )
    assert rle.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert (rle.pixel_array == ct.pixel_array).all()

    missing = requests.get(f"{url[:-3]}999", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    with pytest.raises(requests.HTTPError) as caught:
        store.dicomweb.retrieve_instance(study, series, "1.2.3")
    assert _response(caught).status_code == 404


def test_stow_reports_conflicts_and_study_mismatches(emulator: Emulator) -> None:  # noqa: F811
    store = new_store(emulator)
    original = make_instance()
    ds = pydicom.dcmread(io.BytesIO(original))
    store.dicomweb.store_instances([ds])
    again = store.dicomweb.store_instances([pydicom.dcmread(io.BytesIO(original))])
    assert len(again.ReferencedSOPSequence) == 1  # identical duplicate: accepted, unchanged

    changed = pydicom.dcmread(io.BytesIO(original))
    changed.PatientID = "someone-else"
    with pytest.raises(requests.HTTPError) as caught:
        store.dicomweb.store_instances([changed])
    assert _response(caught).status_code == 409
    body = json.loads(_response(caught).content)
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]

    other = pydicom.dcmread(io.BytesIO(make_instance()))
    with pytest.raises(requests.HTTPError) as caught:
        store.dicomweb.store_instances([other], study_instance_uid=ds.StudyInstanceUID)
    assert _response(caught).status_code == 409
    assert {i["00080018"]["Value"][0] for i in store.dicomweb.search_for_instances()} == {ds.SOPInstanceUID}
