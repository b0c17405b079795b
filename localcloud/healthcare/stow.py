"""STOW-RS, as Google's DICOM conformance statement ("Store transaction") describes it.

- Bodies: `multipart/related; type=application/dicom`, a single-part `application/dicom`
  instance, or `multipart/related; type=application/dicom+json` (JSON metadata + bulk data, see
  stow_json.py). Any other Content-Type is 400.
- An instance whose Study/Series/SOP Instance UIDs are already stored fails with a Processing
  failure (0x0110) and an "already exists" FailureDetail, identical bytes or not.
- 200 when everything was stored; 409 when at least one instance was not (the stored ones are
  still listed in ReferencedSOPSequence).
- The response is `application/dicom+xml` unless the Accept header asks for
  `application/dicom+json`; failure details are FailureDetail (0009,xx97) of private creator
  GOOGLE in XML, FailureDetailJSON (0009,1097) in JSON.
- The `Storage-Class` header picks the storage class (STANDARD by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Request, Response

from .accept import STORE_RESPONSE, negotiate, parse_media_type
from .deletion import guard_for
from .dicomfile import InstanceInfo, NotDicomError, read_instance
from .dicomxml import to_xml
from .errors import invalid_argument
from .importer import STORAGE_CLASSES
from .multipart import decode_parts
from .store import ConflictError, Store
from .stow_json import JsonInstanceError, instances_from_json
from .urls import dicomweb_root

PROCESSING_FAILURE = 0x0110
_GOOGLE = "GOOGLE"


@dataclass(frozen=True)
class Failure:
    detail: str
    info: InstanceInfo | None = None


def store_instances(store: Store, store_name: str, study: str | None, request: Request) -> Response:
    choice = negotiate(request.headers.get("Accept"), STORE_RESPONSE)
    storage_class = (request.headers.get("Storage-Class") or "STANDARD").strip().upper()
    if storage_class not in STORAGE_CLASSES:
        raise invalid_argument(f"unknown Storage-Class {storage_class!r}; use one of {', '.join(STORAGE_CLASSES)}")
    base = dicomweb_root(request)
    stored: list[InstanceInfo] = []
    failed: list[Failure] = []
    for item in _instances(request):
        if isinstance(item, Failure):
            failed.append(item)
            continue
        data, info = item
        failure = _store_one(store, store_name, study, data, info, storage_class)
        if failure is None:
            stored.append(info)
        else:
            failed.append(failure)
    body = _response(base, study, stored, failed)
    status = 409 if failed else 200
    if choice.offer.media_type == "application/dicom+json":
        return Response(json.dumps(body), status, content_type="application/dicom+json")
    return Response(to_xml(body), status, content_type="application/dicom+xml")


def _instances(request: Request) -> list[tuple[bytes, InstanceInfo] | Failure]:
    """The request's instances, parsed; unparseable ones as failures."""
    media_type, params = parse_media_type(request.headers.get("Content-Type", ""))
    body = request.get_data()
    if media_type == "application/dicom":
        payloads = [body]
    elif media_type == "multipart/related":
        boundary = params.get("boundary")
        if not boundary:
            raise invalid_argument("multipart/related body without a boundary parameter")
        parts = decode_parts(body, boundary)
        part_type = (params.get("type") or "application/dicom").lower()
        if part_type == "application/dicom+json":
            try:
                return [
                    item if isinstance(item, tuple) else Failure(item) for item in instances_from_json(parts)
                ]
            except JsonInstanceError as exc:
                raise invalid_argument(str(exc)) from None
        if part_type != "application/dicom":
            raise invalid_argument(f"unsupported multipart type {part_type!r}: use application/dicom")
        payloads = [part.payload for part in parts]
    else:
        raise invalid_argument(
            f"unsupported Content-Type {media_type!r}: use multipart/related; type=application/dicom, "
            "application/dicom or multipart/related; type=application/dicom+json"
        )
    if not payloads:
        raise invalid_argument("the request holds no DICOM instance")
    out: list[tuple[bytes, InstanceInfo] | Failure] = []
    for payload in payloads:
        try:
            out.append((payload, read_instance(payload)))
        except NotDicomError as exc:
            out.append(Failure(str(exc)))
    return out


def _store_one(
    store: Store, store_name: str, study: str | None, data: bytes, info: InstanceInfo, storage_class: str
) -> Failure | None:
    if study is not None and info.study != study:
        return Failure("the instance's Study Instance UID differs from the study in the request path", info)
    if guard_for(store).blocks(store_name, info.study, info.series):
        return Failure("the instance's study or series is being deleted by an operation", info)
    try:
        if store.put_instance(store_name, info, data, storage_class):
            return None
    except ConflictError:
        pass
    return Failure("an instance with these Study, Series and SOP Instance UIDs already exists", info)


def _response(base: str, study: str | None, stored: list[InstanceInfo], failed: list[Failure]) -> dict[str, Any]:
    studies = {study} if study is not None else {i.study for i in stored} | {f.info.study for f in failed if f.info}
    body: dict[str, Any] = {}
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{next(iter(studies))}"]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {
                **_reference(info),
                "00081190": {"vr": "UR", "Value": [
                    f"{base}/studies/{info.study}/series/{info.series}/instances/{info.sop}"
                ]},
            }
            for info in stored
        ]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {
                **(_reference(f.info) if f.info else {}),
                "00081197": {"vr": "US", "Value": [PROCESSING_FAILURE]},
                "00090010": {"vr": "LO", "Value": [_GOOGLE]},
                "00091097": {"vr": "LT", "Value": [f.detail]},
            }
            for f in failed
        ]}
    return dict(sorted(body.items()))


def _reference(info: InstanceInfo) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [info.sop_class]},
        "00081155": {"vr": "UI", "Value": [info.sop]},
    }
