"""The DICOMweb methods of the bundled discovery documents, through google-api-python-client: it
asks every method for `application/json` and adds `alt=json`; Google answers DICOMweb searches
and metadata to that (the issue that started this suite: `searchForStudies` failed locally)."""

from __future__ import annotations

from typing import Any

import httplib2
import pytest
from googleapiclient.discovery import build

from tests.conformance.dicomweb.conftest import Store, instance


@pytest.fixture
def stores(store: Store) -> Any:
    service = build("healthcare", "v1", client_options={"api_endpoint": store.emulator}, http=httplib2.Http(),
                    static_discovery=True)
    return service.projects().locations().datasets().dicomStores()


def test_search_and_metadata_methods(store: Store, stores: Any) -> None:
    ds = instance(PatientID="P1")
    store.client.store_instances([ds])
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    [found] = stores.searchForStudies(parent=store.name, dicomWebPath="studies").execute()
    assert found["0020000D"]["Value"] == [study]
    [found] = stores.studies().searchForSeries(parent=store.name, dicomWebPath=f"studies/{study}/series").execute()
    assert found["0020000E"]["Value"] == [series]
    [found] = stores.searchForInstances(parent=store.name, dicomWebPath="instances").execute()
    assert found["00080018"]["Value"] == [sop]
    path = f"studies/{study}/series/{series}/instances/{sop}"
    [metadata] = stores.studies().series().instances().retrieveMetadata(
        parent=store.name, dicomWebPath=f"{path}/metadata").execute()
    assert metadata["00100020"]["Value"] == ["P1"]


def test_delete_methods(store: Store, stores: Any) -> None:
    a, b = instance(), instance()
    store.client.store_instances([a, b])
    instances = stores.studies().series().instances()
    path = f"studies/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}/instances/{a.SOPInstanceUID}"
    assert instances.delete(parent=store.name, dicomWebPath=path).execute() == {}
    operation = stores.studies().delete(parent=store.name, dicomWebPath=f"studies/{b.StudyInstanceUID}").execute()
    done = store.wait(operation)
    assert done["metadata"]["apiMethodName"].endswith("dicomweb.DicomWebService.DeleteStudy")
    assert store.client.search_for_instances() == []
