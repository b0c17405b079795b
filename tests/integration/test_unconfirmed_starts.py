"""LRO starts whose outcome is unknown, against the Healthcare emulator: the export POST is held by
a delay fault longer than the client's timeout, so the client gives up while the emulator still
starts the export. Exactly one export must run, be tracked, count against the cap, and be reported
once; a start that began nothing (an injected 500) goes back to the queue only after the
unknown-outcome window (driven by a clock offset, not by waiting).

Every assertion holds whichever way the race between the delayed call and the poller goes: the
poller may run before or after the emulator created the operation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
from pydicom.uid import generate_uid

from functions.exports.export_on_message import ExportOnMessage
from functions.gcp.healthcare import HealthcareClient
from functions.imports.job_queue import Job, JobQueue, unknown_outcome_seconds
from tests import dicom_factory
from tests.integration.harness import (
    Deployment,
    clear_faults,
    emulator_calls,
    no_more_completions,
    pubsub_message,
    stow,
    wait_for,
)

DELAY_SECONDS = 5.0  # the emulator holds the export call this long before it starts the export...
CLIENT_TIMEOUT_SECONDS = 1.0  # ...and the client gives up after this: it can never see the answer


@pytest.fixture
def d(healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str) -> Iterator[Deployment]:
    # A dataset of its own: operations.list then shows only this test's operations.
    d = Deployment.create(healthcare_emulator, max_concurrent_operations=1)
    d.emulator("reset", {})  # stats (and faults) from zero
    yield d
    clear_faults(d)


def _studies(d: Deployment, count: int) -> list[str]:
    studies = [str(generate_uid()) for _ in range(count)]
    stow(d, [dicom_factory.instance(study, generate_uid(), generate_uid()) for study in studies])
    return studies


def _request(d: Deployment, request_id: str, study: str) -> Any:
    body = {"requestId": request_id, "destination": f"gs://{d.export_bucket}/{request_id}",
            "resources": [f"/studies/{study}"]}
    return pubsub_message(json.dumps(body).encode())


def _handler(d: Deployment, queue: JobQueue) -> ExportOnMessage:
    x = d.deps
    return ExportOnMessage(d.settings, x.gcs, x.healthcare, queue, x.publisher)


def _short_timeout_queue(d: Deployment, offset: list[float] | None = None) -> JobQueue:
    """A job queue whose Healthcare client gives up after CLIENT_TIMEOUT_SECONDS (and whose clock
    runs `offset[0]` seconds ahead, when given)."""
    client = HealthcareClient(replace(d.settings, http_timeout_seconds=CLIENT_TIMEOUT_SECONDS))
    clock = (lambda: time.time() + offset[0]) if offset is not None else time.time
    return JobQueue(d.settings, d.deps.gcs, client, clock=clock)


def _export_operations(d: Deployment) -> list[dict[str, Any]]:
    response = requests.get(f"{d.healthcare_url}/v1/{d.settings.dataset}/operations",
                            params={"pageSize": "100"}, timeout=10)
    response.raise_for_status()
    return [op for op in response.json().get("operations", [])
            if op["metadata"]["apiMethodName"].endswith("ExportDicomData")]


def _state(d: Deployment, prefix: str) -> dict[str, dict[str, Any]]:
    bucket = d.storage_client.bucket(d.settings.state_bucket)
    return {name: json.loads(bucket.blob(name).download_as_bytes()) for name in d.state_objects(prefix)}


def _unconfirmed_or_tracked(d: Deployment, job_id: str) -> str:
    """Where the first job is: UNCONFIRMED with its slot, or tracked (adopted). Nothing else is allowed."""
    jobs = {record["job"]["job_id"]: record for record in _state(d, "jobs/").values()}
    tracked = [record for record in _state(d, "operations/").values() if record["job"]["job_id"] == job_id]
    slots = [record for record in _state(d, "slots/").values() if record["job"] == job_id]
    assert len(slots) == 1, "the job must hold the (only) slot while its outcome is unknown"
    if tracked:
        assert job_id not in jobs and len(tracked) == 1, (jobs, tracked)
        return "tracked"
    assert jobs[job_id]["state"] == "UNCONFIRMED", jobs[job_id]
    assert jobs[job_id]["slot"] == 0  # max_concurrent_operations=1: the only slot there is
    return "unconfirmed"


def test_a_timed_out_export_start_runs_once_is_tracked_and_holds_the_cap(d: Deployment) -> None:
    first_study, second_study = _studies(d, 2)
    d.emulator("faults", {"method": "export", "count": 1, "delaySeconds": DELAY_SECONDS})
    first = _handler(d, _short_timeout_queue(d)).handle(_request(d, "first", first_study))
    # The client timed out (it cannot have had an answer): no blind second POST.
    assert first.action == "queued", first
    assert emulator_calls(d, "export") == 1
    [first_job] = [r["job"]["job_id"] for r in _state(d, "jobs/").values()]
    assert _unconfirmed_or_tracked(d, first_job) == "unconfirmed"
    assert d.state_objects("unconfirmed/") != []

    # The slot stays counted: a second request is queued, not started beside the unknown one.
    second = _handler(d, d.deps.queue).handle(_request(d, "second", second_study))
    assert second.action == "queued", second
    assert emulator_calls(d, "export") == 1

    # A poller run now may come before or after the emulator started the export: either way the
    # first job is unconfirmed or tracked, and nothing else started.
    d.poller().run()
    _unconfirmed_or_tracked(d, first_job)
    assert emulator_calls(d, "export") == 1

    wait_for(lambda: len(_export_operations(d)) == 1, timeout=60, what="the delayed export to start")
    [delayed] = _export_operations(d)
    events = {e["requestId"]: e for e in d.pull_completions(2, timeout=90)}
    assert set(events) == {"first", "second"}, events
    assert events["first"]["operation"] == delayed["name"]
    assert events["first"]["state"] == events["second"]["state"] == "SUCCEEDED", events
    assert events["first"]["counters"]["success"] == 1 and events["second"]["counters"]["success"] == 1
    stats = d.emulator("stats")
    assert stats["calls"]["export"] == 2  # the delayed one and the second request's
    assert stats["maxConcurrentOperations"] == 1
    assert len(_export_operations(d)) == 2
    assert no_more_completions(d) == []
    for prefix in ("jobs/", "unconfirmed/", "operations/", "slots/"):
        assert d.state_objects(prefix) == [], prefix


def test_a_start_that_began_nothing_waits_out_the_window_then_starts_once(d: Deployment) -> None:
    [study] = _studies(d, 1)
    offset = [0.0]
    queue = _short_timeout_queue(d, offset)
    d.emulator("faults", {"method": "export", "count": 1, "status": 500})  # may have acted: unknown
    outcome = _handler(d, queue).handle(_request(d, "lost", study))
    assert outcome.action == "queued", outcome
    assert emulator_calls(d, "export") == 1
    [job_id] = [r["job"]["job_id"] for r in _state(d, "jobs/").values()]

    assert queue.resolve_unconfirmed() == {job_id: "waiting"}  # no operation, but it may still come
    assert _unconfirmed_or_tracked(d, job_id) == "unconfirmed"
    assert emulator_calls(d, "export") == 1

    offset[0] = unknown_outcome_seconds(d.settings.http_timeout_seconds, d.settings.retry_deadline_seconds) + 1
    assert queue.resolve_unconfirmed() == {job_id: "requeued"}
    [record] = _state(d, "jobs/").values()
    assert record["state"] == "PENDING" and d.state_objects("slots/") == []

    [event] = d.pull_completions(1, timeout=60)
    assert (event["requestId"], event["state"], event["counters"]["success"]) == ("lost", "SUCCEEDED", 1), event
    assert emulator_calls(d, "export") == 2  # the 500 and the one real start
    assert len(_export_operations(d)) == 1
    assert no_more_completions(d) == []


class _ResolverRunsMidStart(HealthcareClient):
    """Runs a resolver between the API's answer to an export start and the starter tracking it:
    the moment a resolver can mistake another job's fresh operation for an unconfirmed start's."""

    def __init__(self, d: Deployment, resolver: JobQueue) -> None:
        super().__init__(d.settings)
        self.resolver = resolver
        self.resolutions: list[dict[str, str]] = []

    def export_dicom(self, uri_prefix: str, *, mime_type: str | None = None, filter_uri: str | None = None) -> str:
        name = super().export_dicom(uri_prefix, mime_type=mime_type, filter_uri=filter_uri)
        self.resolutions.append(self.resolver.resolve_unconfirmed())
        return name


def _export_job(d: Deployment, name: str) -> Job:
    return Job(job_id=f"20260101T000000Z-export-{name}", kind="export", request_id=name, created_at=time.time(),
               destination=f"gs://{d.export_bucket}/{name}")


def test_the_fresh_operation_of_a_start_in_flight_is_not_taken_for_an_unconfirmed_start(d: Deployment) -> None:
    _studies(d, 1)
    # Three slots: the two exports take slots 1 and 2 (slot 0 is kept for imports, decision 0874).
    d = Deployment.create(d.healthcare_url, dicom_store=d.settings.dicom_store, max_concurrent_operations=3)
    offset = [0.0]
    resolver = _short_timeout_queue(d, offset)
    d.emulator("faults", {"method": "export", "count": 1, "status": 500})
    lost = resolver.submit(_export_job(d, "lost"))  # a 500: unconfirmed, and in fact nothing started
    assert lost.unconfirmed and lost.started is None

    client = _ResolverRunsMidStart(d, resolver)
    known = JobQueue(d.settings, d.deps.gcs, client).submit(_export_job(d, "known"))
    assert known.started is not None
    # The resolver saw the fresh, still untracked operation, but a start still in flight (STARTING)
    # could have begun it too: nobody adopts it (decision 0300) ...
    assert client.resolutions == [{_export_job(d, "lost").job_id: "waiting"}]
    # ... and the starter that received it in its answer tracks it; the lost job stays unconfirmed.
    [record] = _state(d, "operations/").values()
    assert (record["name"], record["job"]["request_id"]) == (known.started, "known")
    assert _unconfirmed_or_any_slot(d, _export_job(d, "lost").job_id)

    offset[0] = unknown_outcome_seconds(d.settings.http_timeout_seconds, d.settings.retry_deadline_seconds) + 1
    assert resolver.resolve_unconfirmed() == {_export_job(d, "lost").job_id: "requeued"}
    events = {e["requestId"]: e for e in d.pull_completions(2, timeout=90)}
    assert events["known"]["operation"] == known.started
    assert {e["state"] for e in events.values()} == {"SUCCEEDED"}
    assert emulator_calls(d, "export") == 3  # the 500, "known" and the requeued "lost"
    assert len(_export_operations(d)) == 2
    assert no_more_completions(d) == []


def _unconfirmed_or_any_slot(d: Deployment, job_id: str) -> bool:
    jobs = {record["job"]["job_id"]: record for record in _state(d, "jobs/").values()}
    slots = {record["job"] for record in _state(d, "slots/").values()}
    return jobs[job_id]["state"] == "UNCONFIRMED" and job_id in slots and d.state_objects("unconfirmed/") != []


def test_a_starter_that_died_mid_call_is_adopted_even_behind_a_full_queue(d: Deployment) -> None:
    _studies(d, 1)
    queue = d.deps.queue
    dead = queue.reserve(_export_job(d, "dead"))  # STARTING with the only slot...
    assert dead.slot == 0
    # ...its POST reached the API, then its process died before it could track the operation.
    landed = d.deps.healthcare.export_dicom(dead.job.destination)
    # An older job waits in front of it: the poller's start loop stops there (no free slot).
    waiting = Job(job_id="20250101T000000Z-export-waiting", kind="export", request_id="waiting",
                  created_at=time.time(), destination=f"gs://{d.export_bucket}/waiting")
    assert queue.reserve(waiting).slot is None

    events = {e["requestId"]: e for e in d.pull_completions(2, timeout=90)}
    assert events["dead"]["operation"] == landed  # adopted once its lease ran out, not started again
    assert {e["state"] for e in events.values()} == {"SUCCEEDED"}
    stats = d.emulator("stats")
    assert stats["calls"]["export"] == 2 and stats["maxConcurrentOperations"] == 1, stats
    assert no_more_completions(d) == []
    for prefix in ("jobs/", "unconfirmed/", "operations/", "slots/"):
        assert d.state_objects(prefix) == [], prefix
