"""`dicomStores.export`: write instances to Cloud Storage as DICOM, consumer images or raw pixels."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import errors
from .bqrows import InstanceFacts
from .bqsink import WRITE_DISPOSITIONS, BigQuerySink, SinkError, TableRef, effective_disposition, parse_table_uri
from .errors import invalid_argument, unimplemented
from .filters import FilterFileError, parse_filter_file
from .gcs import GcsClient, GcsError
from .operations import OperationContext, OperationFailed, Worker
from .render import raw_frames, render_frames
from .store import InstanceRow, Store
from .transcode import TranscodeError, transcode
from .wildcards import split_gs_uri

EXPORT_THREADS = 4
_EXTENSIONS = {
    "application/dicom": ".dcm",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "application/octet-stream": "",
}


@dataclass(frozen=True)
class ExportRequest:
    bucket: str
    prefix: str  # "" or ends with "/"
    media_type: str
    transfer_syntax: str | None
    filter_uri: str | None

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.media_type]


@dataclass(frozen=True)
class BigQueryExportRequest:
    table: TableRef
    disposition: str  # WRITE_EMPTY | WRITE_TRUNCATE | WRITE_APPEND
    filter_uri: str | None


def parse_export_request(body: dict[str, Any], store_project: str = "") -> ExportRequest | BigQueryExportRequest:
    """The destination of an ExportDicomDataRequest: gcsDestination or bigqueryDestination (a union)."""
    if "gcsDestination" in body and "bigqueryDestination" in body:
        raise invalid_argument("only one of gcsDestination and bigqueryDestination may be set")
    if "bigqueryDestination" in body:
        return _parse_bigquery_request(body, store_project)
    destination = body.get("gcsDestination")
    if not isinstance(destination, dict) or not destination.get("uriPrefix"):
        raise invalid_argument("gcsDestination.uriPrefix or bigqueryDestination.tableUri is required")
    uri = str(destination["uriPrefix"])
    if not uri.startswith("gs://") or not uri[len("gs://") :].split("/", 1)[0]:
        raise invalid_argument(f"gcsDestination.uriPrefix must be gs://BUCKET[/PATH]: {uri!r}")
    bucket, _, path = uri[len("gs://") :].partition("/")
    # "If there is no trailing slash, the service appends one when composing the object path."
    prefix = path if not path or path.endswith("/") else path + "/"
    media_type, transfer_syntax = parse_mime_type(str(destination.get("mimeType") or ""))
    filter_uri = (body.get("filterConfig") or {}).get("resourcePathsGcsUri")
    if filter_uri:
        split_gs_uri(str(filter_uri), "filterConfig.resourcePathsGcsUri")
    return ExportRequest(bucket, prefix, media_type, transfer_syntax, filter_uri or None)


def _parse_bigquery_request(body: dict[str, Any], store_project: str) -> BigQueryExportRequest:
    destination = body.get("bigqueryDestination")
    if not isinstance(destination, dict):
        raise invalid_argument("bigqueryDestination must be an object")
    uri = str(destination.get("tableUri") or "")
    table = parse_table_uri(uri)
    if table is None:
        raise invalid_argument(f"bigqueryDestination.tableUri must be bq://PROJECT.DATASET.TABLE: {uri!r}")
    if store_project and table.project != store_project:
        # "You can only export to a BigQuery dataset that's in the same project as the DICOM store."
        raise invalid_argument(f"bigqueryDestination must be in the DICOM store's project {store_project!r}")
    disposition = str(destination.get("writeDisposition") or "WRITE_DISPOSITION_UNSPECIFIED")
    if disposition not in WRITE_DISPOSITIONS:
        raise invalid_argument(f"unknown bigqueryDestination.writeDisposition {disposition!r}")
    if destination.get("schemaJson") is not None:
        raise unimplemented("bigqueryDestination.schemaJson is not emulated (schemaFlattened is)")
    filter_uri = (body.get("filterConfig") or {}).get("resourcePathsGcsUri")
    if filter_uri:
        split_gs_uri(str(filter_uri), "filterConfig.resourcePathsGcsUri")
    return BigQueryExportRequest(table, effective_disposition(destination), filter_uri or None)


def parse_mime_type(mime_type: str) -> tuple[str, str | None]:
    """`application/dicom; transfer-syntax=UID` -> ("application/dicom", "UID"); empty -> as stored."""
    if not mime_type.strip():
        return "application/dicom", None
    media_type, *params = [part.strip() for part in mime_type.split(";")]
    media_type = media_type.lower()
    if media_type not in _EXTENSIONS:
        raise invalid_argument(f"unsupported gcsDestination.mimeType {mime_type!r}")
    transfer_syntax = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "transfer-syntax":
            transfer_syntax = value.strip().strip('"') or None
    return media_type, transfer_syntax


def filtered(gcs: GcsClient, filter_uri: str, rows: list[InstanceRow]) -> list[InstanceRow]:
    """The rows a filter file (`filterConfig.resourcePathsGcsUri`) selects."""
    bucket, name = split_gs_uri(filter_uri, "filterConfig.resourcePathsGcsUri")
    try:
        text = gcs.download(bucket, name).decode("utf-8")
    except GcsError as exc:
        code = errors.RPC_NOT_FOUND if exc.status == 404 else errors.RPC_UNAVAILABLE
        raise OperationFailed(code, f"cannot read filter file {filter_uri}: {exc}") from None
    except UnicodeDecodeError:
        raise OperationFailed(errors.RPC_INVALID_ARGUMENT, "filter file is not UTF-8 text") from None
    try:
        paths = parse_filter_file(text)
    except FilterFileError as exc:
        raise OperationFailed(errors.RPC_INVALID_ARGUMENT, str(exc)) from None
    return [r for r in rows if any(p.selects(r.study, r.series, r.sop) for p in paths)]


def instance_facts(row: InstanceRow) -> InstanceFacts:
    return InstanceFacts(row.attrs, row.storage_class, row.stored_at, row.size)


def bigquery_export_worker(
    store: Store, gcs: GcsClient, sink: BigQuerySink | None, store_name: str, request: BigQueryExportRequest
) -> Worker:
    """One row per selected instance, written in one go: the table either gets all rows or none
    of a failed batch (counters: every row of a failed batch is a failure)."""

    def run(ctx: OperationContext) -> None:
        if sink is None:
            raise OperationFailed(errors.RPC_UNAVAILABLE, "no BigQuery endpoint configured (--bigquery-url)")
        rows = store.instances(store_name)
        if request.filter_uri:
            rows = filtered(gcs, request.filter_uri, rows)
        ctx.set_pending(len(rows))
        ctx.checkpoint()
        try:
            sink.write(request.table, [instance_facts(r) for r in rows], request.disposition)
        except SinkError as exc:
            code = errors.RPC_NOT_FOUND if exc.not_found else errors.RPC_FAILED_PRECONDITION
            raise OperationFailed(code, str(exc)) from None
        for _ in rows:
            ctx.succeeded()

    return run


def export_worker(store: Store, gcs: GcsClient, store_name: str, request: ExportRequest) -> Worker:
    def run(ctx: OperationContext) -> None:
        rows = store.instances(store_name)
        if request.filter_uri:
            rows = filtered(gcs, request.filter_uri, rows)
        ctx.set_pending(len(rows))
        with ThreadPoolExecutor(EXPORT_THREADS, thread_name_prefix="export") as pool:
            list(pool.map(lambda row: export_one(ctx, row), rows))

    def export_one(ctx: OperationContext, row: InstanceRow) -> None:
        ctx.checkpoint()
        base = f"{request.prefix}{row.study}/{row.series}/{row.sop}"
        target = f"gs://{request.bucket}/{base}{request.extension}"
        try:
            objects = _objects_for(row, base)
        except TranscodeError as exc:
            ctx.failed(target, errors.RPC_INVALID_ARGUMENT, str(exc))
            return
        try:
            for name, payload in objects:
                gcs.upload(request.bucket, name, payload, request.media_type)
        except GcsError as exc:
            ctx.failed(target, errors.RPC_UNAVAILABLE, str(exc))
            return
        ctx.succeeded()

    def _objects_for(row: InstanceRow, base: str) -> list[tuple[str, bytes]]:
        data = store.read_blob(row)
        if request.media_type == "application/dicom":
            return [(base + request.extension, transcode(data, request.transfer_syntax))]
        if request.media_type == "application/octet-stream":
            frames = raw_frames(data, request.transfer_syntax)
        else:
            frames = render_frames(data, request.media_type)
        if len(frames) == 1:
            return [(base + request.extension, frames[0])]
        # "{instance_id}[/{frame_number}].{extension}": frame numbers start at 1, as in DICOMweb.
        return [(f"{base}/{n}{request.extension}", frame) for n, frame in enumerate(frames, start=1)]

    return run
