"""WADO-RS (Retrieve transaction) against Google's DICOM conformance statement, "Retrieve
transaction": DICOM objects and their media types, Accept q-values, metadata with BulkDataURIs
("Bulkdata Definition"), bulk data, frames, rendered resources."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.encaps import generate_frames

from localcloud.healthcare.multipart import decode
from tests.conformance.dicomweb.conftest import TEST_FILES, Store, sample

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"


def _dicom(transfer_syntax: str) -> str:
    return f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'


def _uids(ds: pydicom.Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.fixture
def ct(store: Store) -> tuple[Store, pydicom.Dataset]:
    """CT_small: 16-bit, Explicit VR LE, with private OB elements."""
    ds = sample("CT_small.dcm")
    store.stow_bytes([(TEST_FILES / "CT_small.dcm").read_bytes()])
    return store, ds


def test_metadata_has_bulk_data_uris_for_bulk_data(ct: tuple[Store, pydicom.Dataset]) -> None:
    store, ds = ct
    metadata = store.client.retrieve_instance_metadata(*_uids(ds))
    base = f"{store.instance_url(ds)}/bulkdata"
    # Any Pixel Data tag, any OB/OW/UN tag (private ones included): BulkDataURI, never inline.
    assert metadata["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{base}/7FE00010"}
    assert metadata["00431028"] == {"vr": "OB", "BulkDataURI": f"{base}/00431028"}
    assert not [tag for tag, element in metadata.items() if "InlineBinary" in element and element["vr"] in ("OB", "OW")]
    assert metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert metadata["00020010"]["Value"] == [EXPLICIT_LE]  # the file meta comes along
    # "When you call retrieveMetadata, the method returns the same set of fields that are returned
    # when you search for an instance with the includefield=all query parameter."
    [found] = store.client.search_for_instances(fields=["all"])
    assert set(found) == set(metadata)
    # The URIs work: bulk data is the element's value bytes.
    [pixels] = store.client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
    assert pixels == ds.PixelData
    [private] = store.client.retrieve_bulkdata(metadata["00431028"]["BulkDataURI"])
    assert private == ds[0x00431028].value


def test_study_and_series_metadata_and_xml(ct: tuple[Store, pydicom.Dataset]) -> None:
    store, ds = ct
    assert [m["00080018"]["Value"][0] for m in store.client.retrieve_study_metadata(ds.StudyInstanceUID)] == [
        ds.SOPInstanceUID]
    assert len(store.client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)) == 1
    xml = store.get(f"studies/{ds.StudyInstanceUID}/metadata", accept="multipart/related; type=application/dicom+xml")
    assert xml.status_code == 200
    [part] = decode(xml.content, xml.headers["Content-Type"])
    by_tag = {a.attrib["tag"]: a for a in ET.fromstring(part)}
    assert by_tag["7FE00010"].find("BulkData").attrib["uri"].endswith("/bulkdata/7FE00010")
    assert by_tag["00080018"].find("Value").text == ds.SOPInstanceUID


def test_bulkdata_media_types_and_missing_paths(ct: tuple[Store, pydicom.Dataset]) -> None:
    store, ds = ct
    path = f"{store.instance_url(ds)}/bulkdata/00431028"
    single = requests.get(path, headers={"Accept": "application/octet-stream; transfer-syntax=*"}, timeout=10)
    assert (single.status_code, single.content) == (200, ds[0x00431028].value)
    default = requests.get(path, timeout=10)
    assert default.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    assert decode(default.content, default.headers["Content-Type"]) == [ds[0x00431028].value]
    assert requests.get(f"{store.instance_url(ds)}/bulkdata/00100010", timeout=10).status_code == 404  # not bulk
    assert requests.get(f"{store.instance_url(ds)}/bulkdata/00431099", timeout=10).status_code == 404


def test_instances_series_and_studies_as_multipart_dicom(ct: tuple[Store, pydicom.Dataset]) -> None:
    store, ds = ct
    retrieved = store.client.retrieve_instance(*_uids(ds))
    assert retrieved.SOPInstanceUID == ds.SOPInstanceUID
    assert (retrieved.pixel_array == ds.pixel_array).all()
    assert [i.SOPInstanceUID for i in store.client.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)] == [
        ds.SOPInstanceUID]
    assert [i.SOPInstanceUID for i in store.client.retrieve_study(ds.StudyInstanceUID)] == [ds.SOPInstanceUID]


def test_single_part_application_dicom_for_an_instance_only(ct: tuple[Store, pydicom.Dataset]) -> None:
    # "RetrieveInstance supports single part content types for convenience" (not study or series).
    store, ds = ct
    stored = (TEST_FILES / "CT_small.dcm").read_bytes()
    response = requests.get(store.instance_url(ds), headers={"Accept": "application/dicom; transfer-syntax=*"},
                            timeout=10)
    assert (response.status_code, response.content) == (200, stored)
    assert response.headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    study = requests.get(f"{store.url}/studies/{ds.StudyInstanceUID}", headers={"Accept": "application/dicom"},
                         timeout=10)
    assert study.status_code == 406 and study.json()["error"]["status"] == "NOT_ACCEPTABLE"


@pytest.mark.parametrize(
    ("accept", "single_part"),
    [
        ("application/dicom; transfer-syntax=*; q=0.5, multipart/related; type=application/dicom", False),
        ("multipart/related; type=application/dicom; q=0.4, application/dicom; transfer-syntax=*; q=0.9", True),
        ("text/html; q=1.0, application/dicom; transfer-syntax=*; q=0.1", True),
        ("*/*", False),
    ],
)
def test_accept_q_values_pick_the_preferred_media_type(
    ct: tuple[Store, pydicom.Dataset], accept: str, single_part: bool
) -> None:
    store, ds = ct
    response = requests.get(store.instance_url(ds), headers={"Accept": accept}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/dicom" if single_part else "multipart/related")


def test_transfer_syntaxes(store: Store) -> None:
    # The default is Explicit VR Little Endian: a compressed instance comes back decompressed.
    data = (TEST_FILES / "MR_small_RLE.dcm").read_bytes()
    store.stow_bytes([data])
    ds = sample("MR_small_RLE.dcm")
    # (dicomweb-client itself asks for transfer-syntax=* unless told otherwise.)
    response = requests.get(store.instance_url(ds), headers={"Accept": 'multipart/related; type="application/dicom"'},
                            timeout=10)
    [part] = decode(response.content, response.headers["Content-Type"])
    default = pydicom.dcmread(io.BytesIO(part))
    assert default.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert (default.pixel_array == ds.pixel_array).all()
    as_stored = store.client.retrieve_instance(*_uids(ds))
    assert as_stored.file_meta.TransferSyntaxUID == RLE
    explicit = store.client.retrieve_instance(*_uids(ds), media_types=(("application/dicom", EXPLICIT_LE),))
    assert explicit.file_meta.TransferSyntaxUID == EXPLICIT_LE
    # (dicomweb-client does not offer Implicit VR Little Endian; Google serves it.)
    implicit = requests.get(store.instance_url(ds), headers={"Accept": _dicom("1.2.840.10008.1.2")}, timeout=10)
    [part] = decode(implicit.content, implicit.headers["Content-Type"])
    assert pydicom.dcmread(io.BytesIO(part)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    # Explicit VR Big Endian is not among the syntaxes Google serves: 406.
    big = requests.get(store.instance_url(ds), headers={"Accept": _dicom("1.2.840.10008.1.2.2")}, timeout=10)
    assert big.status_code == 406
    missing = requests.get(f"{store.url}/studies/1.2.3/series/4.5/instances/6.7", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"


@pytest.fixture
def multiframe(store: Store) -> tuple[Store, pydicom.Dataset, pydicom.Dataset]:
    """rtdose (15 native frames, Implicit VR LE) and SC_rgb_rle_2frame (2 RLE frames, RGB)."""
    store.stow_bytes([(TEST_FILES / "rtdose.dcm").read_bytes(), (TEST_FILES / "SC_rgb_rle_2frame.dcm").read_bytes()])
    return store, sample("rtdose.dcm"), sample("SC_rgb_rle_2frame.dcm")


def test_frames_as_octet_stream(multiframe: tuple[Store, pydicom.Dataset, pydicom.Dataset]) -> None:
    store, dose, rgb = multiframe
    # Default: application/octet-stream, Explicit VR Little Endian (decoded native frames).
    frames = store.client.retrieve_instance_frames(*_uids(dose), frame_numbers=[2, 15])
    size = dose.Rows * dose.Columns * dose.BitsAllocated // 8
    assert frames == [dose.PixelData[size : 2 * size], dose.PixelData[14 * size : 15 * size]]
    decoded = store.client.retrieve_instance_frames(*_uids(rgb), frame_numbers=[1])
    assert decoded == [rgb.pixel_array[0].tobytes()]
    # transfer-syntax=*: the frames as they are stored (here RLE-encoded).
    stored = list(generate_frames(rgb.PixelData, number_of_frames=2))
    as_stored = store.client.retrieve_instance_frames(
        *_uids(rgb), frame_numbers=[2, 1], media_types=(("application/octet-stream", "*"),))
    assert as_stored == [stored[1], stored[0]]
    rle = store.client.retrieve_instance_frames(*_uids(rgb), frame_numbers=[1], media_types=(("image/dicom-rle", RLE),))
    assert rle == [stored[0]]


def test_frames_as_png(multiframe: tuple[Store, pydicom.Dataset, pydicom.Dataset]) -> None:
    store, _, rgb = multiframe
    # dicomweb-client refuses image/png for frames (its own list), Google serves it: plain HTTP here.
    accept = 'multipart/related; type="image/png"'
    response = requests.get(f"{store.instance_url(rgb)}/frames/2", headers={"Accept": accept}, timeout=10)
    [png] = decode(response.content, response.headers["Content-Type"])
    assert (np.asarray(Image.open(io.BytesIO(png))) == rgb.pixel_array[1]).all()  # lossless


@pytest.mark.parametrize("frames", ["0", "3", "1,3", "x"])
def test_frames_that_do_not_exist_are_400(multiframe: tuple[Store, pydicom.Dataset, pydicom.Dataset],
                                          frames: str) -> None:
    store, _, rgb = multiframe
    response = requests.get(f"{store.instance_url(rgb)}/frames/{frames}", timeout=10)
    assert response.status_code == 400


def test_frames_of_an_instance_without_pixel_data_are_400(store: Store) -> None:
    store.stow_bytes([(TEST_FILES / "rtplan.dcm").read_bytes()])
    plan = sample("rtplan.dcm")
    assert requests.get(f"{store.instance_url(plan)}/frames/1", timeout=10).status_code == 400
    assert requests.get(f"{store.instance_url(plan)}/rendered", timeout=10).status_code == 400


def test_rendered_instances_and_frames(multiframe: tuple[Store, pydicom.Dataset, pydicom.Dataset],
                                       ct: tuple[Store, pydicom.Dataset]) -> None:
    store, _, rgb = multiframe
    _, ctds = ct
    jpeg = store.client.retrieve_instance_rendered(*_uids(ctds))  # image/jpeg is the default
    image = Image.open(io.BytesIO(jpeg))
    assert (image.format, image.size) == ("JPEG", (ctds.Columns, ctds.Rows))
    png = store.client.retrieve_instance_rendered(*_uids(ctds), media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).format == "PNG"
    # Viewport is the one parameter rendered resources take: the image fits the viewport.
    small = store.client.retrieve_instance_rendered(*_uids(ctds), media_types=("image/png",),
                                                    params={"viewport": "32,64"})
    assert Image.open(io.BytesIO(small)).size == (32, 32)
    frame = store.client.retrieve_instance_frames_rendered(*_uids(rgb), frame_numbers=[2], media_types=("image/png",))
    assert (np.asarray(Image.open(io.BytesIO(frame))) == rgb.pixel_array[1]).all()
    # A multi-frame instance renders as its first frame.
    first = store.client.retrieve_instance_rendered(*_uids(rgb), media_types=("image/png",))
    assert (np.asarray(Image.open(io.BytesIO(first))) == rgb.pixel_array[0]).all()
    url = store.instance_url(ctds)
    assert requests.get(f"{url}/rendered", params={"quality": "90"}, timeout=10).status_code == 400
    assert requests.get(f"{url}/rendered", headers={"Accept": "image/gif"}, timeout=10).status_code == 406
    assert requests.get(f"{store.url}/studies/{ctds.StudyInstanceUID}/rendered", timeout=10).status_code == 404
    # "It does not support Thumbnail resources."
    assert requests.get(f"{url}/thumbnail", timeout=10).status_code == 404
