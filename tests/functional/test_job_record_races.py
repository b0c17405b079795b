"""Writes of one job record that race (functions/imports/job_record.py): each is a compare-and-swap, and a
write that must land whatever the record became meanwhile reads it again and applies its row."""

from __future__ import annotations

from tests.functional.scenarios import led
from tests.functional.world import STATE, World


def test_a_starter_slower_than_its_lease_tracks_its_operation_and_the_unconfirmed_job_goes() -> None:
    """The poller turns the job UNCONFIRMED while its starter is still calling the API; the starter
    then tracks the operation it started, and the job record goes: no second LRO."""
    w = World()
    lease = w.settings.claim_lease_seconds
    w.faults.stall(lease + 10, method="import_dicom")
    deliveries = w.upload_burst(["in/a.dcm", "in/b.dcm"], to=[w.instance("a")])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + lease + 2)  # inside the call
    assert w.faults.fired and not w.hc.operations
    w.poll()
    w.sim.advance(1)
    [job] = w.state("jobs/")
    record = w.store.read(STATE, job)
    assert record is not None and record.data["state"] == "UNCONFIRMED"  # the poller's view: unknown
    w.sim.run_until_idle()
    assert len(led(deliveries).started) == 1
    assert not w.state("jobs/") and len(w.state("operations/")) == 1
    w.settle()
    assert len(w.hc.operations) == 1
    w.check_invariants()
