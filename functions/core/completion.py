"""Completion events (docs/contracts.md, contracts/completion-event.v1.schema.json): pure, no I/O.

`build_completion_event` turns a finished operation (the JSON of `operations.get`) and the record
we kept for it into `(data, attributes)` for Pub/Sub; `rejected_event` does the same for an export
request that was refused; `parse_operation` gives the poller the state without building an event.

Decisions:
- `eventId` is `op-<operation id>` (the last segment of the operation name; a hash of the whole
  name if that segment holds characters outside `A-Z a-z 0-9 _ -`), or `rejected-<hash>` of the
  Pub/Sub message id (else of the requestId). The same inputs always give the same bytes, except
  for `rejected_event`, whose times come from `now`.
- `state`: `error.code == 1` -> CANCELLED; any other `error` -> FAILED, even when counters show
  that some instances landed (an import that stopped half-way is a failure to act on; its
  counters still travel with the event); no error and `failure > 0` -> SUCCEEDED_WITH_ERRORS;
  else SUCCEEDED. An `error` without a code (proto3 omits 0) or with a garbage code is FAILED.
- Counters come out as ints. The API sends int64 as strings and leaves out zeros; a missing,
  negative or unparsable counter is 0.
- `objects` (import, redrive) counts the job's objects as the poller judged them
  (functions.imports.failed_objects): landed + failed + undecided = total; `countersAgree` says whether
  that matches the API's counters. `failures` and `undecidedObjects` give each named object's
  reason, under the same cap as `failedObjects` (decision 0721).
- Times are passed through when they are RFC 3339; `durationSeconds` is `endTime - createTime`
  rounded to milliseconds, left out if either is missing or unparsable, never negative.
- Optional keys are left out rather than null. Key order is fixed (the order of docs/contracts.md), JSON
  is compact UTF-8 (`ensure_ascii=False`), so identical inputs give identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from functions.core.export_request import is_valid_request_id, short_hash

# redrive: an import of a receipt's objects (functions.exports.redrive); storageClass: setBlobStorageSettings.
KINDS = ("import", "export", "redrive", "storageClass")
SUCCEEDED = "SUCCEEDED"
SUCCEEDED_WITH_ERRORS = "SUCCEEDED_WITH_ERRORS"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
REJECTED = "REJECTED"
CANCELLED_CODE = 1  # google.rpc.Code.CANCELLED
FAILED_PRECONDITION_CODE = 9  # google.rpc.Code.FAILED_PRECONDITION
UNKNOWN_CODE = 2  # google.rpc.Code.UNKNOWN, for an error whose code is not an integer

MAX_ERROR_MESSAGE_CHARS = 2000
MAX_REASON_CHARS = 2000
MAX_ECHOED_CHARS = 1024  # destination / source strings copied from a request
_METHOD_KINDS = (("ImportDicomData", "import"), ("ExportDicomData", "export"),
                 ("SetBlobStorageSettings", "storageClass"))
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
_KEY_ORDER = (
    "eventId", "kind", "state", "operation", "dicomStore", "source", "destination", "requestId",
    "redriveOf", "counters", "objects", "createTime", "endTime", "durationSeconds", "logsUrl", "error",
    "failedObjects", "failedObjectsTotal", "failures", "undecidedObjects", "undecidedObjectsTotal", "reason",
)  # fmt: skip


@dataclass(frozen=True)
class TrackedOperation:
    """What our code keeps about an operation it started (`operations/{ID}.json`)."""

    name: str  # projects/P/locations/L/datasets/D/operations/ID
    kind: str | None  # "import" | "export"; None: derived from metadata.apiMethodName
    dicom_store: str
    request_id: str | None = None  # export requestId or import batch id
    source: str | None = None  # import: the gcsSource.uri
    destination: str | None = None  # export: the uriPrefix
    failed_objects: tuple[str, ...] = ()  # import: objects that did not land (may be partial)
    failed_objects_total: int = 0  # how many did not land in all
    redrive_of: str | None = None  # redrive: the operation whose receipt it re-imports
    # import: {"object", "reason", "message"} per failed object (the order of failed_objects) and
    # per undecided one; None: the objects were not accounted (no manifest)
    failures: tuple[dict[str, str], ...] = ()
    undecided: tuple[dict[str, str], ...] = ()
    objects: ObjectCounts | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "dicomStore": self.dicom_store}
        for key, value in (
            ("requestId", self.request_id),
            ("source", self.source),
            ("destination", self.destination),
            ("redriveOf", self.redrive_of),
        ):
            if value is not None:
                out[key] = value
        if self.failed_objects:
            out["failedObjects"] = list(self.failed_objects)
        if self.failed_objects_total:
            out["failedObjectsTotal"] = self.failed_objects_total
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackedOperation:
        """Inverse of `to_dict`. Raises KeyError/TypeError/ValueError on a malformed record."""
        failed = data.get("failedObjects") or []
        if not isinstance(failed, list) or not all(isinstance(x, str) for x in failed):
            raise ValueError("failedObjects must be a list of strings")
        return cls(
            name=str(data["name"]),
            kind=data.get("kind"),
            dicom_store=str(data["dicomStore"]),
            request_id=data.get("requestId"),
            source=data.get("source"),
            destination=data.get("destination"),
            failed_objects=tuple(failed),
            failed_objects_total=int(data.get("failedObjectsTotal") or 0),
            redrive_of=data.get("redriveOf"),
        )


@dataclass(frozen=True)
class ObjectCounts:
    """The objects of an import job (its manifest): each landed, failed or undecided."""

    total: int
    landed: int
    failed: int
    undecided: int
    held_back: int = 0  # redrive: failed objects it did not import again (their reason still holds)

    def to_dict(self, counters: Counters) -> dict[str, Any]:
        out: dict[str, Any] = {"total": self.total, "landed": self.landed, "failed": self.failed,
                               "undecided": self.undecided}
        if self.held_back:
            out["heldBack"] = self.held_back
        out["countersAgree"] = (self.undecided == 0 and self.landed == counters.success
                                and self.failed - self.held_back == counters.failure)
        return out


@dataclass(frozen=True)
class Counters:
    success: int = 0
    failure: int = 0
    pending: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"success": self.success, "failure": self.failure, "pending": self.pending}


@dataclass(frozen=True)
class OperationError:
    code: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class OperationStatus:
    """The parts of an `Operation` the poller and the completion event need."""

    name: str
    done: bool
    state: str | None  # None while not done; else SUCCEEDED / SUCCEEDED_WITH_ERRORS / FAILED / CANCELLED
    counters: Counters = field(default_factory=Counters)
    api_method_name: str | None = None
    kind: str | None = None  # from apiMethodName; None if it names neither import nor export
    create_time: str | None = None  # RFC 3339, as the API sent it
    end_time: str | None = None
    duration_seconds: float | None = None
    logs_url: str | None = None
    error: OperationError | None = None


def parse_operation(op: Mapping[str, Any]) -> OperationStatus:
    """Reads an `Operation` JSON object leniently: garbage fields become defaults, never a crash.

    Raises:
        ValueError: `op` is not a JSON object.
    """
    if not isinstance(op, Mapping):
        raise ValueError(f"an operation must be a JSON object, got {type(op).__name__}")
    metadata = op.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    raw_counter = metadata.get("counter")
    raw_counter = raw_counter if isinstance(raw_counter, Mapping) else {}
    counters = Counters(
        success=_counter(raw_counter.get("success")),
        failure=_counter(raw_counter.get("failure")),
        pending=_counter(raw_counter.get("pending")),
    )
    method = metadata.get("apiMethodName")
    method = method if isinstance(method, str) and method else None
    create_time = _rfc3339(metadata.get("createTime"))
    end_time = _rfc3339(metadata.get("endTime"))
    duration = None
    if create_time and end_time:
        seconds = (_parse_time(end_time) - _parse_time(create_time)).total_seconds()
        duration = round(max(seconds, 0.0), 3)
    logs_url = metadata.get("logsUrl")
    error = _error(op.get("error"))
    done = op.get("done") is True
    name = op.get("name")
    return OperationStatus(
        name=name if isinstance(name, str) else "",
        done=done,
        state=_state(error, counters) if done else None,
        counters=counters,
        api_method_name=method,
        kind=kind_from_method(method),
        create_time=create_time,
        end_time=end_time,
        duration_seconds=duration,
        logs_url=logs_url if isinstance(logs_url, str) and logs_url else None,
        error=error,
    )


def kind_from_method(api_method_name: str | None) -> str | None:
    """`...DicomService.ImportDicomData` -> "import" (matched by suffix: the prefix is unconfirmed)."""
    if not api_method_name:
        return None
    for suffix, kind in _METHOD_KINDS:
        if api_method_name.endswith(suffix):
            return kind
    return None


def event_id_for_operation(operation_name: str) -> str:
    """`op-<operation id>`: the same operation always gives the same id."""
    op_id = operation_name.rstrip("/").rsplit("/", 1)[-1]
    if _SAFE_ID.fullmatch(op_id):
        return f"op-{op_id}"
    return "op-" + hashlib.sha256(operation_name.encode("utf-8", "replace")).hexdigest()[:32]


def completion_payload(
    op: Mapping[str, Any], record: TrackedOperation, *, failed_objects_cap: int = 100
) -> dict[str, Any]:
    """The event as a dict in contract key order (see `build_completion_event`)."""
    status = parse_operation(op)
    if not status.done:
        raise ValueError(f"operation {record.name} is not done; there is nothing to report yet")
    kind = record.kind if record.kind in KINDS else status.kind
    if kind is None:
        raise ValueError(
            f"operation {record.name}: kind {record.kind!r} and apiMethodName "
            f"{status.api_method_name!r} name neither import nor export"
        )
    event: dict[str, Any] = {
        "eventId": event_id_for_operation(record.name),
        "kind": kind,
        "state": status.state,
        "operation": record.name,
        "dicomStore": record.dicom_store,
        "source": _echo(record.source) if kind in ("import", "redrive") else None,
        "destination": _echo(record.destination) if kind == "export" else None,
        "requestId": record.request_id or None,
        "redriveOf": record.redrive_of if kind == "redrive" else None,
        "counters": status.counters.to_dict(),
        "objects": (record.objects.to_dict(status.counters)
                    if record.objects is not None and kind in ("import", "redrive") else None),
        "createTime": status.create_time,
        "endTime": status.end_time,
        "durationSeconds": status.duration_seconds,
        "logsUrl": status.logs_url,
        "error": status.error.to_dict() if status.error else None,
    }
    total = max(record.failed_objects_total, len(record.failed_objects))
    if total:
        if record.failed_objects and failed_objects_cap > 0:
            event["failedObjects"] = list(record.failed_objects[:failed_objects_cap])
        event["failedObjectsTotal"] = total
        if record.failures and failed_objects_cap > 0:
            event["failures"] = [dict(f) for f in record.failures[:failed_objects_cap]]
    if record.undecided and kind in ("import", "redrive"):
        if failed_objects_cap > 0:
            event["undecidedObjects"] = [dict(f) for f in record.undecided[:failed_objects_cap]]
        event["undecidedObjectsTotal"] = len(record.undecided)
    return _ordered(event)


def build_completion_event(
    op: Mapping[str, Any], record: TrackedOperation, *, failed_objects_cap: int = 100
) -> tuple[bytes, dict[str, str]]:
    """The completion event of a finished operation: `(data, attributes)` for Pub/Sub.

    Args:
        op: the `Operation` JSON from `operations.get`; must have `"done": true`.
        record: what we tracked for it; `record.kind` wins over `apiMethodName`.
        failed_objects_cap: at most this many names go into `failedObjects`.

    Raises:
        ValueError: the operation is not done, or its kind cannot be told.
    """
    return _encode(completion_payload(op, record, failed_objects_cap=failed_objects_cap))


def rejected_event(
    reason: str,
    *,
    request_id: str | None,
    message_id: str | None,
    destination: str | None,
    dicom_store: str,
    now: datetime,
    kind: str = "export",
) -> tuple[bytes, dict[str, str]]:
    """The `REJECTED` event of an export (or redrive) request that broke the contract.

    `eventId` is `rejected-<hash>` of the Pub/Sub message id (a redelivered message yields the
    same id, a new message with the same requestId a new one: it may be rejected for another
    reason), or of the requestId when there is no message id. An invalid requestId is not echoed.
    `createTime` and `endTime` are both `now` (the moment of the rejection).
    """
    if not is_valid_request_id(request_id):
        request_id = None
    if message_id:
        key = short_hash("messageId", message_id)
    elif request_id:
        key = short_hash("requestId", request_id)
    else:
        raise ValueError("a rejected event needs a valid request_id or a message_id")
    stamp = _format_time(now)
    event = _ordered(
        {
            "eventId": f"rejected-{key}",
            "kind": kind,
            "state": REJECTED,
            "dicomStore": dicom_store,
            "destination": _echo(destination),
            "requestId": request_id,
            "createTime": stamp,
            "endTime": stamp,
            "reason": _truncate(reason, MAX_REASON_CHARS),
        }
    )
    return _encode(event)


def redrive_noop_event(
    reason: str, *, request_id: str | None, message_id: str, redrive_of: str, dicom_store: str, now: datetime,
    held: Sequence[Mapping[str, str]] = (), failed_objects_cap: int = 100,
) -> tuple[bytes, dict[str, str]]:
    """The event of a redrive that had nothing to import: zero counters, `reason`.

    SUCCEEDED when every object of the receipt is stored; FAILED when objects were held back
    (`held`: their `{object, reason, message}`, named in `failedObjects` and `failures`): nothing
    was imported, and those files are still not in the store.
    `eventId` is `redrive-<hash>` of the Pub/Sub message id, so a redelivery repeats it.
    """
    stamp = _format_time(now)
    named = list(held)[:failed_objects_cap]
    event = _ordered({
        "eventId": f"redrive-{short_hash('messageId', message_id)}",
        "kind": "redrive",
        "state": FAILED if held else SUCCEEDED,
        "dicomStore": dicom_store,
        "requestId": request_id if is_valid_request_id(request_id) else None,
        "redriveOf": _echo(redrive_of),
        "counters": Counters().to_dict(),
        "createTime": stamp,
        "endTime": stamp,
        # FAILED_PRECONDITION: the files must be fixed (or the stored instance deleted) first.
        "error": {"code": FAILED_PRECONDITION_CODE, "message": f"{len(held)} objects held back; see failures"}
        if held else None,
        "failedObjects": [f["object"] for f in named] or None,
        "failedObjectsTotal": len(held) or None,
        "failures": [dict(f) for f in named] or None,
        "reason": _truncate(reason, MAX_REASON_CHARS),
    })
    return _encode(event)


# --- helpers -----------------------------------------------------------------------------------


def _state(error: OperationError | None, counters: Counters) -> str:
    if error is not None:
        return CANCELLED if error.code == CANCELLED_CODE else FAILED
    return SUCCEEDED_WITH_ERRORS if counters.failure > 0 else SUCCEEDED


def _counter(value: Any) -> int:
    """An int64 counter as the API sends it (a string, or absent when 0); garbage -> 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and re.fullmatch(r"\s*\+?[0-9]{1,19}\s*", value):
        return int(value)
    return 0


def _error(value: Any) -> OperationError | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return OperationError(UNKNOWN_CODE, _truncate(str(value), MAX_ERROR_MESSAGE_CHARS))
    code = value.get("code", 0)
    if isinstance(code, bool) or not isinstance(code, int | str):
        code = UNKNOWN_CODE
    elif isinstance(code, str):
        code = int(code) if re.fullmatch(r"-?[0-9]{1,10}", code) else UNKNOWN_CODE
    message = value.get("message")
    message = message if isinstance(message, str) else ""
    return OperationError(code, _truncate(message, MAX_ERROR_MESSAGE_CHARS))


def _parse_time(text: str) -> datetime:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text[:40]!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if offset in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    micros = int((fraction or "0").ljust(6, "0")[:6])
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tz)


def _rfc3339(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        _parse_time(value)
    except ValueError:
        return None
    return value


def _format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _echo(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return _truncate(value, MAX_ECHOED_CHARS)


def _ordered(event: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(event) - set(_KEY_ORDER)
    if unknown:  # pragma: no cover - a programming error
        raise AssertionError(f"keys outside the contract: {sorted(unknown)}")
    return {key: event[key] for key in _KEY_ORDER if event.get(key) is not None}


def _encode(event: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = text.encode("utf-8", "replace")  # a lone surrogate from a request becomes "?"
    attributes = {
        "kind": str(event["kind"]),
        "state": str(event["state"]),
        "dicomStore": str(event["dicomStore"]),
        "eventId": str(event["eventId"]),
    }
    return data, attributes
