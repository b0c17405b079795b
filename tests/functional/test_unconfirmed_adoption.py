"""Unconfirmed starts and the untracked operations the poller finds (functions/imports/job_queue.py,
docs/decisions/0300-ambiguous-lro-starts.md): an operation is adopted only by the one job that can
have started it, and an adopted import is judged object by object against the store."""

from __future__ import annotations

import logging

import pytest
from google.api_core.exceptions import TooManyRequests

from tests import dicom_factory
from tests.functional.world import STATE, World

FIRST_OPERATION = "operations/000001.json"  # the fake names operations 000001, 000002, ...


def _refused() -> BaseException:
    return TooManyRequests("429 rate of writes to the bucket")


class _Refusing:
    """Answers 429 to matching calls while `on` (the starter's writes, not the poller's later ones)."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self) -> None:
        if self.on:
            raise _refused()


def _window(w: World, folder: str, count: int, instance: str) -> None:
    """`count` uploads into one window on one instance, run until its leader has tried its start."""
    w.upload_burst([f"{folder}/IM{i:04d}.dcm" for i in range(count)], to=[w.instance(instance)])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    w.sim.run_until_idle()


def test_an_operation_two_unconfirmed_starts_could_have_begun_is_adopted_by_neither() -> None:
    """Y's starter dies before its POST; X's POST starts an operation whose tracking write fails.
    Both turn UNCONFIRMED and both attempts precede the operation: adopting it by time would give
    X's operation to Y (the older), report Y's files imported and lose them. Nobody adopts it; both
    jobs are started again once the unknown outcome's window has passed (X's files read twice)."""
    w = World(import_coalesce_seconds=0)
    w.faults.kill(method="import_dicom")  # Y: STARTING, never sent
    _window(w, "y", 3, "y")
    refusing = _Refusing()
    w.faults.meanwhile(refusing, method="create", name=FIRST_OPERATION, times=10_000)
    _window(w, "x", 3, "x")
    refusing.on = False
    assert [op.rsplit("/", 1)[-1] for op in w.hc.operations] == ["000001"]  # X's, started
    assert not w.state("operations/") and len(w.state("jobs/")) == 2  # tracked by nobody

    w.sim.advance(w.settings.claim_lease_seconds + 1)
    w.poll()
    w.sim.run_until_idle()
    assert len(w.state("unconfirmed/")) == 2 and not w.state("operations/")  # both unknown, nothing adopted

    w.settle()
    w.check_invariants(may_import_twice=True)
    assert not [e for e in w.completions() if e.data.get("operation", "").endswith("/000001")]  # never reported
    assert w.state("disowned/") == ["disowned/000001.json"]  # and never adopted later
    assert [s.unconfirmed for s in w.summaries() if s.unconfirmed.get("requeued")] == [{"requeued": 2}]


def test_an_adopted_operation_is_judged_against_the_store_not_by_its_counters() -> None:
    """The one unconfirmed job adopts the only operation after its attempt, here another client's
    import of as many files: its counters cover the job, but the job's own files are not in the store.
    The completion event names each of them as failed instead of reporting them imported."""
    w = World(import_coalesce_seconds=0)
    w.faults.kill(method="import_dicom")
    _window(w, "y", 3, "y")
    w.sim.advance(1)
    for i in range(3):  # another client's import, of as many instances, in the same dataset
        w.store.put("elsewhere", f"other/IM{i}.dcm", dicom_factory.instance())
    foreign = w.hc.import_dicom("gs://elsewhere/other/**")
    w.sim.advance(w.settings.claim_lease_seconds + 1)
    w.poll()
    w.sim.run_until_idle()
    [tracked] = w.state("operations/")
    assert tracked.endswith(foreign.rsplit("/", 1)[-1] + ".json")  # the unambiguous case: adopted

    w.hc.finish_all()
    w.poll()
    w.sim.run_until_idle()
    [event] = [e for e in w.completions() if e.data.get("operation") == foreign]
    assert event.data["counters"]["success"] == 3  # what the API counted
    named = set(event.data["failedObjects"])
    assert sorted(uri.rsplit("/", 1)[-1] for uri in named) == [f"IM{i:04d}.dcm" for i in range(3)], named
    assert event.data["failedObjectsTotal"] == 3
    receipt = w.store.read(STATE, w.settings.state_path("receipts", foreign.rsplit("/", 1)[-1] + ".json"))
    assert receipt is not None and len(receipt.data["failedObjects"]) == 3


def test_a_throttled_tracking_write_is_tried_again_within_the_starting_lease() -> None:
    """The write of a started operation's record meets 429s for 15 s, longer than one call's retry
    budget: its starter tries again within its STARTING lease, so the start never turns unknown."""
    w = World(import_coalesce_seconds=0)
    w.faults.fail(_refused, method="create", name=FIRST_OPERATION, times=4)  # 1 + 2 + 4 + 8 s of backoff
    _window(w, "x", 3, "x")
    w.sim.advance(20)
    w.sim.run_until_idle()
    assert [name.rsplit("/", 1)[-1] for name in w.state("operations/")] == ["000001.json"]
    assert not w.state("jobs/") and not w.state("unconfirmed/")
    assert len(w.faults.fired) == 4
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 1


def test_a_throttled_tracking_write_logs_the_fault_by_type_not_by_its_message(caplog: pytest.LogCaptureFixture) -> None:
    """A client error's message carries the request URL and whatever the service echoed: the
    retry's log line names the fault's type only."""
    w = World(import_coalesce_seconds=0)
    w.faults.fail(lambda: TooManyRequests("429 POST https://storage/o?name=SECRET-4711"), method="create",
                  name=FIRST_OPERATION, times=1)
    with caplog.at_level(logging.DEBUG):
        _window(w, "x", 3, "x")
        w.sim.advance(20)
        w.sim.run_until_idle()
    retries = [r for r in caplog.records if r.getMessage() == "could not record a started operation; trying again"]
    assert len(retries) == 1 and retries[0].__dict__["json_fields"]["error"] == "TooManyRequests"
    assert not any("SECRET-4711" in r.getMessage() or "SECRET-4711" in str(r.__dict__) for r in caplog.records)
