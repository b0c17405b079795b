"""Google's proprietary DICOMweb deletes (DICOM conformance statement, "Deletion").

DELETE on a study or series path starts a long-running operation that deletes every instance in
it ("instances cannot be inserted into a study or series that is being deleted by an operation
until the operation completes"); DELETE on an instance path answers `{}`. The operation is
`google.cloud.healthcare.v1.dicomweb.DicomWebService.DeleteStudy` (or `DeleteSeries`) and ends
with a `google.protobuf.Empty` response, as in Google's DICOMweb guide.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .errors import ApiError, not_found
from .operations import OperationContext, Operations
from .store import Store

_UID = r"([0-9.]+)"
_DELETE = re.compile(rf"studies/{_UID}(?:/series/{_UID}(?:/instances/{_UID})?)?")


class DeleteGuard:
    """Studies and series of a store with a delete operation in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str, str | None], Callable[[], bool]] = {}

    def begin(self, store_name: str, study: str, series: str | None, finished: Callable[[], bool]) -> None:
        with self._lock:
            self._active[(store_name, study, series)] = finished

    def blocks(self, store_name: str, study: str, series: str) -> bool:
        """Is a delete of this instance's study or series still running?"""
        with self._lock:
            for key in ((store_name, study, None), (store_name, study, series)):
                finished = self._active.get(key)
                if finished is None:
                    continue
                if not finished():
                    return True
                del self._active[key]
            return False


_GUARDS: weakref.WeakKeyDictionary[Store, DeleteGuard] = weakref.WeakKeyDictionary()
_GUARDS_LOCK = threading.Lock()


def guard_for(store: Store) -> DeleteGuard:
    with _GUARDS_LOCK:
        return _GUARDS.setdefault(store, DeleteGuard())


def delete(store: Store, operations: Operations, store_name: str, dataset: str, version: str, rest: str) -> Any:
    match = _DELETE.fullmatch(rest)
    if match is None:
        raise ApiError(405, f"DELETE is supported on study, series and instance paths, not {rest!r}")
    study, series, sop = match.groups()
    if not store.instances(store_name, study, series, sop):
        raise not_found(f"no DICOM resource at {rest!r}")
    if sop is not None:
        store.delete_instances(store_name, study, series, sop)
        return {}

    def worker(ctx: OperationContext) -> None:
        ctx.checkpoint()
        store.delete_instances(store_name, study, series)

    method = "DeleteSeries" if series else "DeleteStudy"
    operation = operations.start(
        dataset, version, method, worker, service="dicomweb.DicomWebService", response_type="google.protobuf.Empty"
    )
    op_id = operation["name"].rsplit("/", 1)[1]
    guard_for(store).begin(
        store_name, study, series, lambda: bool((operations.get(dataset, op_id) or {"done": True}).get("done"))
    )
    return operation
