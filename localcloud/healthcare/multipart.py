"""multipart/related bodies for WADO-RS responses and STOW-RS requests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from .errors import ApiError, invalid_argument


def media_params(header: str) -> tuple[str, dict[str, str]]:
    """`multipart/related; type="application/dicom"; boundary=x` -> ("multipart/related", {...})."""
    media_type, *params = [part.strip() for part in header.split(";")]
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return media_type.lower(), parsed


def encode(parts: Iterable[bytes], part_type: str) -> tuple[bytes, str]:
    """Body and Content-Type of a multipart/related message of `part_type` parts."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'


def decode(body: bytes, content_type: str) -> list[bytes]:
    """The part payloads of a multipart/related request body."""
    media_type, params = media_params(content_type)
    if media_type != "multipart/related":
        raise ApiError(415, f"expected a multipart/related body, got {media_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise invalid_argument("multipart/related body without a boundary parameter")
    delimiter = b"--" + boundary.encode()
    parts = []
    # Everything before the first delimiter is preamble; "--" right after a delimiter ends the body.
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        header_end = chunk.find(b"\r\n\r\n")
        if header_end < 0:
            raise invalid_argument("malformed multipart part: no blank line after its headers")
        payload = chunk[header_end + 4 :]
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts
