"""A DICOM search that fails never carries its query string (tag values: PHI) into an exception,
a log line or an event: through the real HealthcareClient, the real export handler and the
boundary that logs what the platform sees."""

from __future__ import annotations

import json
import logging
import socket
from datetime import UTC, datetime

import pytest
import requests

from functions import boundary
from functions.core.errors import ApiError
from functions.core.events import PubsubMessage
from functions.exports.export_on_message import ExportOnMessage
from functions.gcp.healthcare import HealthcareClient
from functions.imports.job_queue import JobQueue
from functions.settings import Settings
from tests.functional.world import World

SECRET = "PAT-SECRET-4711"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: connections are refused


def _settings(url: str) -> Settings:
    return Settings(dicom_store="projects/p/locations/l/datasets/d/dicomStores/s", state_bucket="state",
                    completion_topic="projects/p/topics/t", healthcare_api_url=url,
                    export_allowed_destinations=("gs://exports",), retry_deadline_seconds=0.2,
                    http_timeout_seconds=2)


def test_a_search_connection_error_names_the_path_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = HealthcareClient(_settings(f"http://127.0.0.1:{_closed_port()}"))
    with pytest.raises(Exception) as caught:
        client.search("studies", {"PatientID": SECRET, "limit": "10"})
    text = "".join(str(e) + repr(e) for e in _chain(caught.value))
    assert SECRET not in text
    assert "/dicomWeb/studies" in text
    assert SECRET not in caplog.text


def test_a_failed_query_selector_logs_and_publishes_no_tag_value(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(f"http://127.0.0.1:{_closed_port()}")
    world = World()
    store, publisher = world.store, world.publisher
    healthcare = HealthcareClient(settings)
    handler = ExportOnMessage(settings, store, healthcare, JobQueue(settings, store, healthcare), publisher)
    body = {"requestId": "q", "destination": "gs://exports/q", "query": {"PatientID": SECRET}}
    message = PubsubMessage(event_id="m-1", message_id="m-1", data=json.dumps(body).encode(), attributes={},
                            publish_time=datetime.now(UTC))
    with pytest.raises(Exception) as caught:
        boundary.run_event("export_dicom_on_message", "m-1", lambda: handler.handle(message))
    assert SECRET not in "".join(str(e) + repr(e) for e in _chain(caught.value))
    records = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert records and SECRET not in records
    assert all(SECRET not in json.dumps(e.data) for e in publisher.events)


def test_an_api_error_of_a_search_carries_no_message(caplog: pytest.LogCaptureFixture) -> None:
    class Session(requests.Session):
        def request(self, method: str, url: str, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
            response = requests.Response()
            response.status_code = 400
            response._content = json.dumps({"error": {"message": f"invalid PatientID {SECRET}",
                                                      "status": "INVALID_ARGUMENT"}}).encode()
            response.url = url
            return response

    client = HealthcareClient(_settings("http://127.0.0.1:1"), session=Session())
    with pytest.raises(ApiError) as caught:
        client.search("studies", {"PatientID": SECRET})
    assert caught.value.status_code == 400 and SECRET not in str(caught.value)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """The exceptions a logged traceback shows (causes, unsuppressed contexts, a RetryError's cause)."""
    out: list[BaseException] = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        wrapped = getattr(exc, "cause", None)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if isinstance(wrapped, BaseException) and wrapped is not exc:
            out.append(wrapped)
            exc = exc or wrapped.__cause__ or (None if wrapped.__suppress_context__ else wrapped.__context__)
    return out


def test_a_failed_poller_step_or_operation_is_reported_by_its_errors_type_only(
        caplog: pytest.LogCaptureFixture) -> None:
    """Another service's error message may carry tag values or a URL with a query: the poller's
    summary and log lines name the step or operation and the error's type, not its text."""
    caplog.set_level(logging.DEBUG)
    world = World()
    world.deliver(world.upload("in/a.dcm"), world.instance())
    world.sim.run_until_idle()
    [op] = world.hc.running
    world.hc.finish(op.name)
    world.faults.fail(lambda: RuntimeError(f"bad request ?PatientID={SECRET}"), method="list", name="jobs/")
    world.faults.fail(lambda: RuntimeError(f"bad request ?PatientID={SECRET}"), method="publish")
    summary = world.poll().value()
    assert world.faults.fired
    assert sorted(summary.errors) == sorted(["start jobs: RuntimeError", f"{op.name}: RuntimeError"])
    records = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "RuntimeError" in records and SECRET not in records


def test_an_import_whose_state_cannot_be_read_is_logged_by_its_error_type(world: World,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A waiting job asks whether the running import still runs; the API's answer is an error whose
    message the log must not carry (another service's text counts as tag values)."""
    caplog.set_level(logging.DEBUG)
    a = world.instance()
    world.upload_burst(["running/s1/IM0000.dcm"], to=[a])
    world.sim.run_until_idle()
    assert world.hc.operations  # started, not finished
    world.faults.fail(lambda: ApiError(500, f"backend error near PatientID={SECRET}", status="INTERNAL"),
                      method="get_operation", times=10)
    assert a.queue._running_import(besides="another-job")  # counted as running
    assert world.faults.fired
    assert "could not tell whether an import still runs" in caplog.text
    records = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert SECRET not in records and "ApiError" in records
