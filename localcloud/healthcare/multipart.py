"""multipart/related bodies for WADO-RS responses and STOW-RS requests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from .accept import parse_media_type
from .errors import invalid_argument


@dataclass(frozen=True)
class Part:
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def encode(
    parts: Iterable[bytes], part_type: str, *, part_content_types: Iterable[str] | None = None
) -> tuple[bytes, str]:
    """Body and Content-Type of a multipart/related message of `part_type` parts; each part's own
    Content-Type (e.g. with its transfer-syntax) defaults to `part_type`."""
    boundary = uuid.uuid4().hex
    types = iter(part_content_types) if part_content_types is not None else None
    chunks: list[bytes] = []
    for part in parts:
        part_content_type = next(types) if types is not None else part_type
        chunks += [f"--{boundary}\r\nContent-Type: {part_content_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary={boundary}'


def decode_parts(body: bytes, boundary: str) -> list[Part]:
    """The parts (payload and headers) of a multipart/related body."""
    delimiter = b"--" + boundary.encode()
    parts = []
    # Everything before the first delimiter is preamble; "--" right after a delimiter ends the body.
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        header_end = chunk.find(b"\r\n\r\n")
        if header_end < 0:
            raise invalid_argument("malformed multipart part: no blank line after its headers")
        headers = {}
        for line in chunk[:header_end].decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        payload = chunk[header_end + 4 :]
        parts.append(Part(payload[:-2] if payload.endswith(b"\r\n") else payload, headers))
    return parts


def decode(body: bytes, content_type: str) -> list[bytes]:
    """The part payloads of a multipart/related request body."""
    media_type, params = parse_media_type(content_type)
    if media_type != "multipart/related":
        raise invalid_argument(f"expected a multipart/related body, got {media_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise invalid_argument("multipart/related body without a boundary parameter")
    return [part.payload for part in decode_parts(body, boundary)]
