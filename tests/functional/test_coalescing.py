"""Coalescing under backpressure (functions/imports/job_record.py): while the cap is reached, later windows
grow the queued staging import instead of queueing jobs behind it.

Every window here (`scenarios.staging_window`) plans a staging import. The cap is 1 and a first
import holds the slot for as long as the test wants.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.api_core.exceptions import TooManyRequests

from functions.imports import job_record
from functions.imports.window_batcher import WindowResult
from tests import dicom_factory
from tests.functional.scenarios import (
    crash_point_ids,
    killed_then_redelivered,
    led,
    record_trace,
    staging_window,
    started_untracked,
)
from tests.functional.world import STATE, UPLOADS, Delivery, World

REDELIVERY_DELAY = 10.0
# Calls between two faults of a test below: a stretch of a leader's copies.
STAGE_CHUNK = 32


def _blocked_world() -> tuple[World, Any, Any]:
    """Cap 1, an import holding the only slot, one instance to upload with."""
    w = World(max_concurrent_operations=1)
    a = w.instance("a")
    w.deliver(w.upload("blocker/one.dcm"), a)
    w.sim.run_until_idle()
    [blocker] = w.hc.running
    w.sim.advance(w.settings.debounce_seconds)
    return w, a, blocker


def test_windows_that_arrive_while_the_cap_is_reached_grow_the_one_waiting_import() -> None:
    w, a, blocker = _blocked_world()
    results = [led(staging_window(w, k, [a, w.instance()])) for k in range(8)]
    first, later = results[0], results[1:]
    assert len(first.jobs) == 1 and not first.started and first.staged == 2
    assert all(r.jobs == () and r.grown == first.jobs[0] and r.staged == 2 for r in later), later
    assert len(w.state("jobs/")) == 1 and len(w.hc.operations) == 1  # one waiting job, still one LRO
    w.hc.finish(blocker.name)
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2  # the blocker and one import of all 8 windows
    grown = next(e for e in w.completions() if e.data["source"].startswith("gs://state/"))
    assert grown.data["counters"]["success"] == 16


def test_once_the_waiting_import_starts_it_is_frozen_and_the_next_window_queues_a_job() -> None:
    w, a, blocker = _blocked_world()
    first = led(staging_window(w, 0, [a]))
    w.hc.finish(blocker.name)
    w.poll()  # starts the waiting job
    assert len(w.hc.running) == 1
    second = led(staging_window(w, 1, [a]))
    assert second.grown is None and len(second.jobs) == 1 and second.jobs != first.jobs
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 3


def test_a_window_that_reads_the_job_just_before_it_starts_gets_a_job_of_its_own() -> None:
    """The starter's swap to STARTING lands between the grower's read and its hold: no growth."""
    w, a, blocker = _blocked_world()
    staging_window(w, 0, [a])
    w.faults.stall(20.0, method="replace", name="jobs/")  # the grower's hold waits; the poller runs
    w.store.put(UPLOADS, "mig/w01/m.dcm", dicom_factory.instance())
    deliveries = w.upload_burst(["mig/w01/a.dcm", "mig/w01/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    assert w.faults.fired and len(w.state("jobs/")) == 1
    w.hc.finish(blocker.name)
    w.poll()
    [running] = w.hc.running
    assert len(running.objects) == 2  # the first window only
    w.sim.run_until_idle()
    result = led(deliveries)
    assert result.grown is None and len(result.jobs) == 1
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 3


def test_a_start_attempted_while_a_window_grows_the_job_waits_for_the_growth() -> None:
    """The hold lands first: the starter leaves the job alone until the copies are committed."""
    w, a, blocker = _blocked_world()
    staging_window(w, 0, [a])
    w.faults.stall(20.0, method="write", name=".grown-")  # the grower holds the job, copies made
    w.store.put(UPLOADS, "mig/w01/m.dcm", dicom_factory.instance())
    deliveries = w.upload_burst(["mig/w01/a.dcm", "mig/w01/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    assert w.faults.fired
    w.hc.finish(blocker.name)
    w.poll()
    assert not w.hc.running  # held: not started under the grower
    w.sim.run_until_idle()
    assert led(deliveries).grown is not None
    w.poll()
    [running] = w.hc.running
    assert len(running.objects) == 4  # both windows, one LRO
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2


def test_every_event_of_a_growing_window_delivered_twice_is_imported_once() -> None:
    w, a, blocker = _blocked_world()
    staging_window(w, 0, [a])
    b = w.instance("b")
    w.store.put(UPLOADS, "mig/w01/m.dcm", dicom_factory.instance())
    events = [w.upload(n) for n in ("mig/w01/a.dcm", "mig/w01/z.dcm")]
    first = [w.deliver(e, a) for e in events]
    again = [w.deliver(e, b) for e in events]
    w.sim.run_until_idle()
    assert led(first + again).grown is not None
    assert {d.outcome.action for d in again} == {"recorded"}  # in a record of b's: the leader dedupes by key
    w.hc.finish(blocker.name)
    w.settle()
    for event in events:  # late duplicates, after the grown import finished
        w.deliver(event, w.instance())
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2


def test_a_grower_stalled_past_its_hold_is_undone_by_the_starter_and_the_window_planned_again() -> None:
    w, a, blocker = _blocked_world()
    staging_window(w, 0, [a])
    w.faults.stall(w.settings.claim_lease_seconds * 3, method="write", name=".grown-")  # after the copies
    w.store.put(UPLOADS, "mig/w01/m.dcm", dicom_factory.instance())
    deliveries = w.upload_burst(["mig/w01/a.dcm", "mig/w01/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    assert w.faults.fired
    stalled = {name.split("/")[2] for name in w.state("staging/") if name.count("/") == 3}
    assert len(stalled) == 1
    w.hc.finish(blocker.name)
    w.sim.advance(w.settings.claim_lease_seconds + 1)
    w.poll()  # takes the window over and grows the job anew; the stalled hold is undone; it starts
    [running] = w.hc.running
    batches = {name.split("/")[2] for _, name, _ in running.objects if name.count("/") == 3}
    assert len(running.objects) == 4 and len(batches) == 1  # window 0's two, window 1's two once
    assert not batches & stalled  # not the stalled grower's copies: they were deleted
    w.sim.run_until_idle()
    assert not _led_or_none(deliveries)  # the stalled grower's commit failed: it let the window go
    w.settle()
    w.check_invariants()


def _slow_grower(w: World, a: Any) -> tuple[str, list[Delivery]]:
    """Window 0's job waits; window 1's leader holds it, copies, and stalls 20 s before its commit."""
    [job] = led(staging_window(w, 0, [a])).jobs
    w.faults.stall(20.0, method="write", name=".grown-")
    w.store.put(UPLOADS, "mig/w01/m.dcm", dicom_factory.instance())
    slow = w.upload_burst(["mig/w01/a.dcm", "mig/w01/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    assert w.faults.fired and [h for r in w.queue().pending_records() for h in r.data.get("holds", {})]
    return job, slow


def test_windows_whose_leaders_overlap_grow_the_same_waiting_import() -> None:
    """A leader slower than a window (thousands of copies) still has company: the next window's
    leader holds the job beside it instead of queueing a job of its own (decision 0700)."""
    w, a, blocker = _blocked_world()
    job, slow = _slow_grower(w, a)
    fast = led(staging_window(w, 2, [w.instance()]))  # planned while the first grower still copies
    assert fast.grown == job and fast.jobs == ()
    w.sim.run_until_idle()
    assert led(slow).grown == job
    [record] = w.queue().pending_records()
    assert len(record.data["job"]["grown"]) == 2 and "holds" not in record.data
    w.hc.finish(blocker.name)
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2  # the blocker and one import of the three windows
    grown = next(e for e in w.completions() if e.data["source"].startswith("gs://state/"))
    assert grown.data["counters"]["success"] == 6


def test_a_starter_that_finds_a_live_hold_closes_the_job_and_the_grower_starts_it() -> None:
    """Growers that keep overlapping must not keep a job from starting: once it could start it
    takes no new growers, and the last one to commit starts it."""
    w, a, blocker = _blocked_world()
    job, slow = _slow_grower(w, a)
    w.hc.finish(blocker.name)
    w.poll()
    w.sim.run_until(w.sim.clock())
    [record] = w.queue().pending_records()
    assert record.data.get("closing") and len(w.hc.operations) == 1  # not started under the hold
    assert not job_record.growable(record.data, None)  # no new growers
    w.sim.run_until_idle()
    assert len(led(slow).started) == 1
    [running] = w.hc.running
    assert len(running.objects) == 4  # windows 0 and 1
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2


def _led_or_none(deliveries: list[Delivery]) -> list[WindowResult]:
    return [d.outcome.led for d in deliveries if d.outcome.led is not None and d.outcome.led.claimed]


# -- a grower killed before each of its calls ---------------------------------------------------


def _grow_world() -> World:
    w, a, _ = _blocked_world()
    staging_window(w, 0, [a])
    return w


def _grow_scenario(w: World) -> None:
    w.store.put(UPLOADS, "mig/w01/m.dcm", dicom_factory.instance())
    w.upload_burst(["mig/w01/a.dcm", "mig/w01/z.dcm"], to=[w.instance("grower")])
    w.sim.run_until_idle()


GROW_TRACE = record_trace(_grow_world, _grow_scenario)


def test_the_grow_scenario_is_what_the_crash_points_assume() -> None:
    methods = [(c.method, c.name.split("/")[0]) for c in GROW_TRACE]
    assert methods.count(("replace", "jobs")) == 2  # hold, commit
    assert methods.count(("copy", "staging")) == 2 and ("import_dicom", "gs:") not in methods


@pytest.mark.parametrize("step", range(1, len(GROW_TRACE) + 1),
                         ids=crash_point_ids(GROW_TRACE))
def test_a_grower_killed_before_any_call_loses_nothing_and_imports_nothing_twice(step: int) -> None:
    w, _ = killed_then_redelivered(_grow_world, _grow_scenario, step, REDELIVERY_DELAY)
    w.check_invariants()
    assert w.hc.max_running <= 1
    operations = len(w.hc.operations)
    for delivery in {d.event.name: d for d in w.deliveries}.values():  # late duplicates start nothing
        w.deliver(delivery.event, w.instance())
    w.settle()
    assert len(w.hc.operations) == operations
    w.check_invariants()


# -- two overlapping growers, either killed before each call ------------------------------------


def _overlap_world() -> World:
    w, a, _ = _blocked_world()
    _slow_grower(w, a)
    return w


def _overlap_scenario(w: World) -> None:
    staging_window(w, 2, [w.instance("fast")])  # its leader grows the job while the slow one holds it


OVERLAP_TRACE = record_trace(_overlap_world, _overlap_scenario)


def test_the_overlap_scenario_is_what_the_crash_points_assume() -> None:
    methods = [(c.method, c.name.split("/")[0]) for c in OVERLAP_TRACE]
    assert methods.count(("replace", "jobs")) >= 3  # the fast hold and commit, the slow commit


@pytest.mark.parametrize("step", range(1, len(OVERLAP_TRACE) + 1),
                         ids=crash_point_ids(OVERLAP_TRACE))
def test_either_of_two_overlapping_growers_killed_before_any_call_loses_nothing(step: int) -> None:
    w, _ = killed_then_redelivered(_overlap_world, _overlap_scenario, step, REDELIVERY_DELAY)
    w.check_invariants()
    assert w.hc.max_running <= 1


# -- a starter killed while it undoes the hold of a dead grower ---------------------------------


def _dead_grower_world() -> World:
    """The grower died right before its commit (hold, copies and manifest left); the hold ran out."""
    w = _grow_world()
    w.faults.kill(method="replace", name="jobs/", nth=2)  # the second is the commit
    _grow_scenario(w)
    assert w.faults.fired and len(w.state("jobs/")) == 1
    [blocker] = w.hc.running
    w.hc.finish(blocker.name)
    w.sim.advance(w.settings.claim_lease_seconds + 1)
    return w


UNDO_TRACE = record_trace(_dead_grower_world, lambda w: w.poll())


def test_the_undo_scenario_is_what_the_crash_points_assume() -> None:
    methods = [(c.method, c.name.split("/")[0]) for c in UNDO_TRACE]
    assert methods.count(("replace", "jobs")) >= 3  # cancel, clear, STARTING
    assert ("delete", "staging") in methods and ("import_dicom", "gs:") in methods


@pytest.mark.parametrize("step", range(1, len(UNDO_TRACE) + 1),
                         ids=crash_point_ids(UNDO_TRACE))
def test_a_starter_killed_while_undoing_a_dead_growth_loses_nothing(step: int) -> None:
    w = _dead_grower_world()
    w.faults.arm()
    w.faults.kill_at(step)
    task = w.poll()
    assert task.killed, f"no call #{step}: the scenario changed"
    executed = w.faults.trace[:step - 1]
    w.redeliver_lost(w.instance("retry"))
    w.settle()
    # A kill between an LRO start and its record: the job is started again (functions/imports/job_queue.py).
    w.check_invariants(may_import_twice=started_untracked(executed))


def _large_window(w: World, k: int, instances: list[Any]) -> tuple[list[Delivery], list[str]]:
    """Window k: three rounds of staging copies (the leader looks at its lease and hold before each),
    with an old file amid the new ones so that staging wins; the leader has not run yet."""
    old = f"mig/w{k:02d}/a064.dcm"
    w.store.put(UPLOADS, old, dicom_factory.instance())
    new = [name for i in range(2 * STAGE_CHUNK + 2) if (name := f"mig/w{k:02d}/a{i:03d}.dcm") != old]
    return w.upload_burst(new, to=instances, gap=0.01), new


def test_a_grower_whose_copies_outlast_its_hold_renews_it_and_the_job_waits_for_them() -> None:
    """Decision 0700: a grower slower than its hold renews it, so the starter waits for its copies
    instead of undoing the growth (and the poller planning the window again, every copy made twice)."""
    w, a, blocker = _blocked_world()
    first = led(staging_window(w, 0, [a]))
    lease = w.settings.claim_lease_seconds
    polls = []

    def slow_round(last: bool) -> Callable[[], None]:
        def meanwhile() -> None:
            w.sim.jump(0.7 * lease)
            if last:  # 2.1 leases after the hold was taken, the slot frees and the poller runs
                w.hc.finish(blocker.name)
                polls.append(w.poller().run())
        return meanwhile

    for round_ in range(3):
        w.faults.meanwhile(slow_round(round_ == 2), method="copy", nth=1 + round_ * STAGE_CHUNK)
    deliveries, new = _large_window(w, 1, [a])
    w.sim.run_until_idle()
    assert len(w.faults.fired) == 3, w.faults.fired
    [summary] = polls
    assert summary.windows_recovered == 0 and summary.jobs_started == 0, summary  # closed, not undone
    grower = led(deliveries)
    assert grower.grown == first.jobs[0] and grower.staged == len(new) and grower.started
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2
    grown = next(e for e in w.completions() if e.data["source"].startswith("gs://state/"))
    assert grown.data["counters"]["success"] == 2 + len(new)


def test_a_grower_that_cannot_renew_its_hold_stops_copying_and_its_window_is_planned_again() -> None:
    """Other growers win every swap of the job record while this one renews its hold: its hold is
    still in the record, but half its copies were never made, so the growth must not commit."""
    w, a, blocker = _blocked_world()
    first = led(staging_window(w, 0, [a]))
    lease = w.settings.claim_lease_seconds
    job_path = w.queue().job_path(first.jobs[0])

    def another_grower_swapped() -> None:
        w.store.put(STATE, job_path, json.dumps(w.store.json(STATE, job_path)).encode())

    w.faults.meanwhile(lambda: w.sim.jump(0.7 * lease), method="copy", nth=1)
    # The first swap is the hold itself; the renewal's five attempts all lose.
    w.faults.meanwhile(another_grower_swapped, method="replace", name="jobs/", nth=2, times=5)
    deliveries, new = _large_window(w, 1, [a])
    w.faults.arm()
    w.sim.run_until_idle()
    assert len(w.faults.fired) == 6, w.faults.fired
    copied = [c for c in w.faults.trace if c.method == "copy"]
    stopped = copied[0].name.rsplit("/", 1)[0]  # the first grower's batch prefix
    # The slow copy, then the look at its hold before the next one failed: no further copy started.
    assert sum(c.name.startswith(stopped) for c in copied) == 1
    assert not w.state(stopped)  # its copies deleted, its hold taken back ...
    grower = led(deliveries)  # ... and the window planned again by the next of its deliveries
    assert grower.grown == first.jobs[0] and grower.staged == len(new)
    record = w.store.json(STATE, job_path)
    [batch] = record["job"]["grown"]
    assert not stopped.endswith(batch) and job_record.holds_of(record) == {}
    w.hc.finish(blocker.name)
    w.settle()
    w.check_invariants()


def test_a_grower_whose_commit_is_throttled_swaps_again_and_keeps_its_growth() -> None:
    """Cloud Storage answers 429 to a second write of one name within a second; a window that grows
    a job swaps its record twice (hold, commit), often that fast. The 429 is a lost swap: read
    again, swap again (decision 0752), not a failed window whose copies are made again."""
    w, a, blocker = _blocked_world()
    first = led(staging_window(w, 0, [a]))
    w.faults.fail(lambda: TooManyRequests("429 rate of writes to one object name"), method="replace",
                  name="jobs/", nth=2)  # the grower's commit (its hold was the first)
    second = led(staging_window(w, 1, [a]))
    assert w.faults.fired and second.grown == first.jobs[0] and second.staged == 2
    w.hc.finish(blocker.name)
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2




def test_a_takeover_cancels_the_hold_of_a_leader_still_committing_and_plans_its_uploads_once() -> None:
    """Window 1's leader holds the waiting job and has checked its claim; its commit is held up (the
    manifest write stalls) past its claim's lease, and lands while the poller, which took the window
    over meanwhile, is committing its own growth of the same uploads. The takeover cancels the old
    hold before planning, so the late commit is refused and the uploads are in the job once."""
    w, a, blocker = _blocked_world()
    led(staging_window(w, 0, [a]))
    lease = w.settings.claim_lease_seconds
    w.faults.stall(lease + 20.0, method="write", name=".grown-")  # after the fence
    w.store.put(UPLOADS, "mig/w01/m.dcm", dicom_factory.instance())
    slow = w.upload_burst(["mig/w01/a.dcm", "mig/w01/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    assert w.faults.fired
    [claim] = w.state("claims/")
    claim_until = float(w.store.read(STATE, claim).data["leaseUntil"])
    w.sim.advance(claim_until + 1 - w.clock())
    w.faults.stall(60.0, method="write", name=".grown-")  # the poller's own growth, until the old one is in
    w.poll()  # takes window 1 over while its leader still waits on its manifest write
    w.sim.run_until_idle()
    assert len(w.faults.fired) == 2
    assert not _led_or_none(slow)  # the late commit was refused: that leader let the window go
    w.hc.finish(blocker.name)
    w.settle()
    w.check_invariants()
