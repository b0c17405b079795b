"""HTTP Accept negotiation for DICOMweb, per Google's DICOM conformance statement ("Accept
headers"): wildcards at the top level (`*/*`) and the subtype (`image/*`), `q` values for
preference (1.0 when absent); on a tie the server picks. Each resource offers the media types the
conformance statement lists for it, the first being its default. Pure logic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError, invalid_argument

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
ANY_SYNTAX = "*"

# The transfer syntaxes Google serves DICOM objects in ("DICOM study/series/instances").
DICOM_SYNTAXES = (
    ANY_SYNTAX,
    "1.2.840.10008.1.2",
    EXPLICIT_VR_LE,
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.110",
    "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.112",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.8.1",
)


@dataclass(frozen=True)
class Offer:
    """One media type a resource can answer with. `part` is the `type` parameter of a
    multipart/related answer; `syntaxes` the transfer syntaxes it may carry (first = default)."""

    media_type: str
    part: str | None = None
    syntaxes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Choice:
    offer: Offer
    transfer_syntax: str | None


@dataclass(frozen=True)
class MediaRange:
    media_type: str
    params: dict[str, str]
    q: float


def _multipart(part: str, *syntaxes: str) -> Offer:
    return Offer("multipart/related", part, syntaxes)


DICOM_OBJECTS = (_multipart("application/dicom", EXPLICIT_VR_LE, *DICOM_SYNTAXES),)
DICOM_INSTANCE = (*DICOM_OBJECTS, Offer("application/dicom", None, (EXPLICIT_VR_LE, *DICOM_SYNTAXES)))
FRAMES = (
    _multipart("application/octet-stream", EXPLICIT_VR_LE, ANY_SYNTAX),
    _multipart("image/jpeg", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70"),
    _multipart("image/png"),
    _multipart("image/jls", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    _multipart("image/jp2", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    _multipart("image/jphc", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    _multipart("image/jxl", "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.112"),
    _multipart("image/dicom-rle", "1.2.840.10008.1.2.5"),
    _multipart("application/x-deflate", "1.2.840.10008.1.2.8.1"),
)
RENDERED = (Offer("image/jpeg"), Offer("image/png"))
METADATA = (Offer("application/dicom+json"), _multipart("application/dicom+xml"))
SEARCH = METADATA
BULKDATA = (
    _multipart("application/octet-stream", ANY_SYNTAX),
    Offer("application/octet-stream", None, (ANY_SYNTAX,)),
)
STORE_RESPONSE = (Offer("application/dicom+xml"), Offer("application/dicom+json"))


def parse_media_type(text: str) -> tuple[str, dict[str, str]]:
    """`multipart/related; type="application/dicom"; boundary=x` -> ("multipart/related", {...})."""
    media_type, *params = [part.strip() for part in text.split(";")]
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        if key.strip():
            parsed[key.strip().lower()] = value.strip().strip('"')
    return media_type.lower(), parsed


# google-api-python-client asks every method for `application/json`; Google answers its DICOMweb
# searches and metadata to it (the JSON it means is DICOM JSON).
_ALIASES = {"application/json": "application/dicom+json"}


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges, most preferred first (stable for equal q); no header means `*/*`."""
    ranges = []
    for item in (header or "*/*").split(","):
        if not item.strip():
            continue
        media_type, params = parse_media_type(item)
        media_type = _ALIASES.get(media_type, media_type)
        q_text = params.pop("q", "1")
        try:
            q = float(q_text)
        except ValueError:
            raise invalid_argument(f"invalid q value {q_text!r} in the Accept header") from None
        if "/" not in media_type:
            raise invalid_argument(f"invalid media range {media_type!r} in the Accept header")
        ranges.append(MediaRange(media_type, params, q))
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)


def _type_matches(wanted: str, offered: str) -> bool:
    if wanted == "*/*":
        return True
    if wanted.endswith("/*"):
        return offered.startswith(wanted[:-1])
    return wanted == offered


def _match(media_range: MediaRange, offer: Offer) -> Choice | None:
    wanted = media_range.media_type
    if wanted in ("*/*", f"{offer.media_type.split('/')[0]}/*"):
        return Choice(offer, offer.syntaxes[0] if offer.syntaxes else None)
    if wanted != offer.media_type:
        return None
    if offer.part is not None:
        # multipart/related without `type` asks for the resource's default part type.
        part = media_range.params.get("type")
        if part is not None and not _type_matches(part.lower(), offer.part):
            return None
    syntax = media_range.params.get("transfer-syntax")
    if syntax is None:
        return Choice(offer, offer.syntaxes[0] if offer.syntaxes else None)
    return Choice(offer, syntax) if syntax in offer.syntaxes else None


def negotiate(header: str | None, offers: tuple[Offer, ...]) -> Choice:
    """The offer that best fits the Accept header; 406 NOT_ACCEPTABLE when none does."""
    for media_range in parse_accept(header):
        for offer in offers:
            choice = _match(media_range, offer)
            if choice is not None:
                return choice
    served = "; ".join(
        f"{o.media_type}" + (f' type="{o.part}"' if o.part else "") for o in offers
    )
    raise ApiError(406, f"none of the acceptable media types {header!r} is served here (served: {served})")


def content_type(choice: Choice) -> str:
    """The Content-Type of a single-part answer (no boundary)."""
    if choice.transfer_syntax and choice.offer.media_type == "application/dicom":
        return f"application/dicom; transfer-syntax={choice.transfer_syntax}"
    if choice.transfer_syntax and choice.offer.media_type == "application/octet-stream":
        return f"application/octet-stream; transfer-syntax={choice.transfer_syntax}"
    return choice.offer.media_type
