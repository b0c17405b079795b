"""Fault injection for reliability tests: fail or slow down the next N calls of a method, and
make the next N operations fail. Driven by the control API (`/_emulator/faults`)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ApiError, invalid_argument

# Method names a fault can target ("*" = any of them).
METHODS = (
    "datasets.create",
    "datasets.get",
    "datasets.list",
    "dicomStores.create",
    "dicomStores.get",
    "dicomStores.list",
    "dicomStores.delete",
    "dicomStores.patch",
    "datasets.patch",
    "datasets.delete",
    "getDICOMStoreMetrics",
    "getStudyMetrics",
    "getSeriesMetrics",
    "setBlobStorageSettings",
    "getIamPolicy",
    "setIamPolicy",
    "testIamPermissions",
    "import",
    "export",
    "operations.get",
    "operations.list",
    "operations.cancel",
    "dicomWeb.search",
    "dicomWeb.retrieve",
    "dicomWeb.store",
    "getStorageInfo",
)
_FAULT_STATUSES = (429, 500, 503)


@dataclass
class MethodFault:
    method: str
    remaining: int
    status: int | None  # None: only delay, then answer normally
    delay_seconds: float

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> MethodFault:
        method = body.get("method", "*")
        if method != "*" and method not in METHODS:
            raise invalid_argument(f"unknown method {method!r}; one of {', '.join(METHODS)} or '*'")
        status = body.get("status")
        if status is not None and status not in _FAULT_STATUSES:
            raise invalid_argument(f"status must be one of {_FAULT_STATUSES}")
        delay = float(body.get("delaySeconds", 0))
        if status is None and delay <= 0:
            raise invalid_argument("a fault needs a status, a positive delaySeconds, or both")
        return cls(method, int(body.get("count", 1)), status, delay)


@dataclass
class OperationFault:
    remaining: int
    code: int
    message: str


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._method_faults: list[MethodFault] = []
        self._operation_faults: list[OperationFault] = []

    def add_method_fault(self, fault: MethodFault) -> None:
        with self._lock:
            self._method_faults.append(fault)

    def add_operation_fault(self, fault: OperationFault) -> None:
        with self._lock:
            self._operation_faults.append(fault)

    def before_call(self, method: str) -> None:
        """Apply the first matching fault, if any: sleep, then raise the injected error."""
        with self._lock:
            fault = next((f for f in self._method_faults if f.method in (method, "*")), None)
            if fault is None:
                return
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._method_faults.remove(fault)
        if fault.delay_seconds > 0:
            time.sleep(fault.delay_seconds)
        if fault.status is not None:
            raise ApiError(fault.status, f"injected fault for {method}")

    def take_operation_failure(self) -> tuple[int, str] | None:
        with self._lock:
            if not self._operation_faults:
                return None
            fault = self._operation_faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._operation_faults.pop(0)
            return fault.code, fault.message

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "methods": [asdict(f) for f in self._method_faults],
                "operations": [asdict(f) for f in self._operation_faults],
            }

    def clear(self) -> None:
        with self._lock:
            self._method_faults.clear()
            self._operation_faults.clear()
