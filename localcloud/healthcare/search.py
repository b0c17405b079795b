"""QIDO-RS: search studies, series and instances of a store.

What comes back follows Google's DICOM conformance statement ("Returned results") and the sample
answers of its DICOMweb guide: a study result carries the study attributes, a series result the
study and series attributes, an instance result all three levels. Only attributes present in the
instance are returned (present but empty: `{"vr": ...}` without a Value); nothing is computed
(no ModalitiesInStudy or NumberOfStudyRelated* counts). No match is 204 with no body.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pydicom
from flask import Request, Response
from pydicom.datadict import tag_for_keyword

from .accept import SEARCH, negotiate
from .bulkdata import instance_metadata
from .dicomfile import (
    INSTANCE_KEYWORDS,
    SERIES_ALL_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_ALL_KEYWORDS,
    STUDY_KEYWORDS,
)
from .dicomxml import to_xml
from .multipart import encode
from .qido import QidoQuery
from .store import InstanceRow, Store

DICOM_JSON = "application/dicom+json"


def _tags(*keyword_lists: tuple[str, ...]) -> frozenset[str]:
    return frozenset(f"{tag_for_keyword(k):08X}" for keywords in keyword_lists for k in keywords)


# Per level: returned by default, and available to includefield (all = every one of them).
_DEFAULT = {
    "studies": _tags(STUDY_KEYWORDS),
    "series": _tags(STUDY_KEYWORDS, SERIES_KEYWORDS),
    "instances": _tags(STUDY_KEYWORDS, SERIES_KEYWORDS, INSTANCE_KEYWORDS),
}
_AVAILABLE = {
    "studies": _DEFAULT["studies"] | _tags(STUDY_ALL_KEYWORDS),
    "series": _DEFAULT["series"] | _tags(SERIES_ALL_KEYWORDS),
}
_UID_COLUMNS = {"StudyInstanceUID": "study", "SeriesInstanceUID": "series", "SOPInstanceUID": "sop"}


def search(
    store: Store,
    store_name: str,
    level: str,
    study: str | None,
    series: str | None,
    request: Request,
    bulk_base: Callable[[InstanceRow], str],
) -> Response:
    """`bulk_base(row)` is the bulkdata URL prefix of an instance (for includefield=all)."""
    choice = negotiate(request.headers.get("Accept"), SEARCH)
    query = QidoQuery.parse(level, request.args.items(multi=True))
    path = {"study": study, "series": series, "sop": None}
    for keyword, column in _UID_COLUMNS.items():
        wanted = query.criteria.get(keyword)
        if wanted is not None:
            if path[column] not in (None, wanted):
                return Response(status=204)
            path[column] = wanted
    rows = [r for r in store.instances(store_name, **path) if query.matches(match_values(r))]
    groups: OrderedDict[tuple[str, ...], InstanceRow] = OrderedDict()
    for row in rows:
        key = {"studies": (row.study,), "series": (row.study, row.series)}.get(level, (row.study, row.series, row.sop))
        groups.setdefault(key, row)
    page = query.page(list(groups.values()))
    if not page:
        return Response(status=204)
    results = [_result(store, level, row, query, bulk_base) for row in page]
    if choice.offer.media_type == DICOM_JSON:
        return Response(json.dumps(results), 200, content_type=DICOM_JSON)
    body, content_type = encode([to_xml(r) for r in results], "application/dicom+xml")
    return Response(body, 200, content_type=content_type)


def match_values(row: InstanceRow) -> dict[str, str | None]:
    """The values QidoQuery.matches() compares, as strings."""
    return {
        "StudyInstanceUID": row.study,
        "SeriesInstanceUID": row.series,
        "SOPInstanceUID": row.sop,
        "PatientID": row.patient_id,
        "StudyDate": row.study_date,
        "Modality": row.modality,
        "PatientName": _text(row.attrs.get("00100010")),
        "AccessionNumber": _text(row.attrs.get("00080050")),
        "ReferringPhysicianName": _text(row.attrs.get("00080090")),
    }


def _text(element: dict[str, Any] | None) -> str | None:
    """The first value of a DICOM JSON string or person name element; None when absent/empty."""
    values = (element or {}).get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):  # PN: the DICOM string form, "Alphabetic=Ideographic=Phonetic"
        groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    return str(value)


def _result(
    store: Store, level: str, row: InstanceRow, query: QidoQuery, bulk_base: Callable[[InstanceRow], str]
) -> dict[str, Any]:
    wanted = set(_DEFAULT[level])
    if level in _AVAILABLE:
        available = _AVAILABLE[level]
        wanted |= available if query.include_all else available & set(query.include_tags)
    else:  # instances: every attribute of the instance is available
        wanted |= set(query.include_tags)
    result = {tag: value for tag, value in row.attrs.items() if tag in wanted}
    # The UIDs are indexed as columns; older index rows may lack them in attrs.
    result["0020000D"] = {"vr": "UI", "Value": [row.study]}
    if level != "studies":
        result["0020000E"] = {"vr": "UI", "Value": [row.series]}
    if level == "instances":
        result["00080018"] = {"vr": "UI", "Value": [row.sop]}
        extra = set(query.include_tags) - set(row.attrs)
        if query.include_all or extra:
            ds = pydicom.dcmread(io.BytesIO(store.read_blob(row)))
            full = instance_metadata(ds, bulk_base(row))
            for tag, value in full.items():
                if query.include_all or tag in extra:
                    result.setdefault(tag, value)
    return dict(sorted(result.items()))
