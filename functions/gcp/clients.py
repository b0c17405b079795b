"""What the handlers need from Cloud Storage, the Healthcare API and Pub/Sub, as small Protocols.

The handlers (`ImportOnUpload`, `WindowBatcher`, `JobQueue`, `Poller`, `ExportOnMessage`) are
typed against these, not against the concrete clients (`functions.gcp.gcs.Gcs`,
`functions.gcp.healthcare.HealthcareClient`, `functions.gcp.publish.Publisher`). So the functional tests
run the real handler code on in-memory fakes with a fake clock (tests/functional), and a wrapper
around a client (an error boundary, a call counter, a crash injector) is a drop-in.

The semantics every implementation keeps are the ones the protocol of windows, claims, slots and
queued jobs rests on (docs/state.md):
- `create` is atomic create-if-absent (`ifGenerationMatch=0`): exactly one of several concurrent
  creators gets a generation, the others get None (a 412).
- `replace` and `delete` with a generation succeed only while the object is at that generation.
- `list` is strongly consistent and ordered by name; `metadata` and `time_created` come with it.
- `HealthcareApi` starts return the operation name once the LRO exists; errors are the leaves of
  `functions.core.errors.ApiError` (transient: may be retried; permanent: the API refused the call).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from functions.core.sql_gate import DryRun


@dataclass(frozen=True)
class ObjectInfo:
    """The listing fields the planner and the failure report need."""

    name: str
    generation: int
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    time_created: float = 0.0  # epoch seconds


@dataclass(frozen=True)
class Record:
    """A JSON state object and the generation it was read at (for compare-and-swap)."""

    data: dict[str, Any]
    generation: int


class ObjectStore(Protocol):
    """Cloud Storage as the pipeline uses it: state records with generations, listings, copies."""

    def create(self, bucket: str, name: str, data: dict[str, Any] | bytes | str,
               metadata: dict[str, str] | None = None) -> int | None:
        """Creates the object if absent; its generation, or None when it already exists."""
        ...

    def read(self, bucket: str, name: str) -> Record | None:
        """A JSON object with its generation; None when it does not exist."""
        ...

    def replace(self, bucket: str, name: str, data: dict[str, Any], generation: int) -> int | None:
        """Overwrites only at `generation`; the new generation, or None (changed or gone)."""
        ...

    def write(self, bucket: str, name: str, data: dict[str, Any] | bytes | str) -> None:
        """Unconditional write (objects only one writer ever produces)."""
        ...

    def delete(self, bucket: str, name: str, generation: int | None = None) -> bool:
        """Deletes (only at `generation` when given); False when it was gone or had changed."""
        ...

    def list(self, bucket: str, prefix: str, *, recursive: bool = True,
             max_results: int | None = None) -> Iterator[ObjectInfo]:
        """Objects under `prefix` by name (direct children only when not recursive)."""
        ...

    def list_prefixes(self, bucket: str, prefix: str) -> builtins.list[str]:
        """The "folders" directly under `prefix`, sorted."""
        ...

    def copy(self, src_bucket: str, src_name: str, generation: int, dst_bucket: str, dst_name: str) -> None:
        """Server-side copy of one generation."""
        ...

    def download(self, bucket: str, name: str, *, generation: int | None = None,
                 start: int = 0, end: int | None = None) -> bytes:
        """Object bytes from `start` (through `end` when given, inclusive; fewer at the object's end)."""
        ...

    def open_writer(self, bucket: str, name: str, content_type: str = "text/plain") -> Any:
        """A text file-like writer (a context manager) that streams a large object."""
        ...


class HealthcareApi(Protocol):
    """The DICOM store calls of one store."""

    def import_dicom(self, uri: str, *, storage_class: str | None = None) -> str:
        """Starts `dicomStores.import` of `uri`; the operation name."""
        ...

    def export_dicom(self, uri_prefix: str, *, mime_type: str | None = None,
                     filter_uri: str | None = None) -> str:
        """Starts `dicomStores.export` to `uri_prefix`; the operation name."""
        ...

    def set_blob_storage_settings(self, filter_uri: str | None, storage_class: str) -> str:
        """Starts `dicomStores.setBlobStorageSettings` (of the filter file's paths, or the whole
        store); the operation name."""
        ...

    def get_operation(self, name: str) -> dict[str, Any]:
        """`operations.get`: the operation JSON as the API returns it."""
        ...

    def list_operations(self, dataset: str) -> Iterator[dict[str, Any]]:
        """`operations.list` of a dataset, every page (what an unconfirmed start may have begun)."""
        ...

    def search(self, level: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """QIDO-RS search at `level` (studies, series or instances, optionally nested)."""
        ...

    def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """True when the store holds the instance."""
        ...

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Iterator[bytes]:
        """WADO-RS: the stored instance as the store holds it (`transfer-syntax=*`), in chunks.
        A missing instance raises `ApiError` with status 404."""
        ...


@dataclass(frozen=True)
class QueryResult:
    """A finished query: its column names, its row count when known, and its rows as they stream."""

    columns: tuple[str, ...]
    total_rows: int | None
    rows: Iterator[tuple[Any, ...]]


class SqlRunner(Protocol):
    """BigQuery, for the `sql` selector."""

    def dry_run(self, sql: str) -> DryRun:
        """BigQuery's dry run of `sql` (nothing runs, nothing is billed).

        Raises:
            SqlQueryError: BigQuery refused the statement.
            TransientApiError: a fault worth a redelivery (429, 5xx).
        """
        ...

    def run_query(self, sql: str, *, timeout_seconds: float, max_bytes_billed: int) -> QueryResult:
        """Runs one query job and waits for it (at most `timeout_seconds`); a job that would bill
        more than `max_bytes_billed` bytes fails without a charge.

        Raises:
            SqlQueryError: BigQuery refused or failed the query, or it did not finish in time.
            TransientApiError: a fault worth a redelivery (429, 5xx).
        """
        ...


class EventPublisher(Protocol):
    """The completions topic."""

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        """Publishes and waits for the acknowledgement; the message id."""
        ...
