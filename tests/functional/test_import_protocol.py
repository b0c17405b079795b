"""The window / claim / slot / queue protocol of the import, step by step on fakes and a fake clock.

Each test drives the real handlers (ImportOnUpload, WindowBatcher, JobQueue, Poller) through one
situation of docs/state.md and checks the invariants: nothing lost, nothing imported twice, one
eventId per operation, never more LROs than the cap, no work left in the state bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.api_core.exceptions import ServiceUnavailable, TooManyRequests

from functions.core.errors import PermanentApiError, TransientApiError
from functions.core.events import StorageObjectEvent
from functions.core.windows import object_key, window_id
from functions.imports import window_records
from functions.imports.window_batcher import OTHERS_LISTED, add_seen, read_seen
from tests import dicom_factory
from tests.functional.scenarios import led
from tests.functional.world import STATE, T0, UPLOADS, World

# Calls between two faults of a test below: a stretch of a leader's copies or deletions.
STAGE_CHUNK = 32


def _names(folder: str, count: int) -> list[str]:
    return [f"{folder}/IM{i:04d}.dcm" for i in range(count)]


def test_one_window_on_two_instances_is_led_once_and_imported_once(world: World) -> None:
    a, b = world.instance(), world.instance()
    deliveries = world.upload_burst(_names("inbox/s1", 6), to=[a, b])
    world.sim.run_until_idle()
    led = [d.outcome.led for d in deliveries if d.outcome.led is not None]
    assert len(led) == 1 and led[0].claimed and led[0].uploads == 6 and len(led[0].started) == 1
    assert [d.outcome.action for d in deliveries] == ["recorded"] * 6
    [op] = world.hc.operations.values()
    assert op.uri.startswith("gs://uploads/inbox/s1/") and len(op.objects) == 6
    # The leader waited for the window to close plus the settle time, not longer.
    assert world.sim.clock() == T0 + world.settings.debounce_seconds + world.settings.settle_seconds
    world.settle()
    world.check_invariants()
    [event] = world.completions()
    assert (event.data["state"], event.data["counters"]["success"]) == ("SUCCEEDED", 6)


def test_every_event_delivered_twice_at_once_is_recorded_twice_and_imported_once(world: World) -> None:
    """Each process lists the uploads in its own record (decision 0770): the leader plans each key once."""
    a, b = world.instance(), world.instance()
    events = [world.upload(name) for name in _names("dup", 4)]
    first = [world.deliver(e, a) for e in events]
    again = [world.deliver(e, b) for e in events]
    world.sim.advance(1.0)
    assert sorted(world.waiting()) == sorted(2 * [e.name for e in events])  # two records, one per process
    world.sim.run_until_idle()
    assert [d.outcome.action for d in first + again] == ["recorded"] * 8
    [op] = world.hc.operations.values()
    assert len(op.objects) == 4
    world.settle()
    world.check_invariants()


def test_a_duplicate_after_the_batch_is_dropped(world: World) -> None:
    a = world.instance()
    event = world.upload("late/one.dcm")
    world.deliver(event, a)
    world.settle()
    again = world.deliver(event, world.instance())
    world.sim.run_until_idle()
    assert (again.outcome.action, again.outcome.reason) == ("duplicate", "already batched")
    assert world.state("windows/") == []
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


def _seen_keys(world: World, window: str) -> set[str]:
    return set(world.store.json(STATE, world.settings.state_path("seen", f"{window}.json"))["keys"])


def _key(event: StorageObjectEvent) -> str:
    return object_key(event.bucket, event.name, event.generation)


def test_a_late_duplicate_costs_one_create_on_the_event_path_and_its_round_plans_nothing(world: World) -> None:
    a = world.instance()
    events = [world.upload(n) for n in _names("late2", 3)]
    for event in events:
        world.deliver(event, a)
    world.settle()
    window = window_id_of(world, events[0])
    assert _seen_keys(world, window) == {_key(e) for e in events}
    world.faults.arm()
    again = world.deliver(events[1], world.instance())
    world.sim.run_until_idle()
    assert (again.outcome.action, again.outcome.reason) == ("duplicate", "already batched")
    assert again.outcome.led is not None and again.outcome.led.uploads == 0 and again.outcome.led.jobs == ()
    writes = [(c.method, c.name.split("/")[0]) for c in world.faults.trace
              if c.method in ("create", "replace", "write", "copy", "delete")]
    # One create on the event path, one delete when its window is looked at again: no claim, no round.
    assert writes == [("create", "windows"), ("delete", "windows")]
    assert not [c for c in world.faults.trace if c.client == "healthcare"]
    assert world.state("windows/") == [] and _seen_keys(world, window) == {_key(e) for e in events}
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


def test_a_leader_killed_between_its_seen_file_and_its_record_deletions_has_nothing_planned_again(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    a = world.instance()
    world.faults.kill(method="create", name="seen/", when="after")  # written, then the process died
    deliveries = world.upload_burst(_names("killed/s1", 3), to=[a])
    world.sim.run_until_idle()
    assert a.process.dead and world.faults.fired
    window = window_id_of(world, deliveries[0].event)
    assert _seen_keys(world, window) == {_key(d.event) for d in deliveries}
    assert len(world.waiting()) == 3 and len(world.state("jobs/")) == 1
    # The poller takes the window over: the seen file, not a manifest, says what to leave out.
    caplog.set_level("INFO", logger="functions.imports.window_batcher")
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1
    dropped = [r for r in caplog.records if r.getMessage() == "deleting window records of uploads batched before"]
    assert [getattr(r, "json_fields", {}).get("uploads") for r in dropped] == [3]
    assert not [r for r in caplog.records if r.getMessage() == "uploads of a taken-over window were covered already"]


def test_two_rounds_of_one_window_each_plan_only_what_the_other_did_not(world: World) -> None:
    a = world.instance()
    first, second, late = (world.upload(n) for n in _names("rounds/s1", 3))
    world.deliver(first, a)
    world.deliver(second, a)
    world.settle()
    window = window_id_of(world, first)
    assert _seen_keys(world, window) == {_key(first), _key(second)}
    # The third upload's event comes late (Eventarc retried it), together with a late duplicate.
    world.sim.advance(120)
    b = world.instance()
    round_two = world.deliver(late, b)
    duplicate = world.deliver(first, b)
    world.sim.run_until_idle()
    assert window_id_of(world, late) == window
    led_two = round_two.outcome.led
    assert led_two is not None and led_two.claimed and led_two.uploads == 1 and len(led_two.batched_before) == 1
    assert duplicate.outcome.action == "recorded"  # the same process's round takes it
    assert _seen_keys(world, window) == {_key(first), _key(second), _key(late)}
    world.settle()
    third = world.deliver(late, world.instance())  # and the second round's upload is batched for good
    world.sim.run_until_idle()
    assert (third.outcome.action, third.outcome.reason) == ("duplicate", "already batched")
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 2


def test_two_leaders_of_a_window_adding_to_its_seen_file_keep_each_others_keys(world: World) -> None:
    path = world.settings.state_path("seen", "20260101T000000000Z.json")
    before = read_seen(world.store, STATE, path)
    add_seen(world.store, STATE, path, before, ["k1", "k2"])
    # A leader that read the file before the other's write swaps on a stale generation: it reads again.
    after = add_seen(world.store, STATE, path, before, ["k3"])
    assert after.keys == {"k1", "k2", "k3"} == set(world.store.json(STATE, path)["keys"])
    assert add_seen(world.store, STATE, path, after, ["k1"]) == after  # nothing new: no write


def test_events_delivered_in_reverse_order_and_across_windows_lose_nothing(world: World) -> None:
    a, b = world.instance(), world.instance()
    first = [world.upload(n) for n in _names("rev/w1", 3)]
    world.sim.advance(world.settings.debounce_seconds)  # the next window
    second = [world.upload(n) for n in _names("rev/w2", 3)]
    assert window_id_of(world, first[0]) != window_id_of(world, second[0])
    for event in reversed(second + first):  # the later window's events arrive first
        world.deliver(event, a if event.name.endswith(("0.dcm", "2.dcm")) else b)
    world.sim.run_until_idle()
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 2


def test_an_event_delivered_long_after_its_window_closed_is_imported(world: World) -> None:
    a = world.instance()
    on_time = world.upload("slow/on-time.dcm")
    late = world.upload("slow/late.dcm")
    world.deliver(on_time, a)
    world.settle()
    world.sim.advance(600)  # Eventarc retried the second event for ten minutes
    delivery = world.deliver(late, world.instance())
    world.sim.run_until_idle()
    assert delivery.outcome.action == "recorded" and delivery.outcome.led is not None
    assert delivery.outcome.window == window_id_of(world, on_time)  # its own (long closed) window
    world.settle()
    world.check_invariants()


def test_uploads_that_a_queued_wildcard_import_will_read_join_it() -> None:
    w = World(max_concurrent_operations=1)
    a = w.instance()
    w.deliver(w.upload("blocker/one.dcm"), a)
    w.sim.run_until_idle()
    [blocker] = w.hc.running  # holds the only slot until the test finishes it
    first = w.upload_burst(["bulk/a0.dcm", "bulk/a1.dcm"], to=[a])
    w.sim.run_until_idle()
    [queued] = [d.outcome.led for d in first if d.outcome.led]
    assert queued.jobs and not queued.started
    w.sim.advance(w.settings.debounce_seconds)
    later = w.deliver(w.upload("bulk/a2.dcm"), a)
    w.sim.run_until_idle()
    assert later.outcome.led is not None and later.outcome.led.jobs == ()  # adopted, no job of its own
    assert len(w.state("manifests/")) == 2 + 1  # blocker, bulk, and the adoption
    w.hc.finish(blocker.name)
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2
    bulk = next(e for e in w.completions() if "/bulk/" in e.data["source"])
    assert bulk.data["counters"]["success"] == 3


def test_the_cap_holds_while_five_windows_queue_and_drain() -> None:
    # Without coalescing: every window's job competes for the slots (tests/functional/test_pacing.py
    # has the jobs that wait for a running import instead).
    w = World(max_concurrent_operations=2, import_coalesce_seconds=0)
    instances = [w.instance() for _ in range(5)]
    for n, instance in enumerate(instances):
        w.upload_burst(_names(f"cap/w{n}", 2), to=[instance])
        w.sim.advance(w.settings.debounce_seconds)
    w.sim.run_until_idle()
    assert len(w.hc.running) == 2 and len(w.state("jobs/")) == 3
    # Operations finish one at a time; each tick starts a queued job in the freed slot.
    while w.hc.running:
        w.hc.finish(w.hc.running[0].name)
        w.poll()
        assert len(w.hc.running) <= 2
    w.settle()
    w.check_invariants()
    assert w.hc.max_running == 2 and len(w.hc.operations) == 5


def test_a_slot_leaked_by_a_dead_starter_is_freed_after_the_lease() -> None:
    w = World(max_concurrent_operations=1)
    a = w.instance()
    # The leader takes the only slot, then dies before its job exists: the slot names a job
    # nobody will ever start.
    w.faults.kill(method="create", name="jobs/")
    deliveries = w.upload_burst(_names("leak", 2), to=[a])
    w.sim.run_until_idle()
    assert any(d.task.killed for d in deliveries)
    assert len(w.state("slots/")) == 1 and w.state("jobs/") == []
    # The window still has its records and a live claim: within the lease, nothing moves.
    w.poll()
    assert w.hc.operations == {} and len(w.state("slots/")) == 1
    w.settle()
    w.check_invariants()
    assert any(s.slots_freed for s in w.summaries())


def test_a_start_refused_for_a_transient_fault_stays_queued_until_the_poller_starts_it(world: World) -> None:
    a = world.instance()
    world.faults.fail(lambda: TransientApiError(503, "unavailable"), method="import_dicom")
    [delivery] = world.upload_burst(["flaky/one.dcm"], to=[a])
    world.sim.run_until_idle()
    assert delivery.outcome.led is not None and delivery.outcome.led.started == ()
    assert len(world.state("jobs/")) == 1 and world.state("slots/") == []
    world.settle()
    world.check_invariants()


def test_a_start_the_api_refuses_becomes_a_failed_event_and_leaves_no_state(world: World) -> None:
    a = world.instance()
    world.faults.fail(PermanentApiError(400, "bad uri", status="INVALID_ARGUMENT"), method="import_dicom")
    world.upload_burst(["refused/one.dcm"], to=[a])
    world.settle()
    [event] = world.completions()
    assert (event.data["state"], event.data["error"]["code"]) == ("FAILED", 3)
    assert event.event_id.startswith("op-refused-")
    assert world.quiet()


def test_a_non_dicom_upload_is_named_in_the_event_and_its_receipt(world: World) -> None:
    a = world.instance()
    events = [world.upload(n) for n in _names("mixed", 2)]
    events.append(world.upload("mixed/broken.dcm", b"not DICOM at all"))
    for upload in events:
        world.deliver(upload, a)
    world.settle()
    [completion] = world.completions()
    assert completion.data["counters"] == {"success": 2, "failure": 1, "pending": 0}
    assert completion.data["failedObjects"] == ["gs://uploads/mixed/broken.dcm"]
    assert len(world.state("receipts/")) == 1
    world.check_invariants()


def test_a_leader_stalled_within_its_lease_keeps_the_window(world: World) -> None:
    a = world.instance()
    # The leader pauses right after claiming for less than its lease; the poller runs meanwhile.
    world.faults.stall(world.settings.claim_lease_seconds / 2, method="list", name="windows/", nth=2)
    world.upload_burst(_names("pause", 3), to=[a])
    world.sim.run_until(T0 + world.settings.debounce_seconds + world.settings.settle_seconds + 1)
    assert world.faults.fired == ["before store.list windows/20260101T000000000Z/"]
    summary = world.poll().value()
    assert summary.windows_recovered == 0
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


def window_id_of(world: World, event: StorageObjectEvent) -> str:
    return window_id(event.time_created, world.settings.debounce_seconds)


@pytest.mark.parametrize(("method", "name"), [
    ("list", "operations/"),  # looking for imports that will read its uploads anyway
    ("list", "stall/"),  # listing the upload bucket to plan
    ("write", "manifests/"),  # planned
], ids=["covering", "listing", "manifest"])
def test_a_leader_stalled_past_its_lease_loses_the_window_to_the_poller_and_backs_off(
        world: World, method: str, name: str) -> None:
    a = world.instance()
    lease = world.settings.claim_lease_seconds
    # The leader pauses (a long GC, slow staging copies) past its lease; the poller takes the
    # window over meanwhile.
    world.faults.stall(lease * 3, method=method, name=name, nth=1)
    deliveries = world.upload_burst(_names("stall", 3), to=[a])
    closed = T0 + world.settings.debounce_seconds + world.settings.settle_seconds
    world.sim.run_until(closed + lease + 1)
    assert world.faults.fired, "the stall did not happen"
    taken = world.poll().value()
    assert taken.windows_recovered == 1
    world.sim.run_until_idle()  # the stalled leader wakes up
    assert all(d.task.done and d.task.error is None for d in deliveries)
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


def test_a_leader_close_to_the_end_of_its_lease_renews_its_claim_before_queueing(world: World) -> None:
    a = world.instance()
    lease = world.settings.claim_lease_seconds
    # Planning took most of the lease: the leader renews the claim, so the poller, running while
    # the leader queues its jobs, finds a live claim.
    world.faults.stall(lease * 0.9, method="write", name="manifests/", nth=1)
    world.faults.stall(lease * 0.5, method="list", name="slots/", nth=1)
    world.upload_burst(_names("renew", 3), to=[a])
    closed = T0 + world.settings.debounce_seconds + world.settings.settle_seconds
    world.sim.run_until(closed + lease + 1)
    assert len(world.faults.fired) == 2, world.faults.fired  # in the second pause, past the first lease
    assert world.poll().value().windows_recovered == 0
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


@pytest.mark.parametrize(("share", "poll_in"), [
    (0.7, 2),  # each round leaves less than the margin: renewed before rounds 2 and 3
    (0.6, 1),  # a round is slower than the margin: renewed before round 2 (twice round 1 ahead)
], ids=["rounds-past-the-margin", "rounds-slower-than-the-margin"])
def test_a_leader_whose_staging_outlasts_its_lease_renews_its_claim_and_keeps_the_window(
        world: World, share: float, poll_in: int) -> None:
    """Seen in the 100,000-file bench: with Cloud Storage slow, a leader still copying past its lease
    lost its window to the poller, which planned and copied it all again (decision 0700)."""
    lease = world.settings.claim_lease_seconds
    old = "slow/a064.dcm"  # an imported file amid the new ones: staging beats a glob that re-reads it
    world.store.put(UPLOADS, old, dicom_factory.instance())
    new = [name for i in range(2 * STAGE_CHUNK + 2) if (name := f"slow/a{i:03d}.dcm") != old]
    recovered: list[int] = []

    def slow_round(then_poll: bool) -> Callable[[], None]:
        def meanwhile() -> None:
            world.sim.jump(share * lease)  # each round of copies takes a good part of a lease
            if then_poll:  # by now the claim as first taken has run out
                recovered.append(world.poller().run().windows_recovered)
        return meanwhile

    for round_ in range(3):  # the leader looks at its lease before each round of copies
        world.faults.meanwhile(slow_round(then_poll=round_ == poll_in), method="copy",
                               nth=1 + round_ * STAGE_CHUNK)
    deliveries = world.upload_burst(new, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    assert len(world.faults.fired) == 3, world.faults.fired
    assert recovered == [0], "the poller took the window over from its live leader"
    result = led(deliveries)
    assert result.staged == len(new) and len(result.jobs) == 1
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1
    assert world.reported_successes() == len(new)


def test_a_leader_whose_reads_outlast_its_lease_renews_its_claim_between_them(world: World) -> None:
    """The same in planning (decision 0700): reading the queue, then listing the upload bucket, each
    take most of a lease (a throttled Cloud Storage); the poller runs during the second."""
    lease = world.settings.claim_lease_seconds
    world.faults.stall(0.7 * lease, method="list", name="jobs/", nth=1)  # the queued jobs
    world.faults.stall(0.7 * lease, method="list", name="plan/", nth=1)  # what else lies in the folder
    world.upload_burst(_names("plan", 3), to=[world.instance()])
    closed = T0 + world.settings.debounce_seconds + world.settings.settle_seconds
    world.sim.run_until(closed + 1.2 * lease)
    assert len(world.faults.fired) == 2, world.faults.fired  # inside the second pause
    assert world.poll().value().windows_recovered == 0
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


def test_a_poller_that_cannot_read_the_tracked_operations_starts_no_job() -> None:
    w = World(claim_lease_seconds=10.0)
    a = w.instance()
    # The starter of the only job dies right after recording its operation, before deleting the job.
    w.faults.kill(method="delete", name="jobs/")
    w.upload_burst(_names("blind", 2), to=[a])
    w.sim.run_until_idle()
    assert len(w.state("jobs/")) == 1 and len(w.state("operations/")) == 1
    w.sim.advance(w.settings.claim_lease_seconds + 1)  # the job's STARTING lease is over
    w.faults.fail(ConnectionError("storage unavailable"), method="list", name="operations/")
    summary = w.poll().value()
    assert summary.jobs_started == 0 and any(e.startswith("poll operations:") for e in summary.errors)
    assert len(w.hc.operations) == 1
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 1


def test_a_start_slower_than_the_lease_keeps_its_slot_when_the_poller_looked_before_it_was_tracked() -> None:
    """Found by the 100,000-file bench (6 LROs at once, cap 5): the poller listed the tracked
    operations, the slow starter then tracked its operation and deleted its job, and the poller's
    slot check found no job and freed the slot of a running LRO."""
    w = World(max_concurrent_operations=1)
    w.faults.stall(w.settings.claim_lease_seconds + 10, method="import_dicom")
    w.upload_burst(["slow/a.dcm"], to=[w.instance()])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + w.settings.claim_lease_seconds + 5)
    assert w.faults.fired and not w.hc.operations  # inside the stalled start, its slot past the lease
    w.faults.stall(20.0, method="list", name="slots/")  # the poller's slot check comes after the start
    task = w.poll()
    w.sim.run_until_idle()
    assert task.done and len(w.hc.running) == 1
    assert len(w.state("slots/")) == 1, "the running operation's slot was freed"
    w.upload_burst(["slow/b.dcm"], to=[w.instance()])
    w.sim.run_until_idle()
    assert len(w.hc.running) == 1  # the second import waits for the slot
    w.settle()
    w.check_invariants()


def test_a_window_in_a_large_tree_lists_at_most_a_thousand_objects_beyond_its_own(world: World) -> None:
    """In a migration a window's uploads share only the tree's root: listing all of it for each
    window (up to 20,000 objects, 21 pages) bought no glob a plan could use (decision 0700)."""
    for k in range(2_500):
        world.store.put(UPLOADS, f"tree/old/{k:05d}.dcm", b"old")
    listed: list[tuple[str, int]] = []
    plain_list = world.store.list

    def recording_list(bucket: str, prefix: str, **kwargs: Any) -> Iterator[Any]:
        found = list(plain_list(bucket, prefix, **kwargs))
        if bucket == UPLOADS:
            listed.append((prefix, len(found)))
        return iter(found)

    world.store.list = recording_list  # type: ignore[method-assign]
    names = ["tree/n1/a.dcm", "tree/n1/b.dcm", "tree/n2/c.dcm"]
    deliveries = world.upload_burst(names, to=[world.instance()])
    world.settle()
    assert ("tree/", OTHERS_LISTED + len(names) + 1) in listed  # truncated: one past the cap
    assert max(count for _, count in listed) <= OTHERS_LISTED + len(names) + 1
    assert any(d.outcome.led is not None and d.outcome.led.claimed for d in deliveries)
    world.check_invariants(expected=names)


def test_a_leader_whose_record_deletions_outlast_its_lease_renews_its_claim_and_keeps_the_window(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in bench.simulate at 500 files/s and x5 latency: deleting a large window's records took
    longer than the lease left after the fence, and the poller took the window over from its live
    leader (decision 0751). Here the poller runs while the last rounds of deletions are going on
    (one upload per record, as many records as a large window of many processes has)."""
    monkeypatch.setattr(window_records, "MAX_GROUP_UPLOADS", 1)
    lease = world.settings.claim_lease_seconds
    names = _names("del", 4 * STAGE_CHUNK)
    recovered: list[int] = []

    def slow_round(then_poll: bool) -> Callable[[], None]:
        def meanwhile() -> None:
            world.sim.jump(0.6 * lease)  # each round of deletions takes most of a lease
            if then_poll:
                recovered.append(world.poller().run().windows_recovered)
        return meanwhile

    for round_ in range(4):
        world.faults.meanwhile(slow_round(then_poll=round_ >= 2), method="delete", name="windows/",
                               nth=1 + round_ * STAGE_CHUNK)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    assert len(world.faults.fired) == 4, world.faults.fired
    assert recovered == [0, 0], "the poller took the window over from its live leader"
    assert len(led(deliveries).jobs) == 1
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


def test_a_leader_whose_copies_are_throttled_past_its_lease_renews_its_claim_and_copies_them_again(
        world: World) -> None:
    """Cloud Storage answers 429 to several copies of a round, each after the client's own retries
    (8 s, functions.gcp.gcs.STORAGE_RETRY_SECONDS): together longer than the lease. The leader renews
    its claim and copies those again; the window stays its own (decision 0752)."""
    old = "hot/a010.dcm"  # an imported file amid the new ones: the window stages
    world.store.put(UPLOADS, old, dicom_factory.instance())
    new = [f"hot/a{i:03d}.dcm" for i in range(STAGE_CHUNK + 4) if f"hot/a{i:03d}.dcm" != old]

    def throttled() -> Exception:
        world.sim.jump(8.0)  # the client's retries of this call, in vain
        return TooManyRequests("429 rate of writes to the bucket")

    world.faults.fail(throttled, method="copy", nth=2, times=5)
    recovered: list[int] = []
    world.faults.meanwhile(lambda: recovered.append(world.poller().run().windows_recovered),
                           method="copy", nth=STAGE_CHUNK + 6)  # in the round after the throttled one
    deliveries = world.upload_burst(new, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    assert len(world.faults.fired) == 6, world.faults.fired
    assert recovered == [0], "the poller took the window over from its live leader"
    result = led(deliveries)
    assert result.staged == len(new) and len(result.jobs) == 1
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1 and world.state("staging/") == []


def test_a_leader_whose_claim_renewal_is_throttled_tries_again_within_its_lease(world: World) -> None:
    """Seen in bench.simulate at 1,000,000 files and 500/s: the state bucket's write rate answered
    429 to a claim renewal, and the planning run failed. The renewal is tried again while the lease
    lasts (decision 0752); the window stays with its leader."""
    lease = world.settings.claim_lease_seconds
    old = "ren/a010.dcm"  # an imported file amid the new ones: the window stages
    world.store.put(UPLOADS, old, dicom_factory.instance())
    new = [f"ren/a{i:03d}.dcm" for i in range(2 * STAGE_CHUNK + 2) if f"ren/a{i:03d}.dcm" != old]

    def throttled() -> Exception:
        world.sim.jump(8.0)  # the client's retries of this call, in vain
        return TooManyRequests("429 rate of writes to the bucket")

    world.faults.meanwhile(lambda: world.sim.jump(0.5 * lease), method="copy", nth=1)  # a slow first round
    world.faults.fail(throttled, method="replace", name="claims/", times=1)
    deliveries = world.upload_burst(new, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    assert len(world.faults.fired) == 2, world.faults.fired
    result = led(deliveries)
    assert result.claimed and result.staged == len(new) and len(result.jobs) == 1
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1


def test_a_window_taken_over_after_its_import_finished_imports_nothing_twice(world: World) -> None:
    """A leader failed while deleting its window's records, after its job was queued; the poller
    started the job and it finished before the window was taken over. The job's manifests went with
    it, so its window records go too (decision 0753): the takeover finds nothing to plan again."""
    w = world
    w.faults.kill(method="delete", name="windows/", nth=1)  # the leader dies deleting its records
    w.upload_burst(_names("left", 3), to=[w.instance("a")])
    w.sim.run_until_idle()
    assert w.state("windows/") and w.state("jobs/") and not w.hc.operations
    # The poller's window recovery fails (a listing answered 503) until it has started and
    # finished the job.
    w.faults.fail(lambda: ServiceUnavailable("503"), method="list_prefixes", name="windows/", times=30)
    w.sim.advance(w.settings.claim_lease_seconds + 5)
    polls = 0
    while not w.hc.operations and polls < 15:  # a start with an unknown outcome: after 600 s, again
        w.poll()
        w.sim.run_until_idle()
        w.sim.advance(60.0)
        polls += 1
    assert len(w.hc.running) == 1
    w.hc.finish_all()
    w.poll()
    w.sim.run_until_idle()
    assert not w.hc.running and not w.state("operations/") and len(w.faults.fired) == 1 + polls + 1
    w.sim.advance(60.0)
    w.settle()
    w.check_invariants()


def test_a_window_taken_over_after_its_import_failed_on_a_file_imports_that_file(world: World) -> None:
    """A finished import takes the records of its uploads along only when every object landed
    (decision 0753): a file it did not store stays in its window, and the window's takeover imports
    it (the others are read again: the price of never losing one)."""
    w = world
    # The leader dies once its job is durable, before it deletes any of its window's records.
    w.faults.kill(method="create", name="jobs/", nth=1, when="after")
    names = _names("left", 3)
    w.upload_burst(names, to=[w.instance("a")])
    w.sim.run_until_idle()
    w.faults.fail(lambda: ServiceUnavailable("503"), method="list_prefixes", name="windows/", times=30)
    w.sim.advance(w.settings.claim_lease_seconds + 5)
    polls = 0
    while not w.hc.operations and polls < 15:
        w.poll()
        w.sim.run_until_idle()
        w.sim.advance(60.0)
        polls += 1
    assert len(w.hc.running) == 1
    # The import fails on one file: the store holds other bytes under its SOP Instance UID.
    refused = w.sops[names[0]]
    w.hc.blobs[refused] = b"other bytes"
    w.hc.finish_all()
    del w.hc.blobs[refused]
    w.poll()
    w.sim.run_until_idle()
    assert w.hc.imports_of(refused) == 0 and not w.hc.running
    assert sorted(w.waiting()) == sorted(names), "the records of an import with a failed file stay"
    w.sim.advance(60.0)
    w.settle()
    assert w.hc.imports_of(refused) == 1
    assert all(1 <= w.hc.imports_of(w.sops[n]) <= 2 for n in names[1:])
    assert w.quiet(), w.work_left()


def test_a_leader_whose_record_deletions_stay_throttled_still_starts_its_jobs(world: World) -> None:
    """A leader that fails on 429s between queueing its job and starting it: left STARTING, the job
    would wait out its lease and be taken for an unconfirmed start, which the poller may pair with
    another job's operation (decision 0300); the likely path of the files bench.simulate once found
    read twice and missing at 500 files/s with the copies in the state bucket."""
    names = _names("throttled", 3)
    # Every deletion of the record (it lists all three), in all six rounds of attempts, is answered 429.
    world.faults.fail(lambda: TooManyRequests("429 rate of writes to the bucket"), method="delete",
                      name="windows/", times=6)
    deliveries = world.upload_burst(names, to=[world.instance()])
    world.sim.run_until_idle()
    [failed] = [d for d in deliveries if d.task.error is not None]
    assert isinstance(failed.task.error, TooManyRequests)
    assert len(world.hc.operations) == 1 and world.state("unconfirmed/") == []  # started, not left STARTING
    assert sorted(world.waiting()) == names
    world.settle()
    world.check_invariants()
    assert len(world.hc.operations) == 1
