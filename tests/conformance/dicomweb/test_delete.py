"""Google's proprietary DICOMweb deletes (DICOM conformance statement, "Deletion"; DICOMweb guide,
"Delete a study, series, or instance"): DeleteInstance answers {}, DeleteStudy and DeleteSeries
start long-running operations; nothing can be stored into a study or series while its delete runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from pydicom.uid import generate_uid

from tests.conformance.dicomweb.conftest import Store, instance
from tests.integration.harness import wait_for


@pytest.fixture
def study(store: Store) -> tuple[Store, list]:
    """One study: two instances in series 1, one in series 2."""
    study_uid, s1, s2 = (str(generate_uid()) for _ in range(3))
    datasets = [instance(study_uid, s1), instance(study_uid, s1), instance(study_uid, s2)]
    store.client.store_instances(datasets)
    return store, datasets


def _sops(store: Store) -> set[str]:
    return {i["00080018"]["Value"][0] for i in store.client.search_for_instances()}


def test_delete_instance_answers_an_empty_object(study: tuple[Store, list]) -> None:
    store, (a, b, c) = study
    response = requests.delete(store.instance_url(a), timeout=10)
    assert (response.status_code, response.json()) == (200, {})
    store.client.delete_instance(b.StudyInstanceUID, b.SeriesInstanceUID, b.SOPInstanceUID)
    assert _sops(store) == {c.SOPInstanceUID}
    gone = requests.get(store.instance_url(a), timeout=10)
    assert gone.status_code == 404
    again = requests.delete(store.instance_url(a), timeout=10)
    assert again.status_code == 404 and again.json()["error"]["status"] == "NOT_FOUND"


def test_delete_series_and_study_are_long_running_operations(study: tuple[Store, list]) -> None:
    store, (a, b, c) = study
    url = f"{store.url}/studies/{a.StudyInstanceUID}"
    started = requests.delete(f"{url}/series/{a.SeriesInstanceUID}", timeout=10)
    assert started.status_code == 200
    assert started.json()["name"].startswith(f"{store.dataset}/operations/")
    done = store.wait(started.json())
    assert done["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicomweb.DicomWebService.DeleteSeries"
    assert done["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert "error" not in done
    assert _sops(store) == {c.SOPInstanceUID}
    started = requests.delete(url, timeout=10)
    done = store.wait(started.json())
    assert done["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicomweb.DicomWebService.DeleteStudy"
    assert store.client.search_for_studies() == []
    assert requests.delete(url, timeout=10).status_code == 404


def test_dicomweb_client_deletes(study: tuple[Store, list]) -> None:
    store, (a, _, c) = study
    store.client.delete_series(a.StudyInstanceUID, c.SeriesInstanceUID)
    # The operation may still be running when the call returns (as on Google): wait for its effect.
    wait_for(lambda: len(_sops(store)) == 2, timeout=30, what="the series delete")
    store.client.delete_study(a.StudyInstanceUID)
    wait_for(lambda: store.client.search_for_studies() == [], timeout=30, what="the study delete")


@pytest.fixture
def slow_operations(store: Store) -> Iterator[None]:
    """Operations wait (up to a minute, or until cancelled) before they start working."""
    store.control("config", {"operationDelaySeconds": 60})
    try:
        yield
    finally:
        store.control("config", {"operationDelaySeconds": 0})


def test_nothing_is_stored_into_a_study_being_deleted(study: tuple[Store, list], slow_operations: None) -> None:
    # "instances cannot be inserted into a study or series that is being deleted by an operation
    # until the operation completes."
    store, (a, _, _) = study
    operation = requests.delete(f"{store.url}/studies/{a.StudyInstanceUID}", timeout=10).json()
    newcomer = instance(a.StudyInstanceUID, a.SeriesInstanceUID)
    with pytest.raises(requests.HTTPError) as caught:
        store.client.store_instances([newcomer])
    assert caught.value.response is not None and caught.value.response.status_code == 409
    assert b"being deleted" in caught.value.response.content
    elsewhere = instance()
    assert len(store.client.store_instances([elsewhere]).ReferencedSOPSequence) == 1
    # Once the operation has ended (here: cancelled before it deleted anything), storing works again.
    requests.post(f"{store.emulator}/v1/{operation['name']}:cancel", timeout=10).raise_for_status()
    assert store.wait(operation)["error"]["code"] == 1
    assert len(store.client.store_instances([newcomer]).ReferencedSOPSequence) == 1
