"""DICOMweb subset under `.../dicomStores/S/dicomWeb/`: QIDO-RS search, WADO-RS retrieve and
metadata, STOW-RS store."""

from __future__ import annotations

import io
import json
import re
from collections import OrderedDict
from typing import Any

import pydicom
from flask import Request, Response

from .dicomfile import INSTANCE_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS, NotDicomError, read_instance
from .errors import ApiError, not_found
from .multipart import decode, encode, media_params
from .qido import QidoQuery, value_matches
from .store import ConflictError, InstanceRow, Store
from .transcode import TranscodeError, transcode

DICOM_JSON = "application/dicom+json"
_DEFAULT_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1"  # DICOMweb default when the Accept header names none
_UID = r"([0-9.]+)"
_SEARCH = re.compile(rf"(?:studies/{_UID}/)?(?:series/{_UID}/)?(studies|series|instances)")
_RETRIEVE = re.compile(rf"studies/{_UID}(?:/series/{_UID}(?:/instances/{_UID})?)?(/metadata)?")
_STORE = re.compile(rf"studies(?:/{_UID})?")
_STORAGE_INFO = re.compile(rf"studies/{_UID}/series/{_UID}/instances/{_UID}:getStorageInfo")

# STOW-RS FailureReason values (PS3.18 / PS3.4 status codes).
_FAILURE_DUPLICATE_DIFFERENT = 0x0111
_FAILURE_MISMATCH = 0xA900
_FAILURE_UNPARSEABLE = 0xC000


def method_for(http_method: str, rest: str) -> str:
    """The fault-injection / stats name of a DICOMweb call."""
    if http_method == "POST":
        return "dicomWeb.store"
    if _STORAGE_INFO.fullmatch(rest):
        return "getStorageInfo"
    return "dicomWeb.search" if _is_search(rest) else "dicomWeb.retrieve"


def _is_search(rest: str) -> bool:
    match = _SEARCH.fullmatch(rest)
    if match is None:
        return False
    study, series, level = match.groups()
    if series:
        return bool(study) and level == "instances"
    return not study or level != "studies"


def handle(store: Store, store_name: str, rest: str, request: Request) -> Response:
    if request.method == "POST":
        match = _STORE.fullmatch(rest)
        if match is None:
            raise not_found(f"unknown DICOMweb path {rest!r}")
        return _stow(store, store_name, match.group(1), request)
    if request.method != "GET":
        raise ApiError(405, f"{request.method} is not supported on DICOMweb path {rest!r}")
    if (match := _STORAGE_INFO.fullmatch(rest)) is not None:
        return _storage_info(store, store_name, rest, *match.groups())
    if _is_search(rest):
        study, series, level = _SEARCH.fullmatch(rest).groups()  # type: ignore[union-attr]
        return _search(store, store_name, level, study, series, request)
    if (match := _RETRIEVE.fullmatch(rest)) is not None:
        study, series, sop, metadata = match.groups()
        rows = store.instances(store_name, study, series, sop)
        if not rows:
            raise not_found(f"no DICOM resource at {rest!r}")
        return _metadata(store, rows) if metadata else _retrieve(store, rows, request)
    raise not_found(f"unknown DICOMweb path {rest!r}")


# --- QIDO-RS -----------------------------------------------------------------------------------


def _search(
    store: Store, store_name: str, level: str, study: str | None, series: str | None, request: Request
) -> Response:
    query = QidoQuery.from_args(request.args.items(multi=True))
    rows = [
        r
        for r in store.instances(store_name, study, series)
        if query.matches(r.qido_row(), with_modality=level != "studies")
    ]
    if level == "studies" and query.modality:
        modality = query.modality
        wanted = {r.study for r in rows if value_matches(modality, r.modality)}
        rows = [r for r in rows if r.study in wanted]
    groups: OrderedDict[tuple[str, ...], list[InstanceRow]] = OrderedDict()
    for row in rows:
        key = {"studies": (row.study,), "series": (row.study, row.series)}.get(
            level, (row.study, row.series, row.sop)
        )
        groups.setdefault(key, []).append(row)
    results = [_result(store, level, members, query) for members in query.page(list(groups.values()))]
    return Response(json.dumps(results), 200, content_type=DICOM_JSON)


def _result(store: Store, level: str, members: list[InstanceRow], query: QidoQuery) -> dict[str, Any]:
    first = members[0]
    keywords = {"studies": STUDY_KEYWORDS, "series": SERIES_KEYWORDS, "instances": INSTANCE_KEYWORDS}[level]
    tags = {f"{pydicom.datadict.tag_for_keyword(k):08X}" for k in keywords}
    result = {tag: value for tag, value in first.attrs.items() if tag in tags}
    if level != "studies":
        result["0020000D"] = {"vr": "UI", "Value": [first.study]}
    if level == "instances":
        result["0020000E"] = {"vr": "UI", "Value": [first.series]}
    if level == "studies":
        modalities = sorted({m.modality for m in members if m.modality})
        if modalities:
            result["00080061"] = {"vr": "CS", "Value": modalities}
        result["00201206"] = {"vr": "IS", "Value": [len({m.series for m in members})]}
        result["00201208"] = {"vr": "IS", "Value": [len(members)]}
    elif level == "series":
        result["00201209"] = {"vr": "IS", "Value": [len(members)]}
    extra = set(query.include_tags) - set(result)
    if query.include_all or extra:
        full = _instance_json(store, first)
        for tag, value in full.items():
            if query.include_all or tag in extra:
                result.setdefault(tag, value)
    return dict(sorted(result.items()))


# --- WADO-RS -----------------------------------------------------------------------------------


def _instance_json(store: Store, row: InstanceRow) -> dict[str, Any]:
    ds = pydicom.dcmread(io.BytesIO(store.read_blob(row)), stop_before_pixels=True)
    body = ds.to_json_dict()
    body["00020010"] = {"vr": "UI", "Value": [row.transfer_syntax]}
    return dict(sorted(body.items()))


def _metadata(store: Store, rows: list[InstanceRow]) -> Response:
    return Response(json.dumps([_instance_json(store, r) for r in rows]), 200, content_type=DICOM_JSON)


def _retrieve(store: Store, rows: list[InstanceRow], request: Request) -> Response:
    transfer_syntax = _accepted_transfer_syntax(request.headers.get("Accept", "*/*"))
    try:
        parts = [transcode(store.read_blob(r), transfer_syntax) for r in rows]
    except TranscodeError as exc:
        raise ApiError(406, str(exc)) from None
    body, content_type = encode(parts, "application/dicom")
    return Response(body, 200, content_type=content_type)


def _accepted_transfer_syntax(accept: str) -> str:
    for media_range in accept.split(","):
        media_type, params = media_params(media_range)
        if media_type in ("*/*", "multipart/*") or (
            media_type == "multipart/related"
            and params.get("type", "application/dicom") == "application/dicom"
        ):
            return params.get("transfer-syntax", _DEFAULT_TRANSFER_SYNTAX)
    raise ApiError(406, f'only multipart/related; type="application/dicom" is served, not {accept!r}')


# --- STOW-RS -----------------------------------------------------------------------------------


def _stow(store: Store, store_name: str, study: str | None, request: Request) -> Response:
    base = f"{request.host_url.rstrip('/')}{request.path.rsplit('/dicomWeb/', 1)[0]}/dicomWeb"
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    stored_studies: set[str] = set()
    for part in decode(request.get_data(), request.headers.get("Content-Type", "")):
        try:
            info = read_instance(part)
        except NotDicomError:
            failed.append({"00081197": {"vr": "US", "Value": [_FAILURE_UNPARSEABLE]}})
            continue
        reference = {
            "00081150": {"vr": "UI", "Value": [info.sop_class]},
            "00081155": {"vr": "UI", "Value": [info.sop]},
        }
        if study is not None and info.study != study:
            failed.append({**reference, "00081197": {"vr": "US", "Value": [_FAILURE_MISMATCH]}})
            continue
        try:
            store.put_instance(store_name, info, part, "STANDARD")
        except ConflictError:
            failed.append({**reference, "00081197": {"vr": "US", "Value": [_FAILURE_DUPLICATE_DIFFERENT]}})
            continue
        url = f"{base}/studies/{info.study}/series/{info.series}/instances/{info.sop}"
        stored.append({**reference, "00081190": {"vr": "UR", "Value": [url]}})
        stored_studies.add(info.study)
    response: dict[str, Any] = {}
    studies = {study} if study is not None else stored_studies
    if len(studies) == 1:
        response["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{next(iter(studies))}"]}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    # PS3.18: 200 all stored, 202 some stored, 409 none stored.
    status = 200 if not failed else 202 if stored else 409
    return Response(json.dumps(response), status, content_type=DICOM_JSON)


def _storage_info(store: Store, store_name: str, rest: str, study: str, series: str, sop: str) -> Response:
    rows = store.instances(store_name, study, series, sop)
    if not rows:
        raise not_found(f"no DICOM instance at {rest.removesuffix(':getStorageInfo')!r}")
    row = rows[0]
    body = {
        "referencedResource": f"{store_name}/dicomWeb/{rest.removesuffix(':getStorageInfo')}",
        "blobStorageInfo": {
            "sizeBytes": str(row.size),
            "storageClass": row.storage_class,
            "storageClassUpdateTime": row.stored_at,
        },
        "structuredStorageInfo": {"sizeBytes": str(len(json.dumps(row.attrs)))},
    }
    return Response(json.dumps(body), 200, content_type="application/json")
