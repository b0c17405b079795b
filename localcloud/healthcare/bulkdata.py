"""Instance metadata with BulkDataURIs, and the bulk data those URIs point to.

Google's "Bulkdata Definition" (DICOM conformance statement): any Pixel Data tag (7FE0,0008),
(7FE0,0009), (7FE0,0010); any tag with a VR of OB, OW or UN; OD/OF/OL/OV larger than 2 KiB;
AT/FD/FL/UL/US/SV/UV with a VM above 512. Sequences larger than about 1 MiB are left out of
metadata altogether. A URI is `.../instances/{sop}/bulkdata/{tag}`, nested as
`{sequence tag}/{item index}/{tag}` (Google's "Retrieve bulk data" guide).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

_PIXEL_DATA_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_ALWAYS_BULK_VRS = {"OB", "OW", "UN"}
_LARGE_BULK_VRS = {"OD", "OF", "OL", "OV"}
_LARGE_BYTES = 2048
_MANY_VALUE_VRS = {"AT", "FD", "FL", "UL", "US", "SV", "UV"}
_MANY_VALUES = 512
MAX_SEQUENCE_JSON = 1 << 20  # "approximately 1 MiB"
_NUMPY_TYPES = {"US": "<u2", "SS": "<i2", "UL": "<u4", "SL": "<i4", "FL": "<f4", "FD": "<f8", "SV": "<i8",
                "UV": "<u8", "AT": "<u2"}


class NoBulkData(LookupError):
    """The path names no bulk data element of the instance; the message is safe to log."""


def is_bulk(element: DataElement) -> bool:
    if element.is_empty:
        return False
    if element.tag in _PIXEL_DATA_TAGS or element.VR in _ALWAYS_BULK_VRS:
        return True
    if element.VR in _LARGE_BULK_VRS:
        return len(element.value) > _LARGE_BYTES
    return element.VR in _MANY_VALUE_VRS and element.VM > _MANY_VALUES


def instance_metadata(ds: Dataset, bulk_base: str) -> dict[str, Any]:
    """DICOM JSON of the file meta and data set; bulk data as `{bulk_base}/{path}` URIs."""
    body = _dataset_json(ds.file_meta, bulk_base, "") if getattr(ds, "file_meta", None) else {}
    body.update(_dataset_json(ds, bulk_base, ""))
    return dict(sorted(body.items()))


def _dataset_json(ds: Dataset, bulk_base: str, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for element in ds:
        key = f"{element.tag:08X}"
        path = f"{prefix}{key}"
        if element.VR == "SQ":
            items = [_dataset_json(item, bulk_base, f"{path}/{index}/") for index, item in enumerate(element.value)]
            value: dict[str, Any] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            if len(json.dumps(value)) > MAX_SEQUENCE_JSON:
                continue
            out[key] = value
        elif is_bulk(element):
            out[key] = {"vr": element.VR, "BulkDataURI": f"{bulk_base}/{path}"}
        else:
            out[key] = element.to_json_dict(None, 0)
    return out


def bulk_value(ds: Dataset, path: str) -> bytes:
    """The value bytes of the bulk data element at `path` (`TTTTTTTT` or `SSSSSSSS/i/TTTTTTTT`)."""
    parts = path.strip("/").split("/")
    if len(parts) % 2 != 1 or not all(re.fullmatch(r"[0-9A-Fa-f]{8}", p) for p in parts[::2]):
        raise NoBulkData(f"invalid bulk data path {path!r}: expected TAG or SEQUENCE/INDEX/TAG")
    current = ds
    for position in range(0, len(parts) - 1, 2):
        sequence = _element(current, parts[position])
        if sequence.VR != "SQ" or not parts[position + 1].isdigit():
            raise NoBulkData(f"{parts[position]} in {path!r} is not a sequence with that item")
        index = int(parts[position + 1])
        if index >= len(sequence.value):
            raise NoBulkData(f"sequence {parts[position]} has no item {index}")
        current = sequence.value[index]
    element = _element(current, parts[-1])
    if not is_bulk(element):
        raise NoBulkData(f"{parts[-1]} is not bulk data")
    if isinstance(element.value, bytes | bytearray):
        return bytes(element.value)
    values = element.value if element.VM > 1 else [element.value]
    if element.VR == "AT":
        values = [part for tag in values for part in (int(tag) >> 16, int(tag) & 0xFFFF)]
    return np.asarray(values, dtype=_NUMPY_TYPES[element.VR]).tobytes()


def _element(ds: Dataset, tag_text: str) -> DataElement:
    tag = int(tag_text, 16)
    source = ds.file_meta if tag >> 16 == 0x0002 and getattr(ds, "file_meta", None) else ds
    if tag not in source:
        raise NoBulkData(f"the instance has no element {tag_text.upper()} there")
    return source[tag]
