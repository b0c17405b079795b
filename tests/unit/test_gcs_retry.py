"""The Cloud Storage wrapper's retry gives up a throttled call before a leader's lease margin ends."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.api_core.exceptions import RetryError

from functions.core.lease import renewal_margin
from functions.gcp import gcs
from functions.settings import Settings
from tests.unit import retry_clock
from tests.unit.retry_clock import FakeTime


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    return retry_clock.install(monkeypatch)


def test_a_call_throttled_without_end_gives_up_within_the_lease_a_leader_keeps(fake_time: FakeTime) -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise gexc.TooManyRequests("429 rate of writes to one object name")

    started = fake_time.now
    with pytest.raises(RetryError):
        gcs.DEFAULT_RETRY(call)()
    lease = Settings(dicom_store="projects/p/locations/l/datasets/d/dicomStores/s",
                     state_bucket="b").claim_lease_seconds
    assert calls >= 2
    assert fake_time.now - started <= gcs.STORAGE_RETRY_SECONDS < renewal_margin(lease)


def test_a_throttled_call_that_then_succeeds_is_retried() -> None:
    answers = iter([gexc.TooManyRequests("429"), gexc.ServiceUnavailable("503"), None])

    def call() -> str:
        answer = next(answers)
        if answer is not None:
            raise answer
        return "ok"

    with pytest.MonkeyPatch.context() as patch:
        retry_clock.install(patch)
        assert gcs.DEFAULT_RETRY(call)() == "ok"
