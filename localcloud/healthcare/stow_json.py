"""STOW-RS of JSON metadata plus bulk data (Google's DICOM conformance statement, "JSON metadata
and bulk data requests").

The first part is a JSON array of instances, `application/dicom+json[; transfer-syntax=...]`.
Every instance needs SpecificCharacterSet (`ISO_IR 192`), TransferSyntaxUID, SOPClassUID and the
Study, Series and SOP Instance UIDs; Explicit VR Big Endian and Deflated Explicit VR Little Endian
are refused. BulkDataURIs (at most one per instance, no duplicates, only on OB/OW/UN) name later
parts by their Content-Location. PixelData must come as bulk data; compressed pixel data is one
frame, in the instance's transfer syntax. The server derives nothing.
"""

from __future__ import annotations

import io
import json
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from .dicomfile import InstanceInfo, NotDicomError, read_instance
from .multipart import Part

_REQUIRED = {
    "00080005": "SpecificCharacterSet",
    "00020010": "TransferSyntaxUID",
    "00080016": "SOPClassUID",
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00080018": "SOPInstanceUID",
}
_REFUSED_SYNTAXES = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
_BULK_VRS = {"OB", "OW", "UN"}


class JsonInstanceError(ValueError):
    """The request as a whole is malformed; the message is safe to log."""


class _Refused(ValueError):
    """One instance cannot be stored; the message names no tag values."""


def instances_from_json(parts: list[Part]) -> list[tuple[bytes, InstanceInfo] | str]:
    """Each instance of the metadata part as Part 10 bytes, or the reason it cannot be stored."""
    if not parts or not parts[0].content_type.lower().startswith("application/dicom+json"):
        raise JsonInstanceError("the first part must be the application/dicom+json metadata")
    try:
        instances = json.loads(parts[0].payload)
    except ValueError:
        raise JsonInstanceError("the metadata part is not valid JSON") from None
    if isinstance(instances, dict):
        instances = [instances]
    if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
        raise JsonInstanceError("the metadata part must be a JSON array of DICOM JSON objects")
    bulk = {p.headers["content-location"]: p.payload for p in parts[1:] if "content-location" in p.headers}
    seen_uris: set[str] = set()
    out: list[tuple[bytes, InstanceInfo] | str] = []
    for instance in instances:
        try:
            data = _part10(instance, bulk, seen_uris)
            out.append((data, read_instance(data)))
        except (_Refused, NotDicomError) as exc:
            out.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - pydicom's messages may quote values: keep only the type
            out.append(f"malformed DICOM JSON ({type(exc).__name__})")
    return out


def _part10(instance: dict[str, Any], bulk: dict[str, bytes], seen_uris: set[str]) -> bytes:
    missing = [name for tag, name in _REQUIRED.items() if not (instance.get(tag) or {}).get("Value")]
    if missing:
        raise _Refused(f"missing required element(s): {', '.join(missing)}")
    if instance["00080005"]["Value"] != ["ISO_IR 192"]:
        raise _Refused("SpecificCharacterSet must be ISO_IR 192")
    syntax = str(instance["00020010"]["Value"][0])
    if syntax in _REFUSED_SYNTAXES:
        raise _Refused(f"transfer syntax {syntax} is not supported for JSON metadata")
    uris = [(tag, e["vr"], e["BulkDataURI"]) for tag, e in instance.items() if "BulkDataURI" in e]
    if len(uris) > 1:
        raise _Refused("an instance can have at most one BulkDataURI")
    for tag, vr, uri in uris:
        if vr not in _BULK_VRS:
            raise _Refused(f"BulkDataURI on {tag} with VR {vr}: only OB, OW and UN")
        if uri in seen_uris:
            raise _Refused(f"BulkDataURI {uri!r} is used twice")
        if uri not in bulk:
            raise _Refused(f"no part has Content-Location {uri!r}")
        seen_uris.add(uri)
    if "7FE00010" in instance and "InlineBinary" in instance["7FE00010"]:
        raise _Refused("PixelData must be sent as a bulk data part, not InlineBinary")
    meta_json = {k: v for k, v in instance.items() if k.startswith("0002")}
    body_json = {k: v for k, v in instance.items() if not k.startswith("0002")}
    compressed = UID(syntax).is_compressed

    def bulk_handler(tag: str, vr: str, uri: str) -> bytes:
        data = bulk[uri]
        return encapsulate([data]) if compressed and tag.upper() == "7FE00010" else data

    ds = Dataset.from_json(body_json, bulk_data_uri_handler=bulk_handler)
    ds.file_meta = FileMetaDataset(Dataset.from_json(meta_json))
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
