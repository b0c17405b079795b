"""A group commit of window records (decision 0770): the concurrent requests of one process for one
window share one record write, the leader reads group records and one-upload records alike, and
a failed write fails every request of its group (their redelivery loses nothing)."""

from __future__ import annotations

import pytest
from google.api_core.exceptions import ServiceUnavailable

from functions.core.windows import object_key, window_id
from functions.imports import record_groups, window_records
from functions.imports.window_records import Entry
from tests.functional.scenarios import led
from tests.functional.world import STATE, World


def _names(folder: str, count: int) -> list[str]:
    return [f"{folder}/IM{i:04d}.dcm" for i in range(count)]


def _record_creates(world: World) -> int:
    """Window records written so far (each write has a name of its own)."""
    assert world.store.written_metadata is not None
    root = world.settings.state_path("windows/")
    return sum(1 for name in world.store.written_metadata if name.startswith(root))


def test_concurrent_requests_of_one_process_share_one_record_and_each_upload_is_planned_once(world: World) -> None:
    names = _names("group/s1", 20)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)  # within the linger
    world.sim.run_until_idle()
    assert _record_creates(world) == 1  # one write for twenty requests
    assert [d.outcome.action for d in deliveries] == ["recorded"] * 20
    result = led(deliveries)
    assert result.uploads == 20 and result.left == 0
    [op] = world.hc.operations.values()
    assert len(op.objects) == 20
    world.settle()
    world.check_invariants(expected=names)


def test_requests_arriving_while_a_write_is_in_flight_share_the_next_write(world: World) -> None:
    """The first group's write takes 2 s: the ten requests that arrive meanwhile (after its linger)
    make one more write, not ten."""
    names = _names("inflight/s1", 12)
    world.faults.stall(2.0, method="create", name="windows/", nth=1)
    a = world.instance()
    first = world.upload_burst(names[:2], to=[a], gap=0.01)
    world.sim.advance(record_groups.LINGER_SECONDS + 0.1)  # the first write is in flight now
    later = world.upload_burst(names[2:], to=[a], gap=0.1)
    world.sim.run_until_idle()
    assert world.faults.fired
    assert _record_creates(world) == 2
    records = {d.task.value().window for d in first + later}
    assert len(records) == 1
    world.settle()
    world.check_invariants(expected=names)


def test_a_group_whose_write_fails_fails_all_its_requests_and_their_redelivery_loses_nothing(world: World) -> None:
    names = _names("failed/s1", 5)
    world.faults.fail(ServiceUnavailable("503 backend"), method="create", name="windows/", nth=1, times=1)
    a = world.instance()
    deliveries = world.upload_burst(names, to=[a], gap=0.01)
    world.sim.run_until_idle()
    assert all(isinstance(d.task.error, ServiceUnavailable) for d in deliveries)
    assert world.state("windows/") == [] and not world.hc.operations
    world.sim.advance(10.0)  # the platform delivers them again
    again = [world.deliver(d.event, a) for d in deliveries]
    world.sim.run_until_idle()
    assert [d.outcome.action for d in again] == ["recorded"] * 5
    world.settle()
    world.check_invariants(expected=names)


def test_a_duplicate_in_two_groups_of_one_process_is_imported_once(world: World) -> None:
    """Delivered again after its first group was written, before the window closed: the second
    group lists it too, and the leader plans its key once."""
    names = _names("twice/s1", 3)
    a = world.instance()
    deliveries = world.upload_burst(names, to=[a], gap=0.01)
    world.sim.advance(1.0)
    again = world.deliver(deliveries[0].event, a)
    world.sim.run_until_idle()
    assert _record_creates(world) == 2 and again.outcome.action == "recorded"
    assert led(deliveries + [again]).uploads == 3
    world.settle()
    world.check_invariants(expected=names)


def test_one_upload_records_written_before_group_records_are_planned_with_them(world: World) -> None:
    """Records of the earlier shape (`windows/{W}/{key}.json`, one upload in four metadata fields)
    waiting in a window when the new version starts: they are planned with the group's, by the
    group's process when its record sorts first, else by the poller once the window is orphaned."""
    old_names, new_names = _names("mixed/old", 3), _names("mixed/new", 3)
    old = [world.upload(n) for n in old_names]
    window = window_id(old[0].time_created, world.settings.debounce_seconds)
    prefix = world.batcher().window_prefix(window)
    for event in old:
        world.store.create(STATE, prefix + object_key(event.bucket, event.name, event.generation) + ".json", {},
                           metadata={"bucket": event.bucket, "name": event.name, "generation": str(event.generation),
                                     "timeCreated": f"{event.time_created.timestamp():.6f}"})
    deliveries = world.upload_burst(new_names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    leaders = [d.outcome.led for d in deliveries if d.outcome.led is not None]
    if not leaders:
        world.sim.advance(world.settings.claim_lease_seconds + 1)
        assert world.poll().value().windows_recovered == 1
    assert world.state("windows/") == []
    assert [len(op.objects) for op in world.hc.operations.values()] == [6]
    world.settle()
    world.check_invariants(expected=old_names + new_names)


def test_a_window_of_one_upload_records_alone_is_recovered_by_the_poller(world: World) -> None:
    names = _names("oldonly/s1", 3)
    events = [world.upload(n) for n in names]
    window = window_id(events[0].time_created, world.settings.debounce_seconds)
    prefix = world.batcher().window_prefix(window)
    for event in events:
        world.store.create(STATE, prefix + object_key(event.bucket, event.name, event.generation) + ".json", {},
                           metadata={"bucket": event.bucket, "name": event.name, "generation": str(event.generation),
                                     "timeCreated": f"{event.time_created.timestamp():.6f}"})
    world.sim.advance(world.settings.debounce_seconds + world.settings.settle_seconds
                      + world.settings.claim_lease_seconds + 1)
    assert world.poll().value().windows_recovered == 1
    world.settle()
    world.check_invariants(expected=names)


def test_a_record_is_deleted_only_once_every_upload_it_lists_is_batched(world: World) -> None:
    """A window planned in parts: a record listing uploads of both parts stays after the first part
    and goes with the second (decision 0771)."""
    names = _names("parts/s1", 6)
    events = [world.upload(n) for n in names]
    window = window_id(events[0].time_created, world.settings.debounce_seconds)
    record = world.batcher().record(window, [Entry.of(e) for e in events])
    assert world.waiting() == names
    world.sim.advance(world.settings.debounce_seconds + world.settings.settle_seconds
                      + world.settings.claim_lease_seconds + 1)
    from functions.imports import window_batcher

    original = window_batcher.PLAN_UPLOADS
    window_batcher.PLAN_UPLOADS = 4
    try:
        batcher = world.batcher()
        task = world.sim.call(lambda: batcher.run(window, seconds=-1.0), name="first part only")
        world.sim.run_until_idle()
        first = task.value()
        assert (first.uploads, first.left) == (4, 2)
        assert world.state("windows/") == [record] and world.unbatched() == names[4:]
        task = world.sim.call(lambda: batcher.run(window), name="second part")
        world.sim.run_until_idle()
        assert (task.value().uploads, task.value().left) == (2, 0)
        assert world.state("windows/") == []
    finally:
        window_batcher.PLAN_UPLOADS = original
    world.settle()
    world.check_invariants(expected=names)
    assert window_records.parse(world.store.written_metadata[record]) == [Entry.of(e) for e in events]


def test_a_record_listing_uploads_of_a_finished_import_and_of_a_later_part_keeps_the_later_ones(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader dies before the seen file of its first part (4 of the record's 6 uploads are in a
    durable job); the poller starts and finishes that job before the window is taken over. Its
    clean-up puts the 4 keys in the seen file and keeps the record (2 uploads are in no job); the
    takeover then plans only those 2 (decisions 0753, 0771)."""
    from functions.imports import window_batcher

    monkeypatch.setattr(window_batcher, "PLAN_UPLOADS", 4)
    w = world
    names = _names("mixedjob/s1", 6)
    w.faults.kill(method="create", name="seen/", nth=1)
    w.upload_burst(names, to=[w.instance("a")], gap=0.01)
    w.sim.run_until_idle()
    assert w.faults.fired and len(w.state("windows/")) == 1 and len(w.state("jobs/")) == 1
    # The poller's window recovery fails (a listing answered 503) until the job has finished.
    w.faults.fail(lambda: ServiceUnavailable("503"), method="list_prefixes", name="windows/", times=30)
    w.sim.advance(w.settings.claim_lease_seconds + 5)
    polls = 0
    while not w.hc.operations and polls < 15:
        w.poll()
        w.sim.run_until_idle()
        w.sim.advance(60.0)
        polls += 1
    [op] = w.hc.running
    assert len(op.objects) == 4
    w.hc.finish_all()
    w.poll()
    w.sim.run_until_idle()
    assert not w.state("operations/") and len(w.state("windows/")) == 1
    assert sorted(w.unbatched()) == names[4:]
    w.sim.advance(60.0)
    w.settle()
    w.check_invariants(expected=names)
    assert sorted(len(o.objects) for o in w.hc.operations.values()) == [2, 4]


def test_a_leader_takes_along_its_process_s_group_still_being_written_when_its_window_s_wait_ends(
        world: World) -> None:
    """The window's second group is written slowly (its create stalls past the window's close and
    settle): the leader waits for it and plans both uploads in one round. Planned without it, the
    late group's request would lead the window again, writing its claim again right after the first
    round deleted it."""
    a = world.instance()
    names = _names("slow/s1", 2)
    world.faults.stall(world.settings.debounce_seconds + world.settings.settle_seconds + 3.0,
                       method="create", name="windows/", nth=2)
    deliveries = world.upload_burst(names, to=[a], gap=record_groups.LINGER_SECONDS + 0.5)  # two groups
    assert len({window_id(d.event.time_created, world.settings.debounce_seconds) for d in deliveries}) == 1
    world.sim.run_until_idle()
    assert world.faults.fired
    rounds = [d.outcome.led for d in deliveries if d.outcome.led is not None and d.outcome.led.claimed]
    assert [r.uploads for r in rounds] == [2]
    [op] = world.hc.operations.values()
    assert len(op.objects) == 2
    world.settle()
    world.check_invariants(expected=names)
