"""A leader's copies and record deletions as a stream (decision 0760): each call starts as soon as a
worker is free, and the leader looks at its claim between completions, not once per round.

Found by bench.simulate at 500 files/s: in rounds of 32 calls every round waited for its slowest
call (1% of calls take 20 times longer), so a window of 2,500 files took 79 slow calls' time to copy
and as long again to delete its records.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from functions.gcp.streaming import stream
from functions.imports.window_batcher import _IO_THREADS, Upload
from tests import dicom_factory
from tests.functional.cloud_limits import CloudConditions, Latency
from tests.functional.scenarios import led
from tests.functional.sim import Simulation
from tests.functional.world import UPLOADS, World

COPIES = 320
SLOW_EVERY = 32  # one copy in each 32 is slow: in rounds of 32 (two per worker), every round waits for one
WORKERS = _IO_THREADS


@dataclass(frozen=True)
class SlowEveryNth(Latency):
    """Copies take their base time, except every `nth`, which takes `tail_factor` times longer."""

    nth: int = SLOW_EVERY
    _copies: itertools.count[int] = field(default_factory=itertools.count)

    def seconds(self, client: str, method: str, rng: random.Random) -> float:
        base = super().seconds(client, method, rng)
        if (client, method) == ("store", "copy") and next(self._copies) % self.nth == 0:
            return base * self.tail_factor
        return base


def test_a_slow_copy_holds_up_its_own_worker_not_the_others() -> None:
    """320 copies, every 32nd twenty times slower: the copies take no longer than
    list scheduling allows (their summed time over the workers, plus the slowest call), not ten
    slow calls one after the other (rounds)."""
    latency = SlowEveryNth(tail_share=0.0)
    w = World(cloud=lambda sim: CloudConditions(sim, latency=latency))
    try:
        uploads = []
        for i in range(COPIES):
            name = f"tail/{i:04d}.dcm"
            info = w.store.put(UPLOADS, name, b"x")
            uploads.append(Upload(UPLOADS, name, info.generation))
        batcher = w.batcher()
        began = w.sim.clock()
        task = w.sim.call(lambda: batcher.stage(uploads, "staging/tail/"), name="stage")
        w.sim.run_until_idle()
        assert len(task.value()) == COPIES and len(w.state("staging/tail/")) == COPIES
        took = w.sim.clock() - began
        copy = 0.08  # cloud_limits.BASE_SECONDS, x1
        slow = copy * latency.tail_factor
        slow_calls = COPIES // SLOW_EVERY
        summed = (COPIES - slow_calls) * copy + slow_calls * slow
        assert took <= summed / WORKERS + slow + 1e-6, took  # in rounds of 32: 10 x 1.6 s = 16 s
    finally:
        w.close()


def test_a_leader_renews_its_claim_while_a_slow_call_is_still_running() -> None:
    """One copy takes longer than the whole lease (a throttled call); the other workers go on, and
    between their completions the leader renews its claim. A poller run while that copy is still
    running finds a live claim. In rounds the leader looked at its claim only once the slow copy's
    round was done: the poller took the window over from its live leader."""
    w = World()
    lease = w.settings.claim_lease_seconds
    old = "long/a010.dcm"  # an imported file amid the new ones: the window stages
    w.store.put(UPLOADS, old, dicom_factory.instance())
    new = [f"long/a{i:03d}.dcm" for i in range(40) if f"long/a{i:03d}.dcm" != old]
    recovered: list[int] = []

    def slow_part(then_poll: bool) -> Callable[[], None]:
        def meanwhile() -> None:
            w.sim.jump(0.6 * lease)  # a part of the one slow copy's time, while the others complete
            if then_poll:  # 1.2 leases after the last look before the slow copy began
                recovered.append(w.poller().run().windows_recovered)
        return meanwhile

    # With the calls in turn (tests/functional/conftest.py) a slow call's time shows as the time of
    # calls that complete meanwhile: two of the copies after it, inside the same round of 32.
    w.faults.meanwhile(slow_part(then_poll=False), method="copy", nth=3)
    w.faults.meanwhile(slow_part(then_poll=True), method="copy", nth=20)
    deliveries = w.upload_burst(new, to=[w.instance()], gap=0.01)
    w.sim.run_until_idle()
    assert len(w.faults.fired) == 2, w.faults.fired
    assert recovered == [0], "the poller took the window over from its live leader"
    result = led(deliveries)
    assert result.staged == len(new) and len(result.jobs) == 1
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 1


def test_a_refusal_to_go_on_starts_no_further_call_and_the_running_ones_finish() -> None:
    """The stream itself: after `between` said no, nothing new starts; what ran has finished."""
    sim = Simulation(0.0)
    done: list[int] = []
    looks = iter([True] * 5 + [False])
    kept = stream(done.append, range(100), workers=WORKERS, between=lambda ahead: next(looks),
                  clock=sim.clock, attempts=3)
    assert kept is False and done == [0, 1, 2, 3, 4]
