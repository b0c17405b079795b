"""The export request contract (docs/contracts.md, contracts/export-request.v1.schema.json): strict, pure.

`parse_export_request` turns Pub/Sub message data into an `ExportRequest` or raises
`InvalidExportRequestError` whose `reason` is one human sentence. The reason goes into a
`REJECTED` completion event and a log line, so it never echoes more than a short, truncated
excerpt of the input, and never a query value (those are DICOM tag values: PHI).

Decisions (each one is tested):
- Input: UTF-8 (a leading byte order mark is tolerated), at most `MAX_REQUEST_BYTES`, one JSON
  object; duplicate keys, `NaN`/`Infinity` and `null` values are rejected; unknown fields too.
- `requestId`: 1-256 characters of `A-Z a-z 0-9 . _ - :` (`REQUEST_ID_CHARSET`). It is only ever
  used hashed in object names (`dedup_key`), but it also lands in logs and events verbatim.
- `action`: `export` (the default) or `setStorageClass` (with `storageClass`, and without
  `destination` and `mimeType`); `redrive` never reaches this parser (functions.exports.redrive).
- Selector: at most one of `resources`, `filterUri`, `query`, `sql`; none means the whole store.
  A storage-class change of the whole store must say so: `"wholeStore": true` (and no selector);
  a forgotten selector is refused, never taken for "everything" (docs/decisions/0851).
- `sql`: one SELECT/WITH statement (`functions.core.sql_selection.check_sql`); run by the function.
- `resources`: `/studies/U`, `/studies/U/series/U` or `/studies/U/series/U/instances/U` exactly.
  UIDs follow DICOM PS3.5 section 9.1: components of digits separated by dots, no empty component,
  no leading zero in a multi-digit component, at most 64 characters. Leading zeros are rejected:
  9.1 says they "should be ignored when being encoded", so `1.02` is not the encoding of any UID
  and can only be a typo or a non-conformant source. Duplicates are dropped, order kept.
- `filterUri`: `gs://bucket/object`, no wildcard (`* ? [ ]`), no `.`/`..`/empty segment.
- `query`: study-level QIDO-RS keys in `QUERY_KEYS`, string values without wildcards.
- `mimeType`: exactly the export MIME types the API documents (`SUPPORTED_MIME_TYPES`), plus
  bare `application/dicom` (gcloud's own example); normalised to `type/subtype; transfer-syntax=X`.
- `destination`: `gs://bucket[/prefix]`, trailing slashes removed, no `.`/`..`/empty segment.
  `destination_allowed` matches whole path segments only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from functions.core.errors import InvalidEventError, InvalidExportRequestError
from functions.core.sql_selection import check_sql

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # the Pub/Sub message size limit
MAX_REQUEST_ID_LENGTH = 256
REQUEST_ID_CHARSET = "A-Z a-z 0-9 . _ - :"
MAX_UID_LENGTH = 64
# The API appends `/{study}/{series}/{instance}[/{frame}].ext` (up to ~210 bytes) to the prefix and
# object names are limited to 1024 bytes, so the destination prefix keeps room for that.
MAX_DESTINATION_PREFIX_BYTES = 768
MAX_OBJECT_NAME_BYTES = 1024

FIELDS = ("requestId", "destination", "resources", "filterUri", "query", "sql", "mimeType", "action",
          "storageClass", "wholeStore")
SELECTOR_FIELDS = ("resources", "filterUri", "query", "sql")
EXPORT = "export"
SET_STORAGE_CLASS = "setStorageClass"
ACTIONS = (EXPORT, SET_STORAGE_CLASS)  # "redrive" is routed before this parser (functions.exports.redrive)
# BlobStorageSettings.blobStorageClass, without BLOB_STORAGE_CLASS_UNSPECIFIED.
BLOB_STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")

# Study-level QIDO-RS matching keys we pass on (PS3.18 table 10.6.1-5 lists them as required
# study matching keys). Value rules per VR, PS3.5 6.2: LO 64 chars, SH and CS 16 chars.
QUERY_KEYS = ("PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber", "ModalitiesInStudy")

# The transfer syntaxes `GcsDestination.mimeType` lists for `application/dicom` (its API reference).
DICOM_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112",  # JPEG XL
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K RPCL Lossless
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)
# MIME type -> accepted transfer-syntax values; None = the parameter may be left out.
SUPPORTED_MIME_TYPES: Mapping[str, tuple[str | None, ...]] = {
    "application/dicom": (None, "*", *DICOM_TRANSFER_SYNTAXES),
    "application/octet-stream": ("1.2.840.10008.1.2.1", "*"),
    "image/jpeg": ("1.2.840.10008.1.2.4.50",),
    "image/png": (None,),
}

_COMPONENT = r"(?:0|[1-9][0-9]*)"
_UID = rf"{_COMPONENT}(?:\.{_COMPONENT})*"
_UID_RE = re.compile(_UID)
_PATH_RE = re.compile(rf"/studies/({_UID})(?:/series/({_UID})(?:/instances/({_UID}))?)?")
_REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_LENGTH}}}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_IPV4_RE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Control characters, and lone surrogates (JSON allows "\ud800"; they cannot be encoded).
_FORBIDDEN_IN_PATH = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_WILDCARDS = re.compile(r"[*?\[\]]")
_MIME_RE = re.compile(
    r"\s*([A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+)\s*"
    r"(?:;\s*([A-Za-z0-9_-]+)\s*=\s*(\"[^\"]*\"|[^\s;\"]*)\s*)?"
)
_PATH_LEVELS = ("studies", "series", "instances")


@dataclass(frozen=True)
class ResourcesSelector:
    """Explicit DICOMweb resource paths, deduplicated, in the caller's order."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class FilterUriSelector:
    """A filter file the caller already wrote (`gs://bucket/object`)."""

    uri: str


@dataclass(frozen=True)
class QuerySelector:
    """Study-level QIDO-RS matching keys, sorted by key."""

    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SqlSelector:
    """One BigQuery Standard SQL SELECT statement (checked by `functions.core.sql_selection.check_sql`)."""

    sql: str


@dataclass(frozen=True)
class WholeStore:
    """No selector: every instance of the store."""


Selector = ResourcesSelector | FilterUriSelector | QuerySelector | SqlSelector | WholeStore


@dataclass(frozen=True)
class ExportRequest:
    """An export (`action` "export") or a storage-class change (`action` "setStorageClass")."""

    destination: str | None  # export: normalised gs://bucket[/prefix], no trailing slash; else None
    selector: Selector
    mime_type: str | None = None  # normalised; None = the API's default (original format)
    request_id: str | None = None
    action: str = EXPORT
    storage_class: str | None = None  # setStorageClass: one of BLOB_STORAGE_CLASSES

    def to_dict(self) -> dict[str, Any]:
        """The request in contract form; `parse_export_request` of its JSON gives it back."""
        out: dict[str, Any] = {}
        if self.request_id is not None:
            out["requestId"] = self.request_id
        if self.action != EXPORT:
            out["action"] = self.action
        if self.destination is not None:
            out["destination"] = self.destination
        if isinstance(self.selector, ResourcesSelector):
            out["resources"] = list(self.selector.paths)
        elif isinstance(self.selector, FilterUriSelector):
            out["filterUri"] = self.selector.uri
        elif isinstance(self.selector, QuerySelector):
            out["query"] = dict(self.selector.params)
        elif isinstance(self.selector, SqlSelector):
            out["sql"] = self.selector.sql
        if self.mime_type is not None:
            out["mimeType"] = self.mime_type
        if self.storage_class is not None:
            out["storageClass"] = self.storage_class
        if self.action == SET_STORAGE_CLASS and isinstance(self.selector, WholeStore):
            out["wholeStore"] = True
        return out


def parse_export_request(data: bytes, *, allowed_destinations: Sequence[str] | None = None) -> ExportRequest:
    """Validates Pub/Sub message data against the export request contract.

    Args:
        data: the decoded message data (bytes, not base64).
        allowed_destinations: when given, the destination must lie inside one of these
            `gs://` prefixes (`destination_allowed`); an empty sequence allows nothing.

    Raises:
        InvalidExportRequestError: the request breaks the contract; `reason` says how.
    """
    body = _decode_json_object(data)
    unknown = [key for key in body if key not in FIELDS]
    if unknown:
        shown = ", ".join(_show(key, 40) for key in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise _reject(f"unknown field(s) {shown}{more}; allowed fields: {', '.join(FIELDS)}")
    for key, value in body.items():
        if value is None:
            raise _reject(f"{key} is null; leave the field out instead")

    request_id = None
    if "requestId" in body:
        request_id = _require_str(body, "requestId")
        if not is_valid_request_id(request_id):
            raise _reject(
                f"requestId {_show(request_id)} must be 1-{MAX_REQUEST_ID_LENGTH} characters "
                f"of {REQUEST_ID_CHARSET}"
            )

    action = _parse_action(body)
    destination = None
    if action == EXPORT:
        if "storageClass" in body:
            raise _reject('storageClass belongs to "action": "setStorageClass"; an export has no storage class')
        if "destination" not in body:
            raise _reject("destination is required (gs://bucket[/prefix])")
        destination = normalize_destination(_require_str(body, "destination"))
        if allowed_destinations is not None and not destination_allowed(destination, allowed_destinations):
            allowed = ", ".join(_show(p, 80) for p in allowed_destinations[:5]) or "none configured"
            raise _reject(f"destination {_show(destination)} is not inside an allowed prefix ({allowed})")
    else:
        for key in ("destination", "mimeType"):
            if key in body:
                raise _reject(f'{key} belongs to an export; "action": "{action}" takes none')

    given = [key for key in SELECTOR_FIELDS if key in body]
    if len(given) > 1:
        raise _reject(
            f"give at most one of resources, filterUri, query, sql (got {' and '.join(given)}); "
            "none of them selects the whole store"
        )
    selector: Selector = WholeStore()
    if "resources" in body:
        selector = ResourcesSelector(_parse_resources(body["resources"]))
    elif "filterUri" in body:
        selector = FilterUriSelector(_parse_filter_uri(_require_str(body, "filterUri")))
    elif "query" in body:
        selector = QuerySelector(_parse_query(body["query"]))
    elif "sql" in body:
        selector = SqlSelector(check_sql(_require_str(body, "sql")))

    storage_class = None
    if action == SET_STORAGE_CLASS:
        if "storageClass" not in body:
            raise _reject(f"storageClass is required for \"action\": \"{action}\" ({', '.join(BLOB_STORAGE_CLASSES)})")
        storage_class = _require_str(body, "storageClass")
        if storage_class not in BLOB_STORAGE_CLASSES:
            raise _reject(f"storageClass {_show(storage_class, 40)} is not one of {', '.join(BLOB_STORAGE_CLASSES)}")

    if "wholeStore" in body:
        if action != SET_STORAGE_CLASS:
            raise _reject('wholeStore belongs to "action": "setStorageClass"; an export without a selector '
                          "exports the whole store")
        if body["wholeStore"] is not True:
            raise _reject("wholeStore must be true, or left out")
        if given:
            raise _reject(f"wholeStore and {given[0]} contradict each other; give one of them")
    elif action == SET_STORAGE_CLASS and isinstance(selector, WholeStore):
        raise _reject('a storage-class change needs a selector (resources, filterUri, query or sql), or '
                      '"wholeStore": true to change every instance of the store')

    mime_type = None
    if "mimeType" in body:
        mime_type = normalize_mime_type(_require_str(body, "mimeType"))
    return ExportRequest(
        destination=destination, selector=selector, mime_type=mime_type, request_id=request_id,
        action=action, storage_class=storage_class,
    )


def _parse_action(body: Mapping[str, Any]) -> str:
    if "action" not in body:
        return EXPORT
    action = _require_str(body, "action")
    if action not in ACTIONS:
        raise _reject(f"action {_show(action, 40)} is not one of {', '.join(ACTIONS)}, redrive")
    return action


def is_valid_request_id(value: object) -> bool:
    return isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value) is not None


def normalize_destination(uri: str) -> str:
    """`gs://bucket[/prefix]` without trailing slashes; raises InvalidExportRequestError."""
    bucket, segments = _split_gcs_uri(uri, "destination", allow_bucket_only=True)
    prefix = "/".join(segments)
    if len(prefix.encode()) > MAX_DESTINATION_PREFIX_BYTES:
        raise _reject(f"destination prefix is longer than {MAX_DESTINATION_PREFIX_BYTES} bytes")
    return f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"


def normalize_allowlist_entry(entry: str) -> str:
    """An allowlist entry (`DICOM_EXPORT_ALLOWED_DESTINATIONS`) as `destination_allowed` reads it.

    Held to the same rules as a destination, so that an entry accepted at start-up is one that
    can match: `gs://exports/a//b` has an empty segment and no destination could ever be inside it.

    Raises:
        InvalidExportRequestError: the entry is not `gs://bucket[/prefix]` of literal segments.
    """
    bucket, segments = _split_gcs_uri(entry, "allowlist entry", allow_bucket_only=True)
    return f"gs://{bucket}/{'/'.join(segments)}" if segments else f"gs://{bucket}"


def destination_allowed(destination: str, allowlist: Iterable[str]) -> bool:
    """Is `destination` equal to, or inside, one of the `gs://` prefixes of `allowlist`?

    Matching is on whole path segments after normalisation: `gs://exports/a` is inside
    `gs://exports`, `gs://exports-evil/x` and `gs://exports/ab` are not inside `gs://exports/a`.
    A malformed destination or allowlist entry never matches.
    """
    try:
        bucket, segments = _split_gcs_uri(destination, "destination", allow_bucket_only=True)
    except InvalidExportRequestError:
        return False
    for entry in allowlist:
        try:
            allowed_bucket, allowed_segments = _split_gcs_uri(
                entry, "allowlist entry", allow_bucket_only=True
            )
        except InvalidExportRequestError:
            continue
        if allowed_bucket == bucket and segments[: len(allowed_segments)] == allowed_segments:
            return True
    return False


def normalize_mime_type(value: str) -> str:
    """One of `SUPPORTED_MIME_TYPES`, as `type/subtype` or `type/subtype; transfer-syntax=X`."""
    match = _MIME_RE.fullmatch(value)
    if match is None:
        raise _reject(f"mimeType {_show(value)} is not of the form type/subtype[; transfer-syntax=UID]")
    mime, param, syntax = match.group(1).lower(), match.group(2), match.group(3)
    if mime not in SUPPORTED_MIME_TYPES:
        raise _reject(
            f"mimeType {_show(mime)} is not supported; use one of {', '.join(SUPPORTED_MIME_TYPES)}"
        )
    if param is not None:
        if param.lower() != "transfer-syntax":
            raise _reject(f"mimeType parameter {_show(param)} is not supported; only transfer-syntax is")
        syntax = syntax.strip('"')
    accepted = SUPPORTED_MIME_TYPES[mime]
    if syntax not in accepted:
        if syntax is None:
            need = " or ".join(s for s in accepted if s)
            raise _reject(f"mimeType {mime} needs a transfer-syntax ({need})")
        if None in accepted and len(accepted) == 1:
            raise _reject(f"mimeType {mime} takes no transfer-syntax")
        raise _reject(
            f"transfer-syntax {_show(syntax)} is not supported for {mime} export; "
            f"supported: {', '.join(s for s in accepted if s)}"
        )
    return mime if syntax is None else f"{mime}; transfer-syntax={syntax}"


def filter_lines(paths: Iterable[str]) -> Iterator[str]:
    """Lines of a filter file (`filterConfig.resourcePathsGcsUri`): one path each, `\\n`-terminated.

    Paths from a QIDO-RS search come from the store and are not re-validated against the strict
    UID grammar, but a line break inside a path would forge another line, so it is refused.
    """
    for path in paths:
        if not path.startswith("/studies/") or "\n" in path or "\r" in path:
            raise ValueError(f"not a resource path: {_show(path)}")
        yield path + "\n"


def short_hash(namespace: str, value: str) -> str:
    """32 hex digits (128 bits) of SHA-256 over `namespace` and `value`."""
    return hashlib.sha256(f"{namespace}\x00{value}".encode()).hexdigest()[:32]


def dedup_key(request: ExportRequest, message_id: str) -> str:
    """A short, object-name-safe key: of the requestId when present, else of the message id.

    The two are hashed in separate namespaces, so a requestId that equals some message id does
    not collide with it.
    """
    if request.request_id is not None:
        return short_hash("requestId", request.request_id)
    if not message_id:
        raise InvalidEventError("the message has no messageId and the request no requestId")
    return short_hash("messageId", message_id)


# --- helpers -----------------------------------------------------------------------------------


def _reject(reason: str) -> InvalidExportRequestError:
    return InvalidExportRequestError(reason)


def _show(value: object, limit: int = 120) -> str:
    """repr() of a value, cut to `limit` characters so a reason never echoes a huge input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(value) if isinstance(value, str) else len(text)} characters)"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def decode_request_object(data: bytes) -> dict[str, Any]:
    """Message data as one JSON object, with the same input rules as an export request.

    Raises:
        InvalidExportRequestError: not UTF-8, not JSON, duplicate keys, too large, not an object.
    """
    return _decode_json_object(data)


def _decode_json_object(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray):
        raise _reject(f"message data must be bytes, got {type(data).__name__}")
    if not data:
        raise _reject("message data is empty; expected a JSON export request")
    if len(data) > MAX_REQUEST_BYTES:
        raise _reject(f"message data is {len(data)} bytes; at most {MAX_REQUEST_BYTES} are accepted")
    data = bytes(data)
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a byte order mark is harmless
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        raise _reject(f"message data is not UTF-8 (byte 0x{data[offset]:02x} at offset {offset})") from None
    try:
        body = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKeyError as exc:
        raise _reject(f"duplicate key {_show(exc.args[0], 40)} in the JSON object") from None
    except _ConstantError as exc:
        raise _reject(f"{exc.args[0]} is not valid JSON") from None
    except json.JSONDecodeError as exc:
        raise _reject(
            f"message data is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise _reject("message data is nested too deeply") from None
    if not isinstance(body, dict):
        raise _reject(f"message data must be a JSON object, got {_type_name(body)}")
    return body


class _DuplicateKeyError(ValueError):
    pass


class _ConstantError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _ConstantError(name)


def _require_str(body: Mapping[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str):
        raise _reject(f"{key} must be a string, got {_type_name(value)}")
    return value


def _split_gcs_uri(uri: str, what: str, *, allow_bucket_only: bool) -> tuple[str, list[str]]:
    """`gs://bucket/a/b/` -> ("bucket", ["a", "b"]); trailing slashes are dropped."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise _reject(f"{what} {_show(uri)} must start with gs://")
    bucket, _, path = uri[len("gs://") :].partition("/")
    _check_bucket(bucket, what)
    if _FORBIDDEN_IN_PATH.search(path):
        raise _reject(f"{what} {_show(uri)} contains a control character")
    if _WILDCARDS.search(path) or "#" in path:
        raise _reject(f"{what} {_show(uri)} contains a wildcard or '#'; give a literal path")
    path = path.rstrip("/")
    segments = path.split("/") if path else []
    for segment in segments:
        if segment in ("", ".", ".."):
            shown = "an empty" if not segment else f"a {segment!r}"
            raise _reject(f"{what} {_show(uri)} has {shown} path segment")
    if not segments and not allow_bucket_only:
        raise _reject(f"{what} {_show(uri)} names no object (expected gs://bucket/object)")
    return bucket, segments


def _check_bucket(bucket: str, what: str) -> None:
    """Cloud Storage bucket naming rules (3-63 characters, or up to 222 in dot-separated parts)."""
    problem = None
    if not bucket:
        problem = "has no bucket"
    elif _BUCKET_RE.fullmatch(bucket) is None:
        problem = (
            "has an invalid bucket name (lowercase letters, digits, '-', '_', '.'; "
            "starting and ending with a letter or digit; 3-222 characters)"
        )
    elif "." not in bucket and len(bucket) > 63:
        problem = "has a bucket name longer than 63 characters"
    elif any(not part or len(part) > 63 for part in bucket.split(".")):
        problem = "has a bucket name with an empty or over-long dot-separated part"
    elif _IPV4_RE.fullmatch(bucket) or bucket.startswith("goog") or "google" in bucket:
        problem = "has a bucket name that Cloud Storage does not allow (IP address, goog prefix, google)"
    if problem:
        raise _reject(f"{what} bucket {_show(bucket, 80)} {problem}")


def _parse_filter_uri(uri: str) -> str:
    bucket, segments = _split_gcs_uri(uri, "filterUri", allow_bucket_only=False)
    if uri.endswith("/"):
        raise _reject(f"filterUri {_show(uri)} ends with '/'; it must name an object")
    name = "/".join(segments)
    if len(name.encode()) > MAX_OBJECT_NAME_BYTES:
        raise _reject(f"filterUri object name is longer than {MAX_OBJECT_NAME_BYTES} bytes")
    return f"gs://{bucket}/{name}"


def _parse_resources(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _reject(f"resources must be an array of resource paths, got {_type_name(value)}")
    if not value:
        raise _reject(
            "resources is empty; leave out resources, filterUri and query to export the whole store"
        )
    fullmatch = _PATH_RE.fullmatch
    bad: list[int] = []
    for index, path in enumerate(value):
        # The fast path: one compiled regex per path; lengths only for the UIDs it found.
        match = fullmatch(path) if isinstance(path, str) else None
        if match is None or any(uid is not None and len(uid) > MAX_UID_LENGTH for uid in match.groups()):
            bad.append(index)
    if bad:
        index = bad[0]
        more = f" (and {len(bad) - 1} more invalid path(s))" if len(bad) > 1 else ""
        raise _reject(f"resources[{index}]: {_explain_path(value[index])}{more}")
    return tuple(dict.fromkeys(value))


def _explain_path(path: Any) -> str:
    """Why a resource path failed the fast check; only called for the first bad path."""
    expected = "expected /studies/UID[/series/UID[/instances/UID]]"
    if not isinstance(path, str):
        return f"must be a string, got {_type_name(path)}"
    shown = _show(path, 100)
    if not path:
        return f"is empty; {expected}"
    if "?" in path or "#" in path:
        return f"{shown} has a query string or fragment; {expected}"
    if path.endswith("/"):
        return f"{shown} ends with '/'; {expected}"
    if not path.startswith("/"):
        return f"{shown} does not start with '/'; {expected}"
    segments = path[1:].split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            kind = "an empty" if not segment else f"a {segment!r}"
            return f"{shown} has {kind} segment; {expected}"
    if len(segments) > 2 * len(_PATH_LEVELS):
        return f"{shown} has extra segments after the instance UID; {expected}"
    for position in range(0, len(segments), 2):
        level = _PATH_LEVELS[position // 2]
        if segments[position] != level:
            return f"{shown} has {_show(segments[position], 40)} where {level!r} belongs; {expected}"
        if position + 1 >= len(segments):
            return f"{shown} has no UID after {level!r}; {expected}"
        problem = uid_problem(segments[position + 1])
        if problem:
            return f"{shown}: the {level} UID {problem}"
    return f"{shown} is not a valid resource path; {expected}"  # pragma: no cover - defensive


def uid_problem(uid: str) -> str | None:
    """Why `uid` breaks DICOM PS3.5 9.1, or None when it is valid."""
    if len(uid) > MAX_UID_LENGTH:
        return f"is {len(uid)} characters long; at most {MAX_UID_LENGTH} are allowed"
    if not uid:
        return "is empty"
    if re.search(r"[^0-9.]", uid):
        return "contains characters other than digits and dots"
    for number, component in enumerate(uid.split("."), start=1):
        if not component:
            return f"has an empty component (number {number})"
        if len(component) > 1 and component[0] == "0":
            return f"has a leading zero in component {number} ({component[:20]!r})"
    if _UID_RE.fullmatch(uid) is None:  # pragma: no cover - the checks above are exhaustive
        return "is not a valid UID"
    return None


def _parse_query(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _reject(f"query must be an object of QIDO-RS matching keys, got {_type_name(value)}")
    if not value:
        raise _reject("query is empty; leave out resources, filterUri and query to export the whole store")
    params = []
    for key in sorted(value):
        if key not in QUERY_KEYS:
            raise _reject(f"query key {_show(key, 60)} is not supported; use {', '.join(QUERY_KEYS)}")
        raw = value[key]
        if not isinstance(raw, str):
            raise _reject(f"query.{key} must be a string, got {_type_name(raw)}")
        problem = _query_value_problem(key, raw)
        if problem:
            # Never echo the value: query values are DICOM tag values.
            raise _reject(f"query.{key} {problem}")
        params.append((key, raw))
    return tuple(params)


def _query_value_problem(key: str, value: str) -> str | None:
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing spaces"
    if "*" in value or "?" in value:
        return "contains a wildcard (* or ?); wildcards are not supported"
    if "\\" in value:
        return "contains a backslash; multiple values are not supported"
    if _FORBIDDEN_IN_PATH.search(value):
        return "contains a control character"
    if key == "StudyInstanceUID":
        problem = uid_problem(value)
        return f"is not a valid UID: it {problem}" if problem else None
    if key == "StudyDate":
        return _date_range_problem(value)
    if key == "PatientID":
        return "is longer than 64 characters" if len(value) > 64 else None
    if key == "AccessionNumber":
        return "is longer than 16 characters" if len(value) > 16 else None
    if key == "ModalitiesInStudy":
        if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", value):
            return "must be a modality code: 1-16 characters of A-Z, 0-9, '_' or space (for example CT)"
    return None


def _date_range_problem(value: str) -> str | None:
    expected = "must be YYYYMMDD, or a range YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD"
    low, sep, high = value.partition("-")
    if (sep and not low and not high) or "-" in high:
        return expected
    parsed: list[date | None] = []
    for part in (low, high):
        if not part:
            parsed.append(None)
            continue
        if not re.fullmatch(r"[0-9]{8}", part):
            return expected
        try:
            parsed.append(date(int(part[:4]), int(part[4:6]), int(part[6:])))
        except ValueError:
            return f"{expected}, with real calendar dates"
    if parsed[0] and parsed[1] and parsed[0] > parsed[1]:
        return "is a range whose start is after its end"
    return None
