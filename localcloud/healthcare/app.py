"""WSGI app: the Healthcare API REST paths (v1 and v1beta1) plus the `/_emulator` control API."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import deletion, dicomweb, errors
from .errors import ApiError, already_exists, invalid_argument, not_found
from .exporter import export_worker, parse_export_request
from .faults import Faults, MethodFault, OperationFault
from .gcs import GcsClient
from .importer import import_worker, parse_import_request
from .operations import Operations
from .stats import Stats
from .store import Store

log = logging.getLogger("localcloud.healthcare")

_ID = r"[^/:]+"
_LOCATION = rf"projects/(?P<project>{_ID})/locations/(?P<location>{_ID})"
_DATASET = rf"{_LOCATION}/datasets/(?P<dataset>{_ID})"
_STORE = rf"{_DATASET}/dicomStores/(?P<store>{_ID})"
_OPERATION = rf"{_DATASET}/operations/(?P<operation>{_ID})"
_DEFAULT_PAGE_SIZE = 100
_MAX_PAGE_SIZE = 1000


class Emulator:
    """Everything a request handler needs; one per app."""

    def __init__(self, data_dir: Path, storage_host: str | None, operation_delay: float) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(data_dir)
        self.gcs = GcsClient(storage_host)
        self.stats = Stats()
        self.faults = Faults()
        self.operations = Operations(self.store, self.stats, self.faults, operation_delay)


@dataclass(frozen=True)
class Call:
    """One matched API request: its version, path parameters and names."""

    version: str
    params: dict[str, str]

    @property
    def location(self) -> str:
        return f"projects/{self.params['project']}/locations/{self.params['location']}"

    @property
    def dataset(self) -> str:
        return f"{self.location}/datasets/{self.params['dataset']}"

    @property
    def store(self) -> str:
        return f"{self.dataset}/dicomStores/{self.params['store']}"


Handler = Callable[[Emulator, Call], Any]
_ROUTES: list[tuple[str, re.Pattern[str], str, Handler]] = []


def route(http_method: str, pattern: str, method: str) -> Callable[[Handler], Handler]:
    """Register an API handler; `method` names it for stats and fault injection."""

    def register(handler: Handler) -> Handler:
        _ROUTES.append((http_method, re.compile(pattern), method, handler))
        return handler

    return register


def _need_dataset(emu: Emulator, call: Call) -> None:
    if emu.store.get_dataset(call.dataset) is None:
        raise not_found(f"dataset {call.dataset} not found")


def _need_store(emu: Emulator, call: Call) -> None:
    if emu.store.get_dicom_store(call.store) is None:
        raise not_found(f"DICOM store {call.store} not found")


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True, force=True) if request.get_data() else {}
    if not isinstance(body, dict):
        raise invalid_argument("the request body must be a JSON object")
    return body


def _page(args: Any) -> tuple[int, int]:
    """(offset, page size) from pageToken/pageSize; our page tokens are plain offsets."""
    token = args.get("pageToken") or "0"
    size = args.get("pageSize") or str(_DEFAULT_PAGE_SIZE)
    if not token.isdigit() or not size.isdigit():
        raise invalid_argument("invalid pageToken or pageSize")
    return int(token), min(int(size) or _DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE)


# --- datasets ------------------------------------------------------------------------------------


@route("POST", rf"{_LOCATION}/datasets", "datasets.create")
def create_dataset(emu: Emulator, call: Call) -> Any:
    dataset_id = request.args.get("datasetId", "")
    if not re.fullmatch(r"[\w.-]{1,256}", dataset_id):
        raise invalid_argument(
            "datasetId is required: letters, digits, '_', '-' and '.', up to 256 characters"
        )
    name = f"{call.location}/datasets/{dataset_id}"
    dataset = {"name": name, "timeZone": str(_body().get("timeZone") or "UTC")}
    if not emu.store.create_dataset(name, dataset["timeZone"]):
        raise already_exists(f"dataset {name} already exists")
    # The real API answers datasets.create with an Operation; this one is already done.
    return emu.operations.completed(
        name, call.version, "dataset.DatasetService", "CreateDataset", "Dataset", dataset
    )


@route("GET", rf"{_LOCATION}/datasets", "datasets.list")
def list_datasets(emu: Emulator, call: Call) -> Any:
    return {"datasets": emu.store.list_datasets(call.location)}


@route("GET", _DATASET, "datasets.get")
def get_dataset(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    return emu.store.get_dataset(call.dataset)


# --- DICOM stores --------------------------------------------------------------------------------


@route("POST", rf"{_DATASET}/dicomStores", "dicomStores.create")
def create_dicom_store(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    store_id = request.args.get("dicomStoreId", "")
    if not re.fullmatch(r"[\w.-]{1,256}", store_id):
        raise invalid_argument(
            "dicomStoreId is required: letters, digits, '_', '-' and '.', up to 256 characters"
        )
    name = f"{call.dataset}/dicomStores/{store_id}"
    labels = _body().get("labels") or {}
    if not emu.store.create_dicom_store(name, call.dataset, labels):
        raise already_exists(f"DICOM store {name} already exists")
    return emu.store.get_dicom_store(name)


@route("GET", rf"{_DATASET}/dicomStores", "dicomStores.list")
def list_dicom_stores(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    return {"dicomStores": emu.store.list_dicom_stores(call.dataset)}


@route("GET", _STORE, "dicomStores.get")
def get_dicom_store(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    return emu.store.get_dicom_store(call.store)


@route("DELETE", _STORE, "dicomStores.delete")
def delete_dicom_store(emu: Emulator, call: Call) -> Any:
    if not emu.store.delete_dicom_store(call.store):
        raise not_found(f"DICOM store {call.store} not found")
    return {}


@route("POST", rf"{_STORE}:import", "import")
def import_dicom(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    pattern, storage_class = parse_import_request(_body())
    worker = import_worker(emu.store, emu.gcs, emu.stats, call.store, pattern, storage_class)
    return emu.operations.start(call.dataset, call.version, "ImportDicomData", worker)


@route("POST", rf"{_STORE}:export", "export")
def export_dicom(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    worker = export_worker(emu.store, emu.gcs, call.store, parse_export_request(_body()))
    return emu.operations.start(call.dataset, call.version, "ExportDicomData", worker)


@route("GET", rf"{_STORE}/dicomWeb/(?P<rest>.+)", "dicomWeb")
@route("POST", rf"{_STORE}/dicomWeb/(?P<rest>.+)", "dicomWeb")
def dicom_web(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    return dicomweb.handle(emu.store, call.store, call.params["rest"], request)


@route("DELETE", rf"{_STORE}/dicomWeb/(?P<rest>.+)", "dicomWeb")
def delete_dicom_web(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    return deletion.delete(emu.store, emu.operations, call.store, call.dataset, call.version, call.params["rest"])


# --- operations ----------------------------------------------------------------------------------


@route("GET", rf"{_DATASET}/operations", "operations.list")
def list_operations(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    offset, size = _page(request.args)
    # One extra row tells whether another page exists.
    operations = emu.operations.list_page(call.dataset, offset, size + 1)
    body: dict[str, Any] = {"operations": operations[:size]}
    if len(operations) > size:
        body["nextPageToken"] = str(offset + size)
    return body


@route("GET", _OPERATION, "operations.get")
def get_operation(emu: Emulator, call: Call) -> Any:
    operation = emu.operations.get(call.dataset, call.params["operation"])
    if operation is None:
        raise not_found(f"operation {call.dataset}/operations/{call.params['operation']} not found")
    return operation


@route("POST", rf"{_OPERATION}:cancel", "operations.cancel")
def cancel_operation(emu: Emulator, call: Call) -> Any:
    if not emu.operations.cancel(call.dataset, call.params["operation"]):
        raise not_found(f"operation {call.dataset}/operations/{call.params['operation']} not found")
    return {}


# --- dispatch and control API --------------------------------------------------------------------


def _dispatch(emu: Emulator, version: str, path: str) -> Response:
    path_matched = False
    for http_method, pattern, method, handler in _ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        path_matched = True
        if http_method != request.method:
            continue
        params = match.groupdict()
        if method == "dicomWeb":
            method = dicomweb.method_for(request.method, params["rest"])
        emu.stats.count_call(method)
        emu.faults.before_call(method)
        result = handler(emu, Call(version, params))
        return result if isinstance(result, Response) else jsonify(result)
    if path_matched:
        raise ApiError(405, f"method {request.method} is not allowed on /{version}/{path}")
    raise not_found(f"unknown path /{version}/{path}")


def create_app(data_dir: Path, *, storage_host: str | None = None, operation_delay: float = 0.0) -> Flask:
    """The emulator as a WSGI app. `storage_host` defaults to STORAGE_EMULATOR_HOST."""
    emu = Emulator(Path(data_dir), storage_host, operation_delay)
    app = Flask("localcloud.healthcare")
    app.extensions["healthcare_emulator"] = emu

    @app.route("/<any(v1, v1beta1):version>/<path:path>", methods=["GET", "POST", "DELETE", "PATCH", "PUT"])
    def api(version: str, path: str) -> Response:
        return _dispatch(emu, version, path)

    @app.get("/_emulator/healthz")
    def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/_emulator/stats")
    def stats() -> Any:
        return emu.stats.snapshot()

    @app.post("/_emulator/reset")
    def reset() -> Any:
        body = _body()
        emu.stats.reset()
        emu.faults.clear()
        if body.get("data"):
            emu.store.clear()
        return {}

    @app.get("/_emulator/config")
    def get_config() -> Any:
        return {"operationDelaySeconds": emu.operations.delay_seconds}

    @app.post("/_emulator/config")
    def set_config() -> Any:
        body = _body()
        if "operationDelaySeconds" in body:
            emu.operations.delay_seconds = float(body["operationDelaySeconds"])
        return {"operationDelaySeconds": emu.operations.delay_seconds}

    @app.get("/_emulator/faults")
    def list_faults() -> Any:
        return emu.faults.snapshot()

    @app.post("/_emulator/faults")
    def add_fault() -> Any:
        emu.faults.add_method_fault(MethodFault.from_json(_body()))
        return emu.faults.snapshot()

    @app.post("/_emulator/faults/operations")
    def add_operation_fault() -> Any:
        body = _body()
        code = int(body.get("code", errors.RPC_INTERNAL))
        message = str(body.get("message") or "injected operation failure")
        emu.faults.add_operation_fault(OperationFault(int(body.get("count", 1)), code, message))
        return emu.faults.snapshot()

    @app.delete("/_emulator/faults")
    def clear_faults() -> Any:
        emu.faults.clear()
        return emu.faults.snapshot()

    @app.post("/_emulator/operations/<op_id>:fail")
    def fail_operation(op_id: str) -> Any:
        body = _body()
        code = int(body.get("code", errors.RPC_INTERNAL))
        if not emu.operations.inject_failure(
            op_id, code, str(body.get("message") or "injected operation failure")
        ):
            raise not_found(f"no running operation {op_id}")
        return {}

    @app.get("/_emulator/operations/<op_id>/logs")
    def operation_logs(op_id: str) -> Any:
        entries = emu.operations.logs(op_id)
        if entries is None:
            raise not_found(f"no logs for operation {op_id} in this process")
        return {"entries": entries}

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _error_response(ApiError(exc.code or 500, exc.description or exc.name))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(ApiError(500, "internal error in the emulator (see its log)"))

    return app


def _error_response(exc: ApiError) -> Response:
    response = jsonify(exc.body())
    response.status_code = exc.http_code
    return response
