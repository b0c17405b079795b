"""Error mapping: HTTP status -> our error leaves, and what the Healthcare client makes of API answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from functions.core.errors import (
    RETRYABLE_STATUS_CODES,
    DicomPipelineError,
    DropEventError,
    PermanentApiError,
    RetryableError,
    TransientApiError,
    api_error,
)
from functions.gcp.healthcare import HealthcareClient
from functions.settings import Settings
from tests.unit import retry_clock
from tests.unit.retry_clock import FakeTime

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"


@pytest.mark.parametrize("status", sorted(RETRYABLE_STATUS_CODES))
def test_429_408_and_5xx_are_transient_and_get_a_redelivery(status: int) -> None:
    error = api_error(status, "try again", status="UNAVAILABLE", resource=STORE)
    assert isinstance(error, TransientApiError) and isinstance(error, RetryableError)
    assert not isinstance(error, DropEventError)
    assert (error.status_code, error.status, error.message, error.resource) == (status, "UNAVAILABLE", "try again",
                                                                                 STORE)
    assert str(error) == f"HTTP {status} UNAVAILABLE: try again ({STORE})"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 412, 501])
def test_other_error_statuses_are_permanent_and_drop_the_event(status: int) -> None:
    error = api_error(status, "no")
    assert isinstance(error, PermanentApiError) and isinstance(error, DropEventError)
    assert not isinstance(error, RetryableError)
    assert isinstance(error, DicomPipelineError)


# -- the Healthcare client on a scripted session ---------------------------------------------------


def _response(status: int, body: Any = None, *, reason: str = "") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = reason
    if isinstance(body, (dict, list)):
        response._content = json.dumps(body).encode()
    else:
        response._content = (body or "").encode() if isinstance(body, str) else (body or b"")
    return response


class ScriptedSession(requests.Session):
    """Answers each request with the next scripted response (or raises the scripted exception)."""

    def __init__(self, *answers: requests.Response | BaseException) -> None:
        super().__init__()
        self.answers = list(answers)
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.calls.append((str(method), str(url)))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture(autouse=True)
def fake_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTime]:
    yield retry_clock.install(monkeypatch)


def _client(*answers: requests.Response | BaseException) -> tuple[HealthcareClient, ScriptedSession]:
    settings = Settings(dicom_store=STORE, state_bucket="state", healthcare_api_url="http://hc.local",
                        retry_deadline_seconds=5.0)
    session = ScriptedSession(*answers)
    return HealthcareClient(settings, session=session), session


def _google_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "status": status, "message": message}}


def test_a_google_error_body_becomes_the_matching_leaf_with_its_message() -> None:
    client, session = _client(_response(400, _google_error(400, "INVALID_ARGUMENT", "bad gcsSource.uri")))
    with pytest.raises(PermanentApiError) as caught:
        client.import_dicom("gs://b/a/**/b.dcm")
    assert (caught.value.status_code, caught.value.status, caught.value.message) == (
        400, "INVALID_ARGUMENT", "bad gcsSource.uri")
    assert caught.value.resource == STORE
    assert session.calls == [("POST", f"http://hc.local/v1/{STORE}:import")]


def test_an_error_without_a_json_body_keeps_the_text_or_the_reason() -> None:
    client, _ = _client(_response(403, "<html>denied</html>"))
    with pytest.raises(PermanentApiError, match="<html>denied</html>"):
        client.get_operation("projects/p/locations/l/datasets/d/operations/1")
    client, _ = _client(_response(404, b"", reason="Not Found"))
    with pytest.raises(PermanentApiError, match="Not Found"):
        client.get_operation("projects/p/locations/l/datasets/d/operations/1")


def test_transient_answers_are_retried_then_the_call_succeeds() -> None:
    client, session = _client(_response(503, _google_error(503, "UNAVAILABLE", "busy")),
                              _response(429, _google_error(429, "RESOURCE_EXHAUSTED", "quota")),
                              _response(200, {"name": "projects/p/locations/l/datasets/d/operations/7"}))
    assert client.import_dicom("gs://b/x.dcm") == "projects/p/locations/l/datasets/d/operations/7"
    assert len(session.calls) == 3


def test_a_transient_fault_past_the_retry_budget_surfaces_as_itself(fake_time: FakeTime) -> None:
    client, session = _client(_response(503, _google_error(503, "UNAVAILABLE", "busy")))
    with pytest.raises(TransientApiError) as caught:
        client.export_dicom("gs://exports/out")
    assert (caught.value.status_code, caught.value.message) == (503, "busy")
    assert len(session.calls) >= 2 and fake_time.now - 1000.0 <= 5.0


def test_a_dropped_connection_past_the_retry_budget_is_a_transient_error() -> None:
    client, session = _client(requests.ConnectionError("connection reset"))
    with pytest.raises(TransientApiError) as caught:
        client.get_operation("projects/p/locations/l/datasets/d/operations/1")
    assert caught.value.status_code == 503 and "ConnectionError" in caught.value.message
    assert len(session.calls) >= 2


def test_instance_lookups_read_404_as_absent_and_other_errors_as_errors() -> None:
    client, _ = _client(_response(404, _google_error(404, "NOT_FOUND", "no such study")))
    assert client.instance_exists("1.2", "1.2.3", "1.2.3.4") is False
    client, _ = _client(_response(204, b""))
    assert client.instance_exists("1.2", "1.2.3", "1.2.3.4") is False
    client, _ = _client(_response(200, [{"00080018": {"vr": "UI", "Value": ["1.2.3.4"]}}]))
    assert client.instance_exists("1.2", "1.2.3", "1.2.3.4") is True
    client, _ = _client(_response(403, _google_error(403, "PERMISSION_DENIED", "no")))
    with pytest.raises(PermanentApiError):
        client.instance_exists("1.2", "1.2.3", "1.2.3.4")
