"""Redrive: re-import exactly the objects of a failed import's receipt that are still not in the store.

Each object the receipt names (failed or undecided) is judged again as the poller judges it
(functions.imports.failed_objects): one whose own instance is stored now is left alone; one that would
fail the same way again (a UID conflict with the stored instance, a file still not DICOM or
unparseable) is held back: not imported, but named with its reason in the redrive's completion
event, so the user knows to delete the stored instance or fix the file first.

A message on the export-requests topic, `{"action": "redrive", "receipt": "...", "requestId": "..."}`,
names a receipt (`receipts/{operation id}.json`, written by the poller for an import with failed
objects). The objects still missing from the store are staged (server-side copies of their
current generation, as the window leader stages uploads) and imported with one job through the
same queue and LRO slots as uploads. Its completion event has kind `redrive` and `redriveOf` set
to the original operation. When every object is in the store already, nothing starts and a
SUCCEEDED `redrive` event with zero counters says why. A repeated request (same requestId, or the
same message redelivered) starts nothing new.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.core.completion import redrive_noop_event, rejected_event
from functions.core.errors import InvalidExportRequestError
from functions.core.events import PubsubMessage
from functions.core.export_request import decode_request_object, is_valid_request_id, short_hash
from functions.core.refusal import refusal_reason
from functions.gcp.clients import EventPublisher, HealthcareApi, ObjectStore
from functions.gcp.retry import classify
from functions.imports.failed_objects import (
    FAILED,
    LANDED,
    MESSAGES,
    NOT_DICOM,
    UID_CONFLICT,
    UNPARSEABLE,
    FailedObjectFinder,
    Fate,
)
from functions.imports.job_queue import Job, JobQueue
from functions.imports.window_batcher import Upload, WindowBatcher
from functions.log import fields
from functions.settings import Settings

if TYPE_CHECKING:
    from functions.wiring import Deps

logger = logging.getLogger(__name__)

ACTION = "redrive"
FIELDS = ("action", "receipt", "requestId", "part")
# Objects one redrive request checks and stages: what one function run finishes well inside its
# timeout (a listing and a ranged read per object, copies in rounds). A larger receipt is redriven
# in parts (`"part": k`), one request each (docs/decisions/0880).
MAX_REDRIVE_OBJECTS = 500
# What a receipt reference may be: an operation id, the completion event's eventId (`op-ID`), a
# full operation name, or the receipt object (`receipts/ID.json`, optionally as a gs:// URI).
_OPERATION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_RECEIPT_REF = re.compile(
    r"^(?:gs://[^/]+/(?:.*/)?receipts/(?P<object>[^/]+)\.json"
    r"|(?:.*/)?receipts/(?P<path>[^/]+)\.json"
    r"|projects/[^/]+/locations/[^/]+/datasets/[^/]+/operations/(?P<name>[^/]+)"
    r"|op-(?P<event>[^/]+)"
    r"|(?P<bare>[^/]+))$"
)


@dataclass(frozen=True)
class RedriveRequest:
    operation_id: str  # the failed import's operation id: its receipt is receipts/{id}.json
    request_id: str | None = None
    part: int | None = None  # 1-based: objects (part-1)*MAX_REDRIVE_OBJECTS .. part*MAX_REDRIVE_OBJECTS-1


def is_redrive(data: bytes) -> bool:
    """True when the message asks for a redrive (`"action": "redrive"`); cheap, never raises."""
    if b'"action"' not in data:
        return False
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(body, dict) and body.get("action") == ACTION


def parse_redrive_request(data: bytes) -> RedriveRequest:
    """Validates a redrive request strictly.

    Raises:
        InvalidExportRequestError: unknown fields, a missing or malformed receipt, a bad requestId.
    """
    body = decode_request_object(data)
    unknown = sorted(key for key in body if key not in FIELDS)
    if unknown:
        raise InvalidExportRequestError(f"unknown field(s) {', '.join(map(repr, unknown[:5]))} in a redrive "
                                        f"request; allowed fields: {', '.join(FIELDS)}")
    if body.get("action") != ACTION:
        raise InvalidExportRequestError(f"action must be {ACTION!r}")
    request_id = body.get("requestId")
    if request_id is not None and not is_valid_request_id(request_id):
        raise InvalidExportRequestError("requestId must be 1-256 characters of A-Z a-z 0-9 . _ - :")
    receipt = body.get("receipt")
    if not isinstance(receipt, str) or not receipt:
        raise InvalidExportRequestError("receipt is required: an operation id, its event id (op-ID), "
                                        "or the receipt object receipts/ID.json")
    part = body.get("part")
    if part is not None and (isinstance(part, bool) or not isinstance(part, int) or not 1 <= part <= 100_000):
        raise InvalidExportRequestError("part must be an integer from 1 (the receipt's objects are redriven "
                                        f"{MAX_REDRIVE_OBJECTS} at a time)")
    return RedriveRequest(operation_id_of(receipt), request_id, part)


def operation_id_of(receipt: str) -> str:
    """The operation id a receipt reference names (see `_RECEIPT_REF`)."""
    found = _RECEIPT_REF.match(receipt.strip())
    operation_id = next((v for v in (found.groupdict().values() if found else ()) if v), None)
    if operation_id is None or not _OPERATION_ID.fullmatch(operation_id):
        raise InvalidExportRequestError(f"receipt {receipt[:120]!r} names no operation id "
                                        "(expected ID, op-ID, an operation name or receipts/ID.json)")
    return operation_id


# Reasons a redrive does not import an object again: the same bytes would fail the same way.
HELD_REASONS = (UID_CONFLICT, NOT_DICOM, UNPARSEABLE)


def _receipt_objects(receipt: dict[str, Any]) -> list[str]:
    """Every object a receipt names: the failed ones, then the undecided ones, each once."""
    undecided = [u.get("object") for u in receipt.get("undecidedObjects") or [] if isinstance(u, dict)]
    seen: dict[str, None] = {}
    for uri in [*(receipt.get("failedObjects") or []), *undecided]:
        if isinstance(uri, str) and uri.startswith("gs://"):
            seen.setdefault(uri, None)
    return list(seen)


def nothing_reason(listed: int, gone: list[str], held: list[Fate]) -> str:
    """Why a redrive starts nothing, and what to do about the objects it held back."""
    stored = listed - len(gone) - len(held)
    if stored == listed:
        return f"all {listed} objects of the receipt are in the store; nothing to redrive"
    parts = [f"{stored} of the receipt's {listed} objects are in the store"]
    if gone:
        parts.append(f"{len(gone)} no longer exist in Cloud Storage")
    for reason in HELD_REASONS:
        names = [f.uri for f in held if f.reason == reason]
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{len(names)} held back as {reason} ({shown}): {MESSAGES[reason]}")
    return "; ".join(parts) + "; nothing to redrive"


@dataclass(frozen=True)
class RedriveOutcome:
    action: str  # started | queued | nothing | duplicate | rejected
    detail: str = ""


class Redriver:
    """Handles one redrive request. Thread-safe; holds no per-request state."""

    @classmethod
    def from_deps(cls, deps: Deps) -> Redriver:
        return cls(deps.settings, deps.gcs, deps.healthcare, deps.queue, deps.batcher, deps.publisher)

    def __init__(self, settings: Settings, gcs: ObjectStore, healthcare: HealthcareApi, queue: JobQueue,
                 batcher: WindowBatcher, publisher: EventPublisher, clock: Callable[[], float] = time.time) -> None:
        self._s = settings
        self._gcs = gcs
        self._queue = queue
        self._batcher = batcher
        self._publisher = publisher
        self._finder = FailedObjectFinder(gcs, healthcare)
        self._clock = clock

    def handle(self, message: PubsubMessage) -> RedriveOutcome:
        sent = message.publish_time.timestamp() if message.publish_time else self._clock()
        if self._clock() - sent > self._s.max_event_age_seconds:
            return self._reject(message, None, "the request is older than DICOM_MAX_EVENT_AGE_SECONDS "
                                               f"({self._s.max_event_age_seconds:.0f} s)")
        try:
            request = parse_redrive_request(message.data)
        except InvalidExportRequestError as exc:
            return self._reject(message, None, exc.reason)
        receipt = self._gcs.read(self._s.state_bucket, self._s.state_path("receipts", f"{request.operation_id}.json"))
        if receipt is None:
            return self._reject(message, request.request_id,
                                f"no receipt for operation {request.operation_id}: only imports with objects that "
                                "did not land have one")
        original = str(receipt.data.get("operation") or request.operation_id)
        key = short_hash("requestId", request.request_id) if request.request_id \
            else short_hash("messageId", message.message_id)
        claimed_at, retaken = self._claim(key, message, request)
        if claimed_at is None:
            logger.info("repeated redrive request: nothing new starts",
                        extra=fields(request_id=request.request_id, message_id=message.message_id))
            return RedriveOutcome("duplicate")
        submitted: list[bool] = []
        try:
            return self._run(message, request, receipt.data, original, key, claimed_at, retaken, submitted)
        except Exception as exc:
            fault = classify(exc)
            if fault.retry or submitted:
                raise  # the claim stays ours (the redelivery retakes it), or the job is in the queue
            # A 403, a missing bucket, a 400: no redelivery helps. Free the requestId, say why once.
            self._gcs.delete(self._s.state_bucket, self._claim_path(key))
            return self._reject(message, request.request_id, refusal_reason(fault))

    def _run(self, message: PubsubMessage, request: RedriveRequest, receipt: dict[str, Any], original: str,
             key: str, claimed_at: float, retaken: bool, submitted: list[bool]) -> RedriveOutcome:
        stamp = datetime.fromtimestamp(claimed_at, UTC).strftime("%Y%m%dT%H%M%S%fZ")
        job_id = f"{stamp}-redrive-{key[:16]}"
        if retaken and any(t.job.job_id == job_id for t in self._queue.tracked()):
            # An earlier attempt of this message started the import and died before saying so.
            self._record(key, message, request, claimed_at, job_id)
            return RedriveOutcome("duplicate", job_id)
        listed = _receipt_objects(receipt)
        parts = max(1, -(-len(listed) // MAX_REDRIVE_OBJECTS))
        if request.part is None and parts > 1 or (request.part or 1) > parts:
            self._gcs.delete(self._s.state_bucket, self._claim_path(key))
            asked = f"part {request.part}" if request.part else "the whole receipt"
            return self._reject(message, request.request_id,
                                f"the receipt lists {len(listed)} objects and one redrive takes at most "
                                f"{MAX_REDRIVE_OBJECTS}; {asked} cannot be redriven: send parts 1 to {parts} "
                                '("part": 1, ...), one request each')
        if request.part is not None:
            first = (request.part - 1) * MAX_REDRIVE_OBJECTS
            listed = listed[first:first + MAX_REDRIVE_OBJECTS]
        fates = self._finder.account([{"uri": uri} for uri in listed], api_failures=None).fates
        # A UID conflict, a file that is still not DICOM or unparseable would only fail again:
        # those stay named (held back, with their reason) and are not imported.
        held = [f for f in fates if f.outcome == FAILED and f.reason in HELD_REASONS]
        uploads, gone = self._current([f.uri for f in fates if f.outcome != LANDED and f not in held])
        if not uploads:
            # Nothing started: free the request id, so the same request later gets the same answer.
            self._gcs.delete(self._s.state_bucket, self._claim_path(key))
            return self._nothing(message, request, original, nothing_reason(len(listed), gone, held), held)
        # Deterministic names: a retry after a crash stages onto the same copies and writes the
        # same job, which the queue takes only once.
        staging_prefix = self._s.state_path("staging", job_id) + "/"
        entries = self._batcher.stage(uploads, staging_prefix)
        manifest = self._s.state_path("manifests", f"{job_id}.json")
        held_entries = [{"uri": f.uri, "held": f.reason} for f in held]
        self._gcs.write(self._s.state_bucket, manifest, {"objects": [*entries, *held_entries]})
        job = Job(job_id=job_id, kind="import", request_id=request.request_id or message.message_id,
                  created_at=claimed_at, import_uri=f"gs://{self._s.staging}/{staging_prefix}**",
                  manifest=manifest, object_count=len(entries), staging_prefix=staging_prefix,
                  message_id=message.message_id, redrive_of=original, claim=self._claim_path(key))
        submitted.append(True)
        result = self._queue.submit(job)
        self._record(key, message, request, claimed_at, job_id)
        logger.info("redrive accepted", extra=fields(redrive_of=original, job=job_id, objects=len(entries),
                                                     gone=len(gone), held_back=len(held), operation=result.started,
                                                     queued=result.queued))
        return RedriveOutcome("started" if result.started else "queued", result.started or job_id)

    def _claim_path(self, key: str) -> str:
        return self._s.state_path("redrives", f"{key}.json")

    def _claim(self, key: str, message: PubsubMessage, request: RedriveRequest) -> tuple[float | None, bool]:
        """The claim time (None when another message claimed this request first), and whether an
        earlier attempt of this same message made the claim and died before recording its job."""
        now = self._clock()
        claim = {"messageId": message.message_id, "requestId": request.request_id, "claimedAt": now}
        if self._gcs.create(self._s.state_bucket, self._claim_path(key), claim) is not None:
            return now, False
        existing = self._gcs.read(self._s.state_bucket, self._claim_path(key))
        if existing is not None and existing.data.get("messageId") == message.message_id \
                and "job" not in existing.data:
            return float(existing.data.get("claimedAt", now)), True
        return None, False

    def _record(self, key: str, message: PubsubMessage, request: RedriveRequest, claimed_at: float,
                job_id: str) -> None:
        self._gcs.write(self._s.state_bucket, self._claim_path(key),
                        {"messageId": message.message_id, "requestId": request.request_id,
                         "claimedAt": claimed_at, "job": job_id})

    def _current(self, uris: list[str]) -> tuple[list[Upload], list[str]]:
        """The current generation of each object; the names of those that no longer exist."""
        uploads, gone = [], []
        for uri in uris:
            bucket, _, name = uri[len("gs://"):].partition("/")
            # Listings are sorted by name, so the object itself comes first among those it prefixes.
            info = next((o for o in self._gcs.list(bucket, name, max_results=1) if o.name == name), None)
            if info is None:
                gone.append(uri)
            else:
                uploads.append(Upload(bucket=bucket, name=name, generation=info.generation,
                                      time_created=info.time_created))
        return uploads, gone

    def _nothing(self, message: PubsubMessage, request: RedriveRequest, original: str, reason: str,
                 held: list[Fate]) -> RedriveOutcome:
        logger.info("redrive has nothing to import", extra=fields(redrive_of=original, reason=reason))
        data, attributes = redrive_noop_event(reason, request_id=request.request_id, message_id=message.message_id,
                                              redrive_of=original, dicom_store=self._s.dicom_store,
                                              now=datetime.fromtimestamp(self._clock(), UTC),
                                              held=[f.to_dict() for f in held],
                                              failed_objects_cap=self._s.failed_objects_cap)
        self._publisher.publish(data, attributes)
        self._gcs.write(self._s.state_bucket, self._s.state_path("done", f"{attributes['eventId']}.json"), data)
        return RedriveOutcome("nothing", reason)

    def _reject(self, message: PubsubMessage, request_id: str | None, reason: str) -> RedriveOutcome:
        logger.warning("redrive request rejected", extra=fields(message_id=message.message_id,
                                                                request_id=request_id, reason=reason[:500]))
        data, attributes = rejected_event(reason, request_id=request_id, message_id=message.message_id,
                                          destination=None, dicom_store=self._s.dicom_store,
                                          now=datetime.fromtimestamp(self._clock(), UTC), kind="redrive")
        self._publisher.publish(data, attributes)
        self._gcs.write(self._s.state_bucket, self._s.state_path("done", f"{attributes['eventId']}.json"), data)
        return RedriveOutcome("rejected", reason)

