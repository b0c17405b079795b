"""DICOMweb under `.../dicomStores/S/dicomWeb/`: routes each path to QIDO-RS (search.py), WADO-RS
(wado.py), STOW-RS (stow.py) or getStorageInfo. Deletes start operations and are routed by app.py
to deletion.py."""

from __future__ import annotations

import json
import re

from flask import Request, Response

from . import search, stow, wado
from .errors import ApiError, not_found
from .store import InstanceRow, Store
from .urls import dicomweb_root

_UID = r"([0-9.]+)"
_INSTANCE = rf"studies/{_UID}/series/{_UID}/instances/{_UID}"
_SEARCH = re.compile(rf"(?:studies/{_UID}/)?(?:series/{_UID}/)?(studies|series|instances)")
_OBJECTS = re.compile(rf"studies/{_UID}(?:/series/{_UID}(?:/instances/{_UID})?)?(/metadata)?")
_FRAMES = re.compile(rf"{_INSTANCE}/frames/([^/]+)(/rendered)?")
_RENDERED = re.compile(rf"{_INSTANCE}/rendered")
_BULKDATA = re.compile(rf"{_INSTANCE}/bulkdata/(.+)")
_STORE = re.compile(rf"studies(?:/{_UID})?")
_STORAGE_INFO = re.compile(rf"{_INSTANCE}:getStorageInfo")


def method_for(http_method: str, rest: str) -> str:
    """The fault-injection / stats name of a DICOMweb call."""
    if http_method == "POST":
        return "dicomWeb.store"
    if http_method == "DELETE":
        return "dicomWeb.delete"
    if _STORAGE_INFO.fullmatch(rest):
        return "getStorageInfo"
    return "dicomWeb.search" if _search_level(rest) else "dicomWeb.retrieve"


def _search_level(rest: str) -> tuple[str | None, str | None, str] | None:
    """(study, series, level) of a QIDO-RS path, None for anything else."""
    match = _SEARCH.fullmatch(rest)
    if match is None:
        return None
    study, series, level = match.groups()
    if series and not (study and level == "instances"):
        return None
    if study and level == "studies":
        return None
    return study, series, level


def handle(store: Store, store_name: str, rest: str, request: Request) -> Response:
    if request.method == "POST":
        match = _STORE.fullmatch(rest)
        if match is None:
            raise not_found(f"unknown DICOMweb path {rest!r}")
        return stow.store_instances(store, store_name, match.group(1), request)
    if request.method != "GET":  # app.py routes only GET, POST and DELETE (deletion.py) here
        raise ApiError(405, f"{request.method} is not supported on DICOMweb path {rest!r}")
    base = dicomweb_root(request)

    def bulk_base(row: InstanceRow) -> str:
        return f"{base}/studies/{row.study}/series/{row.series}/instances/{row.sop}/bulkdata"

    if (match := _STORAGE_INFO.fullmatch(rest)) is not None:
        return _storage_info(store, store_name, rest, *match.groups())
    if (level := _search_level(rest)) is not None:
        return search.search(store, store_name, level[2], level[0], level[1], request, bulk_base)
    if (match := _OBJECTS.fullmatch(rest)) is not None:
        study, series, sop, metadata = match.groups()
        rows = _rows(store, store_name, rest, study, series, sop)
        if metadata:
            return wado.retrieve_metadata(store, rows, request, bulk_base)
        return wado.retrieve_objects(store, rows, request, instance=sop is not None)
    if (match := _FRAMES.fullmatch(rest)) is not None:
        study, series, sop, frames, rendered = match.groups()
        numbers = wado.parse_frame_numbers(frames)
        [row] = _rows(store, store_name, rest, study, series, sop)
        if rendered:
            if len(numbers) != 1:
                raise ApiError(400, "a rendered frame resource names exactly one frame")
            return wado.retrieve_rendered(store, row, numbers[0], request)
        return wado.retrieve_frames(store, row, numbers, request)
    if (match := _RENDERED.fullmatch(rest)) is not None:
        [row] = _rows(store, store_name, rest, *match.groups())
        return wado.retrieve_rendered(store, row, None, request)
    if (match := _BULKDATA.fullmatch(rest)) is not None:
        study, series, sop, path = match.groups()
        [row] = _rows(store, store_name, rest, study, series, sop)
        return wado.retrieve_bulkdata(store, row, path, request)
    raise not_found(f"unknown DICOMweb path {rest!r}")


def _rows(
    store: Store, store_name: str, rest: str, study: str, series: str | None, sop: str | None
) -> list[InstanceRow]:
    rows = store.instances(store_name, study, series, sop)
    if not rows:
        raise not_found(f"no DICOM resource at {rest!r}")
    return rows


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
            "storageClassUpdateTime": store.storage_class_updated_at(store_name, sop) or row.stored_at,
        },
        "structuredStorageInfo": {"sizeBytes": str(len(json.dumps(row.attrs)))},
    }
    return Response(json.dumps(body), 200, content_type="application/json")
