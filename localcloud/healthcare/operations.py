"""Long-running operations: background threads with the real Operation JSON shape.

An operation is held in memory while it runs (so `operations.get` sees live counters) and written
to the index when it starts and when it ends. Operations left unfinished by a previous process are
closed as ABORTED at start-up: their worker thread is gone.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from . import errors
from .faults import Faults
from .stats import Stats
from .store import Store, now_rfc3339

log = logging.getLogger("localcloud.healthcare.operations")

_MAX_LOG_ENTRIES = 1000  # like Cloud Logging, keep a bounded number of error entries per operation


class OperationFailed(Exception):
    """Raised by a worker to end its operation with this google.rpc.Status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Stopped(Exception):
    """Cancellation or an injected failure, noticed at a checkpoint."""


@dataclass
class Operation:
    name: str
    dataset: str
    version: str
    service: str  # e.g. "dicom.DicomService"
    method: str  # e.g. "ImportDicomData"
    response_type: str  # e.g. "dicom.ImportDicomDataResponse"
    resource: str = ""  # the store it works on (the log entries' resource labels)
    create_time: str = field(default_factory=now_rfc3339)
    end_time: str | None = None
    success: int = 0
    failure: int = 0
    pending: int = 0
    cancel_requested: bool = False
    done: bool = False
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    injected_failure: tuple[int, str] | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    wake: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def op_id(self) -> str:
        return self.name.rsplit("/", 1)[1]

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            counter = {
                k: str(v)
                for k, v in (("success", self.success), ("failure", self.failure), ("pending", self.pending))
                if v
            }
            metadata: dict[str, Any] = {
                "@type": f"type.googleapis.com/google.cloud.healthcare.{self.version}.OperationMetadata",
                "apiMethodName": f"google.cloud.healthcare.{self.version}.{self.service}.{self.method}",
                "createTime": self.create_time,
                "logsUrl": _logs_url(self.name),
            }
            if self.end_time:
                metadata["endTime"] = self.end_time
            if self.cancel_requested:
                metadata["cancelRequested"] = True
            if counter:
                metadata["counter"] = counter
            body: dict[str, Any] = {"name": self.name, "metadata": metadata}
            if self.done:
                body["done"] = True
                if self.error is not None:
                    body["error"] = self.error
                else:
                    response_type = self.response_type
                    if not response_type.startswith("google."):  # e.g. google.protobuf.Empty
                        response_type = f"google.cloud.healthcare.{self.version}.{response_type}"
                    body["response"] = {
                        "@type": f"type.googleapis.com/{response_type}",
                        **(self.response or {}),
                    }
            return body


class OperationContext:
    """What a worker uses to report progress and notice cancellation."""

    def __init__(self, op: Operation) -> None:
        self._op = op

    @property
    def name(self) -> str:
        return self._op.name

    def checkpoint(self) -> None:
        if self._op.cancel_requested or self._op.injected_failure is not None:
            raise _Stopped

    def set_pending(self, count: int) -> None:
        with self._op.lock:
            self._op.pending = count

    def succeeded(self) -> None:
        with self._op.lock:
            self._op.success += 1
            self._op.pending = max(0, self._op.pending - 1)

    def failed(self, source: str, code: int, message: str) -> None:
        """Count one failed item and log it; `message` must not carry tag values."""
        log.warning("%s: %s: %s", self._op.name, source, message)
        with self._op.lock:
            self._op.failure += 1
            self._op.pending = max(0, self._op.pending - 1)
            if len(self._op.logs) < _MAX_LOG_ENTRIES:
                self._op.logs.append(log_entry(self._op, source, code, message))


Worker = Callable[[OperationContext], None]

# The per-item entry types Google's Cloud Logging shows for these methods (jsonPayload "@type").
_LOG_ENTRY_TYPES = {"ImportDicomData": "ImportDicomLogEntry", "ExportDicomData": "ExportDicomLogEntry"}


def log_entry(op: Operation, item: str, code: int, message: str) -> dict[str, Any]:
    """One failed item as a Cloud Logging entry of the Healthcare API: `jsonPayload` holds the
    entry type, the item (`source`: the gs:// object an import read; `destination` for an export)
    and the google.rpc.Status; `operation` the operation's id; `resource` the store."""
    entry_type = _LOG_ENTRY_TYPES.get(op.method, f"{op.method}LogEntry")
    item_key = "destination" if op.method == "ExportDicomData" else "source"
    parts = (op.resource or op.dataset).split("/")
    labels = {"project_id": parts[1], "location": parts[3], "dataset_id": parts[5]}
    if len(parts) > 7:
        labels["dicom_store_id"] = parts[7]
    return {
        "jsonPayload": {
            "@type": f"type.googleapis.com/google.cloud.healthcare.logging.{entry_type}",
            item_key: item,
            "error": {"code": code, "message": message},
        },
        "operation": {"id": op.name, "producer": f"healthcare.googleapis.com/{op.method}"},
        "resource": {"type": "healthcare_dicom_store", "labels": labels},
        "severity": "ERROR",
        "timestamp": now_rfc3339(),
    }


class Operations:
    def __init__(self, store: Store, stats: Stats, faults: Faults, delay_seconds: float = 0.0) -> None:
        self._store = store
        self._stats = stats
        self._faults = faults
        self.delay_seconds = delay_seconds
        self._live: dict[str, Operation] = {}
        self._finished_logs: dict[str, list[dict[str, Any]]] = {}  # in memory only: lost on restart
        self._lock = threading.Lock()
        self._abort_leftovers()

    def _abort_leftovers(self) -> None:
        for op_id, dataset, body in self._store.unfinished_operations():
            body["done"] = True
            body["metadata"]["endTime"] = now_rfc3339()
            body["error"] = {
                "code": errors.RPC_ABORTED,
                "message": "the emulator restarted while this operation ran",
            }
            self._store.save_operation(op_id, dataset, body)

    def _new(self, dataset: str, version: str, service: str, method: str, response_type: str) -> Operation:
        op_id = str(10**18 + secrets.randbelow(8 * 10**18))
        return Operation(f"{dataset}/operations/{op_id}", dataset, version, service, method, response_type)

    def completed(
        self,
        dataset: str,
        version: str,
        service: str,
        method: str,
        response_type: str,
        response: dict[str, Any],
    ) -> dict[str, Any]:
        """An operation that is done on creation (e.g. datasets.create)."""
        op = self._new(dataset, version, service, method, response_type)
        op.done, op.end_time, op.response = True, op.create_time, response
        body = op.to_json()
        self._store.save_operation(op.op_id, dataset, body)
        return body

    def start(
        self,
        dataset: str,
        version: str,
        method: str,
        worker: Worker,
        *,
        service: str = "dicom.DicomService",
        response_type: str | None = None,
        resource: str = "",
    ) -> dict[str, Any]:
        op = self._new(dataset, version, service, method, response_type or f"dicom.{method}Response")
        op.resource = resource
        with self._lock:
            self._live[op.op_id] = op
        self._stats.operation_started(op.name)
        body = op.to_json()
        self._store.save_operation(op.op_id, dataset, body)
        threading.Thread(target=self._run, args=(op, worker), name=f"op-{op.op_id}", daemon=True).start()
        return body

    def _run(self, op: Operation, worker: Worker) -> None:
        try:
            # Interruptible start delay, so callers can observe an operation in flight.
            if self.delay_seconds > 0:
                op.wake.wait(self.delay_seconds)
            op.injected_failure = op.injected_failure or self._faults.take_operation_failure()
            try:
                OperationContext(op).checkpoint()
                worker(OperationContext(op))
                error = self._outcome(op)
            except _Stopped:
                error = self._outcome(op)
            except OperationFailed as exc:
                error = {"code": exc.code, "message": exc.message}
            except Exception:  # noqa: BLE001 - a worker bug must still end the operation
                log.exception("%s: worker crashed", op.name)
                error = {
                    "code": errors.RPC_INTERNAL,
                    "message": "internal error in the emulator (see its log)",
                }
            with op.lock:
                op.error = error
                op.response = None if error else {}
                op.pending = 0
                op.end_time = now_rfc3339()
                op.done = True
            self._store.save_operation(op.op_id, op.dataset, op.to_json())
        finally:
            self._stats.operation_finished(op.name)
            with self._lock:
                self._live.pop(op.op_id, None)
                self._finished_logs[op.op_id] = op.logs

    def _outcome(self, op: Operation) -> dict[str, Any] | None:
        if op.cancel_requested:
            return {"code": errors.RPC_CANCELLED, "message": "the operation was cancelled"}
        if op.injected_failure is not None:
            code, message = op.injected_failure
            return {"code": code, "message": message}
        if op.failure:
            # "If there were any errors, an error field displays instead" of the response; the
            # counters still say how much succeeded.
            return {
                "code": errors.RPC_INVALID_ARGUMENT,
                "message": f"{op.failure} of {op.success + op.failure} items failed; "
                f"see the operation's logs ({_logs_url(op.name)})",
            }
        return None

    def get(self, dataset: str, op_id: str) -> dict[str, Any] | None:
        with self._lock:
            op = self._live.get(op_id)
        if op is not None and op.dataset == dataset:
            return op.to_json()
        return self._store.get_operation(op_id, dataset)

    def list_page(self, dataset: str, offset: int, limit: int) -> list[dict[str, Any]]:
        bodies = self._store.list_operations(dataset, offset, limit)
        with self._lock:
            live = dict(self._live)
        return [
            live[b["name"].rsplit("/", 1)[1]].to_json() if b["name"].rsplit("/", 1)[1] in live else b
            for b in bodies
        ]

    def cancel(self, dataset: str, op_id: str) -> bool:
        """Request cancellation; False if no such operation. Finished operations stay as they are."""
        with self._lock:
            op = self._live.get(op_id)
        if op is None or op.dataset != dataset:
            return self._store.get_operation(op_id, dataset) is not None
        with op.lock:
            op.cancel_requested = True
        op.wake.set()
        return True

    def release(self, op_id: str) -> bool:
        """End a running operation's start delay now (it then runs as usual); False if not running."""
        with self._lock:
            op = self._live.get(op_id)
        if op is None:
            return False
        op.wake.set()
        return True

    def inject_failure(self, op_id: str, code: int, message: str) -> bool:
        """Make a running operation fail at its next checkpoint."""
        with self._lock:
            op = self._live.get(op_id)
        if op is None:
            return False
        op.injected_failure = (code, message)
        op.wake.set()
        return True

    def logs(self, op_id: str) -> list[dict[str, Any]] | None:
        with self._lock:
            op = self._live.get(op_id)
        if op is not None:
            with op.lock:
                return list(op.logs)
        with self._lock:
            return self._finished_logs.get(op_id)


def _logs_url(op_name: str) -> str:
    """A Cloud Console log viewer link in the real format; the emulator's own view of the same
    entries is `GET /_emulator/operations/{id}/logs`."""
    project = op_name.split("/")[1]
    op_id = op_name.rsplit("/", 1)[1]
    query = quote(f'resource.type="healthcare_dataset"\noperation.id="{op_id}"', safe="")
    return f"https://console.cloud.google.com/logs/query/query={query}?project={project}"
