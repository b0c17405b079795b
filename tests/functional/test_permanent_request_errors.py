"""An export or storage-class request that meets an error no retry can cure (a 403, a missing
bucket, a 400) frees its requestId and gets one REJECTED or FAILED event with the reason, without
the service's message; the same request may then be sent again. Real export function and
poller on the fakes; the faults are the fakes' injected API errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.api_core.exceptions import Forbidden, NotFound, ServiceUnavailable

from functions.core.errors import PermanentApiError
from functions.core.events import PubsubMessage
from functions.exports.export_on_message import ExportOutcome
from tests.contracts import validate_completion_message
from tests.functional.world import World

SERVICE_TEXT = "secret-service-text-PAT-1"


def _world() -> tuple[World, str]:
    w = World()
    w.deliver(w.upload("in/a.dcm"), w.instance())
    w.settle()
    w.publisher.events.clear()
    study = next(iter(w.hc.instances.values())).study
    return w, study


def _send(w: World, body: dict[str, Any], message_id: str) -> ExportOutcome:
    message = PubsubMessage(event_id=message_id, message_id=message_id, data=json.dumps(body).encode(),
                            attributes={}, publish_time=datetime.fromtimestamp(w.sim.clock(), UTC))
    outcome: ExportOutcome = w.sim.call(lambda: w.exporter().handle(message), name="export").value()
    return outcome


def _events(w: World) -> list[dict[str, Any]]:
    for event in w.completions():
        validate_completion_message(json.dumps(event.data).encode(), event.attributes)
    return [e.data for e in w.completions()]


def test_a_403_writing_the_filter_file_rejects_once_and_frees_the_request_id() -> None:
    w, study = _world()
    body = {"requestId": "denied", "destination": "gs://exports/d", "resources": [f"/studies/{study}"]}
    w.faults.fail(Forbidden(SERVICE_TEXT), client="store", method="write", name="filters/")
    outcome = _send(w, body, "m-1")
    assert outcome.action == "rejected", outcome
    [event] = _events(w)
    assert (event["state"], event["requestId"]) == ("REJECTED", "denied")
    assert "HTTP 403" in event["reason"] and SERVICE_TEXT not in json.dumps(event)
    assert w.state("exports/") == [] and w.state("jobs/") == [] and w.state("filters/") == []
    # Once the permission is fixed, the same request goes through.
    assert _send(w, body, "m-2").action == "started"


def test_a_transient_error_keeps_the_claim_for_the_redelivery() -> None:
    w, study = _world()
    body = {"requestId": "later", "destination": "gs://exports/l", "resources": [f"/studies/{study}"]}
    w.faults.fail(ServiceUnavailable("x"), client="store", method="write", name="filters/", times=20)
    message = PubsubMessage(event_id="m-1", message_id="m-1", data=json.dumps(body).encode(), attributes={},
                            publish_time=datetime.fromtimestamp(w.sim.clock(), UTC))
    task = w.sim.call(lambda: w.exporter().handle(message), name="export")
    assert task.error is not None and w.completions() == []
    assert len(w.state("exports/")) == 1, "the redelivery retakes the claim"


def test_a_refused_start_fails_once_without_the_apis_message_and_frees_the_request_id() -> None:
    w, study = _world()
    body = {"requestId": "gone", "destination": "gs://exports/g", "resources": [f"/studies/{study}"]}
    w.faults.fail(PermanentApiError(404, SERVICE_TEXT, status="NOT_FOUND", resource="store"),
                  client="healthcare", method="export_dicom")
    _send(w, body, "m-1")
    w.settle()
    [event] = _events(w)
    assert (event["state"], event["requestId"]) == ("FAILED", "gone"), event
    assert "HTTP 404" in json.dumps(event) and SERVICE_TEXT not in json.dumps(event)
    assert w.state("exports/") == [], "the refused start freed the requestId"
    assert _send(w, body, "m-2").action == "started"


def test_a_missing_bucket_during_a_storage_class_change_rejects_it() -> None:
    w, study = _world()
    body = {"requestId": "nobucket", "action": "setStorageClass", "storageClass": "ARCHIVE",
            "resources": [f"/studies/{study}"]}
    w.faults.fail(NotFound(SERVICE_TEXT), client="store", method="write", name="filters/")
    assert _send(w, body, "m-1").action == "rejected"
    [event] = _events(w)
    assert (event["kind"], event["state"]) == ("storageClass", "REJECTED") and "HTTP 404" in event["reason"]
    assert SERVICE_TEXT not in json.dumps(event) and w.state("exports/") == []


# --- exports and storage-class changes cannot take the ingest slot --------------------------------


def test_requests_leave_an_ingest_slot_free_and_queued_requests_do_not_block_imports() -> None:
    w = World(max_concurrent_operations=3)
    w.deliver(w.upload("in/first.dcm"), w.instance())
    w.settle()
    w.publisher.events.clear()
    outcomes = [_send(w, {"requestId": f"x-{i}", "destination": f"gs://exports/{i}"}, f"m-{i}").action
                for i in range(4)]
    assert outcomes == ["started", "started", "queued", "queued"], "two slots for requests, one for ingest"
    assert {op.kind for op in w.hc.running} == {"export"} and len(w.hc.running) == 2
    # An upload now starts its import at once, although two exports wait in front of it.
    w.deliver(w.upload("in/second.dcm"), w.instance())
    w.sim.run_until_idle()
    for _ in range(3):
        w.poll()
        w.sim.run_until_idle()
        w.sim.advance(10)
        if any(op.kind == "import" for op in w.hc.running):
            break
    assert any(op.kind == "import" for op in w.hc.running), [op.kind for op in w.hc.running]
    assert sum(op.kind == "export" for op in w.hc.running) == 2
    w.settle()
    assert w.hc.max_running <= 3
    assert sorted(e["kind"] for e in _events(w)) == ["export"] * 4 + ["import"]


def test_with_one_slot_requests_may_take_it() -> None:
    w = World(max_concurrent_operations=1)
    w.deliver(w.upload("in/a.dcm"), w.instance())
    w.settle()
    assert _send(w, {"requestId": "one", "destination": "gs://exports/one"}, "m-1").action == "started"


def test_the_poller_starts_an_import_queued_behind_requests_that_wait_for_a_slot() -> None:
    w = World(max_concurrent_operations=2, import_coalesce_seconds=0)
    w.deliver(w.upload("in/a.dcm"), w.instance())
    w.settle()
    w.publisher.events.clear()
    assert _send(w, {"requestId": "a", "destination": "gs://exports/a"}, "m-a").action == "started"
    assert _send(w, {"requestId": "b", "destination": "gs://exports/b"}, "m-b").action == "queued"
    w.deliver(w.upload("in/b.dcm"), w.instance())  # its import takes the ingest slot
    w.sim.run_until_idle()
    first_import = [op for op in w.hc.running if op.kind == "import"]
    assert len(first_import) == 1
    w.sim.advance(30)
    w.deliver(w.upload("in/c.dcm"), w.instance())  # no slot: queued behind export b
    w.sim.run_until_idle()
    assert sum(op.kind == "import" for op in w.hc.running) == 1
    w.hc.finish(first_import[0].name)  # the ingest slot frees up; the export keeps the other
    for _ in range(2):
        w.poll()
        w.sim.run_until_idle()
        w.sim.advance(10)
    kinds = sorted(op.kind for op in w.hc.running)
    assert kinds == ["export", "import"], kinds


# --- jobs read back from the state bucket are checked when they start ------------------------------


def test_forged_job_records_are_refused_when_they_start() -> None:
    from functions.imports.job_queue import Job

    w, _ = _world()
    operations_before = len(w.hc.operations)
    forged = [
        Job(job_id="20260101T000000000000Z-export-forged", kind="export", request_id="f-1", created_at=0,
            destination="gs://evil-bucket/loot"),
        Job(job_id="20260101T000000000001Z-storageClass-forged", kind="storageClass", request_id="f-2",
            created_at=0, storage_class="ARCHIVE"),
        Job(job_id="20260101T000000000002Z-import-forged", kind="import", request_id="f-3", created_at=0,
            import_uri="gs://someone-elses-bucket/**"),
    ]
    for job in forged:
        w.store.write("state", w.settings.state_path("jobs", f"{job.job_id}.json"),
                      {"job": job.to_json(), "state": "PENDING"})
    w.settle()
    assert len(w.hc.operations) == operations_before, "nothing was started"
    events = {e["requestId"]: e for e in _events(w)}
    assert {r: e["state"] for r, e in events.items()} == {"f-1": "FAILED", "f-2": "FAILED", "f-3": "FAILED"}
    assert "DICOM_EXPORT_ALLOWED_DESTINATIONS" in json.dumps(events["f-1"])
    assert "whole store" in json.dumps(events["f-2"])
    assert "upload bucket" in json.dumps(events["f-3"])
