"""`dicomStores.import`: copy DICOM objects from Cloud Storage into a store.

A pipeline of bounded stages, each object read exactly once:
- reader threads take object names in order; each checks for cancellation, reads the object,
  parses it and writes its blob (the work that can overlap: network waits, file writes, and
  pydicom's parsing between them);
- one index writer thread takes what the readers parsed and indexes it in SQLite transactions of
  whatever has queued up meanwhile (up to INDEX_BATCH rows): one commit per batch, not per
  instance. Counters move only after a batch commits, so an operation's counters never claim an
  instance the index does not hold, whether it ends normally, is cancelled or fails mid-way.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from . import errors
from .dicomfile import InstanceInfo, NotDicomError, read_instance
from .errors import invalid_argument
from .gcs import GcsClient, GcsError
from .operations import OperationContext, OperationFailed, Worker
from .stats import Stats
from .store import Blob, Indexed, Store
from .wildcards import GcsPattern, parse_source_uri

log = logging.getLogger("localcloud.healthcare.importer")

# Reads overlap with parsing; more threads than this only contend for the GIL on 2 cores.
IMPORT_THREADS = 4
# Rows per index transaction at most; fewer when the readers are slower than the writer.
INDEX_BATCH = 200
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")
CONFLICT_MESSAGE = "an instance with the same SOP Instance UID and different content is already stored"


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


@dataclass(frozen=True)
class _Parsed:
    uri: str
    info: InstanceInfo
    blob: Blob


class IndexWriter:
    """The single writer of an import: batches parsed instances into index transactions.

    Use as a context manager around the readers; leaving it indexes everything handed over so
    far (also when the readers stopped on a cancel), then re-raises a failure of the writer.
    """

    def __init__(self, store: Store, store_name: str, storage_class: str, ctx: OperationContext) -> None:
        self._store = store
        self._store_name = store_name
        self._storage_class = storage_class
        self._ctx = ctx
        # Bounded, so readers cannot run arbitrarily far ahead of the index.
        self._queue: queue.Queue[_Parsed | None] = queue.Queue(maxsize=2 * INDEX_BATCH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"index-{ctx.name.rsplit('/', 1)[-1]}")

    def __enter__(self) -> IndexWriter:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._error

    def add(self, item: _Parsed) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            end = False
            while len(batch) < INDEX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    end = True
                    break
                batch.append(item)
            if self._error is None:  # after a failure, only drain (readers must never block)
                try:
                    self._index(batch)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the operation's thread
                    log.exception("%s: indexing failed; the rest of this import is dropped", self._ctx.name)
                    self._error = exc
            if end:
                return

    def _index(self, batch: list[_Parsed]) -> None:
        outcomes = self._store.index_instances(
            self._store_name, [(p.info, p.blob) for p in batch], self._storage_class, action="ImportDicomData"
        )
        # Only now, with the batch committed, do the counters move.
        for parsed, outcome in zip(batch, outcomes, strict=True):
            if outcome is Indexed.CONFLICT:
                self._ctx.failed(parsed.uri, errors.RPC_INVALID_ARGUMENT, CONFLICT_MESSAGE)
            else:
                # New or an identical duplicate (ignored, not overwritten): both count as success.
                self._ctx.succeeded()


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
        with (
            IndexWriter(store, store_name, storage_class, ctx) as writer,
            ThreadPoolExecutor(IMPORT_THREADS, thread_name_prefix="import") as pool,
        ):
            # list() re-raises the first checkpoint stop (cancel / injected failure) here; the
            # pool then finishes the reads in flight and the writer indexes what they parsed.
            list(pool.map(lambda name: read_one(ctx, name, writer), names))

    def read_one(ctx: OperationContext, name: str, writer: IndexWriter) -> None:
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
        except NotDicomError as exc:
            ctx.failed(uri, errors.RPC_INVALID_ARGUMENT, str(exc))
            return
        writer.add(_Parsed(uri, info, store.write_blob(data)))

    return run
