"""The three entry points of main.py served by functions-framework, fed real CloudEvents over HTTP
(binary mode, as Eventarc delivers them), a raw Pub/Sub push and a Cloud Scheduler POST, against a
fresh deployment on the session's emulators.

functions-framework's `create_app` executes main.py afresh each time (a new module object under
`sys.modules["main"]`), so each app reads the environment set just before it; the test restores
`sys.modules["main"]` afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from pydicom.uid import generate_uid

from functions.core.errors import ConfigurationError
from functions.log import JsonFormatter
from tests import dicom_factory
from tests.integration.harness import (
    PROJECT,
    Deployment,
    clear_faults,
    emulator_calls,
    function_env,
    no_more_completions,
    wait_for,
)

MAIN = Path(__file__).resolve().parents[2] / "main.py"
SECRET_PATIENT = "PHI-SECRET-4711"
POLL_KEYS = {"tracked", "finished", "running", "published", "jobs_started", "jobs_queued", "windows_recovered",
             "windows_left", "accounting_left", "slots_freed", "staged_deleted", "unconfirmed",
             "oldest_running_seconds", "errors"}


@pytest.fixture
def d(healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str) -> Iterator[Deployment]:
    d = Deployment.create(healthcare_emulator)
    yield d
    clear_faults(d)


def _client(monkeypatch: pytest.MonkeyPatch, d: Deployment, target: str, **env: str) -> Any:
    for name, value in {**function_env(d, target), **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FUNCTION_SIGNATURE_TYPE", raising=False)  # functions-framework sets it
    monkeypatch.setitem(sys.modules, "main", sys.modules.get("main"))  # restored after the test
    monkeypatch.setattr(sys, "path", list(sys.path))
    return functions_framework.create_app(target, source=str(MAIN)).test_client()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _storage_event(client: Any, bucket: str, data: dict[str, Any]) -> Any:
    """POSTs a binary-mode finalize CloudEvent (ce-* headers, the object resource as JSON body)."""
    name = data.get("name", "")
    headers = {"ce-specversion": "1.0", "ce-id": uuid.uuid4().hex,
               "ce-type": "google.cloud.storage.object.v1.finalized",
               "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}", "ce-time": _now()}
    if name:
        headers["ce-subject"] = f"objects/{name}"
    return client.post("/", headers=headers, data=json.dumps(data), content_type="application/json")


def _upload_event(d: Deployment, client: Any, name: str, payload: bytes) -> Any:
    blob = d.storage_client.bucket(d.upload_bucket).blob(name)
    blob.upload_from_string(payload)
    created = blob.time_created.isoformat().replace("+00:00", "Z")
    data = {"kind": "storage#object", "id": f"{d.upload_bucket}/{name}/{blob.generation}", "bucket": d.upload_bucket,
            "name": name, "generation": str(blob.generation), "metageneration": "1", "size": str(blob.size),
            "contentType": "application/octet-stream", "timeCreated": created, "updated": created,
            "storageClass": "STANDARD"}
    return _storage_event(client, d.upload_bucket, data)


def _notification(d: Deployment, client: Any, name: str, payload: bytes) -> Any:
    """Uploads `name`, then pushes the Cloud Storage Pub/Sub notification of it (JSON_API_V1) as the
    deployment's uploads topic delivers it (docs/decisions/0882)."""
    blob = d.storage_client.bucket(d.upload_bucket).blob(name)
    blob.upload_from_string(payload)
    created = blob.time_created.isoformat().replace("+00:00", "Z")
    resource = {"kind": "storage#object", "id": f"{d.upload_bucket}/{name}/{blob.generation}",
                "bucket": d.upload_bucket, "name": name, "generation": str(blob.generation), "metageneration": "1",
                "size": str(blob.size), "timeCreated": created, "updated": created, "storageClass": "STANDARD"}
    attributes = {"notificationConfig": f"projects/_/buckets/{d.upload_bucket}/notificationConfigs/1",
                  "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1", "bucketId": d.upload_bucket,
                  "objectId": name, "objectGeneration": str(blob.generation), "eventTime": created}
    envelope = {"message": {"data": base64.b64encode(json.dumps(resource).encode()).decode(),
                            "messageId": uuid.uuid4().hex, "publishTime": _now(), "attributes": attributes},
                "subscription": f"projects/{PROJECT}/subscriptions/uploads"}
    return client.post(f"/projects/{PROJECT}/topics/uploads", json=envelope)


def _push(client: Any, data: bytes, message_id: str | None = None) -> Any:
    """A raw Pub/Sub push envelope to /projects/P/topics/T, as a push subscription sends it."""
    envelope = {"message": {"data": base64.b64encode(data).decode(), "messageId": message_id or uuid.uuid4().hex,
                            "publishTime": _now(), "attributes": {}},
                "subscription": f"projects/{PROJECT}/subscriptions/export-requests"}
    return client.post(f"/projects/{PROJECT}/topics/export-requests", json=envelope)


@contextlib.contextmanager
def _function_logs() -> Iterator[io.StringIO]:
    """Redirects the JSON log handler main.py installed (log.configure) into a buffer."""
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h.formatter, JsonFormatter) and isinstance(h, logging.StreamHandler)]
    assert handlers, "main.py installs a JSON log handler on the root logger"
    buffer = io.StringIO()
    previous = [h.setStream(buffer) for h in handlers]
    try:
        yield buffer
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            handler.setStream(stream)


def _stored_sops(d: Deployment) -> set[str]:
    return {i["00080018"]["Value"][0] for i in d.stored_instances()}


# --- import on upload -------------------------------------------------------------------------------


def test_storage_events_other_files_ignored_dcm_imported_malformed_dropped(d: Deployment,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, d, "import_dicom_on_upload")
    response = _upload_event(d, client, "inbox/readme.txt", b"hello")
    assert response.status_code == 200, response.data
    assert d.state_objects("windows/") == [] and d.state_objects("seen/") == []

    malformed = _storage_event(client, d.upload_bucket, {"bucket": d.upload_bucket, "generation": "1"})
    assert malformed.status_code == 200, malformed.data  # dropped and logged, not redelivered forever
    garbage = client.post("/", headers={"ce-specversion": "1.0", "ce-id": "x", "ce-source": "//s",
                                        "ce-type": "google.cloud.storage.object.v1.finalized"},
                          data="[1, 2]", content_type="application/json")
    assert garbage.status_code == 200, garbage.data

    sop = generate_uid()
    response = _upload_event(d, client, "inbox/study/one.dcm", dicom_factory.instance(sop=sop))
    assert response.status_code == 200, response.data
    assert len(d.state_objects("seen/")) == 1
    [event] = d.pull_completions(1)
    assert (event["kind"], event["state"], event["counters"]["success"]) == ("import", "SUCCEEDED", 1), event
    assert _stored_sops(d) == {sop}


def test_an_upload_notified_through_the_uploads_topic_is_imported(d: Deployment,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, d, "import_dicom_on_upload")
    sop = generate_uid()
    response = _notification(d, client, "inbox/notified/one.dcm", dicom_factory.instance(sop=sop))
    assert response.status_code == 200, response.data
    assert len(d.state_objects("seen/")) == 1
    [event] = d.pull_completions(1)
    assert (event["kind"], event["state"], event["counters"]["success"]) == ("import", "SUCCEEDED", 1), event
    assert _stored_sops(d) == {sop}


def _refused_import(d: Deployment, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, int]:
    """Delivers one .dcm while the emulator refuses every import with 503 past the retry budget."""
    client = _client(monkeypatch, d, "import_dicom_on_upload")
    d.emulator("faults", {"method": "import", "count": 1000, "status": 503})
    try:
        sop = generate_uid()
        response = _upload_event(d, client, "flaky/one.dcm", dicom_factory.instance(sop=sop))
        refused = emulator_calls(d, "import")
        # Refused at least once (how many retries fit in the budget depends on the machine's
        # speed; the retry policy itself is unit-tested on a fake clock).
        assert refused >= 1
    finally:
        clear_faults(d)
    return response, sop, refused


def test_an_import_refused_past_the_retry_budget_is_not_lost(healthcare_emulator: str, fake_gcs: str,
                                                             pubsub_emulator: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    d = Deployment.create(healthcare_emulator, retry_deadline_seconds=2.0)
    _, sop, refused = _refused_import(d, monkeypatch)
    assert len(d.state_objects("jobs/")) == 1 and d.state_objects("operations/") == []
    [event] = d.pull_completions(1, timeout=30)  # the poller starts it (at the latest after the lease)
    assert (event["state"], event["counters"]["success"]) == ("SUCCEEDED", 1), event
    assert emulator_calls(d, "import") > refused
    assert _stored_sops(d) == {sop}


def test_an_import_refused_past_the_retry_budget_is_acknowledged_and_stays_queued(
        healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    d = Deployment.create(healthcare_emulator, retry_deadline_seconds=2.0)
    response, _, refused = _refused_import(d, monkeypatch)
    assert response.status_code == 200, response.data
    [job] = d.state_objects("jobs/")
    record = json.loads(d.storage_client.bucket(d.settings.state_bucket).blob(job).download_as_bytes())
    assert record["state"] == "PENDING" and record["job"]["kind"] == "import"
    assert d.state_objects("slots/") == [] and d.state_objects("claims/") == []
    d.pull_completions(1, timeout=30)
    assert no_more_completions(d) == []
    assert emulator_calls(d, "import") == refused + 1  # one start, not a second batch of the same window


# --- export on message ------------------------------------------------------------------------------


def test_pubsub_push_starts_an_export_or_rejects_garbage(d: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, d, "export_dicom_on_message")
    before = emulator_calls(d, "export")
    request = {"requestId": "push-1", "destination": f"gs://{d.export_bucket}/push"}
    response = _push(client, json.dumps(request).encode())
    assert response.status_code == 200, response.data
    assert emulator_calls(d, "export") == before + 1
    [event] = d.pull_completions(1)
    assert (event["kind"], event["state"], event["requestId"]) == ("export", "SUCCEEDED", "push-1"), event
    assert event["destination"] == f"gs://{d.export_bucket}/push"

    for garbage in (b"\x00\xffnot json", b'{"destination": 1}', b"[" * 100_000):
        response = _push(client, garbage)
        assert response.status_code == 200, response.data
    events = d.pull_completions(3, poll=False)
    assert [e["state"] for e in events] == ["REJECTED"] * 3, events
    assert all(e["reason"] for e in events)
    assert emulator_calls(d, "export") == before + 1


def test_a_redrive_message_on_the_requests_topic_reaches_the_redrive_handler(
        d: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, d, "export_dicom_on_message")
    before = emulator_calls(d, "import")
    request = {"action": "redrive", "receipt": "op-4242", "requestId": "redrive-push-1"}
    response = _push(client, json.dumps(request).encode())
    assert response.status_code == 200, response.data
    [event] = d.pull_completions(1, poll=False)
    assert (event["kind"], event["state"], event["requestId"]) == ("redrive", "REJECTED", "redrive-push-1"), event
    assert "no receipt for operation 4242" in event["reason"]
    assert emulator_calls(d, "import") == before


# --- poller -----------------------------------------------------------------------------------------


def test_the_poller_answers_a_scheduler_post_with_a_json_summary(d: Deployment,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    operation = d.deps.healthcare.export_dicom(f"gs://{d.export_bucket}/sched")
    d.deps.queue._gcs.write(d.settings.state_bucket, d.deps.queue.operation_path(operation.rsplit("/", 1)[-1]), {
        "name": operation, "slot": 0, "startedAt": 0,
        "job": {"job_id": "j1", "kind": "export", "request_id": "sched", "created_at": 0,
                "destination": f"gs://{d.export_bucket}/sched"}})
    client = _client(monkeypatch, d, "poll_dicom_operations")

    def tick() -> dict[str, Any]:
        response = client.post("/", headers={"User-Agent": "Google-Cloud-Scheduler"})
        assert response.status_code == 200, response.data
        assert response.headers["Content-Type"].startswith("application/json")
        return json.loads(response.data)

    summary = wait_for(lambda: (s := tick())["finished"] and s, what="the poller to report the export")
    assert set(summary) == POLL_KEYS
    assert summary["tracked"] == 1 and summary["errors"] == [] and len(summary["published"]) == 1
    [event] = d.pull_completions(1, poll=False)
    assert event["eventId"] == summary["published"][0] and event["requestId"] == "sched"
    assert tick() == dict.fromkeys(POLL_KEYS, 0) | {"published": [], "errors": [], "oldest_running_seconds": None,
                                                    "unconfirmed": {}}


# --- configuration and logs -------------------------------------------------------------------------


def test_a_bad_variable_fails_at_start_with_its_name(d: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="DICOM_MAX_CONCURRENT_OPERATIONS"):
        _client(monkeypatch, d, "export_dicom_on_message", DICOM_MAX_CONCURRENT_OPERATIONS="zero")


def test_function_logs_are_json_lines_without_tag_values(d: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    importer = _client(monkeypatch, d, "import_dicom_on_upload")
    with _function_logs() as logs:
        study = generate_uid()
        response = _upload_event(d, importer, "phi/one.dcm",
                                 dicom_factory.instance(study, patient_id=SECRET_PATIENT, study_date="20240301"))
        assert response.status_code == 200
        d.pull_completions(1)
        exporter = _client(monkeypatch, d, "export_dicom_on_message")
        for query in ({"PatientID": SECRET_PATIENT}, {"PatientID": SECRET_PATIENT + "*"}):
            body = {"destination": f"gs://{d.export_bucket}/phi", "query": query}
            assert _push(exporter, json.dumps(body).encode()).status_code == 200
        events = d.pull_completions(2)
    states = sorted(e["state"] for e in events)
    assert states == ["REJECTED", "SUCCEEDED"], events
    assert all(SECRET_PATIENT not in json.dumps(e) for e in events)
    lines = [line for line in logs.getvalue().splitlines() if line.strip()]
    assert len(lines) >= 3, lines
    messages = set()
    for line in lines:
        entry = json.loads(line)  # one JSON object per line
        assert isinstance(entry, dict) and entry["severity"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert isinstance(entry["message"], str) and entry["message"]
        messages.add(entry["message"])
    assert "export request accepted" in messages and "export request rejected" in messages, messages
    assert SECRET_PATIENT not in logs.getvalue()


# --- faults of Cloud Storage and Pub/Sub: drop with one error line, not a redelivery loop ------------


def _error_lines(logs: io.StringIO) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in logs.getvalue().splitlines() if line.strip()]
    return [e for e in entries if e["severity"] == "ERROR"]


def test_a_state_bucket_that_does_not_exist_drops_the_event_with_an_error(d: Deployment,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"no-such-state-{uuid.uuid4().hex[:8]}"
    client = _client(monkeypatch, d, "import_dicom_on_upload", DICOM_STATE_BUCKET=missing)
    with _function_logs() as logs:
        response = _upload_event(d, client, "inbox/lost.dcm",
                                 dicom_factory.instance(patient_id=SECRET_PATIENT))
    assert response.status_code == 200, response.data  # acknowledged: a redelivery meets the same 404
    [error] = _error_lines(logs)
    assert error["message"] == "dropping the event: the API refused the call", error
    assert error["status"] == 404 and missing in error["resource"], error
    assert error["function"] == "import_dicom_on_upload"
    assert SECRET_PATIENT not in logs.getvalue()


def test_a_completion_topic_that_does_not_exist_drops_the_event_with_an_error(
        d: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"projects/{PROJECT}/topics/no-such-topic-{uuid.uuid4().hex[:8]}"
    client = _client(monkeypatch, d, "export_dicom_on_message", DICOM_COMPLETION_TOPIC=missing)
    with _function_logs() as logs:
        # Rejected (no such destination allowed): the REJECTED event cannot be published.
        response = _push(client, json.dumps({"destination": "gs://elsewhere/out"}).encode())
    assert response.status_code == 200, response.data
    [error] = _error_lines(logs)
    assert error["message"] == "dropping the event: the API refused the call", error
    assert error["status"] == 404 and error["resource"] == missing, error
    assert error["function"] == "export_dicom_on_message"
