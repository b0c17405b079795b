"""The run-event boundary: which outcomes are acknowledged and which make the platform redeliver."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from functions.boundary import attributes_of, run_event
from functions.core.errors import (
    InvalidEventError,
    InvalidExportRequestError,
    PermanentApiError,
    StaleEventError,
    TransientApiError,
)
from functions.log import JsonFormatter


@pytest.fixture
def lines() -> Iterator[Callable[[], list[dict[str, object]]]]:
    """The boundary's log lines as JSON, formatted when written (so they carry the log context)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("functions.boundary")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _raise(exc: BaseException) -> Callable[[], None]:
    def action() -> None:
        raise exc

    return action


def test_the_work_runs_and_its_result_comes_back(lines: Callable[[], list[dict[str, object]]]) -> None:
    assert run_event("import_dicom_on_upload", "e-1", lambda: 42) == 42
    assert lines() == []


@pytest.mark.parametrize("exc", [
    InvalidEventError("storage event has no object name"),
    StaleEventError("event for gs://b/x.dcm is older than 3600 s"),
    InvalidExportRequestError("destination is outside the allowlist"),
], ids=lambda e: type(e).__name__)
def test_events_no_retry_can_cure_are_acknowledged_with_one_warning(
        exc: Exception, lines: Callable[[], list[dict[str, object]]]) -> None:
    assert run_event("export_dicom_on_message", "e-2", _raise(exc)) is None
    [line] = lines()
    assert (line["severity"], line["message"]) == ("WARNING", "dropping the event")
    assert (line["function"], line["event_id"]) == ("export_dicom_on_message", "e-2")
    assert line["reason"] == str(exc) and line["error"] == type(exc).__name__


def test_a_call_the_api_refused_is_acknowledged_with_an_error_line(
        lines: Callable[[], list[dict[str, object]]]) -> None:
    refused = PermanentApiError(403, "permission denied", status="PERMISSION_DENIED", resource="projects/p/x")
    assert run_event("poll_dicom_operations", "e-3", _raise(refused)) is None
    [line] = lines()
    assert (line["severity"], line["status"], line["error"], line["reason"], line["resource"]) == (
        "ERROR", 403, "PermanentApiError", "permission denied", "projects/p/x")


def test_a_transient_fault_is_raised_so_the_platform_redelivers(lines: Callable[[], list[dict[str, object]]]) -> None:
    with pytest.raises(TransientApiError):
        run_event("import_dicom_on_upload", "e-4", _raise(TransientApiError(503, "busy")))
    [line] = lines()
    assert (line["severity"], line["message"]) == ("WARNING", "transient failure; the event will be redelivered")


def test_a_bug_is_raised_with_its_stack_trace(lines: Callable[[], list[dict[str, object]]]) -> None:
    with pytest.raises(ZeroDivisionError):
        run_event("import_dicom_on_upload", "e-5", lambda: 1 / 0)
    [line] = lines()
    assert line["severity"] == "ERROR" and "ZeroDivisionError" in str(line["stack_trace"])
    assert line["event_id"] == "e-5"


def test_a_process_being_stopped_is_not_swallowed(lines: Callable[[], list[dict[str, object]]]) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_event("import_dicom_on_upload", "e-6", _raise(KeyboardInterrupt()))
    assert lines() == []


def test_attributes_come_from_a_cloudevent_or_a_plain_mapping() -> None:
    from cloudevents.http import CloudEvent

    event = CloudEvent({"type": "t", "source": "//s", "id": "e-7"}, {"x": 1})
    assert attributes_of(event)["id"] == "e-7"
    assert attributes_of({"id": "e-8"}) == {"id": "e-8"}
