"""WSGI app: the Healthcare API REST paths (v1 and v1beta1) plus the `/_emulator` control API."""

from __future__ import annotations

import json
import logging
import os
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import deletion, dicomweb, errors, iam, management, sysparams
from .body import parse_json, parse_request
from .bqsink import BigQuerySink
from .discovery import VERSIONS, discovery
from .errors import ApiError, already_exists, invalid_argument, not_found, unimplemented
from .exporter import BigQueryExportRequest, bigquery_export_worker, export_worker, parse_export_request
from .faults import Faults, MethodFault, OperationFault
from .gcs import GcsClient
from .importer import import_worker, parse_import_request
from .listfilter import compile_filter
from .notifications import Notifier
from .operations import Operations
from .stats import Stats
from .store import Store
from .streaming import Streamer

log = logging.getLogger("localcloud.healthcare")

_ID = r"[^/:]+"
_LOCATION = rf"projects/(?P<project>{_ID})/locations/(?P<location>{_ID})"
_DATASET = rf"{_LOCATION}/datasets/(?P<dataset>{_ID})"
_STORE = rf"{_DATASET}/dicomStores/(?P<store>{_ID})"
_OPERATION = rf"{_DATASET}/operations/(?P<operation>{_ID})"
_README = "localcloud/healthcare/README.md"
_MISSING_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_INVALID_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
    "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


class Emulator:
    """Everything a request handler needs; one per app."""

    def __init__(
        self,
        data_dir: Path,
        storage_host: str | None,
        operation_delay: float,
        pubsub_host: str | None = None,
        require_auth: bool = False,
        bigquery_url: str | None = None,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # BigQuery destinations (exports, stream configs) are written there; None: refused.
        self.bigquery_url = bigquery_url or os.environ.get("BIGQUERY_EMULATOR_URL") or None
        self.bigquery = BigQuerySink(self.bigquery_url) if self.bigquery_url else None
        self.store = Store(data_dir)
        self.gcs = GcsClient(storage_host)
        self.stats = Stats()
        self.faults = Faults()
        self.operations = Operations(self.store, self.stats, self.faults, operation_delay)
        self.require_auth = require_auth
        self.notifier = Notifier(pubsub_host)
        for name, config in self.store.all_store_configs():
            self.notifier.configure(name, config)
        self.store.add_instance_listener(self.notifier.instance_stored)
        self.streamer = Streamer(self.store, self.bigquery)
        self.store.add_instance_listener(self.streamer.instance_stored)


@dataclass(frozen=True)
class Call:
    """One matched API request: its version, path parameters, checked JSON body and names."""

    version: str
    params: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)

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


@dataclass(frozen=True)
class Route:
    http_method: str
    pattern: re.Pattern[str]
    method: str  # name for stats and fault injection
    handler: Handler
    api: str | None  # discovery method id: its request schema and query parameters are checked


_ROUTES: list[Route] = []


def route(http_method: str, pattern: str, method: str, api: str | None = None) -> Callable[[Handler], Handler]:
    """Register an API handler; `method` names it for stats and fault injection; `api` is the
    discovery method (e.g. "datasets.dicomStores.import") whose request body and query parameters
    Google's front end checks before the method runs. DICOMweb routes (HttpBody) have none."""

    def register(handler: Handler) -> Handler:
        _ROUTES.append(Route(http_method, re.compile(pattern), method, handler, api))
        return handler

    return register


def _need_dataset(emu: Emulator, call: Call) -> None:
    if emu.store.get_dataset(call.dataset) is None:
        raise not_found(f"dataset {call.dataset} not found")


def _need_store(emu: Emulator, call: Call) -> None:
    if emu.store.get_dicom_store(call.store) is None:
        raise not_found(f"DICOM store {call.store} not found")


def _body() -> dict[str, Any]:
    """The control API's body (lenient JSON, no schema)."""
    body = parse_json(request.get_data())
    if not isinstance(body, dict):
        raise invalid_argument("the request body must be a JSON object")
    return body


# --- datasets ------------------------------------------------------------------------------------


@route("POST", rf"{_LOCATION}/datasets", "datasets.create", api="datasets.create")
def create_dataset(emu: Emulator, call: Call) -> Any:
    dataset_id = request.args.get("datasetId", "")
    if not re.fullmatch(r"[\w.-]{1,256}", dataset_id):
        raise invalid_argument(
            "datasetId is required: letters, digits, '_', '-' and '.', up to 256 characters"
        )
    name = f"{call.location}/datasets/{dataset_id}"
    time_zone = _checked_time_zone(call.body.get("timeZone") or "UTC")
    dataset = {"name": name, "timeZone": time_zone}
    if not emu.store.create_dataset(name, time_zone):
        raise already_exists(f"dataset {name} already exists")
    # The real API answers datasets.create with an Operation; this one is already done.
    return emu.operations.completed(
        name, call.version, "dataset.DatasetService", "CreateDataset", "Dataset", dataset
    )


def _checked_time_zone(time_zone: str) -> str:
    try:
        zoneinfo.ZoneInfo(time_zone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise invalid_argument(f"invalid time_zone {time_zone!r}: an IANA time zone name") from None
    return time_zone


@route("GET", rf"{_LOCATION}/datasets", "datasets.list", api="datasets.list")
def list_datasets(emu: Emulator, call: Call) -> Any:
    offset, size = management.page_request(request.args)
    return management.page(emu.store.list_datasets(call.location), offset, size, "datasets")


@route("GET", _DATASET, "datasets.get", api="datasets.get")
def get_dataset(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    return emu.store.get_dataset(call.dataset)


@route("PATCH", _DATASET, "datasets.patch", api="datasets.patch")
def patch_dataset(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    paths = [p.strip() for p in request.args.get("updateMask", "").split(",") if p.strip()]
    if not paths:
        raise invalid_argument("updateMask is required: the Dataset fields to update")
    for path in paths:
        if path not in ("timeZone", "time_zone"):
            raise invalid_argument(f"updateMask: field {path!r} cannot be updated")
    emu.store.set_dataset_time_zone(call.dataset, _checked_time_zone(call.body.get("timeZone") or "UTC"))
    return emu.store.get_dataset(call.dataset)


@route("DELETE", _DATASET, "datasets.delete", api="datasets.delete")
def delete_dataset(emu: Emulator, call: Call) -> Any:
    stores = [s["name"] for s in emu.store.list_dicom_stores(call.dataset)]
    if not emu.store.delete_dataset(call.dataset):
        raise not_found(f"dataset {call.dataset} not found")
    for store in stores:
        emu.notifier.forget(store)
    return {}


# --- IAM policies (datasets and DICOM stores) -----------------------------------------------------


def _iam_resource(emu: Emulator, call: Call) -> str:
    if "store" in call.params:
        _need_store(emu, call)
        return call.store
    _need_dataset(emu, call)
    return call.dataset


@route("GET", rf"{_DATASET}:getIamPolicy", "getIamPolicy", api="datasets.getIamPolicy")
@route("GET", rf"{_STORE}:getIamPolicy", "getIamPolicy", api="datasets.dicomStores.getIamPolicy")
def get_iam_policy(emu: Emulator, call: Call) -> Any:
    resource = _iam_resource(emu, call)
    return iam.get_policy(emu.store, resource, request.args.get("options.requestedPolicyVersion"))


@route("POST", rf"{_DATASET}:setIamPolicy", "setIamPolicy", api="datasets.setIamPolicy")
@route("POST", rf"{_STORE}:setIamPolicy", "setIamPolicy", api="datasets.dicomStores.setIamPolicy")
def set_iam_policy(emu: Emulator, call: Call) -> Any:
    return iam.set_policy(emu.store, _iam_resource(emu, call), call.body)


@route("POST", rf"{_DATASET}:testIamPermissions", "testIamPermissions", api="datasets.testIamPermissions")
@route("POST", rf"{_STORE}:testIamPermissions", "testIamPermissions", api="datasets.dicomStores.testIamPermissions")
def test_iam_permissions(emu: Emulator, call: Call) -> Any:
    _iam_resource(emu, call)
    return iam.test_permissions(call.body)


# --- DICOM stores --------------------------------------------------------------------------------


@route("POST", rf"{_DATASET}/dicomStores", "dicomStores.create", api="datasets.dicomStores.create")
def create_dicom_store(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    store_id = request.args.get("dicomStoreId", "")
    if not re.fullmatch(r"[\w.-]{1,256}", store_id):
        raise invalid_argument(
            "dicomStoreId is required: letters, digits, '_', '-' and '.', up to 256 characters"
        )
    name = f"{call.dataset}/dicomStores/{store_id}"
    labels, config = management.checked_store_fields(call.body)
    if not emu.store.create_dicom_store(name, call.dataset, labels):
        raise already_exists(f"DICOM store {name} already exists")
    return _save_store(emu, name, labels, config)


def _save_store(emu: Emulator, name: str, labels: dict[str, str], config: dict[str, Any]) -> Any:
    emu.store.set_store_config(name, config, labels)
    if config.get("streamConfigs") and emu.bigquery is None:
        log.warning("%s: streamConfigs are kept but nothing is streamed (no --bigquery-url)", name)
    resource = management.store_resource(emu.store, name)
    assert resource is not None
    emu.notifier.configure(name, resource)
    return management.proto3_json(resource)


@route("GET", rf"{_DATASET}/dicomStores", "dicomStores.list", api="datasets.dicomStores.list")
def list_dicom_stores(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    offset, size = management.page_request(request.args)
    stores = [management.store_resource(emu.store, s["name"]) for s in emu.store.list_dicom_stores(call.dataset)]
    if request.args.get("filter"):
        predicate = compile_filter(
            request.args["filter"], lambda path: len(path) == 2 and path[0] == "labels", contains_text=False
        )
        stores = [s for s in stores if s is not None and predicate(s)]
    return management.page([management.proto3_json(s) for s in stores], offset, size, "dicomStores")


@route("GET", _STORE, "dicomStores.get", api="datasets.dicomStores.get")
def get_dicom_store(emu: Emulator, call: Call) -> Any:
    resource = management.store_resource(emu.store, call.store)
    if resource is None:
        raise not_found(f"DICOM store {call.store} not found")
    return management.proto3_json(resource)


@route("PATCH", _STORE, "dicomStores.patch", api="datasets.dicomStores.patch")
def patch_dicom_store(emu: Emulator, call: Call) -> Any:
    current = management.store_resource(emu.store, call.store)
    if current is None:
        raise not_found(f"DICOM store {call.store} not found")
    updated = management.patched_store(current, call.body, request.args.get("updateMask", ""))
    labels, config = management.checked_store_fields(updated)
    return _save_store(emu, call.store, labels, config)


@route("DELETE", _STORE, "dicomStores.delete", api="datasets.dicomStores.delete")
def delete_dicom_store(emu: Emulator, call: Call) -> Any:
    if not emu.store.delete_dicom_store(call.store):
        raise not_found(f"DICOM store {call.store} not found")
    emu.store.forget_resource(call.store)
    emu.notifier.forget(call.store)
    return {}


@route("POST", rf"{_STORE}:import", "import", api="datasets.dicomStores.import")
def import_dicom(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    pattern, storage_class = parse_import_request(call.body)
    worker = import_worker(emu.store, emu.gcs, emu.stats, call.store, pattern, storage_class)
    return emu.operations.start(call.dataset, call.version, "ImportDicomData", worker, resource=call.store)


@route("POST", rf"{_STORE}:export", "export", api="datasets.dicomStores.export")
def export_dicom(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    request = parse_export_request(call.body, call.store.split("/")[1])
    if isinstance(request, BigQueryExportRequest):
        worker = bigquery_export_worker(emu.store, emu.gcs, emu.bigquery, call.store, request)
    else:
        worker = export_worker(emu.store, emu.gcs, call.store, request)
    return emu.operations.start(call.dataset, call.version, "ExportDicomData", worker, resource=call.store)


@route(
    "GET", rf"{_STORE}:getDICOMStoreMetrics", "getDICOMStoreMetrics", api="datasets.dicomStores.getDICOMStoreMetrics"
)
def dicom_store_metrics(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    return {"name": call.store, **management.metrics_json(emu.store.metrics(call.store))}


_STUDY = rf"{_STORE}/dicomWeb/studies/(?P<study>[^/:]+)"


@route(
    "GET", rf"{_STUDY}:getStudyMetrics", "getStudyMetrics", api="datasets.dicomStores.dicomWeb.studies.getStudyMetrics"
)
def study_metrics(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    study = call.params["study"]
    counts = emu.store.metrics(call.store, study)
    if not counts["instances"]:
        raise not_found(f"study {study} not found in {call.store}")
    body = management.metrics_json(counts, with_studies=False)
    return {"study": f"{call.store}/dicomWeb/studies/{study}", **body}


@route(
    "GET",
    rf"{_STUDY}/series/(?P<series>[^/:]+):getSeriesMetrics",
    "getSeriesMetrics",
    api="datasets.dicomStores.dicomWeb.studies.series.getSeriesMetrics",
)
def series_metrics(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    study, series = call.params["study"], call.params["series"]
    counts = emu.store.metrics(call.store, study, series)
    if not counts["instances"]:
        raise not_found(f"series {series} of study {study} not found in {call.store}")
    body = management.metrics_json(counts, with_studies=False, with_series=False)
    return {"series": f"{call.store}/dicomWeb/studies/{study}/series/{series}", **body}


@route(
    "POST",
    rf"{_STORE}:setBlobStorageSettings",
    "setBlobStorageSettings",
    api="datasets.dicomStores.setBlobStorageSettings",
)
@route(
    "POST",
    rf"{_STUDY}:setBlobStorageSettings",
    "setBlobStorageSettings",
    api="datasets.dicomStores.dicomWeb.studies.setBlobStorageSettings",
)
def set_blob_storage_settings(emu: Emulator, call: Call) -> Any:
    _need_store(emu, call)
    study = call.params.get("study")
    storage_class, filter_uri = management.parse_blob_settings(call.body, store_level=study is None)
    if study is not None and not emu.store.metrics(call.store, study)["instances"]:
        raise not_found(f"study {study} not found in {call.store}")
    worker = management.blob_settings_worker(
        emu.store, emu.gcs, emu.notifier, call.store, study, storage_class, filter_uri
    )
    return emu.operations.start(call.dataset, call.version, "SetBlobStorageSettings", worker)


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


@route("GET", rf"{_DATASET}/operations", "operations.list", api="datasets.operations.list")
def list_operations(emu: Emulator, call: Call) -> Any:
    _need_dataset(emu, call)
    offset, size = management.page_request(request.args)
    expression = request.args.get("filter", "")
    if not expression:
        # One extra row tells whether another page exists.
        operations = emu.operations.list_page(call.dataset, offset, size + 1)
        body: dict[str, Any] = {"operations": operations[:size]} if operations else {}
        if len(operations) > size:
            body["nextPageToken"] = management.page_token(offset + size)
        return body
    schema = discovery(call.version).schemas
    predicate = compile_filter(expression, lambda path: _is_operation_field(schema, path))
    matching = [op for op in emu.operations.list_page(call.dataset, 0, 1 << 62) if predicate(op)]
    return management.page(matching, offset, size, "operations")


def _is_operation_field(schemas: dict[str, Any], path: list[str]) -> bool:
    """A path into Operation (and its OperationMetadata), in either proto3 spelling."""
    schema = schemas["Operation"]
    for depth, name in enumerate(path):
        properties = schema.get("properties", {})
        camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)
        if camel not in properties:
            return False
        prop = properties[camel]
        if camel == "metadata" and depth == 0:
            schema = schemas["OperationMetadata"]
        elif "$ref" in prop:
            schema = schemas[prop["$ref"]]
        elif depth < len(path) - 1 and prop.get("type") not in ("object", "any"):
            return False
        else:
            schema = {}
    return True


@route("GET", _OPERATION, "operations.get", api="datasets.operations.get")
def get_operation(emu: Emulator, call: Call) -> Any:
    operation = emu.operations.get(call.dataset, call.params["operation"])
    if operation is None:
        raise not_found(f"operation {call.dataset}/operations/{call.params['operation']} not found")
    return operation


@route("POST", rf"{_OPERATION}:cancel", "operations.cancel", api="datasets.operations.cancel")
def cancel_operation(emu: Emulator, call: Call) -> Any:
    if not emu.operations.cancel(call.dataset, call.params["operation"]):
        raise not_found(f"operation {call.dataset}/operations/{call.params['operation']} not found")
    return {}


# --- dispatch and control API --------------------------------------------------------------------


def _dispatch(emu: Emulator, version: str, path: str) -> Response:
    api = discovery(version)
    system, own_args = sysparams.split(request.args, api.system_parameters)
    # Google's front end consumes the system parameters; methods see only their own.
    request.args = own_args  # type: ignore[misc]
    if emu.require_auth:
        _authenticate(system)
    path_matched = False
    for route_ in _ROUTES:
        match = route_.pattern.fullmatch(path)
        if match is None:
            continue
        path_matched = True
        if route_.http_method != request.method:
            continue
        params = match.groupdict()
        method = route_.method
        if method == "dicomWeb":
            method = dicomweb.method_for(request.method, params["rest"])
        body = _checked_request(api.method(route_.api), version) if route_.api else {}
        emu.stats.count_call(method)
        emu.faults.before_call(method)
        result = route_.handler(emu, Call(version, params, body))
        return result if isinstance(result, Response) else _json(result, system)
    known = api.match(request.method, path)
    if known is not None:
        raise unimplemented(
            f"{known.full_id} is not emulated (see {_README}, 'deliberately not emulated')"
        )
    if path_matched:
        raise ApiError(405, f"method {request.method} is not allowed on /{version}/{path}")
    raise not_found(f"unknown path /{version}/{path}")


def _checked_request(method: Any, version: str) -> dict[str, Any]:
    """What Google's front end checks before the method runs: query parameters the method does not
    declare, and the body against the method's request message."""
    unknown = [key for key in request.args if key not in method.parameters]
    if unknown:
        key = unknown[0]
        raise invalid_argument(
            f'Invalid JSON payload received. Unknown name "{key}": Cannot bind query parameter. '
            f"Field '{key}' could not be found in request message."
        )
    if method.request is None:
        return {}
    return parse_request(request.get_data(), discovery(version), method.request)


def _authenticate(system: sysparams.SystemParameters) -> None:
    header = request.headers.get("Authorization", "")
    if not header and not system.access_token:
        raise ApiError(
            401,
            _MISSING_CREDENTIALS,
            details=[_error_info("CREDENTIALS_MISSING")],
            headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
        )
    scheme, _, token = header.partition(" ")
    if header and (scheme.lower() != "bearer" or not token.strip()):
        raise ApiError(
            401,
            _INVALID_CREDENTIALS,
            details=[_error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED")],
            headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
        )


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "healthcare.googleapis.com"},
    }


def _json(result: Any, system: sysparams.SystemParameters) -> Response:
    if system.fields is not None:
        result = sysparams.select(result, system.fields)
    text = json.dumps(result, indent=2 if system.pretty_print else None)
    return Response(text + "\n", 200, content_type="application/json; charset=UTF-8")


def create_app(
    data_dir: Path,
    *,
    storage_host: str | None = None,
    operation_delay: float = 0.0,
    pubsub_host: str | None = None,
    require_auth: bool = False,
    bigquery_url: str | None = None,
) -> Flask:
    """The emulator as a WSGI app. `storage_host` defaults to STORAGE_EMULATOR_HOST, `pubsub_host`
    (where store notifications go) to PUBSUB_EMULATOR_HOST; `require_auth` answers 401 to API
    calls without a bearer token, as Google does; `bigquery_url` (default: BIGQUERY_EMULATOR_URL) is
    the local BigQuery that BigQuery exports and stream configs write to."""
    emu = Emulator(Path(data_dir), storage_host, operation_delay, pubsub_host, require_auth, bigquery_url)
    app = Flask("localcloud.healthcare")
    app.extensions["healthcare_emulator"] = emu

    @app.route(f"/<any({', '.join(VERSIONS)}):version>/<path:path>", methods=["GET", "POST", "DELETE", "PATCH", "PUT"])
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
            emu.store.clear_management()
        return {}

    @app.get("/_emulator/notifications")
    def notifications() -> Any:
        return emu.notifier.snapshot()

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

    @app.post("/_emulator/operations/<op_id>:release")
    def release_operation(op_id: str) -> Any:
        if not emu.operations.release(op_id):
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
    response.headers.update(exc.headers)
    return response
