"""QIDO-RS (Search transaction) against Google's DICOM conformance statement, "Search transaction":
matching keys per level, exact matching, fuzzy PatientName matching, StudyDate ranges, limit and
offset, includefield and the attributes returned per level, 204 for no match."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import requests
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid

from localcloud.healthcare.multipart import decode
from tests import dicom_factory
from tests.conformance.dicomweb.conftest import Store, instance


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


def _uids(results: list[dict], keyword: str = "StudyInstanceUID") -> set[str]:
    return {r[_tag(keyword)]["Value"][0] for r in results}


def _status(call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(requests.HTTPError) as caught:
        call()
    assert caught.value.response is not None
    return caught.value.response.status_code


@pytest.fixture
def catalog(store: Store) -> tuple[Store, dict[str, str]]:
    """Study A (CT + MR series, Doe^John), B (MR, Doe^Jane), C (CT, García^José)."""
    uid = {k: str(generate_uid()) for k in ("A", "A_ct", "A_mr", "B", "B_mr", "C", "C_ct")}
    a = {"PatientID": "P1", "PatientName": "Doe^John", "StudyDate": "20200101", "AccessionNumber": "ACC-A",
         "ReferringPhysicianName": "House^Greg"}
    datasets = [
        instance(uid["A"], uid["A_ct"], Modality="CT", **a),
        instance(uid["A"], uid["A_ct"], Modality="CT", **a),
        instance(uid["A"], uid["A_mr"], Modality="MR", **a),
        instance(uid["B"], uid["B_mr"], Modality="MR", PatientID="P1", PatientName="Doe^Jane",
                 StudyDate="20200615", AccessionNumber="ACC-B"),
        instance(uid["C"], uid["C_ct"], Modality="CT", PatientID="P2", PatientName="García^José",
                 StudyDate="20210101", AccessionNumber="ACC-C", InstitutionName="X", StudyDescription="Knee"),
    ]
    response = store.client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 5
    return store, uid


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, {"A", "B", "C"}),
        ({"PatientID": "P1"}, {"A", "B"}),
        ({"00100020": "P2"}, {"C"}),  # a tag works like its keyword
        ({"PatientName": "Doe^Jane"}, {"B"}),
        ({"AccessionNumber": "ACC-A"}, {"A"}),
        ({"ReferringPhysicianName": "House^Greg"}, {"A"}),
        ({"StudyDate": "20200101"}, {"A"}),
        ({"StudyDate": "20200101-20201231"}, {"A", "B"}),
        ({"StudyDate": "20200601-"}, {"B", "C"}),
        ({"StudyDate": "-20200101"}, {"A"}),
        ({"PatientID": "P1", "StudyDate": "20200601-"}, {"B"}),
        ({"PatientID": "nobody"}, set()),
        ({"PatientID": ""}, {"A", "B", "C"}),  # an empty value matches everything
    ],
)
def test_study_level_matching_keys(catalog: tuple[Store, dict[str, str]], filters: dict, expected: set[str]) -> None:
    store, uid = catalog
    assert _uids(store.client.search_for_studies(search_filters=filters)) == {uid[k] for k in expected}


def test_exact_matching_only_no_wildcards_no_lists(catalog: tuple[Store, dict[str, str]]) -> None:
    # "Only single value, exact matching is supported" (except StudyDate ranges, fuzzy PatientName).
    store, uid = catalog
    search = store.client.search_for_studies
    assert search(search_filters={"PatientID": "P*"}) == []
    assert search(search_filters={"PatientID": "P?"}) == []
    assert search(search_filters={"PatientName": "Doe*"}) == []
    assert search(search_filters={"PatientName": "doe^jane"}) == []
    assert search(search_filters={"StudyInstanceUID": f"{uid['A']},{uid['B']}"}) == []
    assert search(search_filters={"StudyInstanceUID": f"{uid['A']}\\{uid['B']}"}) == []
    assert _uids(search(search_filters={"StudyInstanceUID": uid["A"]})) == {uid["A"]}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("do", {"A", "B"}),  # any search token a prefix of any stored token, case-insensitively
        ("John Doe", {"A", "B"}),
        ("jane", {"B"}),
        ("ohn", set()),  # not a prefix
        ("jose", {"C"}),  # normalised: accents
    ],
)
def test_fuzzy_matching_of_patient_name(catalog: tuple[Store, dict[str, str]], name: str, expected: set[str]) -> None:
    store, uid = catalog
    results = store.client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": name})
    assert _uids(results) == {uid[k] for k in expected}
    if expected == {"B"}:
        assert store.client.search_for_studies(fuzzymatching=False, search_filters={"PatientName": name}) == []


def test_series_and_instance_level_keys(catalog: tuple[Store, dict[str, str]]) -> None:
    store, uid = catalog
    client = store.client
    assert _uids(client.search_for_series(search_filters={"Modality": "MR"}), "SeriesInstanceUID") == {
        uid["A_mr"], uid["B_mr"]}
    # Series searches take every study-level key too; instance searches every series-level key.
    assert _uids(client.search_for_series(search_filters={"Modality": "CT", "PatientID": "P1"}),
                 "SeriesInstanceUID") == {uid["A_ct"]}
    assert len(client.search_for_instances(search_filters={"SeriesInstanceUID": uid["A_ct"]})) == 2
    assert len(client.search_for_instances(search_filters={"PatientName": "Doe^John", "Modality": "MR"})) == 1
    [one] = client.search_for_instances(uid["A"], uid["A_ct"], limit=1)
    sop = one[_tag("SOPInstanceUID")]["Value"][0]
    assert _uids(client.search_for_instances(search_filters={"SOPInstanceUID": sop}), "SOPInstanceUID") == {sop}
    # Nested (hierarchical) paths.
    assert _uids(client.search_for_series(uid["A"]), "SeriesInstanceUID") == {uid["A_ct"], uid["A_mr"]}
    assert len(client.search_for_instances(uid["A"])) == 3
    assert len(client.search_for_instances(uid["A"], uid["A_ct"])) == 2
    assert client.search_for_series(str(generate_uid())) == []


@pytest.mark.parametrize(
    ("level", "key"),
    [
        ("studies", "Modality"),
        ("studies", "ModalitiesInStudy"),
        ("studies", "SeriesInstanceUID"),
        ("studies", "StudyDescription"),
        ("studies", "TimezoneOffsetFromUTC"),  # "Timezone Offset From UTC is not supported"
        ("series", "SOPInstanceUID"),
        ("series", "SeriesNumber"),
        ("instances", "InstanceNumber"),
        ("instances", "NoSuchKeyword"),
    ],
)
def test_keys_not_supported_at_a_level_are_400(store: Store, level: str, key: str) -> None:
    response = store.get(level, **{key: "1"})
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_a_key_given_twice_is_400(store: Store) -> None:
    response = requests.get(f"{store.url}/studies?PatientID=a&PatientID=b", timeout=10)
    assert response.status_code == 400


def test_no_match_is_204_without_a_body(catalog: tuple[Store, dict[str, str]]) -> None:
    store, _ = catalog
    for level in ("studies", "series", "instances"):
        response = store.get(level, PatientID="nobody")
        assert (response.status_code, response.content) == (204, b"")
    assert store.client.search_for_instances(search_filters={"PatientID": "nobody"}) == []


def test_default_and_maximum_limits_per_level(store: Store) -> None:
    # "limit: ... up to a maximum of 5,000 for studies/series and 50,000 for instances. The default
    # number of results is 100 for studies/series and 1,000 for instances."
    big_study = str(generate_uid())
    store.stow_bytes(
        [dicom_factory.instance(big_study) for _ in range(901)] + [dicom_factory.instance() for _ in range(100)]
    )
    client = store.client
    assert len(client.search_for_studies()) == 100
    assert len(client.search_for_series()) == 100
    assert len(client.search_for_instances()) == 1000
    assert len(client.search_for_studies(limit=99999)) == 101  # above the maximum: capped, not refused
    assert len(client.search_for_instances(limit=99999)) == 1001
    # Paging with offset: pages are disjoint and cover everything; no Warning header.
    pages = [client.search_for_studies(limit=40, offset=offset) for offset in (0, 40, 80)]
    assert [len(p) for p in pages] == [40, 40, 21]
    assert len(set().union(*(_uids(p) for p in pages))) == 101
    assert len(client.search_for_instances(get_remaining=True)) == 1001
    assert "Warning" not in store.get("studies", limit="10").headers


def test_offset_above_a_million_is_400(store: Store) -> None:
    assert store.get("studies", offset="1000000").status_code == 204
    assert store.get("studies", offset="1000001").status_code == 400
    assert store.get("studies", limit="-1").status_code == 400


STUDY_DEFAULTS = {"SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
                  "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID", "PatientBirthDate",
                  "PatientSex", "StudyInstanceUID", "StudyID"}
SERIES_DEFAULTS = {"SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription",
                   "SeriesInstanceUID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
                   "RequestAttributesSequence"}
INSTANCE_DEFAULTS = {"SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
                     "TimezoneOffsetFromUTC", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"}


@pytest.fixture
def rich(store: Store) -> tuple[Store, str]:
    """One instance with attributes of every level, default-returned or not."""
    ds = instance(
        PatientName="Doe^Jane", PatientSex="F", PatientBirthDate="", StudyTime="101010", StudyID="S1",
        AccessionNumber="", InstitutionName="Clinic", StudyDescription="Knee", SeriesDescription="Axial",
        SeriesNumber=3, Laterality="L", InstanceAvailability="ONLINE", SpecificCharacterSet="ISO_IR 192",
        ImageComments="not a default of any level",
    )
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "private value")
    store.client.store_instances([ds])
    return store, ds.StudyInstanceUID


def _keywords(result: dict) -> set[str]:
    from pydicom.datadict import keyword_for_tag

    return {keyword_for_tag(int(tag, 16)) or tag for tag in result}


def test_attributes_returned_by_default_per_level(rich: tuple[Store, str]) -> None:
    store, study = rich
    [s] = store.client.search_for_studies()
    # Only present attributes, only the study level; nothing computed (no ModalitiesInStudy or
    # NumberOfStudyRelated* counts: they are not in Google's list).
    assert _keywords(s) == {"SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
                            "InstanceAvailability", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                            "StudyInstanceUID", "StudyID"}
    assert s[_tag("AccessionNumber")] == {"vr": "SH"}  # present but empty: no Value
    assert s[_tag("PatientName")] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    [series] = store.client.search_for_series()
    assert _keywords(series) <= STUDY_DEFAULTS | SERIES_DEFAULTS
    expected = {"Modality", "SeriesDescription", "SeriesInstanceUID", "StudyInstanceUID", "PatientName"}
    assert expected <= _keywords(series)
    [inst] = store.client.search_for_instances()
    assert _keywords(inst) <= STUDY_DEFAULTS | SERIES_DEFAULTS | INSTANCE_DEFAULTS
    assert {"SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "Modality",
            "SeriesInstanceUID", "StudyInstanceUID", "StudyDate"} <= _keywords(inst)


def test_includefield(rich: tuple[Store, str]) -> None:
    store, study = rich
    client = store.client
    [s] = client.search_for_studies(fields=["InstitutionName"])
    assert s[_tag("InstitutionName")]["Value"] == ["Clinic"]
    [s] = client.search_for_studies(fields=["00081030"])  # a tag works like its keyword
    assert s[_tag("StudyDescription")]["Value"] == ["Knee"]
    # includefield=all adds the level's documented extra attributes, not other levels' or others.
    [s] = client.search_for_studies(fields=["all"])
    assert {"InstitutionName", "StudyDescription"} <= _keywords(s)
    assert not {"SeriesNumber", "Modality", "ImageComments"} & _keywords(s)
    [series] = client.search_for_series(fields=["all"])
    assert {"SeriesNumber", "Laterality"} <= _keywords(series)
    assert "ImageComments" not in _keywords(series)
    # Instances: all attributes of the instance (as retrieveMetadata has them).
    [inst] = client.search_for_instances(fields=["all"])
    assert {"ImageComments", "InstitutionName", "SeriesNumber"} <= _keywords(inst)
    assert inst["00091001"]["Value"] == ["private value"]
    assert inst["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    [inst] = client.search_for_instances(fields=["ImageComments", "00091001", "InstitutionName"])
    assert inst[_tag("ImageComments")]["Value"] == ["not a default of any level"]
    assert inst[_tag("InstitutionName")]["Value"] == ["Clinic"]
    assert "00091001" in inst
    assert store.get("studies", includefield="NoSuchKeyword").status_code == 400


def test_search_media_types(rich: tuple[Store, str]) -> None:
    store, study = rich
    response = store.get("studies", accept="application/dicom+json")
    assert response.headers["Content-Type"] == "application/dicom+json"
    xml = store.get("studies", accept="multipart/related; type=application/dicom+xml")
    assert xml.status_code == 200
    [part] = decode(xml.content, xml.headers["Content-Type"])
    root = ET.fromstring(part)
    by_keyword = {a.attrib.get("keyword"): a for a in root}
    assert by_keyword["StudyInstanceUID"].find("Value").text == study
    assert by_keyword["PatientName"].find("PersonName/Alphabetic/FamilyName").text == "Doe"
    assert store.get("studies", accept="text/html").status_code == 406
