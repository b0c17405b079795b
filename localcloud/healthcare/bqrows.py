"""Instances as BigQuery rows in Google's flattened DICOM schema (pure logic, no I/O).

Google's layout (https://cloud.google.com/healthcare-api/docs/how-tos/dicom-bigquery-schema):
one column per data element, named by its DICOM keyword, typed by its VR (DA: DATE, FL/FD/DS:
FLOAT, integer VRs: INTEGER, text VRs: STRING). Besides the elements, the rows carry the columns
the API documents for its DICOM tables (SchemaJSON's list): StorageClass, LastUpdated,
BlobStorageSize, StructuredStorageSize, Type.

What this emulator leaves out (docs/decisions/0801): Person Name (a RECORD on Google) and
sequence (REPEATED RECORD) columns, binary VRs; TM and DT are STRING (Google: TIME, TIMESTAMP);
a multi-valued element keeps its first value (Google: a REPEATED column).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag

_INTEGER_VRS = frozenset({"US", "UL", "SS", "SL", "IS", "SV", "UV", "AT"})
_FLOAT_VRS = frozenset({"FL", "FD", "DS"})
_LEFT_OUT_VRS = frozenset({"PN", "SQ", "OB", "OW", "OD", "OF", "OL", "OV", "UN"})

# The non-element columns, in the order Google documents them.
EXTRA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("StructuredStorageSize", "INTEGER"),
    ("StorageClass", "STRING"),
    ("LastUpdated", "TIMESTAMP"),
    ("BlobStorageSize", "INTEGER"),
    ("Type", "STRING"),
)


@dataclass(frozen=True)
class InstanceFacts:
    """What a row is made of: the stored attributes (DICOM JSON) and storage facts."""

    attrs: Mapping[str, Any]
    storage_class: str
    stored_at: str  # RFC 3339
    blob_size: int


def column_type(vr: str) -> str | None:
    """The BigQuery type of a VR's column, or None when the emulator leaves it out."""
    if vr in _LEFT_OUT_VRS:
        return None
    if vr in _INTEGER_VRS:
        return "INTEGER"
    if vr in _FLOAT_VRS:
        return "FLOAT"
    if vr == "DA":
        return "DATE"
    return "STRING"


def flattened_row(facts: InstanceFacts) -> tuple[dict[str, Any], dict[str, str]]:
    """(row, {column: type}) of one instance."""
    row: dict[str, Any] = {}
    types: dict[str, str] = {}
    for tag, element in facts.attrs.items():
        vr = str(element.get("vr", ""))
        kind = column_type(vr)
        keyword = keyword_for_tag(int(tag, 16))
        if kind is None or not keyword:
            continue
        values = element.get("Value") or []
        types[keyword] = kind
        row[keyword] = _value(values[0], kind) if values else None
    for name, kind in EXTRA_COLUMNS:
        types[name] = kind
    row["StructuredStorageSize"] = len(json.dumps(facts.attrs))
    row["StorageClass"] = facts.storage_class
    row["LastUpdated"] = _timestamp(facts.stored_at)
    row["BlobStorageSize"] = facts.blob_size
    row["Type"] = "INSERT"
    return row, types


def merged_types(typed_rows: Iterable[tuple[dict[str, Any], dict[str, str]]]) -> dict[str, str]:
    """The columns all rows need: the first type seen wins (Google: a conflicting type goes to the
    first one too, the later value is dropped; here it becomes NULL, see `conform`)."""
    merged: dict[str, str] = {}
    for _, types in typed_rows:
        for name, kind in types.items():
            merged.setdefault(name, kind)
    return merged


def conform(row: Mapping[str, Any], types: Mapping[str, str], table_types: Mapping[str, str]) -> dict[str, Any]:
    """The row with values whose column has another type in the table set to NULL."""
    return {k: (v if table_types.get(k, types[k]) == types[k] else None) for k, v in row.items() if k in types}


def column_order(types: Mapping[str, str]) -> Sequence[str]:
    extras = [name for name, _ in EXTRA_COLUMNS]
    return sorted(k for k in types if k not in extras) + [k for k in extras if k in types]


def _value(value: Any, kind: str) -> Any:
    try:
        if kind == "INTEGER":
            return int(value)
        if kind == "FLOAT":
            return float(value)
        if kind == "DATE":
            text = str(value)
            return dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except (TypeError, ValueError):
        return None  # a malformed value: Google drops it too
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _timestamp(rfc3339: str) -> dt.datetime:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
