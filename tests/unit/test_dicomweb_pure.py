"""Pure pieces of the emulator's DICOMweb: QIDO-RS parameters and matching, Accept negotiation,
the DICOM XML encoding, the bulk data definition, multipart parts."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from localcloud.healthcare.accept import (
    BULKDATA,
    DICOM_INSTANCE,
    DICOM_OBJECTS,
    FRAMES,
    RENDERED,
    SEARCH,
    STORE_RESPONSE,
    negotiate,
)
from localcloud.healthcare.bulkdata import NoBulkData, bulk_value, instance_metadata, is_bulk
from localcloud.healthcare.dicomxml import to_xml
from localcloud.healthcare.errors import ApiError
from localcloud.healthcare.multipart import decode_parts, encode
from localcloud.healthcare.qido import DateRange, QidoQuery, fuzzy_name_matches, name_tokens
from localcloud.healthcare.wado import parse_frame_numbers

# --- QIDO-RS parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "value", "expected"),
    [
        ("20200105", "20200105", True),
        ("20200105", "20200106", False),
        ("20200101-20200131", "20200101", True),
        ("20200101-20200131", "20200131", True),
        ("20200101-20200131", "20200201", False),
        ("20200101-", "29991231", True),
        ("20200101-", "20191231", False),
        ("-20200101", "19000101", True),
        ("-20200101", "20200102", False),
        ("20200101-", "", False),  # no StudyDate never matches a date criterion
    ],
)
def test_study_date_ranges(query: str, value: str, expected: bool) -> None:
    assert DateRange.parse(query).contains(value) is expected


@pytest.mark.parametrize("query", ["2020-01-01", "2020010", "-", "", "20200101-2020", "abcdefgh"])
def test_bad_study_dates_are_invalid_argument(query: str) -> None:
    with pytest.raises(ApiError) as caught:
        DateRange.parse(query)
    assert caught.value.http_code == 400


VALUES = {
    "StudyInstanceUID": "1.1",
    "SeriesInstanceUID": "1.1.1",
    "SOPInstanceUID": "1.1.1.1",
    "PatientID": "P1",
    "PatientName": "Doe^Jane",
    "AccessionNumber": "A-7",
    "ReferringPhysicianName": "House^Greg",
    "StudyDate": "20200115",
    "Modality": "CT",
}


@pytest.mark.parametrize(
    ("level", "args", "expected"),
    [
        ("studies", [], True),
        ("studies", [("PatientID", "P1")], True),
        ("studies", [("00100020", "P2")], False),  # tags work like keywords
        ("studies", [("PatientID", "P*")], False),  # exact matching: no wildcards
        ("studies", [("PatientID", "P?")], False),
        ("studies", [("PatientID", "")], True),  # an empty value matches everything
        ("studies", [("StudyInstanceUID", "1.2,1.1")], False),  # single value: no UID lists
        ("studies", [("StudyInstanceUID", "1.1")], True),
        ("studies", [("PatientName", "Doe^Jane")], True),
        ("studies", [("PatientName", "doe^jane")], False),  # exact is case-sensitive
        ("studies", [("PatientName", "Doe")], False),
        ("studies", [("PatientName", "Doe"), ("fuzzymatching", "true")], True),
        ("studies", [("PatientName", "Doe"), ("fuzzymatching", "false")], False),
        ("studies", [("AccessionNumber", "A-7")], True),
        ("studies", [("ReferringPhysicianName", "House^Greg")], True),
        ("studies", [("StudyDate", "20200101-20200131")], True),
        ("studies", [("StudyDate", "-20200114")], False),
        ("series", [("Modality", "MR")], False),
        ("series", [("Modality", "CT"), ("PatientID", "P1")], True),
        ("instances", [("SOPInstanceUID", "1.1.1.2")], False),
        ("instances", [("alt", "json"), ("prettyPrint", "false")], True),  # system parameters
    ],
)
def test_qido_matching(level: str, args: list[tuple[str, str]], expected: bool) -> None:
    assert QidoQuery.parse(level, args).matches(VALUES) is expected


@pytest.mark.parametrize(
    ("level", "key"),
    [
        ("studies", "Modality"),  # a series-level key
        ("studies", "ModalitiesInStudy"),  # not a Google search parameter at all
        ("studies", "SeriesInstanceUID"),
        ("series", "SOPInstanceUID"),
        ("instances", "StudyDescription"),
        ("instances", "NoSuchKeyword"),
        ("studies", "timezoneoffset"),
    ],
)
def test_keys_outside_the_level_are_invalid_argument(level: str, key: str) -> None:
    with pytest.raises(ApiError) as caught:
        QidoQuery.parse(level, [(key, "X")])
    assert caught.value.http_code == 400


@pytest.mark.parametrize(
    "args",
    [
        [("limit", "-1")],
        [("limit", "x")],
        [("offset", "1000001")],
        [("offset", "x")],
        [("includefield", "Nope")],
        [("fuzzymatching", "yes")],
        [("PatientID", "a"), ("PatientID", "b")],  # a repeated key
        [("PatientID", "a"), ("00100020", "b")],  # the same key as keyword and tag
    ],
)
def test_bad_qido_parameters_are_invalid_argument(args: list[tuple[str, str]]) -> None:
    with pytest.raises(ApiError) as caught:
        QidoQuery.parse("instances", args)
    assert caught.value.http_code == 400


@pytest.mark.parametrize(
    ("level", "args", "limit"),
    [
        ("studies", [], 100),
        ("series", [], 100),
        ("instances", [], 1000),
        ("studies", [("limit", "0")], 100),  # 0 is "not set"
        ("studies", [("limit", "7")], 7),
        ("studies", [("limit", "999999")], 5000),
        ("series", [("limit", "999999")], 5000),
        ("instances", [("limit", "999999")], 50000),
    ],
)
def test_limit_defaults_and_maximums_per_level(level: str, args: list[tuple[str, str]], limit: int) -> None:
    assert QidoQuery.parse(level, args).limit == limit


def test_paging_and_includefield() -> None:
    query = QidoQuery.parse(
        "instances",
        [("limit", "2"), ("offset", "1"), ("includefield", "PatientName,00080020"), ("includefield", "all")],
    )
    assert query.page(list(range(5))) == [1, 2]
    assert query.include_tags == ["00100010", "00080020"]
    assert query.include_all
    assert QidoQuery.parse("instances", [("includefield", "00191001")]).include_tags == ["00191001"]


@pytest.mark.parametrize(
    ("query", "stored", "expected"),
    [
        # Google's examples: "John^Doe" is matched by "jo", "Do" and "John Doe", not by "ohn".
        ("jo", "John^Doe", True),
        ("Do", "John^Doe", True),
        ("John Doe", "John^Doe", True),
        ("ohn", "John^Doe", False),
        ("sa", "Sally Zhang", True),
        ("Zh", "Sally Zhang", True),
        ("Sally^Zhang", "Sally Zhang", True),
        ("ally", "Sally Zhang", False),
        ("jose", "José^García", True),  # normalised: case and accents
        ("x", None, False),
    ],
)
def test_fuzzy_person_name_matching(query: str, stored: str | None, expected: bool) -> None:
    assert fuzzy_name_matches(query, stored) is expected


def test_name_tokens() -> None:
    assert name_tokens("Doe^John^^Dr.=ドウ^ジョン") == ["doe", "john", "dr", "ドウ", "ジョン"]


# --- Accept negotiation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "offers", "media_type", "part", "syntax"),
    [
        (None, DICOM_OBJECTS, "multipart/related", "application/dicom", "1.2.840.10008.1.2.1"),
        ("*/*", DICOM_INSTANCE, "multipart/related", "application/dicom", "1.2.840.10008.1.2.1"),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', DICOM_OBJECTS,
         "multipart/related", "application/dicom", "*"),
        ("multipart/related; type=application/dicom", DICOM_OBJECTS,
         "multipart/related", "application/dicom", "1.2.840.10008.1.2.1"),
        ("application/dicom; transfer-syntax=*", DICOM_INSTANCE, "application/dicom", None, "*"),
        ("application/dicom", DICOM_INSTANCE, "application/dicom", None, "1.2.840.10008.1.2.1"),
        # q values: the most preferred acceptable range wins, wherever it is in the header.
        ("application/dicom;q=0.5, multipart/related; type=application/dicom", DICOM_INSTANCE,
         "multipart/related", "application/dicom", "1.2.840.10008.1.2.1"),
        ("multipart/related; type=application/dicom;q=0.2, application/dicom; transfer-syntax=*;q=0.9",
         DICOM_INSTANCE, "application/dicom", None, "*"),
        ("image/png;q=0, image/*", RENDERED, "image/jpeg", None, None),
        ("image/png", RENDERED, "image/png", None, None),
        (None, RENDERED, "image/jpeg", None, None),
        ('multipart/related; type="image/jpeg"', FRAMES, "multipart/related", "image/jpeg", "1.2.840.10008.1.2.4.50"),
        ('multipart/related; type="image/*"', FRAMES, "multipart/related", "image/jpeg", "1.2.840.10008.1.2.4.50"),
        (None, FRAMES, "multipart/related", "application/octet-stream", "1.2.840.10008.1.2.1"),
        ('multipart/related; type="*/*"', BULKDATA, "multipart/related", "application/octet-stream", "*"),
        ("application/dicom+json, application/json", SEARCH, "application/dicom+json", None, None),
        ("application/json", SEARCH, "application/dicom+json", None, None),  # google-api-python-client
        ("multipart/related; type=application/dicom+xml", SEARCH, "multipart/related", "application/dicom+xml", None),
        ("*/*", STORE_RESPONSE, "application/dicom+xml", None, None),
        ("application/dicom+json", STORE_RESPONSE, "application/dicom+json", None, None),
    ],
)
def test_accept_negotiation(
    accept: str | None, offers: tuple, media_type: str, part: str | None, syntax: str | None
) -> None:
    choice = negotiate(accept, offers)
    assert (choice.offer.media_type, choice.offer.part, choice.transfer_syntax) == (media_type, part, syntax)


@pytest.mark.parametrize(
    ("accept", "offers"),
    [
        ("application/dicom", DICOM_OBJECTS),  # single part: instances only
        ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.2', DICOM_OBJECTS),
        ("text/html", SEARCH),
        ("application/json", RENDERED),
        ("image/gif", RENDERED),
        ('multipart/related; type="image/jpeg"; transfer-syntax=*', FRAMES),
        ("image/jpeg;q=0", RENDERED),
    ],
)
def test_unacceptable_media_types_are_406(accept: str, offers: tuple) -> None:
    with pytest.raises(ApiError) as caught:
        negotiate(accept, offers)
    assert (caught.value.http_code, caught.value.status) == (406, "NOT_ACCEPTABLE")


def test_bad_q_value_is_invalid_argument() -> None:
    with pytest.raises(ApiError) as caught:
        negotiate("image/png;q=high", RENDERED)
    assert caught.value.http_code == 400


# --- DICOM XML -----------------------------------------------------------------------------------


def test_xml_has_keywords_sequences_person_names_and_bulk_data() -> None:
    body = {
        "00081190": {"vr": "UR", "Value": ["http://h/x"]},
        "00081198": {"vr": "SQ", "Value": [{
            "00081197": {"vr": "US", "Value": [272]},
            "00090010": {"vr": "LO", "Value": ["GOOGLE"]},
            "00091097": {"vr": "LT", "Value": ["already exists"]},
        }]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00080050": {"vr": "SH"},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://h/bulk"},
    }
    root = ET.fromstring(to_xml(body))
    assert root.tag == "NativeDicomModel"
    by_tag = {a.attrib["tag"]: a for a in root}
    assert by_tag["00081190"].attrib == {"tag": "00081190", "vr": "UR", "keyword": "RetrieveURL"}
    assert by_tag["00081190"].find("Value").text == "http://h/x"
    [item] = by_tag["00081198"].findall("Item")
    detail = {a.attrib["tag"]: a for a in item}["00090097"]
    # Private attributes as Google writes them: gggg00ee plus the block's creator.
    assert detail.attrib == {"tag": "00090097", "vr": "LT", "keyword": "FailureDetail", "privateCreator": "GOOGLE"}
    assert detail.find("Value").text == "already exists"
    assert "00090010" not in {a.attrib["tag"] for a in item}
    name = by_tag["00100010"].find("PersonName/Alphabetic")
    assert (name.find("FamilyName").text, name.find("GivenName").text) == ("Doe", "Jane")
    assert list(by_tag["00080050"]) == []
    assert by_tag["7FE00010"].find("BulkData").attrib == {"uri": "http://h/bulk"}


# --- bulk data definition ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "vr", "value", "bulk"),
    [
        (0x7FE00010, "OW", b"\0\1", True),
        (0x00431028, "OB", b"\1", True),  # any OB, however small
        (0x00091001, "UN", b"\1\2", True),
        (0x00660016, "OF", b"\0" * 2048, False),  # OD/OF/OL/OV: over 2 KiB only
        (0x00660016, "OF", b"\0" * 2052, True),
        (0x00281201, "US", [1] * 512, False),  # numbers: more than 512 values only
        (0x00281201, "US", [1] * 513, True),
        (0x00100020, "LO", "P1", False),
        (0x00431028, "OB", b"", False),  # empty: nothing to fetch
    ],
)
def test_bulk_data_definition(tag: int, vr: str, value: object, bulk: bool) -> None:
    assert is_bulk(DataElement(tag, vr, value)) is bulk


def test_metadata_uses_bulk_data_uris_also_inside_sequences() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PixelData = b"\0" * 8
    ds["PixelData"].VR = "OW"
    item = Dataset()
    item.add_new(0x00431028, "OB", b"\1\2")
    ds.add_new(0x00400275, "SQ", [Dataset(), item])
    meta = instance_metadata(ds, "http://h/bulkdata")
    assert meta["7FE00010"] == {"vr": "OW", "BulkDataURI": "http://h/bulkdata/7FE00010"}
    assert meta["00400275"]["Value"][1]["00431028"] == {"vr": "OB", "BulkDataURI": "http://h/bulkdata/00400275/1/00431028"}
    assert meta["00100020"] == {"vr": "LO", "Value": ["P1"]}
    assert bulk_value(ds, "00400275/1/00431028") == b"\1\2"
    assert bulk_value(ds, "7FE00010") == b"\0" * 8
    ds.add_new(0x00281201, "US", list(range(600)))
    assert bulk_value(ds, "00281201") == np.arange(600, dtype="<u2").tobytes()
    for path in ("00100020", "00400275/5/00431028", "7FE0", "00400275/x/00431028", "00280010"):
        with pytest.raises(NoBulkData):
            bulk_value(ds, path)


def test_sequences_over_a_mebibyte_are_left_out_of_metadata() -> None:
    ds = Dataset()
    item = Dataset()
    item.add_new(0x00081030, "LO", "x" * 64)
    ds.add_new(0x00400275, "SQ", [item] * 20000)
    assert "00400275" not in instance_metadata(ds, "http://h")


# --- frames and multipart ------------------------------------------------------------------------


def test_frame_lists() -> None:
    assert parse_frame_numbers("1") == [1]
    assert parse_frame_numbers("3,1, 2") == [3, 1, 2]
    for bad in ("", "a", "1,,2", "-1", "1;2"):
        with pytest.raises(ApiError):
            parse_frame_numbers(bad)


def test_multipart_parts_keep_their_headers() -> None:
    body, content_type = encode([b"{}", b"\xff\xd8"], "application/dicom+json",
                                part_content_types=["application/dicom+json", "image/jpeg"])
    boundary = content_type.rsplit("boundary=", 1)[1]
    parts = decode_parts(body, boundary)
    assert [(p.content_type, p.payload) for p in parts] == [
        ("application/dicom+json", b"{}"),
        ("image/jpeg", b"\xff\xd8"),
    ]
