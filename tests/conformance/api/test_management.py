"""Management methods real pipelines call, over plain REST as any HTTP client sends them: store
notifications to the Pub/Sub emulator, metrics, setBlobStorageSettings, patch, dataset delete,
paging, the operations filter, IAM policies with etags, and --require-auth."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from google.cloud import storage

from localcloud.healthcare.app import create_app
from tests.conformance.api.conftest import (
    LOCATION,
    PROJECT,
    Emulators,
    StoreRef,
    Subscription,
    create_store,
    stow,
    wait_for,
)
from tests.dicom_factory import instance

NewSubscription = Callable[[], Subscription]


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def resource_name(store: StoreRef, data: bytes) -> str:
    study, series, sop = uids(data)
    return f"{store.name}/dicomWeb/studies/{study}/series/{series}/instances/{sop}"


def patch(store: StoreRef, mask: str, body: dict[str, Any], version: str = "v1") -> requests.Response:
    return requests.patch(store.url("", version), params={"updateMask": mask}, json=body, timeout=10)


def notifier(emulators: Emulators) -> dict[str, Any]:
    snapshot: dict[str, Any] = requests.get(f"{emulators.healthcare}/_emulator/notifications", timeout=10).json()
    return snapshot


# --- notifications -------------------------------------------------------------------------------


def test_stow_publishes_google_notification_with_attributes_to_each_notification_config(
    store: StoreRef, new_subscription: NewSubscription
) -> None:
    first, second = new_subscription(), new_subscription()
    response = patch(
        store,
        "notificationConfigs",
        {"notificationConfigs": [{"pubsubTopic": first.topic}, {"pubsub_topic": second.topic}]},
    )
    assert response.status_code == 200, response.text
    data = instance(modality="CT")

    stow(store, data)

    for subscription in (first, second):
        [message] = subscription.pull(1)
        assert message.data.decode() == resource_name(store, data)
        attributes = dict(message.attributes)
        study, series, sop = uids(data)
        assert {k: attributes[k] for k in ("action", "storeName", "studyInstanceUID", "seriesInstanceUID")} == {
            "action": "StoreInstances",
            "storeName": store.name,
            "studyInstanceUID": study,
            "seriesInstanceUID": series,
        }
        assert attributes["sopInstanceUID"] == sop and attributes["modality"] == "CT"
        assert attributes["storageClass"] == "STANDARD" and attributes["versionId"]
        assert attributes["lastUpdatedTime"].endswith(" GMT")  # RFC 1123


def test_import_notifies_notification_configs_always_and_the_legacy_topic_only_with_send_for_bulk_import(
    emulators: Emulators, bucket: storage.Bucket, new_subscription: NewSubscription
) -> None:
    legacy, current = new_subscription(), new_subscription()
    store = create_store(
        emulators.healthcare,
        notificationConfig={"pubsubTopic": legacy.topic},
        notificationConfigs=[{"pubsubTopic": current.topic}],
    )
    imported = [instance(), instance()]
    for i, data in enumerate(imported):
        bucket.blob(f"in/{i}.dcm").upload_from_string(data)

    operation = requests.post(store.url(":import"), json={"gcsSource": {"uri": f"gs://{bucket.name}/in/*"}}, timeout=10)
    store.wait(operation.json()["name"])

    messages = current.pull(2)
    assert {m.data.decode() for m in messages} == {resource_name(store, d) for d in imported}
    assert {m.attributes["action"] for m in messages} == {"ImportDicomData"}
    # Every message of that import was published (so none is still on its way to the legacy topic).
    wait_for(lambda: notifier(emulators)["pending"] == 0, what="the notification queue to drain")
    assert notifier(emulators)["publishedByTopic"].get(legacy.topic, 0) == 0
    assert legacy.drained() == []

    stored = instance()
    stow(store, stored)
    [message] = legacy.pull(1)
    assert message.data.decode() == resource_name(store, stored) and not dict(message.attributes)


def test_identical_duplicates_are_not_notified_again(
    store: StoreRef, bucket: storage.Bucket, new_subscription: NewSubscription
) -> None:
    subscription = new_subscription()
    assert patch(store, "notificationConfigs", {"notificationConfigs": [{"pubsubTopic": subscription.topic}]}).ok
    data = instance()
    stow(store, data)
    [first] = subscription.pull(1)

    # Importing the same bytes again: Google ignores the duplicate ("does not overwrite").
    bucket.blob("again.dcm").upload_from_string(data)
    again = requests.post(
        store.url(":import"), json={"gcsSource": {"uri": f"gs://{bucket.name}/again.dcm"}}, timeout=10
    )
    assert "error" not in store.wait(again.json()["name"])
    marker = instance()
    stow(store, marker)

    [after] = subscription.pull(1)
    assert first.data.decode() == resource_name(store, data)
    assert after.data.decode() == resource_name(store, marker)


# --- patch ---------------------------------------------------------------------------------------


def test_patch_requires_an_update_mask_and_keeps_other_fields(
    store: StoreRef, new_subscription: NewSubscription
) -> None:
    topic = new_subscription().topic
    assert patch(store, "labels", {"labels": {"team": "imaging"}}).ok

    missing = requests.patch(store.url(), json={"labels": {}}, timeout=10)
    updated = patch(
        store,
        "notification_config.pubsub_topic,notificationConfig.sendForBulkImport",
        {"notificationConfig": {"pubsubTopic": topic, "sendForBulkImport": True}, "labels": {"ignored": "x"}},
    )

    assert missing.status_code == 400
    assert updated.status_code == 200
    assert updated.json() == {
        "name": store.name,
        "labels": {"team": "imaging"},
        "notificationConfig": {"pubsubTopic": topic, "sendForBulkImport": True},
    }
    assert requests.get(store.url(), timeout=10).json() == updated.json()


@pytest.mark.parametrize(
    ("mask", "body"),
    [
        ("notificationConfigs", {"notificationConfigs": [{"pubsubTopic": "topics/no-project"}]}),
        ("notificationConfigs", {"notificationConfigs": [{}]}),
        ("name", {"name": "other"}),
        ("labels", {"labels": {"Upper": "x"}}),
    ],
)
def test_patch_refuses_what_google_refuses(store: StoreRef, mask: str, body: dict[str, Any]) -> None:
    response = patch(store, mask, body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_stream_configs_are_kept_and_returned(store: StoreRef) -> None:
    configs = [{"bigqueryDestination": {"tableUri": "bq://p.d.t", "writeDisposition": "WRITE_APPEND"}}]

    response = patch(store, "streamConfigs", {"streamConfigs": configs})

    assert response.json()["streamConfigs"] == configs


# --- metrics and storage classes -----------------------------------------------------------------


def test_study_and_series_metrics(store: StoreRef) -> None:
    study = f"1.2.826.0.1.3680043.10.7.{uuid.uuid4().int % 10**12}"
    series = f"{study}.1"
    stow(store, instance(study, series), instance(study, series), instance(study), instance())

    study_metrics = requests.get(store.url(f"/dicomWeb/studies/{study}:getStudyMetrics"), timeout=10).json()
    series_metrics = requests.get(
        store.url(f"/dicomWeb/studies/{study}/series/{series}:getSeriesMetrics"), timeout=10
    ).json()
    missing = requests.get(store.url("/dicomWeb/studies/1.2.3:getStudyMetrics"), timeout=10)
    store_metrics = requests.get(store.url(":getDICOMStoreMetrics"), timeout=10).json()

    assert study_metrics["study"] == f"{store.name}/dicomWeb/studies/{study}"
    assert (study_metrics["seriesCount"], study_metrics["instanceCount"]) == ("2", "3")
    assert series_metrics["series"] == f"{store.name}/dicomWeb/studies/{study}/series/{series}"
    assert series_metrics["instanceCount"] == "2" and "seriesCount" not in series_metrics
    assert missing.status_code == 404
    assert (store_metrics["studyCount"], store_metrics["instanceCount"]) == ("2", "4")


def test_empty_store_metrics_leave_zero_counts_out(store: StoreRef) -> None:
    assert requests.get(store.url(":getDICOMStoreMetrics"), timeout=10).json() == {"name": store.name}


def test_set_blob_storage_settings_with_a_filter_moves_only_the_filtered_instances(
    store: StoreRef, bucket: storage.Bucket, new_subscription: NewSubscription
) -> None:
    subscription = new_subscription()
    moved, kept = instance(), instance()
    stow(store, moved, kept)
    assert patch(store, "notificationConfigs", {"notificationConfigs": [{"pubsubTopic": subscription.topic}]}).ok
    study, series, sop = uids(moved)
    bucket.blob("filter").upload_from_string(f"/studies/{study}/series/{series}/instances/{sop}\r\n")
    body = {
        "blobStorageSettings": {"blobStorageClass": "ARCHIVE"},
        "filterConfig": {"resourcePathsGcsUri": f"gs://{bucket.name}/filter"},
    }

    operation = requests.post(store.url(":setBlobStorageSettings"), json=body, timeout=10).json()
    done = store.wait(operation["name"])

    assert done["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.SetBlobStorageSettings"
    assert "error" not in done and done["metadata"]["counter"] == {"success": "1"}
    assert storage_class(store, moved) == "ARCHIVE" and storage_class(store, kept) == "STANDARD"
    [message] = subscription.pull(1)
    assert message.data.decode() == resource_name(store, moved)
    assert dict(message.attributes)["action"] == "SetBlobSettings"
    assert (message.attributes["previousStorageClass"], message.attributes["storageClass"]) == ("STANDARD", "ARCHIVE")


def test_set_blob_storage_settings_needs_a_class_and_a_store_for_filters(store: StoreRef) -> None:
    data = instance()
    stow(store, data)
    study = uids(data)[0]

    no_class = requests.post(store.url(":setBlobStorageSettings"), json={}, timeout=10)
    study_filter = requests.post(
        store.url(f"/dicomWeb/studies/{study}:setBlobStorageSettings"),
        json={
            "blobStorageSettings": {"blobStorageClass": "COLDLINE"},
            "filterConfig": {"resourcePathsGcsUri": "gs://b/f"},
        },
        timeout=10,
    )
    whole_study = requests.post(
        store.url(f"/dicomWeb/studies/{study}:setBlobStorageSettings"),
        json={"blobStorageSettings": {"blobStorageClass": "COLDLINE"}},
        timeout=10,
    )

    assert no_class.status_code == 400 and study_filter.status_code == 400
    assert "error" not in store.wait(whole_study.json()["name"])
    assert storage_class(store, data) == "COLDLINE"


def storage_class(store: StoreRef, data: bytes) -> str:
    study, series, sop = uids(data)
    info = requests.get(
        store.url(f"/dicomWeb/studies/{study}/series/{series}/instances/{sop}:getStorageInfo"), timeout=10
    ).json()
    value: str = info["blobStorageInfo"]["storageClass"]
    return value


# --- datasets, paging, filters -------------------------------------------------------------------


def test_dataset_delete_removes_its_stores_and_operations(emulators: Emulators) -> None:
    store = create_store(emulators.healthcare)
    stow(store, instance())

    deleted = requests.delete(f"{emulators.healthcare}/v1/{store.dataset}", timeout=10)

    assert deleted.status_code == 200 and deleted.json() == {}
    assert requests.get(f"{emulators.healthcare}/v1/{store.dataset}", timeout=10).status_code == 404
    assert requests.get(store.url(), timeout=10).status_code == 404
    assert requests.get(f"{emulators.healthcare}/v1/{store.dataset}/operations", timeout=10).status_code == 404
    assert requests.delete(f"{emulators.healthcare}/v1/{store.dataset}", timeout=10).status_code == 404


def test_dataset_and_store_lists_page_with_tokens(emulators: Emulators) -> None:
    location = f"projects/{PROJECT}/locations/pages-{uuid.uuid4().hex[:8]}"
    created = sorted(f"{location}/datasets/d{i}" for i in range(5))
    for name in created:
        requests.post(
            f"{emulators.healthcare}/v1/{location}/datasets", params={"datasetId": name.rsplit("/", 1)[1]}, timeout=10
        ).raise_for_status()
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"pageSize": "2", **({"pageToken": token} if token else {})}
        page = requests.get(f"{emulators.healthcare}/v1/{location}/datasets", params=params, timeout=10).json()
        seen += [d["name"] for d in page["datasets"]]
        pages += 1
        token = page.get("nextPageToken", "")
        if not token:
            break

    assert seen == created and pages == 3
    bad = requests.get(f"{emulators.healthcare}/v1/{location}/datasets", params={"pageToken": "nope"}, timeout=10)
    assert bad.status_code == 400


def test_dicom_store_list_pages_with_tokens(store: StoreRef) -> None:
    url = f"{store.base}/v1/{store.dataset}/dicomStores"
    for store_id in ("s1", "s2"):
        requests.post(url, params={"dicomStoreId": store_id}, json={}, timeout=10).raise_for_status()

    first = requests.get(url, params={"pageSize": "2"}, timeout=10).json()
    second = requests.get(url, params={"pageSize": "2", "pageToken": first["nextPageToken"]}, timeout=10).json()

    names = [s["name"] for s in first["dicomStores"] + second["dicomStores"]]
    assert sorted(names) == sorted([store.name, f"{store.dataset}/dicomStores/s1", f"{store.dataset}/dicomStores/s2"])
    assert len(first["dicomStores"]) == 2 and "nextPageToken" not in second


def test_dicom_store_list_filters_on_labels(emulators: Emulators) -> None:
    store = create_store(emulators.healthcare, labels={"env": "prod"})
    other = f"{store.dataset}/dicomStores/other"
    requests.post(
        f"{emulators.healthcare}/v1/{store.dataset}/dicomStores",
        params={"dicomStoreId": "other"},
        json={"labels": {"env": "dev"}},
        timeout=10,
    ).raise_for_status()
    url = f"{emulators.healthcare}/v1/{store.dataset}/dicomStores"

    prod = requests.get(url, params={"filter": "labels.env=prod"}, timeout=10).json()
    not_prod = requests.get(url, params={"filter": 'NOT labels.env="prod"'}, timeout=10).json()
    wrong_field = requests.get(url, params={"filter": "name=x"}, timeout=10)

    assert [s["name"] for s in prod["dicomStores"]] == [store.name]
    assert [s["name"] for s in not_prod["dicomStores"]] == [other]
    assert wrong_field.status_code == 400


def test_operations_list_filter(store: StoreRef, bucket: storage.Bucket) -> None:
    bucket.blob("a.dcm").upload_from_string(instance())
    imported = requests.post(store.url(":import"), json={"gcsSource": {"uri": f"gs://{bucket.name}/a.dcm"}}, timeout=10)
    store.wait(imported.json()["name"])
    url = f"{store.base}/v1/{store.dataset}/operations"

    def names(expression: str) -> list[str]:
        response = requests.get(url, params={"filter": expression}, timeout=10)
        assert response.status_code == 200, response.text
        return [op["name"] for op in response.json().get("operations", [])]

    imports = names('metadata.api_method_name = "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"')
    assert imports == [imported.json()["name"]]
    assert names("metadata.apiMethodName:ImportDicomData AND done = true") == imports
    assert len(names("done = true")) == 2  # the dataset's create operation too
    assert names("done = false") == []
    assert names(f'metadata.create_time >= "{imported.json()["metadata"]["createTime"]}"') == imports
    for wrong in ("colour = red", "done = (", "metadata.nope = 1"):
        assert requests.get(url, params={"filter": wrong}, timeout=10).status_code == 400


# --- IAM -----------------------------------------------------------------------------------------


def test_set_iam_policy_with_a_stale_etag_is_aborted_and_without_an_etag_overwrites(store: StoreRef) -> None:
    binding = {"role": "roles/healthcare.dicomEditor", "members": ["user:a@example.com"]}
    empty = requests.get(store.url(":getIamPolicy"), timeout=10).json()
    first = requests.post(
        store.url(":setIamPolicy"), json={"policy": {"bindings": [binding], "etag": empty["etag"]}}, timeout=10
    ).json()

    stale = requests.post(
        store.url(":setIamPolicy"), json={"policy": {"bindings": [], "etag": empty["etag"]}}, timeout=10
    )
    blind = requests.post(store.url(":setIamPolicy"), json={"policy": {"bindings": []}}, timeout=10)

    assert empty == {"etag": "ACAB"}
    assert first["bindings"] == [binding] and first["etag"] != "ACAB" and first["version"] == 1
    assert stale.status_code == 409 and stale.json()["error"]["status"] == "ABORTED"
    assert "There were concurrent policy changes" in stale.json()["error"]["message"]
    assert blind.status_code == 200 and "bindings" not in blind.json()
    assert requests.get(store.url(":getIamPolicy"), timeout=10).json() == blind.json()


def test_conditional_bindings_need_version_3(emulators: Emulators, store: StoreRef) -> None:
    conditional = {
        "role": "roles/healthcare.dicomViewer",
        "members": ["group:readers@example.com"],
        "condition": {"title": "until 2030", "expression": "request.time < timestamp('2030-01-01T00:00:00Z')"},
    }
    dataset_url = f"{emulators.healthcare}/v1/{store.dataset}"

    refused = requests.post(f"{dataset_url}:setIamPolicy", json={"policy": {"bindings": [conditional]}}, timeout=10)
    accepted = requests.post(
        f"{dataset_url}:setIamPolicy", json={"policy": {"version": 3, "bindings": [conditional]}}, timeout=10
    )
    old_reader = requests.get(f"{dataset_url}:getIamPolicy", timeout=10)
    new_reader = requests.get(f"{dataset_url}:getIamPolicy", params={"options.requestedPolicyVersion": 3}, timeout=10)

    assert refused.status_code == 400
    assert accepted.status_code == 200 and accepted.json()["version"] == 3
    assert old_reader.status_code == 400
    assert new_reader.json()["bindings"] == [conditional]


def test_test_iam_permissions(store: StoreRef) -> None:
    asked = ["healthcare.dicomStores.dicomWebRead", "healthcare.dicomStores.import"]

    granted = requests.post(store.url(":testIamPermissions"), json={"permissions": asked}, timeout=10)
    wildcard = requests.post(store.url(":testIamPermissions"), json={"permissions": ["healthcare.*"]}, timeout=10)

    assert granted.json() == {"permissions": asked}
    assert wildcard.status_code == 400


def test_invalid_members_and_roles_are_refused(store: StoreRef) -> None:
    for binding in (
        {"role": "roles/viewer", "members": ["alice@example.com"]},
        {"role": "viewer", "members": ["user:alice@example.com"]},
        {"role": "roles/viewer", "members": []},
    ):
        response = requests.post(store.url(":setIamPolicy"), json={"policy": {"bindings": [binding]}}, timeout=10)
        assert response.status_code == 400, binding


# --- authentication ------------------------------------------------------------------------------


def test_require_auth_answers_401_as_google_does(emulators: Emulators) -> None:
    url = f"{emulators.healthcare_auth}/v1/projects/{PROJECT}/locations/{LOCATION}/datasets"

    missing = requests.get(url, timeout=10)
    basic = requests.get(url, headers={"Authorization": "Basic dXNlcjpwdw=="}, timeout=10)
    bearer = requests.get(url, headers={"Authorization": "Bearer ya29.x"}, timeout=10)
    query_token = requests.get(url, params={"access_token": "ya29.x"}, timeout=10)
    control = requests.get(f"{emulators.healthcare_auth}/_emulator/healthz", timeout=10)

    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer realm=")
    error = missing.json()["error"]
    assert error["status"] == "UNAUTHENTICATED"
    assert error["message"].startswith("Request is missing required authentication credential.")
    assert error["details"][0]["reason"] == "CREDENTIALS_MISSING"
    assert basic.status_code == 401 and basic.json()["error"]["message"].startswith("Request had invalid")
    assert bearer.status_code == 200 and query_token.status_code == 200
    assert control.status_code == 200


def test_notification_configs_survive_a_restart(tmp_path: Path, new_subscription: NewSubscription) -> None:
    subscription = new_subscription()
    store = "projects/p/locations/l/datasets/d/dicomStores/s"
    first = create_app(tmp_path).test_client()
    first.post("/v1/projects/p/locations/l/datasets?datasetId=d", json={})
    created = first.post(
        "/v1/projects/p/locations/l/datasets/d/dicomStores?dicomStoreId=s",
        json={"notificationConfigs": [{"pubsubTopic": subscription.topic}]},
    )
    assert created.status_code == 200

    restarted = create_app(tmp_path).test_client()  # same data directory, new process state
    data = instance()
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    )
    stored = restarted.post(
        f"/v1/{store}/dicomWeb/studies",
        data=body,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )

    assert stored.status_code == 200
    assert restarted.get(f"/v1/{store}").get_json()["notificationConfigs"] == [{"pubsubTopic": subscription.topic}]
    [message] = subscription.pull(1)
    study, series, sop = uids(data)
    assert message.data.decode() == f"{store}/dicomWeb/studies/{study}/series/{series}/instances/{sop}"


def test_faults_can_target_the_management_methods(emulators: Emulators, store: StoreRef) -> None:
    control = f"{emulators.healthcare}/_emulator/faults"
    requests.post(
        control, json={"method": "getDICOMStoreMetrics", "status": 503, "count": 1}, timeout=10
    ).raise_for_status()

    failed = requests.get(store.url(":getDICOMStoreMetrics"), timeout=10)
    recovered = requests.get(store.url(":getDICOMStoreMetrics"), timeout=10)

    assert failed.status_code == 503 and failed.json()["error"]["status"] == "UNAVAILABLE"
    assert recovered.status_code == 200
