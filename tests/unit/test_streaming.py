"""functions.gcp.streaming on real threads: a call starts as soon as a worker is free, the caller looks
between completions, throttled items are tried again, other faults are raised (decision 0760)."""

from __future__ import annotations

import threading

import pytest
from google.api_core.exceptions import TooManyRequests

from functions.gcp.streaming import stream

WAIT = 30.0  # a bound for a deadlock, never reached when the code is right


def test_a_call_that_does_not_finish_holds_up_one_worker_while_the_others_take_the_rest() -> None:
    """Item 0 finishes only once every other item has: in rounds it would wait for item 0 first."""
    others_done = threading.Event()
    done: list[int] = []
    lock = threading.Lock()
    looks: list[int] = []

    def action(item: int) -> None:
        if item == 0:
            assert others_done.wait(WAIT), "item 0 held up the others"
        with lock:
            done.append(item)
            if len(done) == 99:
                others_done.set()

    def between(ahead: float) -> bool:
        with lock:
            looks.append(len(done))
        return True

    assert stream(action, range(100), workers=4, between=between, clock=lambda: 0.0, attempts=1)
    assert sorted(done) == list(range(100)) and done[-1] == 0
    assert len(looks) == 100  # one look before each call: between completions, not per round


def test_a_throttled_item_is_tried_again_after_another_look() -> None:
    calls: list[int] = []
    lock = threading.Lock()
    refusals = {7: 2}

    def action(item: int) -> None:
        with lock:
            calls.append(item)
            if refusals.get(item, 0) > 0:
                refusals[item] -= 1
                raise TooManyRequests("429")

    looks = []
    assert stream(action, range(10), workers=3, between=lambda ahead: looks.append(ahead) or True,
                  clock=lambda: 0.0, attempts=3)
    assert calls.count(7) == 3 and len(looks) == 12


def test_an_item_throttled_every_time_raises_after_its_attempts() -> None:
    def action(item: int) -> None:
        if item == 2:
            raise TooManyRequests("429")

    with pytest.raises(TooManyRequests):
        stream(action, range(5), workers=2, between=lambda ahead: True, clock=lambda: 0.0, attempts=3)


def test_any_other_fault_is_raised_and_no_further_call_starts() -> None:
    started: list[int] = []

    def action(item: int) -> None:
        started.append(item)
        if item == 0:
            raise ValueError("not transient")

    with pytest.raises(ValueError):
        stream(action, range(1000), workers=1, between=lambda ahead: True, clock=lambda: 0.0, attempts=3)
    assert started == [0]
