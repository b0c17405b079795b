"""Management methods' logic: DICOM store resources (create / patch), list paging, metrics and
`setBlobStorageSettings`. The routes live in app.py; this module holds what they decide."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

from . import errors
from .body import bad_request
from .errors import invalid_argument
from .filters import FilterFileError, parse_filter_file
from .gcs import GcsClient, GcsError
from .notifications import Notifier
from .operations import OperationContext, OperationFailed, Worker
from .store import InstanceRow, Store
from .wildcards import split_gs_uri

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")
# DicomStore fields besides name and labels, kept as given (camelCase, validated by body.py).
STORE_CONFIG_FIELDS = ("notificationConfig", "notificationConfigs", "streamConfigs")
_TOPIC = re.compile(r"projects/[^/]+/topics/[^/]+")
_TOKEN_PREFIX = "offset:"


# --- paging --------------------------------------------------------------------------------------


def page_request(args: Any) -> tuple[int, int]:
    """(offset, page size) from pageToken / pageSize. Tokens are opaque to callers."""
    size_text = args.get("pageSize") or ""
    try:
        size = int(size_text) if size_text else DEFAULT_PAGE_SIZE
    except ValueError:
        raise invalid_argument(f"Invalid value at 'page_size' (TYPE_INT32), {size_text!r}") from None
    if size < 0:
        raise invalid_argument("page_size must not be negative")
    token = args.get("pageToken") or ""
    offset = 0
    if token:
        try:
            decoded = base64.urlsafe_b64decode(token.encode()).decode()
            if not decoded.startswith(_TOKEN_PREFIX):
                raise ValueError(token)
            offset = int(decoded.removeprefix(_TOKEN_PREFIX))
        except ValueError:
            raise invalid_argument(f"Invalid page token {token!r}") from None
    # Google: "If not specified, 100 is used. May not be larger than 1000."
    return offset, min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page(items: list[Any], offset: int, size: int, key: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    chunk = items[offset : offset + size]
    if chunk:
        body[key] = chunk
    if offset + size < len(items):
        body["nextPageToken"] = page_token(offset + size)
    return body


def page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{offset}".encode()).decode()


# --- DICOM store resources -----------------------------------------------------------------------


def store_resource(store: Store, name: str) -> dict[str, Any] | None:
    resource = store.get_dicom_store(name)
    if resource is None:
        return None
    resource.update(store.get_store_config(name))
    return resource


def checked_store_fields(body: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """(labels, config) of a DicomStore body, after the checks Google makes on them."""
    problems: list[tuple[str, str]] = []
    labels = body.get("labels", {})
    if len(labels) > 64:
        problems.append(("labels", "No more than 64 labels can be associated with a given store"))
    for key, value in labels.items():
        if not _label_key(key) or not _label_value(value):
            problems.append((f"labels[{key!r}]", f"Invalid label {key!r}: {value!r}"))
    legacy = body.get("notificationConfig") or {}
    if legacy.get("pubsubTopic") and not _TOPIC.fullmatch(legacy["pubsubTopic"]):
        problems.append(("notification_config.pubsub_topic", "pubsub_topic must be projects/{project}/topics/{topic}"))
    for i, config in enumerate(body.get("notificationConfigs", [])):
        if not _TOPIC.fullmatch(config.get("pubsubTopic", "")):
            problems.append(
                (
                    f"notification_configs[{i}].pubsub_topic",
                    "pubsub_topic is required: projects/{project}/topics/{topic}",
                )
            )
    destinations = [(c.get("bigqueryDestination") or {}).get("tableUri") for c in body.get("streamConfigs", [])]
    if len(destinations) != len(set(destinations)):
        problems.append(("stream_configs", "Each stream config must contain a unique destination"))
    if problems:
        raise bad_request(problems)
    return labels, {k: body[k] for k in STORE_CONFIG_FIELDS if k in body}


def _label_key(key: str) -> bool:
    # \p{Ll}\p{Lo}{0,62} as documented: a lower-case (or caseless) letter first.
    return 0 < len(key) <= 63 and key[0].isalpha() and not key[0].isupper() and _label_value(key[1:])


def _label_value(value: str) -> bool:
    # [\p{Ll}\p{Lo}\p{N}_-]{0,63}
    return len(value) <= 63 and all((c.isalnum() and not c.isupper()) or c in "_-" for c in value)


def patched_store(current: dict[str, Any], body: dict[str, Any], update_mask: str) -> dict[str, Any]:
    """`current` with the fields of `update_mask` taken from `body` (absent there = cleared)."""
    paths = [p.strip() for p in update_mask.split(",") if p.strip()]
    if not paths:
        raise invalid_argument("updateMask is required: the DicomStore fields to update")
    updated = {k: v for k, v in current.items() if k != "name"}
    for path in paths:
        parts = [_camel(p) for p in path.split(".")]
        if parts[0] not in ("labels", *STORE_CONFIG_FIELDS) or (len(parts) > 1 and parts[0] != "notificationConfig"):
            raise invalid_argument(f"updateMask: field {path!r} cannot be updated")
        if len(parts) == 1:
            if parts[0] in body:
                updated[parts[0]] = body[parts[0]]
            else:
                updated.pop(parts[0], None)
            continue
        source = body.get(parts[0], {})
        target = dict(updated.get(parts[0]) or {})
        if parts[1] in source:
            target[parts[1]] = source[parts[1]]
        else:
            target.pop(parts[1], None)
        updated[parts[0]] = target
    return updated


def _camel(name: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def proto3_json(value: Any) -> Any:
    """How Google prints a resource: scalar fields at their default (false, "", 0) and empty lists
    are left out; messages that are set stay, even when empty (`"notificationConfig": {}`)."""
    if isinstance(value, dict):
        return {k: proto3_json(v) for k, v in value.items() if not _is_default(v)}
    if isinstance(value, list):
        return [proto3_json(v) for v in value]
    return value


def _is_default(value: Any) -> bool:
    if isinstance(value, dict):
        return False  # a set message stays, even when empty
    return value is False or value == "" or value == [] or (isinstance(value, int | float) and value == 0)


# --- metrics -------------------------------------------------------------------------------------


def metrics_json(counts: dict[str, int], *, with_studies: bool = True, with_series: bool = True) -> dict[str, str]:
    """int64 fields as strings, zero values left out (proto3 JSON)."""
    fields = [
        ("studyCount", "studies", with_studies),
        ("seriesCount", "series", with_series),
        ("instanceCount", "instances", True),
        ("structuredStorageSizeBytes", "structured", True),
        ("blobStorageSizeBytes", "blob", True),
    ]
    return {name: str(counts[key]) for name, key, wanted in fields if wanted and counts[key]}


# --- setBlobStorageSettings ----------------------------------------------------------------------


def parse_blob_settings(body: dict[str, Any], store_level: bool) -> tuple[str, str | None]:
    """(storage class, filter file URI) of a SetBlobStorageSettingsRequest."""
    storage_class = (body.get("blobStorageSettings") or {}).get("blobStorageClass")
    if storage_class in (None, "BLOB_STORAGE_CLASS_UNSPECIFIED"):
        raise bad_request(
            [("blob_storage_settings.blob_storage_class", "blob_storage_class is required: STANDARD, NEARLINE, ...")]
        )
    filter_uri = (body.get("filterConfig") or {}).get("resourcePathsGcsUri")
    if filter_uri and not store_level:
        raise invalid_argument("filter_config requires resource to be a DICOM store, not a study")
    if filter_uri:
        split_gs_uri(filter_uri, "filterConfig.resourcePathsGcsUri")
    return storage_class, filter_uri or None


def blob_settings_worker(
    store: Store,
    gcs: GcsClient,
    notifier: Notifier,
    store_name: str,
    study: str | None,
    storage_class: str,
    filter_uri: str | None,
) -> Worker:
    def run(ctx: OperationContext) -> None:
        rows = store.instances(store_name, study)
        if filter_uri:
            rows = list(_filtered(rows))
        ctx.set_pending(len(rows))
        for chunk_start in range(0, len(rows), 200):
            ctx.checkpoint()
            chunk = rows[chunk_start : chunk_start + 200]
            changed = store.set_storage_class(store_name, [r.sop for r in chunk], storage_class)
            for row in chunk:
                if row.sop in changed:
                    notifier.storage_class_changed(
                        store_name, row.study, row.series, row.sop, row.modality, changed[row.sop], storage_class
                    )
                ctx.succeeded()

    def _filtered(rows: list[InstanceRow]) -> Iterable[InstanceRow]:
        assert filter_uri is not None
        bucket, name = split_gs_uri(filter_uri, "filterConfig.resourcePathsGcsUri")
        try:
            paths = parse_filter_file(gcs.download(bucket, name).decode("utf-8"))
        except GcsError as exc:
            code = errors.RPC_NOT_FOUND if exc.status == 404 else errors.RPC_UNAVAILABLE
            raise OperationFailed(code, f"cannot read filter file {filter_uri}: {exc}") from None
        except (UnicodeDecodeError, FilterFileError) as exc:
            raise OperationFailed(errors.RPC_INVALID_ARGUMENT, f"filter file {filter_uri}: {exc}") from None
        return (r for r in rows if any(p.selects(r.study, r.series, r.sop) for p in paths))

    return run
