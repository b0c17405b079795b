"""The gcloud commands of Google's "Import and export DICOM data using Cloud Storage" how-to,
verbatim (placeholders substituted), against the emulator; then the gcloud commands a pipeline
uses to manage a store (notifications, metrics, IAM) and to authenticate.

gcloud takes seconds per call: the invocations here are few, and every check waits for a state
(gcloud itself polls operations until done) rather than for a time.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

import requests
from google.cloud import storage

from tests.conformance.api.conftest import (
    LOCATION,
    PROJECT,
    Emulators,
    Gcloud,
    StoreRef,
    Subscription,
    create_store,
    stow,
)
from tests.dicom_factory import instance

# Verbatim from the how-to (the line continuations included).
SEED_IMPORT = """gcloud healthcare dicom-stores import gcs DICOM_STORE_ID \\
  --dataset=DATASET_ID \\
  --location=LOCATION \\
  --gcs-uri=gs://BUCKET/DIRECTORY/DICOM_INSTANCE.dcm"""
SEED_DESCRIBE = """gcloud healthcare operations describe OPERATION_ID \\
  --location=LOCATION \\
  --dataset=DATASET_ID"""
SEED_EXPORT = """gcloud healthcare dicom-stores export gcs DICOM_STORE_ID \\
  --dataset=DATASET_ID \\
  --location=LOCATION \\
  --gcs-uri-prefix=gs://BUCKET/DIRECTORY"""
SEED_FILTERED_EXPORT = """gcloud beta healthcare dicom-stores export gcs DICOM_STORE_ID \\
  --dataset=DATASET_ID \\
  --location=LOCATION \\
  --gcs-uri-prefix=gs://DESTINATION_BUCKET/DIRECTORY \\
  --filter-config-gcs-uri=gs://BUCKET/DIRECTORY/FILTER_FILE"""


def substitute(command: str, **values: str) -> str:
    # Longest placeholders first: DESTINATION_BUCKET contains BUCKET, DICOM_STORE_ID contains DICOM_.
    for placeholder in sorted(values, key=len, reverse=True):
        command = command.replace(placeholder, values[placeholder])
    return command


def operation_id(gcloud_stderr: str) -> str:
    match = re.search(r"Waiting for operation \[projects/[^\]]+/operations/(\d+)\]", gcloud_stderr)
    assert match, f"gcloud did not name the operation it waited for:\n{gcloud_stderr}"
    return match.group(1)


def metrics(store: StoreRef) -> dict[str, str]:
    body: dict[str, str] = requests.get(store.url(":getDICOMStoreMetrics"), timeout=10).json()
    return body


def test_seed_import_and_operation_describe(gcloud: Gcloud, store: StoreRef, bucket: storage.Bucket) -> None:
    bucket.blob("DIRECTORY/DICOM_INSTANCE.dcm").upload_from_string(instance())
    names = {"DICOM_STORE_ID": store.store_id, "DATASET_ID": store.dataset_id, "LOCATION": LOCATION}

    imported = gcloud.run(substitute(SEED_IMPORT, **names, BUCKET=bucket.name))

    described = gcloud.run(substitute(SEED_DESCRIBE, **names, OPERATION_ID=operation_id(imported.stderr)))
    assert "done: true" in described.stdout
    assert "apiMethodName: google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData" in described.stdout
    assert re.search(r"success: '1'", described.stdout), described.stdout
    assert "error:" not in described.stdout
    assert metrics(store)["instanceCount"] == "1"


def test_seed_export_writes_one_file_per_instance(gcloud: Gcloud, store: StoreRef, bucket: storage.Bucket) -> None:
    uploads = [instance(), instance()]
    stow(store, *uploads)

    gcloud.run(
        substitute(
            SEED_EXPORT,
            DICOM_STORE_ID=store.store_id,
            DATASET_ID=store.dataset_id,
            LOCATION=LOCATION,
            BUCKET=bucket.name,
        )
    )

    names = sorted(b.name for b in bucket.list_blobs(prefix="DIRECTORY/"))
    assert len(names) == 2 and all(re.fullmatch(r"DIRECTORY/[\d.]+/[\d.]+/[\d.]+\.dcm", n) for n in names), names


def test_seed_beta_filtered_export_exports_only_the_filtered_instances(
    gcloud: Gcloud, store: StoreRef, bucket: storage.Bucket
) -> None:
    study = "1.2.826.0.1.3680043.10.1." + str(uuid.uuid4().int)[:12]
    wanted, other = instance(study), instance()
    stow(store, wanted, other)
    bucket.blob("DIRECTORY/FILTER_FILE").upload_from_string(f"/studies/{study}\n")
    names = {"DICOM_STORE_ID": store.store_id, "DATASET_ID": store.dataset_id, "LOCATION": LOCATION}

    exported = gcloud.run(substitute(SEED_FILTERED_EXPORT, **names, DESTINATION_BUCKET=bucket.name, BUCKET=bucket.name))

    files = [b.name for b in bucket.list_blobs(prefix="DIRECTORY/") if b.name.endswith(".dcm")]
    assert len(files) == 1 and files[0].startswith(f"DIRECTORY/{study}/"), files
    described = gcloud.run(substitute(SEED_DESCRIBE, **names, OPERATION_ID=operation_id(exported.stderr)))
    # gcloud beta talks to v1beta1, as in the how-to's output.
    assert "apiMethodName: google.cloud.healthcare.v1beta1.dicom.DicomService.ExportDicomData" in described.stdout
    assert "done: true" in described.stdout


def test_update_pubsub_topic_with_send_for_bulk_import_notifies_each_imported_instance(
    gcloud: Gcloud, store: StoreRef, bucket: storage.Bucket, new_subscription: Callable[[], Subscription]
) -> None:
    subscription = new_subscription()
    names = f"{store.store_id} --dataset={store.dataset_id} --location={LOCATION}"

    updated = gcloud.run(
        f"gcloud healthcare dicom-stores update {names} --pubsub-topic={subscription.topic} "
        "--send-for-bulk-import --format=json"
    )
    assert json.loads(updated.stdout)["notificationConfig"] == {
        "pubsubTopic": subscription.topic,
        "sendForBulkImport": True,
    }
    bucket.blob("in/a.dcm").upload_from_string(instance())
    bucket.blob("in/b.dcm").upload_from_string(instance())
    gcloud.run(f"gcloud healthcare dicom-stores import gcs {names} --gcs-uri=gs://{bucket.name}/in/*.dcm")

    messages = subscription.pull(2)
    paths = sorted(m.data.decode() for m in messages)
    assert all(re.fullmatch(rf"{store.name}/dicomWeb/studies/[\d.]+/series/[\d.]+/instances/[\d.]+", p) for p in paths)
    # The legacy notificationConfig carries the resource name only: no attributes.
    assert all(not dict(m.attributes) for m in messages)


def test_metrics_after_import(gcloud: Gcloud, store: StoreRef) -> None:
    stow(store, instance(), instance())

    result = gcloud.run(
        f"gcloud healthcare dicom-stores metrics {store.store_id} --dataset={store.dataset_id} "
        f"--location={LOCATION} --format=json"
    )

    body = json.loads(result.stdout)
    assert body["name"] == store.name
    assert (body["studyCount"], body["seriesCount"], body["instanceCount"]) == ("2", "2", "2")
    assert int(body["blobStorageSizeBytes"]) > 0 and int(body["structuredStorageSizeBytes"]) > 0


def test_add_iam_policy_binding_reads_and_writes_with_the_etag(gcloud: Gcloud, store: StoreRef) -> None:
    names = f"{store.store_id} --dataset={store.dataset_id} --location={LOCATION}"
    before = json.loads(gcloud.run(f"gcloud healthcare dicom-stores get-iam-policy {names} --format=json").stdout)
    assert before == {"etag": "ACAB"}

    gcloud.run(
        f"gcloud healthcare dicom-stores add-iam-policy-binding {names} "
        "--member=serviceAccount:reader@conformance.iam.gserviceaccount.com --role=roles/healthcare.dicomViewer"
    )

    after = json.loads(gcloud.run(f"gcloud healthcare dicom-stores get-iam-policy {names} --format=json").stdout)
    assert after["bindings"] == [
        {
            "role": "roles/healthcare.dicomViewer",
            "members": ["serviceAccount:reader@conformance.iam.gserviceaccount.com"],
        }
    ]
    assert after["etag"] != "ACAB" and after["version"] == 1


def test_gcloud_with_an_access_token_passes_require_auth_and_without_gets_unauthenticated(
    emulators: Emulators, gcloud_with_token: Gcloud, gcloud_without_credentials: Gcloud
) -> None:
    dataset_id = f"ds-{uuid.uuid4().hex[:10]}"

    gcloud_with_token.run(f"gcloud healthcare datasets create {dataset_id} --location={LOCATION}")
    refused = gcloud_without_credentials.run(f"gcloud healthcare datasets list --location={LOCATION}", check=False)

    assert refused.returncode != 0
    assert "UNAUTHENTICATED" in refused.stderr and "CREDENTIALS_MISSING" in refused.stderr
    token = {"Authorization": "Bearer any"}
    listed = requests.get(
        f"{emulators.healthcare_auth}/v1/projects/{PROJECT}/locations/{LOCATION}/datasets", headers=token, timeout=10
    ).json()
    assert f"projects/{PROJECT}/locations/{LOCATION}/datasets/{dataset_id}" in [d["name"] for d in listed["datasets"]]
    assert create_store(emulators.healthcare_auth, headers=token).store_id
