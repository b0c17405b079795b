"""The lease primitive on plain numbers."""

from __future__ import annotations

import pytest

from functions.core.lease import (
    CLOCK_SKEW_SECONDS,
    MAX_RENEWAL_MARGIN_SECONDS,
    OPERATION_CLOCK_SKEW_SECONDS,
    Lease,
    renewal_margin,
)


def test_a_lease_starts_at_now_plus_its_duration() -> None:
    assert Lease.starting(100.0, 30.0) == Lease(130.0)


def test_a_lease_expires_at_its_until_and_not_before() -> None:
    lease = Lease(130.0)
    assert not lease.expired(129.999)
    assert lease.live(129.999)
    assert lease.expired(130.0)
    assert not lease.live(130.0)
    assert lease.expired(131.0)


def test_renewal_is_due_once_less_than_the_margin_is_left() -> None:
    lease = Lease(130.0)
    assert not lease.due_for_renewal(120.0, margin=10.0)  # exactly the margin left
    assert lease.due_for_renewal(120.5, margin=10.0)
    assert lease.due_for_renewal(140.0, margin=10.0)  # expired: due too (the swap then tells)


def test_a_slow_last_round_makes_renewal_due_earlier() -> None:
    lease = Lease(130.0)
    assert not lease.due_for_renewal(110.0, margin=10.0, ahead=20.0)
    assert lease.due_for_renewal(110.5, margin=10.0, ahead=20.0)
    # A fast round does not delay renewal past the margin.
    assert lease.due_for_renewal(121.0, margin=10.0, ahead=1.0)


def test_a_renewed_lease_runs_from_the_renewal() -> None:
    assert Lease(130.0).renewed(125.0, 30.0) == Lease(155.0)


@pytest.mark.parametrize(("lease_seconds", "margin"), [(4.0, 2.0), (20.0, 10.0), (30.0, 10.0), (600.0, 10.0)])
def test_the_renewal_margin_is_half_the_lease_at_most_ten_seconds(lease_seconds: float, margin: float) -> None:
    assert renewal_margin(lease_seconds) == margin
    assert renewal_margin(lease_seconds) <= MAX_RENEWAL_MARGIN_SECONDS


def test_the_timestamp_comparisons_take_their_allowance_from_the_lease_module() -> None:
    from functions.imports import job_queue, window_batcher

    assert window_batcher.CLOCK_SKEW_SECONDS is CLOCK_SKEW_SECONDS
    assert job_queue.CLOCK_SKEW_SECONDS is OPERATION_CLOCK_SKEW_SECONDS


def test_holds_and_starting_records_expire_as_their_lease_does() -> None:
    from functions.imports.job_record import Hold, JobRecord, State

    assert Hold("b", 130.0).live(129.9)
    assert not Hold("b", 130.0).live(130.0)
    assert not Hold("b", 130.0, cancelled=True).live(100.0)
    starting = JobRecord(job={"job_id": "j"}, state=State.STARTING, slot=0, claimed_at=100.0, lease_until=130.0)
    assert starting.start_lease() == Lease(130.0)
    assert JobRecord(job={"job_id": "j"}, state=State.STARTING).start_lease().expired(0.0)
