"""WADO-RS, as Google's DICOM conformance statement ("Retrieve transaction") describes it:
DICOM objects (study, series, instance; single-part `application/dicom` for an instance),
metadata (JSON with BulkDataURIs, or XML), frames, rendered instances and frames, bulk data.

The emulator answers every media type Google lists, but only produces the transfer syntaxes
transcode.PRODUCIBLE (plus anything already stored in the requested syntax); the others are 406
with a message that says the emulator cannot produce them.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable

import pydicom
from flask import Request, Response
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless

from .accept import (
    ANY_SYNTAX,
    BULKDATA,
    DICOM_INSTANCE,
    DICOM_OBJECTS,
    FRAMES,
    METADATA,
    RENDERED,
    Choice,
    content_type,
    negotiate,
)
from .bulkdata import NoBulkData, bulk_value, instance_metadata
from .dicomxml import to_xml
from .errors import ApiError, invalid_argument, not_found
from .multipart import encode
from .qido import SYSTEM_PARAMETERS
from .render import frame_count, load_with_pixels, png_frames, raw_frames, render_frame
from .store import InstanceRow, Store
from .transcode import PRODUCIBLE, TranscodeError, transcode

BulkBase = Callable[[InstanceRow], str]


def _stored_syntax(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _cannot_produce(target: str) -> ApiError:
    return ApiError(406, f"the emulator cannot produce transfer syntax {target} (Google can; see the README)")


def _as(data: bytes, target: str | None) -> tuple[bytes, str]:
    """The instance in `target` (None or * = as stored) and the syntax it ends up in."""
    stored = _stored_syntax(data)
    if target in (None, ANY_SYNTAX) or target == stored:
        return data, stored
    if UID(target) not in PRODUCIBLE:
        raise _cannot_produce(target)
    try:
        return transcode(data, target), target
    except TranscodeError as exc:
        # Google: transcoding from a syntax it cannot decode "will return an error".
        raise invalid_argument(str(exc)) from None


def retrieve_objects(store: Store, rows: list[InstanceRow], request: Request, *, instance: bool) -> Response:
    choice = negotiate(request.headers.get("Accept"), DICOM_INSTANCE if instance else DICOM_OBJECTS)
    converted = [_as(store.read_blob(r), choice.transfer_syntax) for r in rows]
    if choice.offer.media_type == "application/dicom":
        data, syntax = converted[0]
        return Response(data, 200, content_type=f"application/dicom; transfer-syntax={syntax}")
    body, multipart_type = encode(
        [data for data, _ in converted],
        "application/dicom",
        part_content_types=[f"application/dicom; transfer-syntax={syntax}" for _, syntax in converted],
    )
    return Response(body, 200, content_type=multipart_type)


def retrieve_metadata(store: Store, rows: list[InstanceRow], request: Request, bulk_base: BulkBase) -> Response:
    choice = negotiate(request.headers.get("Accept"), METADATA)
    bodies = [instance_metadata(pydicom.dcmread(io.BytesIO(store.read_blob(r))), bulk_base(r)) for r in rows]
    if choice.offer.media_type == "application/dicom+json":
        return Response(json.dumps(bodies), 200, content_type="application/dicom+json")
    body, multipart_type = encode([to_xml(b) for b in bodies], "application/dicom+xml")
    return Response(body, 200, content_type=multipart_type)


def parse_frame_numbers(text: str) -> list[int]:
    if not re.fullmatch(r"\d+(,\d+)*", text.replace(" ", "")):
        raise invalid_argument(f"invalid frame list {text!r}: expected frame numbers like 1 or 1,3")
    return [int(n) for n in text.replace(" ", "").split(",")]


def _check_frames(data: bytes, numbers: list[int]) -> None:
    try:
        count = frame_count(load_with_pixels(data))
    except TranscodeError as exc:
        raise invalid_argument(str(exc)) from None  # e.g. no pixel data
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise invalid_argument(f"frame {bad[0]} does not exist: the instance has {count} frame(s)")


def retrieve_frames(store: Store, row: InstanceRow, numbers: list[int], request: Request) -> Response:
    choice = negotiate(request.headers.get("Accept"), FRAMES)
    data = store.read_blob(row)
    _check_frames(data, numbers)
    frames, part_type = _frames(data, numbers, choice)
    body, multipart_type = encode(frames, choice.offer.part or "", part_content_types=[part_type] * len(frames))
    return Response(body, 200, content_type=multipart_type)


def _frames(data: bytes, numbers: list[int], choice: Choice) -> tuple[list[bytes], str]:
    part, target = choice.offer.part or "", choice.transfer_syntax
    stored = _stored_syntax(data)
    try:
        if part == "image/png":
            return png_frames(data, numbers), "image/png"
        if part == "application/octet-stream":
            frames = raw_frames(data, None if target == ANY_SYNTAX else target)
            syntax = stored if target == ANY_SYNTAX else ExplicitVRLittleEndian
            return [frames[n - 1] for n in numbers], f"application/octet-stream; transfer-syntax={syntax}"
        assert target is not None
        if target == stored:
            source = data
        elif target == RLELossless:
            source = transcode(data, RLELossless)
        else:
            raise _cannot_produce(target)
        frames = raw_frames(source, ANY_SYNTAX)
        return [frames[n - 1] for n in numbers], f"{part}; transfer-syntax={target}"
    except TranscodeError as exc:
        raise invalid_argument(str(exc)) from None


def _viewport(request: Request) -> tuple[int, ...] | None:
    for key in request.args:
        if key != "viewport" and key not in SYSTEM_PARAMETERS:
            raise invalid_argument(f"unsupported parameter {key!r}: rendered resources take only viewport")
    text = request.args.get("viewport")
    if text is None:
        return None
    values = text.split(",")
    if len(values) not in (2, 6) or not all(v.strip().isdigit() for v in values):
        raise invalid_argument(f"invalid viewport {text!r}: expected vw,vh or vw,vh,sx,sy,sw,sh")
    return tuple(int(v) for v in values)


def retrieve_rendered(store: Store, row: InstanceRow, frame: int | None, request: Request) -> Response:
    choice = negotiate(request.headers.get("Accept"), RENDERED)
    viewport = _viewport(request)
    data = store.read_blob(row)
    _check_frames(data, [frame or 1])
    try:
        # An instance renders as its first frame.
        image = render_frame(data, choice.offer.media_type, (frame or 1) - 1, viewport)
    except TranscodeError as exc:
        raise invalid_argument(str(exc)) from None
    return Response(image, 200, content_type=choice.offer.media_type)


def retrieve_bulkdata(store: Store, row: InstanceRow, path: str, request: Request) -> Response:
    choice = negotiate(request.headers.get("Accept"), BULKDATA)
    ds = pydicom.dcmread(io.BytesIO(store.read_blob(row)))
    try:
        value = bulk_value(ds, path)
    except NoBulkData as exc:
        raise not_found(str(exc)) from None
    if choice.offer.part is None:
        return Response(value, 200, content_type=content_type(choice))
    body, multipart_type = encode(
        [value], "application/octet-stream", part_content_types=["application/octet-stream; transfer-syntax=*"]
    )
    return Response(body, 200, content_type=multipart_type)
