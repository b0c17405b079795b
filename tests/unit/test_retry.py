"""The retry predicate and the in-process retry policy, on a fake clock (no real sleeps)."""

from __future__ import annotations

import pytest
import requests
from google.api_core import exceptions as gexc
from google.api_core.exceptions import RetryError

from functions.core.errors import InvalidEventError, PermanentApiError, TransientApiError, api_error
from functions.gcp import retry
from tests.unit import retry_clock
from tests.unit.retry_clock import FakeTime


@pytest.mark.parametrize("exc", [
    TransientApiError(503, "unavailable"),
    api_error(429, "slow down"),
    api_error(408, "request timeout"),
    api_error(500, "internal"),
    requests.ConnectionError("reset"),
    requests.ReadTimeout("read timed out"),
    gexc.TooManyRequests("429"),
    gexc.InternalServerError("500"),
    gexc.BadGateway("502"),
    gexc.ServiceUnavailable("503"),
    gexc.GatewayTimeout("504"),
    ConnectionResetError("reset by peer"),
], ids=lambda e: type(e).__name__)
def test_faults_a_later_identical_call_may_not_meet_are_transient(exc: BaseException) -> None:
    assert retry.is_transient(exc)


@pytest.mark.parametrize("exc", [
    PermanentApiError(400, "bad request"),
    api_error(403, "denied"),
    api_error(404, "not found"),
    api_error(412, "precondition"),
    gexc.NotFound("404"),
    gexc.PreconditionFailed("412"),
    gexc.Forbidden("403"),
    InvalidEventError("no name"),
    ValueError("a bug"),
    KeyError("missing"),
], ids=lambda e: type(e).__name__)
def test_refusals_and_bugs_are_not_retried(exc: BaseException) -> None:
    assert not retry.is_transient(exc)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    return retry_clock.install(monkeypatch)


def test_transient_faults_are_retried_with_growing_backoff_until_the_call_succeeds(fake_time: FakeTime) -> None:
    answers: list[BaseException | str] = [api_error(503, "busy"), requests.ConnectionError("reset"), "done"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert retry.policy(30.0)(call)() == "done"
    assert answers == [] and len(fake_time.sleeps) == 2
    # Backoff 0.5 s doubling, with full jitter: each sleep at most its ceiling.
    assert 0 < fake_time.sleeps[0] <= 0.5 and 0 < fake_time.sleeps[1] <= 1.0


def test_a_transient_fault_that_outlasts_the_deadline_gives_up_within_it(fake_time: FakeTime) -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise api_error(503, "still busy")

    started = fake_time.now
    with pytest.raises(RetryError) as caught:
        retry.policy(10.0)(call)()
    assert isinstance(caught.value.cause, TransientApiError)
    assert calls >= 3 and fake_time.now - started <= 10.0
    assert max(fake_time.sleeps) <= 8.0  # the backoff ceiling


def test_a_permanent_error_fails_at_once(fake_time: FakeTime) -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise api_error(400, "bad uri")

    with pytest.raises(PermanentApiError):
        retry.policy(30.0)(call)()
    assert calls == 1 and fake_time.sleeps == []
