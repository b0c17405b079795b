"""One leader's run and one poller run do bounded work (decisions 0761, 0775).

Found by bench.simulate at 500 files/s with every call five times slower: a leader planned its
window of 2,500 files for 390 s (the import function's timeout is 120 s), and a poller run that
took over such windows planned them all inside the run (1,007 s; its timeout is 300 s). A plan now
takes at most `PLAN_UPLOADS` uploads per claim, a run plans another part only while it has time
left, and the poller's recovery of windows has a budget; what is left goes to the next run.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from functions.core.events import StorageObjectEvent
from functions.core.windows import window_id
from functions.gcp.clients import Record
from functions.imports import failed_objects, job_record, poll_operations, window_batcher, window_records
from functions.imports.job_queue import Job
from functions.imports.job_record import Change, Event, JobRecord
from functions.imports.window_records import Entry
from tests.functional.cloud_limits import CloudConditions, Latency
from tests.functional.scenarios import led
from tests.functional.test_cloud_limits import _staged_import
from tests.functional.world import SCHEDULER_PERIOD, STATE, World

PART = 40


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window_batcher, "PLAN_UPLOADS", PART)


def _names(folder: str, count: int) -> list[str]:
    return [f"{folder}/IM{i:04d}.dcm" for i in range(count)]


def _late_duplicate_record(world: World, event: StorageObjectEvent) -> str:
    """The name of a record a late duplicate of `event` writes: one of its own."""
    window = window_id(event.time_created, world.settings.debounce_seconds)
    return world.batcher().window_prefix(window) + "late-duplicate.json"


@pytest.mark.usefixtures("small_parts")
def test_a_window_larger_than_a_part_is_planned_part_by_part_in_one_run_when_time_allows(world: World) -> None:
    names = _names("parts", 2 * PART + 10)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    result = led(deliveries)
    assert result.uploads == len(names) and result.left == 0
    assert world.state("windows/") == [] and world.state("claims/") == []
    world.settle()
    world.check_invariants(expected=names)


@pytest.mark.usefixtures("small_parts")
def test_a_part_that_took_most_of_the_run_leaves_the_rest_to_the_poller(world: World) -> None:
    """The first part takes 35 s (slow calls): another one would end past `PLAN_SECONDS`, so the
    leader answers with the rest left in the window, and the poller's next run plans it."""
    names = _names("slow", 2 * PART + 10)
    world.faults.meanwhile(lambda: world.sim.jump(35.0), method="create", name="seen/", nth=1)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    result = led(deliveries)
    assert result.uploads == PART and result.left == len(names) - PART
    assert len(world.unbatched()) == len(names) - PART and world.state("claims/") == []
    summary = world.poll().value()
    assert summary.windows_recovered == 1 and summary.windows_left == 0
    assert world.state("windows/") == []
    world.settle()
    world.check_invariants(expected=names)


def test_a_poller_run_recovers_windows_within_its_budget_and_leaves_the_rest_to_the_next(world: World) -> None:
    """Four windows whose leaders died before their claims; planning each takes 25 s. One run
    plans windows while the time so far plus the longest window so far stays within
    `RECOVERY_SECONDS` (60 s): two; the next run plans the other two."""
    windows = 4
    names = []
    for k in range(windows):
        world.faults.kill(method="create", name="claims/", nth=k + 1)  # each window's leader
    for k in range(windows):
        window_names = _names(f"dead{k}", 3)
        world.upload_burst(window_names, to=[world.instance()], gap=0.01)
        names += window_names
        world.sim.advance(world.settings.debounce_seconds)
    world.sim.run_until_idle()
    assert len(world.faults.fired) == windows and world.state("claims/") == [], world.faults.fired
    assert len(world.batcher().open_windows()) == windows
    world.sim.advance(world.settings.claim_lease_seconds)  # every window is orphaned now
    # A window's recovery lists its records twice (the check for late duplicates only, then the
    # plan): 12.5 s each.
    world.faults.meanwhile(lambda: world.sim.jump(12.5), method="list", name="windows/", times=2 * windows)
    began = world.sim.clock()
    first = world.poll().value()
    assert first.windows_recovered == 2  # all four in one run took 100 s
    assert world.sim.clock() - began <= poll_operations.RECOVERY_SECONDS
    assert first.windows_left == 2
    second = world.poll().value()
    assert (second.windows_recovered, second.windows_left) == (2, 0)
    world.settle()
    world.check_invariants(expected=names)


def test_a_poller_run_that_spent_its_time_on_other_steps_leaves_staged_copies_to_the_next(
        world: World) -> None:
    """Polling took 118 s of the run; each listing page of copies takes 3 s. Deleting stops at the
    first page past `RUN_SECONDS` (120 s), not 90 s after it began."""
    _staged_import(world, 2500)
    world.faults.meanwhile(lambda: world.sim.jump(118.0), method="get_operation")
    world.faults.meanwhile(lambda: world.sim.jump(3.0), method="list", name="staging/", times=10)
    began = world.sim.clock()
    summary = world.poll().value()
    assert summary.finished == 1
    assert summary.staged_deleted == 1000  # one page, then the run's time was up
    assert world.sim.clock() - began <= poll_operations.RUN_SECONDS + 3.0
    world.settle()
    assert world.state("staging/") == [] and world.state("cleanup/") == []


@pytest.mark.usefixtures("small_parts")
def test_a_record_a_late_duplicate_writes_again_between_two_parts_is_not_planned_twice(world: World) -> None:
    """A late duplicate of an upload of the first part writes its record again (its handler then
    finds the upload batched and deletes it); the second part lists it meanwhile."""
    names = _names("again", PART + 10)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    record = _late_duplicate_record(world, deliveries[0].event)

    def duplicate_records_again() -> None:
        world.store.create(STATE, record, {}, metadata=window_records.encode([Entry.of(deliveries[0].event)]))

    world.faults.meanwhile(duplicate_records_again, method="create", name="claims/", nth=2)  # the second part's
    world.sim.run_until_idle()
    assert world.faults.fired
    result = led(deliveries)
    assert result.uploads == len(names) and result.left == 0
    world.store.delete(STATE, record)  # the duplicate's handler, done
    world.settle()
    world.check_invariants(expected=names)


def test_undoing_a_large_growth_deletes_its_copies_side_by_side() -> None:
    """A starter undoes the growth of a grower that stopped: 2,000 copies, each delete 40 ms (x1).
    One after the other they took 80 s of a poller run; side by side about a second."""
    w = World(cloud=lambda sim: CloudConditions(sim, latency=Latency(tail_share=0.0)))
    try:
        queue = w.queue()
        prefix = "staging/J/"
        job = Job(job_id="J", kind="import", request_id="r", created_at=w.sim.clock(),
                  import_uri=f"gs://{STATE}/{prefix}**", staging_prefix=prefix)
        batch = "B"
        for index in range(2000):
            w.store.put(STATE, f"{job_record.batch_prefix(prefix, batch)}{index:06d}.dcm", b"x")
        path = queue.job_path("J")

        w.sim.call(lambda: _queue_held_by_a_grower_that_stops(w, path, job, batch), name="grower")
        w.sim.run_until_idle()
        w.sim.advance(31.0)  # the hold ran out
        began = w.sim.clock()
        task = w.sim.call(lambda: queue.try_start("J"), name="starter")
        w.sim.run_until_idle()
        assert task.value().started and w.state(job_record.batch_prefix(prefix, batch)) == []
        assert w.sim.clock() - began < 10.0
    finally:
        w.close()


@pytest.mark.usefixtures("small_parts")
def test_a_run_whose_next_part_finds_the_window_claimed_by_another_leader_ends_there(world: World) -> None:
    """Between two parts another process (a late event's handler, the poller) claims the window:
    the run answers with the rest left, instead of trying the live claim again and again until
    its time is up (a create and a read of one object name per try)."""
    names = _names("between", PART + 10)
    creates: list[str] = []
    leading = [True]

    def claim_created() -> None:
        creates.append("create")
        if len(creates) == 2:  # right before the second part's: another leader claims the window
            path = world.batcher().claim_path(window_id(deliveries[0].event.time_created,
                                                        world.settings.debounce_seconds))
            until = world.sim.clock() + world.settings.claim_lease_seconds
            world.store.put(STATE, path, json.dumps({"holder": "another", "leaseUntil": until}).encode())
        elif len(creates) > 2 and leading[0]:
            raise RuntimeError("the window's live claim was tried again")  # ends a run that would spin

    world.faults.meanwhile(claim_created, method="create", name="claims/", times=1_000)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    leading[0] = False
    result = led(deliveries)
    assert len(creates) == 2
    assert result.uploads == PART and result.left == len(names) - PART
    assert len(world.unbatched()) == len(names) - PART
    world.sim.advance(2 * world.settings.claim_lease_seconds)  # the other claim runs out: the poller's
    assert world.poll().value().windows_recovered == 1
    assert world.state("windows/") == []
    world.settle()
    world.check_invariants(expected=names)


@pytest.mark.usefixtures("small_parts")
def test_a_second_part_whose_seen_file_write_fails_starts_its_jobs_and_the_takeover_reads_nothing_twice(
        world: World) -> None:
    """Part two's add to the seen file is throttled past its retries (decision 0755): its jobs
    start anyway, its records and claim stay; the poller's takeover finds the uploads in the
    started jobs' manifests and only deletes their records."""
    names = _names("seenfails", PART + 10)
    world.faults.fail(lambda: gexc.TooManyRequests("seen"), method="replace", name="seen/", nth=1, times=1)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    assert world.faults.fired
    assert len(world.unbatched()) == len(names) - PART and len(world.state("claims/")) == 1
    [error] = [d.task.error for d in deliveries if d.task.error is not None]
    assert isinstance(error, gexc.TooManyRequests)
    assert len(world.hc.running) == 2  # part one's import, and part two's, started anyway
    world.sim.advance(2 * world.settings.claim_lease_seconds)
    world.poll().value()
    assert world.state("windows/") == [] and world.state("claims/") == []
    world.settle()
    world.check_invariants(expected=names)


@pytest.mark.usefixtures("small_parts")
def test_a_record_a_late_duplicate_writes_again_between_two_parts_is_deleted_by_the_second_part(
        world: World) -> None:
    """The run plans nothing of the record in its second part (its upload is in `planned`), and no
    handler of the duplicate leads the window: the second part deletes it with its own, since every
    upload it lists is in the seen file by then (decision 0771)."""
    names = _names("again", PART + 10)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    record = _late_duplicate_record(world, deliveries[0].event)
    metadata = window_records.encode([Entry.of(deliveries[0].event)])
    world.faults.meanwhile(lambda: world.store.create(STATE, record, {}, metadata=metadata),
                           method="create", name="claims/", nth=2)
    world.sim.run_until_idle()
    assert world.faults.fired and led(deliveries).left == 0
    assert world.store.writes[record] == 2  # written by the duplicate, deleted by the run
    assert world.state("windows/") == [] and world.state("claims/") == []
    world.settle()
    world.check_invariants(expected=names)


@pytest.mark.usefixtures("small_parts")
def test_a_takeover_planned_in_parts_reads_nothing_a_dead_leaders_part_queued(world: World) -> None:
    """The leader dies after its first part's jobs are durable, before the seen file. A late upload
    of the window sorts first by name, so the takeover's first part is not the dead leader's: one
    upload the dead leader queued falls into the takeover's second part, under a claim of its own,
    and must still be found in the dead leader's job instead of being planned again."""
    late = world.upload("aa/late.dcm")  # in the window; its event comes after the leader died
    names = _names("zz", PART + 10)
    world.faults.kill(method="create", name="seen/")
    world.upload_burst(names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    assert world.faults.fired and len(world.unbatched()) == len(names)
    world.deliver(late, world.instance("late"))
    world.sim.run_until_idle()
    world.sim.advance(2 * world.settings.claim_lease_seconds)
    world.poll().value()
    world.sim.run_until_idle()
    world.settle()
    world.check_invariants(expected=[*names, "aa/late.dcm"])


def test_a_round_whose_second_job_cannot_be_queued_starts_the_first_at_once() -> None:
    """The round's first job is durable (STARTING, its slot taken) when queueing its second is
    throttled past its retries: the first starts now (decision 0755) instead of waiting out its
    lease for the poller to take it for an unconfirmed start."""
    world = World(storage_class_by_prefix=(("cold/", "COLDLINE"),))  # a job per storage class
    names = [*_names("warm", 3), *_names("cold", 3)]
    world.faults.fail(lambda: gexc.TooManyRequests("jobs"), method="create", name="jobs/", nth=2, times=1)
    deliveries = world.upload_burst(names, to=[world.instance()], gap=0.01)
    world.sim.run_until_idle()
    assert world.faults.fired, "the round made one job"
    [error] = [d.task.error for d in deliveries if d.task.error is not None]
    assert isinstance(error, gexc.TooManyRequests)
    assert len(world.hc.running) == 1
    world.sim.advance(2 * world.settings.claim_lease_seconds)
    world.poll().value()
    world.sim.run_until_idle()
    world.settle()
    world.check_invariants(expected=names)


def _timed_poll(world: World) -> tuple[poll_operations.PollSummary, float]:
    began = world.sim.clock()
    task = world.poll()
    world.sim.run_until_idle()
    return task.value(), world.sim.clock() - began


def _finished_import_with_a_failure(world: World, files: int) -> list[str]:
    """One import of `files` DICOM files and one that is not DICOM, finished: each object is
    judged against the store. Its names, the non-DICOM one last."""
    names = [*_names("huge", files), "huge/notes.dcm"]
    a = world.instance()
    for name in names:
        world.deliver(world.upload(name, b"not DICOM" if name.endswith("notes.dcm") else None), a)
    world.sim.run_until_idle()
    assert world.hc.finish_all() == 1
    return names


def _count_downloads(world: World, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    downloads: Counter[str] = Counter()
    download = world.store.download

    def counted(bucket: str, name: str, **kwargs: Any) -> bytes:
        downloads[name] += 1
        return download(bucket, name, **kwargs)

    monkeypatch.setattr(world.store, "download", counted)
    return downloads


def test_a_poller_killed_in_the_middle_of_an_accounting_leaves_it_for_the_next_run(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run dies right before it keeps its second chunk's progress (the function's timeout, a
    crash): the next run goes on from the first chunk's, judges the second chunk again and
    publishes one complete event."""
    monkeypatch.setattr(failed_objects, "CHUNK", 20)
    names = _finished_import_with_a_failure(world, 60)
    downloads = _count_downloads(world, monkeypatch)
    world.faults.kill(method="replace", name="accounting/")
    killed = world.poll()
    world.sim.run_until_idle()
    assert killed.killed and world.completions() == []
    assert len(world.store.json(STATE, world.state("accounting/")[0])["probed"]) == 20
    summary = world.poll().value()
    assert summary.finished == 1 and world.state("accounting/") == []
    [event] = [p.data for p in world.completions()]
    assert event["objects"]["total"] == len(names) and event["objects"]["landed"] == len(names) - 1
    assert sum(1 for n in downloads.values() if n > 1) == 20  # the chunk whose progress was lost
    world.settle()
    world.check_invariants(expected=names[:-1])


def test_a_huge_finished_import_is_accounted_for_over_several_runs_each_within_its_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An import of 300 objects, one of them not DICOM, so each object is judged against the store;
    every call then takes 50 times its usual time (a download 2 s, a store lookup 2.5 s): judging
    them all took one run over 200 s. Each run now judges chunks while its time so far plus its
    longest chunk stays within `RUN_SECONDS`, keeps how far it got, and the next goes on; the
    completion event comes once, with every object, and no object is read twice."""
    monkeypatch.setattr(failed_objects, "CHUNK", 20)
    world = World(cloud=lambda sim: CloudConditions(sim))
    try:
        names = _finished_import_with_a_failure(world, 300)
        world.cloud.latency = Latency(scale=50.0, tail_share=0.0)  # type: ignore[union-attr]
        downloads = _count_downloads(world, monkeypatch)
        runs = []
        for _ in range(10):
            summary, seconds = _timed_poll(world)
            runs.append((summary.finished, summary.accounting_left, seconds))
            if summary.finished:
                break
            assert world.state("accounting/") and world.completions() == [], runs  # kept, not published
            world.sim.advance(SCHEDULER_PERIOD)
        assert len(runs) >= 2, runs  # the work did not fit one run
        assert all(seconds <= poll_operations.RUN_SECONDS + 30.0 for _, _, seconds in runs), runs
        assert [left for _, left, _ in runs] == [1] * (len(runs) - 1) + [0]
        [event] = [p.data for p in world.completions()]
        assert event["objects"]["total"] == len(names) and event["objects"]["landed"] == len(names) - 1
        assert [f["reason"] for f in event["failures"]] == ["NOT_DICOM"]
        assert set(downloads) == set(names) and max(downloads.values()) == 1  # none judged twice
        assert world.state("accounting/") == []
        world.settle()
        world.check_invariants(expected=names[:-1])
    finally:
        world.close()


def test_a_large_growth_to_undo_is_undone_over_several_runs_and_only_then_is_the_job_started() -> None:
    """A stopped grower left 3,000 copies; every call takes 100 times its usual time (a delete
    4 s), so a page of 1,000 on 64 threads takes over a minute and undoing it all took one run
    over 200 s. Each run deletes pages within its budget; the job keeps its cancelled hold and
    waits until the next run has deleted the last copy, then starts without the growth."""
    w = World(cloud=lambda sim: CloudConditions(sim))
    try:
        prefix = "staging/J/"
        job = Job(job_id="J", kind="import", request_id="r", created_at=w.sim.clock() - 3600.0,
                  import_uri=f"gs://{STATE}/{prefix}**", staging_prefix=prefix)
        batch = "B"
        w.store.put(STATE, f"{prefix}{batch}0/committed.dcm", b"x")  # the job's own copy stays
        for index in range(3000):
            w.store.put(STATE, f"{job_record.batch_prefix(prefix, batch)}{index:06d}.dcm", b"x")
        path = w.queue().job_path("J")

        w.sim.call(lambda: _queue_held_by_a_grower_that_stops(w, path, job, batch), name="grower")
        w.sim.run_until_idle()
        w.sim.advance(31.0)  # the hold ran out
        w.cloud.latency = Latency(scale=100.0, tail_share=0.0)  # type: ignore[union-attr]
        left, runs = [], []
        for _ in range(10):
            summary, seconds = _timed_poll(w)
            left.append(len(w.state(job_record.batch_prefix(prefix, batch))))
            runs.append(seconds)
            if summary.jobs_started:
                break
            assert w.hc.operations == {} and w.state("jobs/") == [path]  # waits, its hold cancelled
            assert JobRecord.from_json(w.store.json(STATE, path)).holds[batch].cancelled
            w.sim.advance(SCHEDULER_PERIOD)
        assert len(runs) >= 2 and left[0] > 0, (left, runs)
        assert all(seconds <= poll_operations.RUN_SECONDS + 80.0 for seconds in runs), runs
        assert left[-1] == 0
        [op] = w.hc.operations.values()
        assert [name for _, name, _ in op.objects] == [f"{prefix}{batch}0/committed.dcm"]
    finally:
        w.close()


def test_a_run_whose_polling_failed_frees_no_slot_and_the_next_run_does(world: World) -> None:
    """Without the tracked operations a dead slot holder cannot be told from a live one: the run
    leaves the slots (and finishing, and starts) to the next run."""
    world.store.write(STATE, world.queue().slot_path(3), {"job": "dead", "acquiredAt": world.sim.clock() - 3600.0})
    world.faults.fail(lambda: RuntimeError("listing failed"), method="list", name="operations/")
    failed = world.poll().value()
    assert world.faults.fired and failed.errors == ["poll operations: RuntimeError"]
    assert world.state("slots/") == ["slots/3"] and failed.slots_freed == 0
    assert world.poll().value().slots_freed == 1 and world.state("slots/") == []


def test_a_finished_import_takes_a_window_of_leftover_records_along_side_by_side(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader died deleting its window's 200 records after its job was queued; the job ran and
    finished, and the poller drops the records with it (decision 0753). Every call then takes 50
    times its usual time (a delete 2 s): one after the other the deletes took the run 400 s.
    (One upload per record: records of uploads that did not arrive together.)"""
    monkeypatch.setattr(window_records, "MAX_GROUP_UPLOADS", 1)
    w = World(cloud=lambda sim: CloudConditions(sim))
    try:
        names = _names("left", 200)
        w.faults.kill(method="delete", name="windows/", nth=1)  # the leader dies deleting its records
        w.upload_burst(names, to=[w.instance("a")], gap=0.001)
        w.sim.run_until_idle()
        assert len(w.state("windows/")) == len(names) and w.state("jobs/") and not w.hc.operations
        # Window recovery fails (a listing answered 503) until the job has started and finished.
        w.faults.fail(lambda: gexc.ServiceUnavailable("503"), method="list_prefixes", name="windows/", times=100)
        w.sim.advance(w.settings.claim_lease_seconds + 5)
        for _ in range(15):
            if w.hc.operations:
                break
            w.poll().value()
            w.sim.advance(SCHEDULER_PERIOD)
        assert w.hc.finish_all() == 1
        w.cloud.latency = Latency(scale=50.0, tail_share=0.0)  # type: ignore[union-attr]
        summary, seconds = _timed_poll(w)
        assert summary.finished == 1 and w.state("windows/") == []
        assert seconds <= poll_operations.RUN_SECONDS, seconds
    finally:
        w.close()


def _queue_held_by_a_grower_that_stops(w: World, path: str, job: Job, batch: str) -> None:
    """Queues `job` and holds it for `batch` for 30 s: a grower that then stops (its copies made)."""
    queued = job_record.apply(w.store, STATE, path, None, Event.QUEUE, Change(job=job.to_json()))
    assert queued is not None and queued.generation is not None
    held = job_record.apply(w.store, STATE, path, Record(queued.data, queued.generation), Event.HOLD,
                            Change(batch=batch, until=w.sim.clock() + 30.0))
    assert held is not None and held.generation is not None
