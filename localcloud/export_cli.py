"""`dicom-events export ...`: publish one export request, wait for its completion event.

The request is built in contract form (docs/contracts.md, "Export request") and checked with the export
function's own parser (`functions.core.export_request.parse_export_request`) before it is sent, so a
malformed request is refused here with the same reason the function would give. The destination
allowlist is the function's business: a destination outside it comes back as a REJECTED event.

Every request carries a `requestId` (`cli-<uuid>` unless one is given); the command waits on a
private subscription (see `localcloud.connect`) for the event with that `requestId`. A requestId
that was used before starts no second export, so no new event comes: the command then looks for
the earlier event in the state bucket's `done/` records and reports that one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from functions.core.errors import InvalidExportRequestError
from functions.core.export_request import dedup_key, parse_export_request
from localcloud.connect import Connection
from localcloud.progress import Reporter, aligned

DEFAULT_TIMEOUT_SECONDS = 120.0
SUCCEEDED = "SUCCEEDED"
_POLL_SECONDS = 0.3
_DONE_SCAN_SECONDS = 2.0


class RequestError(ValueError):
    """The arguments do not make a valid export request; the message says why."""


def parse_query(pairs: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` strings to a dict; a key given twice or a pair without `=` is an error."""
    query: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RequestError(f"--query takes KEY=VALUE pairs, got {pair!r}")
        if key in query:
            raise RequestError(f"--query gives {key} twice")
        query[key] = value
    return query


def build_request(*, destination: str | None = None, resources: Sequence[str] | None = None,
                  filter_uri: str | None = None, query: Sequence[str] | None = None, sql: str | None = None,
                  mime_type: str | None = None, request_id: str | None = None,
                  storage_class: str | None = None, whole_store: bool = False) -> dict[str, Any]:
    """The export request message in contract form, validated; raises RequestError.

    With `storage_class` it is a storage-class change (`"action": "setStorageClass"`) instead of
    an export. `request_id` defaults to `cli-<uuid4 hex>`.
    """
    body: dict[str, Any] = {"requestId": request_id or f"cli-{uuid.uuid4().hex}"}
    if storage_class is not None:
        body["action"] = "setStorageClass"
        body["storageClass"] = storage_class
        if whole_store:
            body["wholeStore"] = True
    if destination is not None:
        body["destination"] = destination
    given = [name for name, value in (("--resources", resources), ("--filter-uri", filter_uri),
                                      ("--query", query), ("--sql", sql)) if value is not None]
    if len(given) > 1:
        raise RequestError(f"give one of --resources, --filter-uri, --query, --sql (got {' and '.join(given)})")
    if resources is not None:
        body["resources"] = list(resources)
    elif filter_uri is not None:
        body["filterUri"] = filter_uri
    elif query is not None:
        body["query"] = parse_query(query)
    elif sql is not None:
        body["sql"] = sql
    if mime_type is not None:
        body["mimeType"] = mime_type
    try:
        parse_export_request(json.dumps(body).encode())
    except InvalidExportRequestError as exc:
        raise RequestError(f"invalid export request: {exc.reason}") from None
    return body


@dataclass
class ExportResult:
    request: dict[str, Any]
    event: dict[str, Any] | None  # None: no event before the timeout
    seconds: float
    repeated: bool = False  # the requestId had been used before; `event` is the earlier one

    @property
    def state(self) -> str:
        return str(self.event.get("state")) if self.event else "TIMEOUT"

    @property
    def ok(self) -> bool:
        return self.state == SUCCEEDED


EXIT_OK = 0
EXIT_FAILED = 1  # the event is not SUCCEEDED
EXIT_PENDING = 3  # no completion event before the timeout
EXIT_NOTHING = 4  # --strict: SUCCEEDED, but the selection matched no instance


def matched_nothing(result: ExportResult) -> bool:
    """SUCCEEDED with zero instances: a selection (a typo'd resource path, say) that matched nothing."""
    counters = (result.event or {}).get("counters") or {}
    return result.state == SUCCEEDED and not counters.get("success") and not counters.get("failure")


def warnings_for(result: ExportResult) -> list[str]:
    """What a user should hear about even when the request succeeded."""
    if matched_nothing(result):
        return ["warning: the selection matched no instance (check the resource paths, query or SQL)"]
    return []


def exit_code(result: ExportResult, *, strict: bool = False) -> int:
    """The command's exit status: 0 SUCCEEDED, 1 any other state, 3 no event before the timeout,
    4 with `strict` when the selection matched nothing."""
    if result.event is None:
        return EXIT_PENDING
    if not result.ok:
        return EXIT_FAILED
    return EXIT_NOTHING if strict and matched_nothing(result) else EXIT_OK


def run_export(cloud: Connection, request: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
               reporter: Reporter | None = None) -> ExportResult:
    """Publishes `request` (built by `build_request`) and waits for its completion event."""
    parsed = parse_export_request(json.dumps(request).encode())
    key = dedup_key(parsed, "")
    repeated = cloud.gcs.read(cloud.state_bucket, cloud.state_path("exports", f"{key}.json")) is not None
    kind = "storageClass" if parsed.action == "setStorageClass" else "export"
    return publish_and_wait(cloud, request, kind=kind, repeated=repeated, timeout=timeout, reporter=reporter)


def publish_and_wait(cloud: Connection, request: dict[str, Any], *, kind: str, repeated: bool,
                     timeout: float = DEFAULT_TIMEOUT_SECONDS, reporter: Reporter | None = None) -> ExportResult:
    """Publishes `request` on the export-requests topic and waits for the `kind` event with its
    requestId; for a `repeated` requestId (no new event comes) the earlier one from `done/`."""
    reporter = reporter or Reporter.off()
    started = time.monotonic()
    request_id = str(request["requestId"])
    with cloud.event_stream() as stream:
        message_id = cloud.publish(cloud.deployment.export_requests_topic, json.dumps(request).encode())
        reporter.say(kind, f"request {request_id} published (message {message_id})")
        next_scan = started
        while True:
            for event in stream.pull():
                if event.get("requestId") == request_id and event.get("kind") == kind:
                    return ExportResult(request, event, time.monotonic() - started)
            now = time.monotonic()
            if repeated and now >= next_scan:
                earlier = find_done_event(cloud, request_id, kind)
                if earlier is not None:
                    return ExportResult(request, earlier, now - started, repeated=True)
                next_scan = now + _DONE_SCAN_SECONDS
            if now - started > timeout:
                return ExportResult(request, None, now - started, repeated=repeated)
            time.sleep(_POLL_SECONDS)


def find_done_event(cloud: Connection, request_id: str, kind: str = "export") -> dict[str, Any] | None:
    """The newest `kind` event with this requestId among the `done/` records, if any."""
    for blob in cloud.state_objects("done"):
        event = cloud.read_state(blob)
        if event is not None and event.get("requestId") == request_id and event.get("kind") == kind:
            return event
    return None


def timeout_json(result: ExportResult) -> dict[str, Any]:
    """`--json` when no event came in time: one object, so that a script always gets JSON."""
    return {"requestId": result.request["requestId"], "state": "TIMEOUT", "waitedSeconds": round(result.seconds, 1),
            "repeatedRequestId": result.repeated}


def render_result(result: ExportResult, label: str = "export", status_hint: str = "dicom-events status") -> list[str]:
    from localcloud.ingest import describe_event

    if result.event is None:
        return [aligned(label, f"no completion event for {result.request['requestId']} "
                               f"after {result.seconds:.0f} s (see: {status_hint})")]
    lines = []
    if result.repeated:
        lines.append(aligned(label, f"requestId {result.request['requestId']} was used before; "
                                    "its earlier event:"))
    lines.append(aligned("event", describe_event(result.event)))
    return lines
