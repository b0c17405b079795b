"""`dicomStores.import`: copy DICOM objects from Cloud Storage into a store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import errors
from .dicomfile import NotDicomError, read_instance
from .errors import invalid_argument
from .gcs import GcsClient, GcsError
from .operations import OperationContext, OperationFailed, Worker
from .stats import Stats
from .store import ConflictError, Store
from .wildcards import GcsPattern, parse_source_uri

# Downloads overlap with parsing; more threads than this only contend for the GIL on 2 cores.
IMPORT_THREADS = 4
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")


def parse_import_request(body: dict[str, Any]) -> tuple[GcsPattern, str]:
    """Validate the request synchronously (bad URIs are a 400, not a failed operation)."""
    source = body.get("gcsSource")
    if not isinstance(source, dict) or not source.get("uri"):
        raise invalid_argument("gcsSource.uri is required")
    pattern = parse_source_uri(str(source["uri"]))
    # v1beta1 documents camelCase; some callers send the proto field names.
    settings = body.get("blobStorageSettings") or body.get("blob_storage_settings") or {}
    storage_class = settings.get("blobStorageClass") or settings.get("blob_storage_class") or "STANDARD"
    if storage_class == "BLOB_STORAGE_CLASS_UNSPECIFIED":
        storage_class = "STANDARD"
    if storage_class not in STORAGE_CLASSES:
        raise invalid_argument(f"unknown blobStorageClass {storage_class!r}")
    return pattern, storage_class


def import_worker(
    store: Store, gcs: GcsClient, stats: Stats, store_name: str, pattern: GcsPattern, storage_class: str
) -> Worker:
    def run(ctx: OperationContext) -> None:
        try:
            names = [n for n in gcs.list_names(pattern.bucket, pattern.literal_prefix) if pattern.matches(n)]
        except GcsError as exc:
            code = errors.RPC_NOT_FOUND if exc.status == 404 else errors.RPC_UNAVAILABLE
            raise OperationFailed(code, f"cannot list gs://{pattern.bucket}: {exc}") from None
        if not names:
            # The real service fails an import that matches nothing; NOT_FOUND says why.
            raise OperationFailed(
                errors.RPC_NOT_FOUND, f"no objects match gs://{pattern.bucket}/{pattern.pattern}"
            )
        ctx.set_pending(len(names))
        with ThreadPoolExecutor(IMPORT_THREADS, thread_name_prefix="import") as pool:
            # list() re-raises the first checkpoint stop (cancel / injected failure) here.
            list(pool.map(lambda name: import_one(ctx, name), names))

    def import_one(ctx: OperationContext, name: str) -> None:
        ctx.checkpoint()
        uri = f"gs://{pattern.bucket}/{name}"
        stats.count_object_read(uri)
        try:
            data = gcs.download(pattern.bucket, name)
        except GcsError as exc:
            ctx.failed(uri, errors.RPC_NOT_FOUND if exc.status == 404 else errors.RPC_UNAVAILABLE, str(exc))
            return
        try:
            info = read_instance(data)
            store.put_instance(store_name, info, data, storage_class, action="ImportDicomData")
        except NotDicomError as exc:
            ctx.failed(uri, errors.RPC_INVALID_ARGUMENT, str(exc))
            return
        except ConflictError:
            ctx.failed(
                uri,
                errors.RPC_INVALID_ARGUMENT,
                "an instance with the same SOP Instance UID and different content is already stored",
            )
            return
        # New or an identical duplicate (ignored, not overwritten): both count as success.
        ctx.succeeded()

    return run
