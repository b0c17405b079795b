"""Export on message: validate a request, write its filter file, start a filtered export (or, for
`"action": "setStorageClass"`, a storage-class change of the selected instances).

A `sql` selector is run on BigQuery (`SqlRunner`) and its rows are streamed into the filter file;
a query BigQuery refuses, an empty result, a malformed row or more than `DICOM_SQL_MAX_ROWS` rows
reject the request and start nothing.

A request that breaks the contract, points outside the allowlist or selects nothing starts
nothing: one log line, a REJECTED completion event, and the message is acknowledged. A repeated
`requestId` (or a redelivered message without one) starts no second export: the first delivery
claims `exports/{key}.json` with a create-if-absent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from functions.core import sql_gate
from functions.core.completion import rejected_event
from functions.core.errors import InvalidExportRequestError, SqlQueryError
from functions.core.events import PubsubMessage
from functions.core.export_request import (
    ExportRequest,
    FilterUriSelector,
    QuerySelector,
    ResourcesSelector,
    SqlSelector,
    WholeStore,
    dedup_key,
    filter_lines,
    is_valid_request_id,
    parse_export_request,
)
from functions.core.refusal import refusal_reason
from functions.core.sql_selection import SqlResultError, paths_from_rows
from functions.gcp.clients import EventPublisher, HealthcareApi, ObjectStore, SqlRunner
from functions.gcp.retry import classify
from functions.imports.job_queue import Job, JobQueue, Kind
from functions.log import fields
from functions.settings import Settings

if TYPE_CHECKING:
    from functions.wiring import Deps

logger = logging.getLogger(__name__)

_QIDO_PAGE = 1000
_STUDY_UID_TAG = "0020000D"


@dataclass(frozen=True)
class ExportOutcome:
    action: str  # started | queued | duplicate | rejected
    detail: str = ""


class ExportOnMessage:
    def __init__(self, settings: Settings, gcs: ObjectStore, healthcare: HealthcareApi, queue: JobQueue,
                 publisher: EventPublisher, clock: Callable[[], float] = time.time,
                 bigquery: SqlRunner | None = None) -> None:
        self._s = settings
        self._bq = bigquery
        self._gcs = gcs
        self._hc = healthcare
        self._queue = queue
        self._publisher = publisher
        self._clock = clock

    @classmethod
    def from_deps(cls, deps: Deps) -> ExportOnMessage:
        from functions.gcp.bigquery import BigQueryClient  # google-cloud-bigquery itself loads on first query

        return cls(deps.settings, deps.gcs, deps.healthcare, deps.queue, deps.publisher,
                   bigquery=BigQueryClient(deps.settings))

    def handle(self, message: PubsubMessage) -> ExportOutcome:
        with_id = {"message_id": message.message_id}
        sent = message.publish_time.timestamp() if message.publish_time else self._clock()
        if self._clock() - sent > self._s.max_event_age_seconds:
            return self._reject(message, _request_id_of(message.data),
                                f"the request is older than DICOM_MAX_EVENT_AGE_SECONDS "
                                f"({self._s.max_event_age_seconds:.0f} s)")
        try:
            request = parse_export_request(message.data, allowed_destinations=self._s.export_allowed_destinations)
        except InvalidExportRequestError as exc:
            return self._reject(message, _request_id_of(message.data), exc.reason,
                                kind="storageClass" if _action_of(message.data) == "setStorageClass" else "export")
        key = dedup_key(request, message.message_id)
        claimed_at, retaken = self._claim(key, request, message)
        if claimed_at is None:
            logger.info("repeated export request: no second export",
                        extra=fields(request_id=request.request_id, **with_id))
            return ExportOutcome("duplicate")
        kind: Kind = "storageClass" if request.action == "setStorageClass" else "export"
        submitted: list[bool] = []
        try:
            return self._run(message, request, key, kind, claimed_at, retaken, submitted)
        except Exception as exc:
            fault = classify(exc)
            if fault.retry or submitted:
                raise  # the claim stays ours (the redelivery retakes it), or the job is in the queue
            # No redelivery can help (a 403, a missing bucket, a 400): free the requestId and
            # say why, once. The service's own message is not repeated (it may quote values).
            self._gcs.delete(self._s.state_bucket, self._claim_path(key))
            self._gcs.delete(self._s.state_bucket, self._s.state_path("filters", f"{key}.txt"))
            return self._reject(message, request.request_id, refusal_reason(fault), destination=request.destination,
                                kind=kind)

    def _run(self, message: PubsubMessage, request: ExportRequest, key: str, kind: Kind, claimed_at: float,
             retaken: bool, submitted: list[bool]) -> ExportOutcome:
        with_id = {"message_id": message.message_id}
        filter_uri = request.selector.uri if isinstance(request.selector, FilterUriSelector) else None
        if isinstance(request.selector, (ResourcesSelector, QuerySelector, SqlSelector)):
            try:
                filter_uri = self._filter_of(key, request)
            except InvalidExportRequestError as exc:
                # Nothing was started: drop the claim, so that the caller may send the request
                # again (same requestId) once the store or the table holds what it asks for.
                self._gcs.delete(self._s.state_bucket, self._claim_path(key))
                return self._reject(message, request.request_id, exc.reason, destination=request.destination,
                                    kind=kind)
        stamp = datetime.fromtimestamp(claimed_at, UTC).strftime("%Y%m%dT%H%M%S%fZ")
        job = Job(job_id=f"{stamp}-{kind}-{key[:16]}", kind=kind,
                  request_id=request.request_id or message.message_id, created_at=claimed_at,
                  destination=request.destination or "", mime_type=request.mime_type, filter_uri=filter_uri,
                  storage_class=request.storage_class, message_id=message.message_id, claim=self._claim_path(key),
                  whole_store=request.action == "setStorageClass" and isinstance(request.selector, WholeStore))
        if retaken and self._tracked(job.job_id):
            # An earlier attempt started the export and died before it could say so in the claim.
            # (Once that export is reported and forgotten, this check cannot see it any more.)
            self._gcs.write(self._s.state_bucket, self._claim_path(key),
                            {"messageId": message.message_id, "requestId": request.request_id,
                             "claimedAt": claimed_at, "job": job.job_id})
            logger.info("redelivered export request: its export already runs",
                        extra=fields(request_id=job.request_id, job=job.job_id, **with_id))
            return ExportOutcome("duplicate", job.job_id)
        submitted.append(True)
        result = self._queue.submit(job)
        self._gcs.write(self._s.state_bucket, self._claim_path(key),
                        {"messageId": message.message_id, "requestId": request.request_id,
                         "claimedAt": claimed_at, "job": job.job_id})
        logger.info("export request accepted", extra=fields(request_id=job.request_id, job=job.job_id,
                                                             operation=result.started, queued=result.queued,
                                                             destination=request.destination, **with_id))
        return ExportOutcome("started" if result.started else "queued", result.started or job.job_id)

    def _claim(self, key: str, request: ExportRequest, message: PubsubMessage) -> tuple[float | None, bool]:
        """The claim time of this request (None when another message already claimed it), and
        whether an earlier attempt of this same message made the claim."""
        path = self._claim_path(key)
        now = self._clock()
        claim = {"messageId": message.message_id, "requestId": request.request_id, "claimedAt": now}
        if self._gcs.create(self._s.state_bucket, path, claim) is not None:
            return now, False
        existing = self._gcs.read(self._s.state_bucket, path)
        if existing is not None and existing.data.get("messageId") == message.message_id \
                and "job" not in existing.data:
            # The same message again, and our earlier attempt died before it recorded its job.
            return float(existing.data.get("claimedAt", now)), True
        return None, False

    def _tracked(self, job_id: str) -> bool:
        """Is an operation of this job being tracked (started, not yet reported)?"""
        return any(started.job.job_id == job_id for started in self._queue.tracked())

    def _claim_path(self, key: str) -> str:
        return self._s.state_path("exports", f"{key}.json")

    def _filter_of(self, key: str, request: ExportRequest) -> str:
        """Writes the filter file of a resources, query or sql selector; its gs:// URI.

        Raises:
            InvalidExportRequestError: the selection is empty, or the sql failed or returned
                rows that cannot be a filter file (the partial file is removed).
        """
        if isinstance(request.selector, SqlSelector):
            paths = self._sql_paths(request.selector.sql)
            empty = "the sql returned no rows"
        else:
            paths = self._paths(request)
            empty = "the query matched no studies in the store"
        first = next(paths, None)
        if first is None:
            raise InvalidExportRequestError(empty)
        try:
            return self._write_filter(key, _chain(first, paths))
        except InvalidExportRequestError:
            self._gcs.delete(self._s.state_bucket, self._s.state_path("filters", f"{key}.txt"))
            raise

    def _sql_paths(self, sql: str) -> Iterator[str]:
        if self._bq is None:
            raise SqlQueryError("this deployment has no BigQuery client; the sql selector is not available")
        # BigQuery's own dry run decides whether the statement may run at all (nothing runs or
        # is billed by it); maximumBytesBilled bounds the real run as well.
        sql_gate.decide(self._bq.dry_run(sql), sql=sql, allowed_datasets=self._s.sql_datasets,
                        max_bytes_billed=self._s.sql_max_bytes_billed)
        result = self._bq.run_query(sql, timeout_seconds=self._s.sql_timeout_seconds,
                                    max_bytes_billed=self._s.sql_max_bytes_billed)
        limit = self._s.sql_max_rows
        if result.total_rows is not None and result.total_rows > limit:
            # Known before a single row is read: nothing is written.
            raise SqlResultError(f"the sql returned {result.total_rows} rows; at most {limit} are accepted "
                                 "(DICOM_SQL_MAX_ROWS); narrow it, or select whole series or studies")
        return paths_from_rows(result.columns, result.rows, max_rows=limit)

    def _paths(self, request: ExportRequest) -> Iterator[str]:
        if isinstance(request.selector, ResourcesSelector):
            yield from request.selector.paths
            return
        assert isinstance(request.selector, QuerySelector)
        criteria = dict(request.selector.params)
        # Google's QIDO-RS has no ModalitiesInStudy key: the studies with a series of that modality
        # are the studies of a series search on Modality (series searches take every study key).
        modality = criteria.pop("ModalitiesInStudy", None)
        level = "series" if modality else "studies"
        if modality:
            criteria["Modality"] = modality
        seen: set[str] = set()  # a study comes back once per matching series
        offset = 0
        while True:
            params = criteria | {"limit": str(_QIDO_PAGE), "offset": str(offset), "includefield": _STUDY_UID_TAG}
            page = self._hc.search(level, params)
            for result in page:
                uid = (result.get(_STUDY_UID_TAG) or {}).get("Value") or []
                if uid and uid[0] not in seen:
                    if modality:
                        seen.add(uid[0])
                    yield f"/studies/{uid[0]}"
            if len(page) < _QIDO_PAGE:
                return
            offset += len(page)

    def _write_filter(self, key: str, lines: Iterator[str]) -> str:
        """Streams the filter file into the state bucket (100,000 paths stay out of memory)."""
        name = self._s.state_path("filters", f"{key}.txt")
        with self._gcs.open_writer(self._s.state_bucket, name) as writer:
            for line in filter_lines(lines):
                writer.write(line)
        return f"gs://{self._s.state_bucket}/{name}"

    def _reject(self, message: PubsubMessage, request_id: str | None, reason: str,
                destination: str | None = None, kind: str = "export") -> ExportOutcome:
        logger.warning("export request rejected", extra=fields(message_id=message.message_id,
                                                               request_id=request_id, reason=reason[:500]))
        data, attributes = rejected_event(reason, request_id=request_id, message_id=message.message_id,
                                          destination=destination, dicom_store=self._s.dicom_store,
                                          now=datetime.fromtimestamp(self._clock(), UTC), kind=kind)
        self._publisher.publish(data, attributes)
        # Kept like the poller's events, so `status` and `events --since` show rejections too.
        self._gcs.write(self._s.state_bucket, self._s.state_path("done", f"{attributes['eventId']}.json"), data)
        return ExportOutcome("rejected", reason)


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _action_of(data: bytes) -> str | None:
    """The action of a request that failed validation, if it names one (for the event's kind)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = body.get("action") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _request_id_of(data: bytes) -> str | None:
    """The requestId of a request that failed validation, if it has a usable one (for the event)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested arrays
        return None
    value = body.get("requestId") if isinstance(body, dict) else None
    return value if is_valid_request_id(value) else None
