"""STOW-RS (Store transaction) against Google's DICOM conformance statement, "Store transaction":
bodies (multipart, single part, JSON metadata + bulk data), the XML default response, an instance
stored again, partial failures and FailureDetail, status codes; plus the Storage-Class header of
Google's DICOMweb guide ("Specify a storage class for DICOM instances")."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import pydicom
import pytest
import requests
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from localcloud.healthcare.multipart import encode
from tests.conformance.dicomweb.conftest import TEST_FILES, Store, instance, part10, sample

PROCESSING_FAILURE = 272  # 0x0110


def _post(store: Store, body: bytes, content_type: str, accept: str | None = None, path: str = "studies",
          **headers: str) -> requests.Response:
    headers = {"Content-Type": content_type, **headers}
    if accept:
        headers["Accept"] = accept
    return requests.post(f"{store.url}/{path}", data=body, headers=headers, timeout=30)


def _multipart(*instances: bytes) -> tuple[bytes, str]:
    return encode(list(instances), "application/dicom")


def test_the_default_response_is_xml_and_dicomweb_client_reads_it(store: Store) -> None:
    ds = instance()
    # dicomweb-client sends no Accept header: the answer is application/dicom+xml (Google's default).
    response = store.client.store_instances([ds])
    [stored] = response.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert stored.RetrieveURL == store.instance_url(ds)
    assert response.RetrieveURL == f"{store.url}/studies/{ds.StudyInstanceUID}"
    raw = _post(store, *_multipart(part10(instance())))
    assert (raw.status_code, raw.headers["Content-Type"]) == (200, "application/dicom+xml")
    root = ET.fromstring(raw.content)
    assert root.tag == "NativeDicomModel"
    assert [a.attrib["keyword"] for a in root] == ["RetrieveURL", "ReferencedSOPSequence"]
    as_json = _post(store, *_multipart(part10(instance())), accept="application/dicom+json")
    assert as_json.headers["Content-Type"] == "application/dicom+json"
    assert set(as_json.json()) == {"00081190", "00081199"}
    assert _post(store, *_multipart(part10(instance())), accept="text/html").status_code == 406


def test_a_single_part_application_dicom_body(store: Store) -> None:
    # "the Store Transaction also accepts a single part HTTP request with a single DICOM instance
    # with content type application/dicom" (Google's curl sample).
    ds = instance()
    response = _post(store, part10(ds), "application/dicom", accept="application/dicom+json")
    assert response.status_code == 200
    assert response.json()["00081199"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert store.client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/octet-stream", "multipart/related; boundary=x; type=image/jpeg"]
)
def test_unsupported_bodies_are_400(store: Store, content_type: str) -> None:
    # Status codes: "400 (Bad Request) The request was invalid (e.g. unsupported media type ...)".
    response = _post(store, b"--x\r\n\r\nhello\r\n--x--", content_type)
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_an_instance_stored_again_fails_with_already_exists(store: Store) -> None:
    # "If a DICOM instance has the same <StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID> tuple as
    # another instance already in the DICOM store, a Processing failure error is returned with an
    # "already exists" FailureDetail tag." Identical bytes or not.
    ds = instance()
    store.client.store_instances([ds])
    for again in (ds, instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, SOPInstanceUID=ds.SOPInstanceUID,
                               PatientID="other")):
        with pytest.raises(requests.HTTPError) as caught:
            store.client.store_instances([again])
        response = caught.value.response
        assert response is not None and response.status_code == 409
        root = ET.fromstring(response.content)
        failed = {a.attrib["tag"]: a for a in root}["00081198"]
        [item] = failed.findall("Item")
        by_tag = {a.attrib["tag"]: a for a in item}
        assert by_tag["00081197"].find("Value").text == str(PROCESSING_FAILURE)
        assert by_tag["00081155"].find("Value").text == ds.SOPInstanceUID
        detail = by_tag["00090097"]  # FailureDetail (0009,xx97), private creator GOOGLE
        assert detail.attrib["privateCreator"] == "GOOGLE" and detail.attrib["keyword"] == "FailureDetail"
        assert "already exists" in detail.find("Value").text
    # The stored instance is the first one, unchanged.
    kept = store.client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert kept.PatientID == "TEST-1"


def test_a_partial_failure_is_409_and_lists_both(store: Store) -> None:
    # "409 (Conflict) At least one resource wasn't successfully stored": the stored ones are kept.
    old, new = instance(), instance()
    store.client.store_instances([old])
    body, content_type = _multipart(part10(new), part10(old), b"not a DICOM file")
    response = _post(store, body, content_type, accept="application/dicom+json")
    assert response.status_code == 409
    result = response.json()
    assert [i["00081155"]["Value"][0] for i in result["00081199"]["Value"]] == [new.SOPInstanceUID]
    failed = result["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[PROCESSING_FAILURE], [PROCESSING_FAILURE]]
    # FailureDetailJSON (0009,1097) in JSON answers.
    assert "already exists" in failed[0]["00091097"]["Value"][0]
    assert failed[0]["00081155"]["Value"] == [old.SOPInstanceUID]
    assert "DICOM" in failed[1]["00091097"]["Value"][0] and "00081155" not in failed[1]
    stored = store.client.search_for_instances(fields=["SOPInstanceUID"])
    assert {i["00080018"]["Value"][0] for i in stored} == {old.SOPInstanceUID, new.SOPInstanceUID}


def test_storing_into_another_study_path_fails(store: Store) -> None:
    ds = instance()
    with pytest.raises(requests.HTTPError) as caught:
        store.client.store_instances([ds], study_instance_uid=str(generate_uid()))
    assert caught.value.response is not None and caught.value.response.status_code == 409
    assert store.client.search_for_instances() == []
    response = store.client.store_instances([ds], study_instance_uid=ds.StudyInstanceUID)
    assert len(response.ReferencedSOPSequence) == 1


def test_storage_class_header(store: Store) -> None:
    ds = instance()
    response = _post(store, part10(ds), "application/dicom", **{"Storage-Class": "NEARLINE"})
    assert response.status_code == 200
    info = requests.get(f"{store.instance_url(ds)}:getStorageInfo", timeout=10).json()
    assert info["blobStorageInfo"]["storageClass"] == "NEARLINE"
    assert _post(store, part10(instance()), "application/dicom", **{"Storage-Class": "HOT"}).status_code == 400


def _json_request(metadata: list[dict], bulk: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """Google's sample: an application/dicom+json part, then one part per Content-Location."""
    boundary = "DICOMwebBoundary"
    chunks = [f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode(), json.dumps(metadata).encode()]
    for location, (content_type, data) in bulk.items():
        chunks += [f"\r\n--{boundary}\r\nContent-Location: {location}\r\nContent-Type: {content_type}\r\n\r\n".encode(),
                   data]
    chunks.append(f"\r\n--{boundary}--".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom+json"; boundary={boundary}'


def _jpeg_metadata(jpeg_source: pydicom.Dataset, **overrides: dict) -> dict:
    """Google's instance.json template (JSON metadata + a JPEG baseline image)."""
    uid = {k: str(generate_uid()) for k in ("sop", "study", "series")}
    metadata = {
        "00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2.4.50"]},
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
        "00080018": {"vr": "UI", "Value": [uid["sop"]]},
        "0020000D": {"vr": "UI", "Value": [uid["study"]]},
        "0020000E": {"vr": "UI", "Value": [uid["series"]]},
        "00280002": {"vr": "US", "Value": [3]},
        "00280004": {"vr": "CS", "Value": ["YBR_FULL_422"]},
        "00280006": {"vr": "US", "Value": [0]},
        "00280008": {"vr": "IS", "Value": [1]},
        "00280010": {"vr": "US", "Value": [jpeg_source.Rows]},
        "00280011": {"vr": "US", "Value": [jpeg_source.Columns]},
        "00280100": {"vr": "US", "Value": [8]},
        "00280101": {"vr": "US", "Value": [8]},
        "00280102": {"vr": "US", "Value": [7]},
        "00280103": {"vr": "US", "Value": [0]},
        "7FE00010": {"vr": "OB", "BulkDataURI": "jpeg-image"},
    }
    metadata.update(overrides)
    return metadata


def test_json_metadata_with_a_jpeg_bulk_data_part(store: Store) -> None:
    # Google's "Create DICOM instances from JSON metadata and JPEG images".
    source = sample("SC_rgb_jpeg_dcmtk.dcm")
    jpeg = next(generate_frames(source.PixelData, number_of_frames=1))
    metadata = _jpeg_metadata(source)
    part_type = "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    body, content_type = _json_request([metadata], {"jpeg-image": (part_type, jpeg)})
    response = _post(store, body, content_type, accept="application/dicom+json")
    assert response.status_code == 200, response.content
    sop = metadata["00080018"]["Value"][0]
    assert response.json()["00081199"]["Value"][0]["00081155"]["Value"] == [sop]
    stored = store.client.retrieve_instance(metadata["0020000D"]["Value"][0], metadata["0020000E"]["Value"][0], sop)
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert next(generate_frames(stored.PixelData, number_of_frames=1)) == jpeg
    assert stored.pixel_array.shape == (source.Rows, source.Columns, 3)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}, "ISO_IR 192"),
        ({"00080016": {"vr": "UI"}}, "SOPClassUID"),
        ({"00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2.2"]}}, "not supported"),
        ({"7FE00010": {"vr": "OB", "BulkDataURI": "elsewhere"}}, "Content-Location"),
        ({"00281201": {"vr": "OW", "BulkDataURI": "jpeg-image"}}, "at most one BulkDataURI"),
    ],
)
def test_json_metadata_rules(store: Store, overrides: dict, reason: str) -> None:
    source = sample("SC_rgb_jpeg_dcmtk.dcm")
    jpeg = next(generate_frames(source.PixelData, number_of_frames=1))
    body, content_type = _json_request([_jpeg_metadata(source, **overrides)], {"jpeg-image": ("image/jpeg", jpeg)})
    response = _post(store, body, content_type, accept="application/dicom+json")
    assert response.status_code == 409
    [failed] = response.json()["00081198"]["Value"]
    assert reason in failed["00091097"]["Value"][0]
    assert store.client.search_for_instances() == []


def test_a_part10_file_from_disk_round_trips_exactly(store: Store) -> None:
    # "No coercing or replacing of attributes is done by the server."
    data = (TEST_FILES / "MR_small.dcm").read_bytes()
    assert _post(store, data, "application/dicom").status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = requests.get(store.instance_url(ds), headers={"Accept": "application/dicom; transfer-syntax=*"},
                          timeout=10)
    assert stored.content == data
