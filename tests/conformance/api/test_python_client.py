"""google-api-python-client, built from its bundled discovery documents, calls every method of the
Healthcare API (v1 and v1beta1) against the emulator:

- each method the emulator serves is called with valid arguments and its answer checked against
  the method's response schema (every field it returns is one the schema declares);
- each method it deliberately does not serve answers 501 UNIMPLEMENTED naming the method;
- the DICOMweb methods that the DICOMweb conformance suite (tests/conformance/dicomweb) owns answer
  through the client without an unexpected server error.

A method the discovery document gains that is in none of these lists fails the test: the lists
are the emulator's declared coverage (see localcloud/healthcare/README.md).
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httplib2
import pydicom
import pytest
import requests
from google.cloud import storage
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.model import RawModel

from localcloud.healthcare.discovery import discovery
from tests.conformance.api.conftest import LOCATION, PROJECT, Emulators, StoreRef, create_store, stow, wait_for
from tests.dicom_factory import instance

VERSIONS = ("v1", "v1beta1")
_P = "datasets.dicomStores"

# Served by the emulator: called with valid arguments below.
SERVED = {
    "datasets.create",
    "datasets.delete",
    "datasets.get",
    "datasets.list",
    "datasets.patch",
    "datasets.getIamPolicy",
    "datasets.setIamPolicy",
    "datasets.testIamPermissions",
    f"{_P}.create",
    f"{_P}.delete",
    f"{_P}.get",
    f"{_P}.list",
    f"{_P}.patch",
    f"{_P}.import",
    f"{_P}.export",
    f"{_P}.getDICOMStoreMetrics",
    f"{_P}.setBlobStorageSettings",
    f"{_P}.getIamPolicy",
    f"{_P}.setIamPolicy",
    f"{_P}.testIamPermissions",
    f"{_P}.searchForStudies",
    f"{_P}.searchForSeries",
    f"{_P}.searchForInstances",
    f"{_P}.storeInstances",
    f"{_P}.dicomWeb.studies.getStudyMetrics",
    f"{_P}.dicomWeb.studies.setBlobStorageSettings",
    f"{_P}.dicomWeb.studies.series.getSeriesMetrics",
    f"{_P}.dicomWeb.studies.series.instances.getStorageInfo",
    f"{_P}.studies.retrieveMetadata",
    f"{_P}.studies.retrieveStudy",
    f"{_P}.studies.searchForInstances",
    f"{_P}.studies.searchForSeries",
    f"{_P}.studies.storeInstances",
    f"{_P}.studies.series.retrieveMetadata",
    f"{_P}.studies.series.retrieveSeries",
    f"{_P}.studies.series.searchForInstances",
    f"{_P}.studies.series.instances.retrieveInstance",
    f"{_P}.studies.series.instances.retrieveMetadata",
    "datasets.operations.get",
    "datasets.operations.list",
    "datasets.operations.cancel",
}
# DICOMweb methods whose behaviour the DICOMweb conformance suite checks.
DICOMWEB_ELSEWHERE = {
    f"{_P}.studies.delete",
    f"{_P}.studies.series.delete",
    f"{_P}.studies.series.instances.delete",
    f"{_P}.studies.series.instances.retrieveRendered",
    f"{_P}.studies.series.instances.frames.retrieveFrames",
    f"{_P}.studies.series.instances.frames.retrieveRendered",
    f"{_P}.studies.series.instances.bulkdata.retrieveBulkdata",
}
# Deliberately not emulated (README: "deliberately not emulated"): 501 UNIMPLEMENTED.
NOT_EMULATED_RESOURCES = (
    "locations.",  # locations.get / locations.list: no location catalogue locally
    "services.",  # the Healthcare Natural Language API
    "datasets.fhirStores.",
    "datasets.hl7V2Stores.",
    "datasets.consentStores.",
    "datasets.dataMapperWorkspaces.",
    "datasets.annotationStores.",
)
NOT_EMULATED_METHODS = {
    "datasets.deidentify",
    f"{_P}.deidentify",
    # v1beta1 only
    f"{_P}.updateInstances",
    f"{_P}.studies.updateInstances",
    f"{_P}.studies.updateMetadata",
    f"{_P}.studies.series.updateMetadata",
    f"{_P}.studies.series.instances.updateMetadata",
}


def classify(method_id: str) -> str:
    if method_id in SERVED:
        return "served"
    if method_id in DICOMWEB_ELSEWHERE:
        return "dicomweb"
    if method_id in NOT_EMULATED_METHODS or method_id.startswith(NOT_EMULATED_RESOURCES):
        return "not emulated"
    return "unclassified"


@dataclass
class Context:
    emulators: Emulators
    version: str
    store: StoreRef
    study: str
    series: str
    sop: str
    operation: str
    bucket: storage.Bucket

    def service(self, raw: bool = False) -> Any:
        return build(
            "healthcare",
            self.version,
            client_options={"api_endpoint": self.emulators.healthcare},
            http=httplib2.Http(),
            static_discovery=True,
            **({"model": RawModel()} if raw else {}),
        )


@pytest.fixture(scope="module", params=VERSIONS)
def context(request: pytest.FixtureRequest, emulators: Emulators) -> Iterator[Context]:
    store = create_store(emulators.healthcare)
    data = instance()
    stow(store, data)
    stored = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    study, series, sop = (str(stored.StudyInstanceUID), str(stored.SeriesInstanceUID), str(stored.SOPInstanceUID))
    bucket = emulators.storage().create_bucket(f"b-{uuid.uuid4().hex[:12]}")
    bucket.blob("in/a.dcm").upload_from_string(data)
    bucket.blob("filter.txt").upload_from_string(f"/studies/{study}\n")
    # A finished operation to read and cancel: the dataset's own datasets.create.
    listed = requests.get(f"{emulators.healthcare}/v1/{store.dataset}/operations", timeout=10).json()
    yield Context(emulators, request.param, store, study, series, sop, listed["operations"][0]["name"], bucket)


def _id() -> str:
    return uuid.uuid4().hex[:10]


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
    body += f"\r\n--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def recipe(ctx: Context, method_id: str) -> Any:
    """The client request of a served method, with valid arguments."""
    service = ctx.service(raw=_returns_http_body(ctx.version, method_id))
    datasets = service.projects().locations().datasets()
    stores = datasets.dicomStores()
    location = f"projects/{PROJECT}/locations/{LOCATION}"
    store, dataset = ctx.store.name, ctx.store.dataset
    study_path = f"studies/{ctx.study}"
    series_path = f"{study_path}/series/{ctx.series}"
    instance_path = f"{series_path}/instances/{ctx.sop}"
    gcs = f"gs://{ctx.bucket.name}"
    recipes: dict[str, Callable[[], Any]] = {
        "datasets.create": lambda: datasets.create(parent=location, datasetId=_id(), body={"timeZone": "Europe/Rome"}),
        "datasets.delete": lambda: datasets.delete(name=create_store(ctx.emulators.healthcare).dataset),
        "datasets.get": lambda: datasets.get(name=dataset),
        "datasets.list": lambda: datasets.list(parent=location, pageSize=2),
        "datasets.patch": lambda: datasets.patch(name=dataset, updateMask="timeZone", body={"timeZone": "UTC"}),
        "datasets.getIamPolicy": lambda: datasets.getIamPolicy(resource=dataset),
        "datasets.setIamPolicy": lambda: datasets.setIamPolicy(
            resource=dataset, body={"policy": {"bindings": [{"role": "roles/viewer", "members": ["user:a@b.c"]}]}}
        ),
        "datasets.testIamPermissions": lambda: datasets.testIamPermissions(
            resource=dataset, body={"permissions": ["healthcare.datasets.get"]}
        ),
        f"{_P}.create": lambda: stores.create(parent=dataset, dicomStoreId=_id(), body={"labels": {"env": "test"}}),
        f"{_P}.delete": lambda: stores.delete(name=create_store(ctx.emulators.healthcare).name),
        f"{_P}.get": lambda: stores.get(name=store),
        f"{_P}.list": lambda: stores.list(parent=dataset, pageSize=10),
        f"{_P}.patch": lambda: stores.patch(name=store, updateMask="labels", body={"labels": {"team": "imaging"}}),
        f"{_P}.import": lambda: stores.import_(name=store, body={"gcsSource": {"uri": f"{gcs}/in/*.dcm"}}),
        f"{_P}.export": lambda: stores.export(name=store, body={"gcsDestination": {"uriPrefix": f"{gcs}/out"}}),
        f"{_P}.getDICOMStoreMetrics": lambda: stores.getDICOMStoreMetrics(name=store),
        f"{_P}.setBlobStorageSettings": lambda: stores.setBlobStorageSettings(
            resource=store,
            body={
                "blobStorageSettings": {"blobStorageClass": "NEARLINE"},
                "filterConfig": {"resourcePathsGcsUri": f"{gcs}/filter.txt"},
            },
        ),
        f"{_P}.getIamPolicy": lambda: stores.getIamPolicy(resource=store),
        f"{_P}.setIamPolicy": lambda: stores.setIamPolicy(
            resource=store, body={"policy": {"bindings": [{"role": "roles/viewer", "members": ["user:a@b.c"]}]}}
        ),
        f"{_P}.testIamPermissions": lambda: stores.testIamPermissions(
            resource=store, body={"permissions": ["healthcare.dicomStores.dicomWebRead"]}
        ),
        f"{_P}.searchForStudies": lambda: stores.searchForStudies(parent=store, dicomWebPath="studies"),
        f"{_P}.searchForSeries": lambda: stores.searchForSeries(parent=store, dicomWebPath="series"),
        f"{_P}.searchForInstances": lambda: stores.searchForInstances(parent=store, dicomWebPath="instances"),
        f"{_P}.storeInstances": lambda: _with_body(stores.storeInstances(parent=store, dicomWebPath="studies")),
        f"{_P}.dicomWeb.studies.getStudyMetrics": lambda: (
            stores.dicomWeb().studies().getStudyMetrics(study=f"{store}/dicomWeb/{study_path}")
        ),
        f"{_P}.dicomWeb.studies.setBlobStorageSettings": lambda: (
            stores.dicomWeb()
            .studies()
            .setBlobStorageSettings(
                resource=f"{store}/dicomWeb/{study_path}",
                body={"blobStorageSettings": {"blobStorageClass": "COLDLINE"}},
            )
        ),
        f"{_P}.dicomWeb.studies.series.getSeriesMetrics": lambda: (
            stores.dicomWeb().studies().series().getSeriesMetrics(series=f"{store}/dicomWeb/{series_path}")
        ),
        f"{_P}.dicomWeb.studies.series.instances.getStorageInfo": lambda: (
            stores.dicomWeb()
            .studies()
            .series()
            .instances()
            .getStorageInfo(resource=f"{store}/dicomWeb/{instance_path}")
        ),
        f"{_P}.studies.retrieveMetadata": lambda: stores.studies().retrieveMetadata(
            parent=store, dicomWebPath=f"{study_path}/metadata"
        ),
        f"{_P}.studies.retrieveStudy": lambda: stores.studies().retrieveStudy(parent=store, dicomWebPath=study_path),
        f"{_P}.studies.searchForInstances": lambda: stores.studies().searchForInstances(
            parent=store, dicomWebPath=f"{study_path}/instances"
        ),
        f"{_P}.studies.searchForSeries": lambda: stores.studies().searchForSeries(
            parent=store, dicomWebPath=f"{study_path}/series"
        ),
        f"{_P}.studies.storeInstances": lambda: _with_body(
            stores.studies().storeInstances(parent=store, dicomWebPath=study_path), study=ctx.study
        ),
        f"{_P}.studies.series.retrieveMetadata": lambda: (
            stores.studies().series().retrieveMetadata(parent=store, dicomWebPath=f"{series_path}/metadata")
        ),
        f"{_P}.studies.series.retrieveSeries": lambda: (
            stores.studies().series().retrieveSeries(parent=store, dicomWebPath=series_path)
        ),
        f"{_P}.studies.series.searchForInstances": lambda: (
            stores.studies().series().searchForInstances(parent=store, dicomWebPath=f"{series_path}/instances")
        ),
        f"{_P}.studies.series.instances.retrieveInstance": lambda: (
            stores.studies().series().instances().retrieveInstance(parent=store, dicomWebPath=instance_path)
        ),
        f"{_P}.studies.series.instances.retrieveMetadata": lambda: (
            stores.studies()
            .series()
            .instances()
            .retrieveMetadata(parent=store, dicomWebPath=f"{instance_path}/metadata")
        ),
        "datasets.operations.get": lambda: datasets.operations().get(name=ctx.operation),
        "datasets.operations.list": lambda: datasets.operations().list(name=dataset, pageSize=5, filter="done = true"),
        "datasets.operations.cancel": lambda: datasets.operations().cancel(name=ctx.operation, body={}),
    }
    return recipes[method_id]()


def _with_body(request: Any, study: str | None = None) -> Any:
    # The client sends HttpBody requests as they come: the multipart body and its type set here.
    request.body, request.headers["content-type"] = _multipart(instance(study))
    request.body_size = len(request.body)
    request.headers["accept"] = "application/dicom+json"
    return request


def _returns_http_body(version: str, method_id: str) -> bool:
    return _method_json(version, method_id).get("response", {}).get("$ref") == "HttpBody"


def _method_json(version: str, method_id: str) -> dict[str, Any]:
    api = discovery(version)
    resource: dict[str, Any] = {"resources": api.resources}
    full_id = next(m.full_id for m in api.methods if m.id == method_id)
    parts = full_id.removeprefix("healthcare.").split(".")
    for part in parts[:-1]:
        resource = resource["resources"][part]
    method: dict[str, Any] = resource["methods"][parts[-1]]
    return method


def all_methods(version: str) -> list[str]:
    return [m.id for m in discovery(version).methods]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_discovery_method_is_classified(version: str) -> None:
    unclassified = [m for m in all_methods(version) if classify(m) == "unclassified"]

    assert not unclassified, f"methods in neither SERVED, DICOMWEB_ELSEWHERE nor NOT_EMULATED: {unclassified}"


@pytest.mark.parametrize("method_id", sorted(SERVED))
def test_served_method_answers_in_its_response_schema(context: Context, method_id: str) -> None:
    response = recipe(context, method_id).execute()

    schema_name = _method_json(context.version, method_id).get("response", {}).get("$ref")
    if schema_name == "HttpBody":
        assert isinstance(response, bytes) and response, method_id
        if "search" in method_id or "Metadata" in method_id:
            found = json.loads(response)
            assert isinstance(found, list) and found and all(isinstance(item, dict) for item in found)
        elif "retrieve" in method_id:
            assert b"DICM" in response
        return
    assert isinstance(response, dict), method_id
    properties = discovery(context.version).schemas[schema_name].get("properties", {})
    assert set(response) <= set(properties), f"{method_id}: {set(response) - set(properties)} not in {schema_name}"
    if schema_name == "Empty":
        assert response == {}
    elif schema_name == "Operation":
        assert response["name"].startswith(f"{context.store.dataset}/operations/") or response.get("done")
        if not response.get("done") and method_id != "datasets.create":
            finished = context.store.wait(response["name"])
            assert "error" not in finished, finished
    else:
        assert response, f"{method_id} answered an empty {schema_name}"


@pytest.mark.parametrize("version", VERSIONS)
def test_methods_not_emulated_answer_501(emulators: Emulators, version: str) -> None:
    store = create_store(emulators.healthcare)
    service = build("healthcare", version, client_options={"api_endpoint": emulators.healthcare}, http=httplib2.Http())
    checked = 0
    for method in discovery(version).methods:
        if classify(method.id) != "not emulated":
            continue
        request = _any_request(service, version, method.id, store)
        with pytest.raises(HttpError) as raised:
            request.execute()
        error = json.loads(raised.value.content)["error"]
        assert raised.value.resp.status == 501 and error["status"] == "UNIMPLEMENTED", (method.id, error)
        assert f"{method.full_id} is not emulated" in error["message"]
        checked += 1
    assert checked >= 100  # the FHIR, HL7v2, consent ... surface, and the DICOM methods listed


@pytest.mark.parametrize("method_id", sorted(DICOMWEB_ELSEWHERE))
def test_dicomweb_methods_of_the_other_suite_answer_without_a_server_error(context: Context, method_id: str) -> None:
    service = context.service(raw=True)
    request = _any_request(service, context.version, method_id, context.store, context)
    try:
        request.execute()
    except HttpError as exc:
        error = json.loads(exc.content)["error"]
        assert exc.resp.status in (400, 404, 406, 501), (method_id, error)
        assert error["status"] and error["message"]


def _any_request(service: Any, version: str, method_id: str, store: StoreRef, ctx: Context | None = None) -> Any:
    """A client request for any method: path parameters filled to match its pattern."""
    method = _method_json(version, method_id)
    node = service.projects()
    full_id = next(m.full_id for m in discovery(version).methods if m.id == method_id)
    for part in full_id.removeprefix("healthcare.projects.").split(".")[:-1]:
        node = getattr(node, part)()
    name = method_id.split(".")[-1]
    call = getattr(node, name, None) or getattr(node, name.replace("-", "_") + ("_" if name == "import" else ""))
    kwargs: dict[str, Any] = {}
    uids = (ctx.study, ctx.series, ctx.sop) if ctx else ("1.2", "3.4", "5.6")
    for param, spec in method.get("parameters", {}).items():
        if spec.get("location") != "path":
            continue
        pattern = spec.get("pattern", "")
        kwargs[param] = _fill(pattern, store, uids)
    if "request" in method:
        kwargs["body"] = {}
    return call(**kwargs)


def _fill(pattern: str, store: StoreRef, uids: tuple[str, str, str]) -> str:
    """A value matching a discovery path pattern such as ^projects/[^/]+/.../dicomStores/[^/]+$."""
    if not pattern:
        return "x"
    values = {
        "projects": PROJECT,
        "locations": LOCATION,
        "datasets": store.dataset_id,
        "dicomStores": store.store_id,
        "studies": uids[0],
        "series": uids[1],
        "instances": uids[2],
        "frames": "1",
    }
    text = re.sub(r"(\w+)/\[\^/\]\+", lambda m: f"{m.group(1)}/{values.get(m.group(1), 'x')}", pattern.strip("^$"))
    return text.replace("[^/]+", "x").replace(".*", "x/y").replace(".+", "x/y")


def test_operations_wait_for_the_import_through_the_client(context: Context) -> None:
    stores = context.service().projects().locations().datasets().dicomStores()
    operation = stores.import_(
        name=context.store.name, body={"gcsSource": {"uri": f"gs://{context.bucket.name}/in/a.dcm"}}
    ).execute()
    operations = context.service().projects().locations().datasets().operations()

    done = wait_for(lambda: (op := operations.get(name=operation["name"]).execute()).get("done") and op)

    assert done["metadata"]["apiMethodName"].endswith(f"{context.version}.dicom.DicomService.ImportDicomData")
