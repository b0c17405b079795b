"""A late duplicate of an upload that was batched already is never imported a second time, also when
Cloud Storage throttles its duplicate-marker check (found by bench.simulate at 500 files/s)."""

from __future__ import annotations

from google.api_core.exceptions import TooManyRequests

from tests.functional.world import World


def test_a_late_duplicate_whose_marker_check_is_throttled_is_not_imported_again(world: World) -> None:
    w = world
    names = [f"dup/IM{i:04d}.dcm" for i in range(3)]
    deliveries = w.upload_burst(names, to=[w.instance("a")])
    w.sim.run_until_idle()
    assert w.state("windows/") == [] and len(w.hc.operations) == 1  # batched and started
    w.settle()  # and imported
    late = deliveries[0].event
    # Eventarc delivers the first event again; the state bucket is at its write rate and answers
    # its duplicate-marker create 429 past the client's retries: the handler fails ...
    w.faults.fail(lambda: TooManyRequests("429 rate of writes to the bucket"), method="create", name="seen/")
    failed = w.deliver(late, w.instance("b"))
    w.sim.run_until_idle()
    assert failed.task.error is not None
    # ... and the event comes again later.
    w.deliver(late, w.instance("c"))
    w.settle()
    w.check_invariants(expected=names)


def test_a_first_delivery_whose_marker_check_is_throttled_is_imported_once_its_event_comes_again(
        world: World) -> None:
    """The same refusal on an upload's first delivery: its record goes with the error, and the
    redelivery records it again. Nothing is lost."""
    w = world
    w.faults.fail(lambda: TooManyRequests("429 rate of writes to the bucket"), method="create", name="seen/")
    [failed] = w.upload_burst(["first/IM0000.dcm"], to=[w.instance("a")])
    w.sim.run_until_idle()
    assert failed.task.error is not None and w.state("windows/") == []
    w.deliver(failed.event, w.instance("b"))
    w.settle()
    w.check_invariants(expected=["first/IM0000.dcm"])
