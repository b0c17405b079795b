"""A queued import waits for the running one (DICOM_IMPORT_COALESCE_SECONDS, docs/decisions/0700).

While an import of the pipeline runs, a new import job does not take one of the free slots: it
stays queued and later windows grow it, so a long upload makes about one LRO per LRO duration
instead of one per free slot. It starts as soon as the running import is done (by the poller, or
by the next window's leader), or once it is `import_coalesce_seconds` old, whichever comes first.
Only a staging import waits (a glob cannot grow); exports and redrives never wait, and a running
export holds no import back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from google.api_core.exceptions import TooManyRequests

from functions.core.errors import TransientApiError
from functions.gcp.clients import Record
from functions.imports import job_record
from functions.imports.job_queue import Job
from functions.imports.job_record import Change, Event
from tests import dicom_factory
from tests.functional.scenarios import (
    crash_point_ids,
    killed_then_redelivered,
    led,
    record_trace,
    staging_window,
    started_untracked,
)
from tests.functional.world import STATE, UPLOADS, World

COALESCE = 120.0


def _running_world(**overrides: Any) -> tuple[World, Any, Any]:
    """Five slots, window 0's import running, one instance to upload with."""
    w = World(import_coalesce_seconds=COALESCE, **overrides)
    a = w.instance("a")
    first = led(staging_window(w, 0, [a]))
    assert len(first.started) == 1
    [running] = w.hc.running
    return w, a, running


def test_windows_behind_a_running_import_make_one_more_import_although_slots_are_free() -> None:
    w, a, running = _running_world()
    results = [led(staging_window(w, k, [a, w.instance()])) for k in range(1, 8)]
    assert results[0].started == () and len(results[0].jobs) == 1
    assert all(r.grown == results[0].jobs[0] and r.started == () for r in results[1:]), results
    assert len(w.hc.running) == 1 and len(w.state("slots/")) == 1  # four slots free, none taken
    w.hc.finish(running.name)
    w.poll()
    [second] = w.hc.running
    assert len(second.objects) == 14  # the seven windows, one LRO
    w.settle()
    w.check_invariants()
    assert len(w.hc.operations) == 2


def test_without_coalescing_every_window_takes_a_free_slot() -> None:
    """The same uploads with DICOM_IMPORT_COALESCE_SECONDS=0: the test above can fail."""
    w = World(import_coalesce_seconds=0)
    a = w.instance("a")
    results = [led(staging_window(w, k, [a])) for k in range(5)]
    assert all(len(r.started) == 1 for r in results)
    assert len(w.hc.running) == 5


def test_the_next_window_starts_the_grown_import_once_the_running_one_is_done() -> None:
    """No poller run in between: the leader that grew the job starts it (its slot is free)."""
    w, a, running = _running_world()
    waiting = led(staging_window(w, 1, [a]))
    assert waiting.started == ()
    w.hc.finish(running.name)  # done, but its slot stays held until the poller reports it
    grower = led(staging_window(w, 2, [a]))
    assert grower.grown == waiting.jobs[0] and len(grower.started) == 1
    [second] = w.hc.running
    assert len(second.objects) == 4
    w.settle()
    w.check_invariants()


def test_a_finished_import_whose_slot_is_still_held_holds_nothing_back() -> None:
    w, a, running = _running_world()
    w.hc.finish(running.name)
    assert len(w.state("slots/")) == 1
    second = led(staging_window(w, 1, [a]))
    assert len(second.started) == 1
    w.settle()
    w.check_invariants()


def test_a_waiting_import_starts_beside_the_running_one_once_it_is_old_enough() -> None:
    w, a, running = _running_world()
    waiting = led(staging_window(w, 1, [a]))
    w.poll()
    w.sim.run_until_idle()
    assert len(w.hc.running) == 1 and w.state("jobs/")
    w.sim.advance(COALESCE)
    w.poll()
    w.sim.run_until_idle()
    assert len(w.hc.running) == 2 and not w.state("jobs/")
    assert waiting.jobs[0] in {op.job_id for op in _tracked(w)}
    w.settle()
    w.check_invariants()


def test_a_running_export_holds_no_import_back() -> None:
    w = World(import_coalesce_seconds=COALESCE)
    queue = w.queue()
    export = Job(job_id="0-export", kind="export", request_id="r", created_at=w.sim.clock(),
                 destination="gs://exports/x")
    assert queue.submit(export).started
    first = led(staging_window(w, 0, [w.instance()]))
    assert len(first.started) == 1 and len(w.hc.running) == 2


def test_only_a_staging_import_that_can_grow_waits() -> None:
    """A glob cannot grow and a redrive is a user's request: neither waits for the running import."""
    w, _, _ = _running_world()
    staging = Job(job_id="1-staging", kind="import", request_id="r", created_at=w.sim.clock(),
                  import_uri="gs://state/staging/1-staging/**", staging_prefix="staging/1-staging/")
    queue = w.queue()
    assert queue.waits_for_running_import(staging)
    assert not queue.waits_for_running_import(replace(staging, redrive_of="x"))
    assert not queue.waits_for_running_import(replace(staging, import_uri="gs://uploads/mig/**", staging_prefix=""))


def test_a_start_in_flight_counts_as_running() -> None:
    """A slot without a tracked operation (its starter is calling the API, or died mid-call)."""
    w = World(import_coalesce_seconds=COALESCE)
    w.faults.stall(20.0, method="import_dicom")
    deliveries = w.upload_burst(["in/a.dcm", "in/b.dcm"], to=[w.instance("a")])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)  # inside the stalled call
    assert w.faults.fired and not w.hc.operations and len(w.state("slots/")) == 1
    later = Job(job_id="9-later", kind="import", request_id="r", created_at=w.sim.clock(),
                import_uri="gs://state/staging/9-later/**", staging_prefix="staging/9-later/")
    assert w.queue().waits_for_running_import(later)
    w.sim.run_until_idle()
    assert len(led(deliveries).started) == 1


def _later(w: World) -> Job:
    return Job(job_id="9-later", kind="import", request_id="r", created_at=w.sim.clock(),
               import_uri="gs://state/staging/9-later/**", staging_prefix="staging/9-later/")


def _killed_starter(w: World, when: str) -> None:
    """Window 0's leader dies at its import call (before: no LRO; after: an untracked LRO)."""
    w.faults.kill(method="import_dicom", when=when)
    w.upload_burst(["in/a.dcm", "in/b.dcm"], to=[w.instance("a")])
    w.sim.run_until_idle()
    assert w.faults.fired and len(w.state("slots/")) == 1 and w.state("jobs/")
    assert not w.state("operations/")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_start_whose_starter_died_holds_no_import_back_once_its_lease_is_over(when: str) -> None:
    """Its outcome is unknown until the poller resolves it (up to 10 minutes, decision 0300);
    waiting for it made every window of the chaos run wait out its coalescing age."""
    w = World(import_coalesce_seconds=COALESCE)
    _killed_starter(w, when)
    queue = w.queue()
    assert queue.waits_for_running_import(_later(w))  # within its lease it may still be calling
    w.sim.advance(w.settings.claim_lease_seconds + 1)
    assert not queue.waits_for_running_import(_later(w))  # STARTING past its lease
    w.poll()
    w.sim.run_until_idle()
    if when == "before":  # UNCONFIRMED now, still holding its slot
        assert len(w.state("slots/")) == 1 and not w.state("operations/")
        assert not queue.waits_for_running_import(_later(w))
    else:  # the poller found its LRO and tracks it: a running import again
        assert len(w.state("operations/")) == 1
        assert queue.waits_for_running_import(_later(w))


def test_a_window_behind_a_killed_starter_starts_in_a_free_slot_and_loses_nothing() -> None:
    w = World(import_coalesce_seconds=COALESCE)
    _killed_starter(w, "before")
    w.sim.advance(w.settings.claim_lease_seconds + 1)
    second = led(staging_window(w, 1, [w.instance()]))
    assert len(second.started) == 1 and len(w.state("slots/")) == 2
    w.settle()
    w.check_invariants()


def test_an_import_whose_state_cannot_be_read_counts_as_running() -> None:
    w, _, _ = _running_world()
    w.faults.fail(TransientApiError(503, "unavailable"), method="get_operation")
    later = Job(job_id="9-later", kind="import", request_id="r", created_at=w.sim.clock(),
                import_uri="gs://state/staging/9-later/**", staging_prefix="staging/9-later/")
    assert w.queue().waits_for_running_import(later)
    assert w.faults.fired


def test_an_export_queued_behind_a_waiting_import_still_starts() -> None:
    w, a, _ = _running_world()
    led(staging_window(w, 1, [a]))  # an import job waits
    queue = w.queue()
    export = Job(job_id="zz-export", kind="export", request_id="r", created_at=w.sim.clock(),
                 destination="gs://exports/x")  # sorts after the import: the poller tries it second
    assert w.store.create(w.settings.state_bucket, queue.job_path(export.job_id),
                          {"job": export.to_json(), "state": "PENDING"})
    task = w.poll()
    w.sim.run_until_idle()
    assert task.result.jobs_started == 1 and task.result.jobs_queued == 1
    assert sorted(op.kind for op in w.hc.running) == ["export", "import"]


def _tracked(w: World) -> list[Job]:
    return [t.job for t in w.queue().tracked()]


# -- a leader killed before each call of a window that grows the waiting job and starts it ------


def _done_world() -> World:
    """Window 1's job waits behind window 0's import, which is now done (its slot still held)."""
    w, a, running = _running_world()
    led(staging_window(w, 1, [a]))
    w.hc.finish(running.name)
    return w


def _grow_and_start(w: World) -> None:
    staging_window(w, 2, [w.instance("grower")])
    w.sim.advance(w.settings.settle_seconds + 1)
    w.sim.run_until_idle()


GROW_AND_START = record_trace(_done_world, _grow_and_start)


def test_the_grow_and_start_scenario_is_what_the_crash_points_assume() -> None:
    methods = [(c.method, c.name.split("/")[0]) for c in GROW_AND_START]
    assert methods.count(("replace", "jobs")) == 3  # hold, commit, STARTING
    assert ("get_operation", "projects") in methods and ("import_dicom", "gs:") in methods


@pytest.mark.parametrize("step", range(1, len(GROW_AND_START) + 1),
                         ids=crash_point_ids(GROW_AND_START))
def test_a_leader_killed_before_any_call_of_grow_and_start_loses_nothing(step: int) -> None:
    w, executed = killed_then_redelivered(_done_world, _grow_and_start, step)
    # A kill between an LRO start and its record: the job is started again (functions/imports/job_queue.py).
    w.check_invariants(may_import_twice=started_untracked(executed))


def test_a_closing_job_keeps_its_slot_and_a_later_window_waits_for_it() -> None:
    """Closed (decision 0700) because it could start while a window held it, the job keeps the
    slot (decision 0780): a later window sees an import starting, so its job waits and grows
    instead of starting beside it; the last grower starts the closed job with its slot."""
    w, a, running = _running_world()
    [job] = led(staging_window(w, 1, [a])).jobs  # waits behind the running import
    w.faults.stall(20.0, method="write", name=".grown-")
    w.store.put(UPLOADS, "mig/w02/m.dcm", dicom_factory.instance())
    slow = w.upload_burst(["mig/w02/a.dcm", "mig/w02/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)  # holds it, stalled
    w.hc.finish(running.name)
    w.poll()
    w.sim.run_until(w.sim.clock())
    [record] = w.queue().pending_records()
    assert record.data.get("closing") and record.data.get("slot") is not None
    assert list(w.state("slots/")) == [f"slots/{record.data['slot']}"]
    other = led(staging_window(w, 3, [w.instance()]))  # J is closing: a job of its own, waiting
    assert other.grown is None and len(other.jobs) == 1 and not other.started
    assert led(slow).grown == job and len(led(slow).started) == 1  # committed; J starts with its slot
    assert led(staging_window(w, 4, [a])).grown == other.jobs[0]  # the waiting job grows
    assert w.hc.max_running == 1
    w.settle()
    w.check_invariants()


def test_a_closed_job_that_another_import_overtook_gives_its_slot_back_and_grows_again() -> None:
    """A closed job that has to wait after all (another import started meanwhile, here one of
    another storage class's window) reopens: it frees its slot and later windows grow it."""
    w, a, running = _running_world()
    [job] = led(staging_window(w, 1, [a])).jobs
    w.faults.stall(20.0, method="write", name=".grown-")
    w.store.put(UPLOADS, "mig/w02/m.dcm", dicom_factory.instance())
    slow = w.upload_burst(["mig/w02/a.dcm", "mig/w02/z.dcm"], to=[a])
    w.sim.advance(w.settings.debounce_seconds + w.settings.settle_seconds + 1)
    w.hc.finish(running.name)
    w.poll()
    w.sim.run_until(w.sim.clock())
    [record] = w.queue().pending_records()
    assert record.data.get("closing")
    closed_slot = f"slots/{record.data['slot']}"
    glob = Job(job_id="5-glob", kind="import", request_id="r", created_at=w.sim.clock(),
               import_uri=f"gs://{UPLOADS}/mig/w01/*.dcm")  # a glob never waits: it overtakes J
    assert w.queue().submit(glob).started
    w.sim.run_until_idle()
    assert led(slow).grown == job and not led(slow).started  # committed; J waits for that import
    [record] = [r for r in w.queue().pending_records() if r.data["job"]["job_id"] == job]
    assert not record.data.get("closing") and record.data.get("slot") is None
    assert closed_slot not in w.state("slots/") and len(w.state("slots/")) == 1  # the glob's
    assert led(staging_window(w, 4, [a])).grown == job


def test_a_window_grows_the_oldest_of_two_waiting_jobs() -> None:
    """Two leaders that planned at once each queued a job behind the running import. Later windows
    grow the older one, which starts first (decision 0781): grown, the younger would be started
    first and leave the older one behind, small, to start beside another import."""
    w, a, running = _running_world()
    [older] = led(staging_window(w, 1, [a])).jobs
    younger = Job(job_id=f"{older[:-2]}99", kind="import", request_id="r", created_at=w.sim.clock(),
                  import_uri=f"gs://{w.settings.staging}/staging/{older[:-2]}99/**",
                  staging_prefix=f"staging/{older[:-2]}99/")
    assert w.queue().reserve(younger).slot is None  # waits too
    assert led(staging_window(w, 2, [a])).grown == older
    w.hc.finish(running.name)
    assert len(led(staging_window(w, 3, [a])).started) == 1  # grows the older one and starts it
    [second] = w.hc.running
    assert f"/{older}/" in second.uri and len(second.objects) == 6
    assert led(staging_window(w, 4, [a])).grown == younger.job_id  # the next one to grow


def test_a_waiting_job_of_the_files_one_import_at_500_per_second_reads_still_grows() -> None:
    """At 500 files/s the files that arrive while one import runs settle at about 60,000 (decision
    0782): a waiting job of 60,000 still takes the next window rather than a third job queueing."""
    w, a, running = _running_world()
    waiting = Job(job_id="20251231T000000000Z-00000001-00", kind="import", request_id="r",
                  created_at=w.sim.clock(), import_uri=f"gs://{w.settings.staging}/staging/x/**",
                  staging_prefix="staging/x/", object_count=60_000)
    assert w.queue().reserve(waiting).slot is None
    assert led(staging_window(w, 1, [a])).grown == waiting.job_id


def test_a_window_refused_by_the_oldest_waiting_job_grows_the_next_one() -> None:
    """The oldest waiting job refuses the hold (here its swaps are all throttled; a starter may
    have closed it, or it filled up): the window grows the job queued after it (decision 0783)
    rather than queueing a third one."""
    w, a, _ = _running_world()
    [older] = led(staging_window(w, 1, [a])).jobs
    younger = Job(job_id=f"{older[:-2]}99", kind="import", request_id="r", created_at=w.sim.clock(),
                  import_uri=f"gs://{w.settings.staging}/staging/{older[:-2]}99/**",
                  staging_prefix=f"staging/{older[:-2]}99/")
    assert w.queue().reserve(younger).slot is None
    w.faults.fail(lambda: TooManyRequests("rate of writes to one object"), method="replace",
                  name=f"jobs/{older}", times=10)
    result = led(staging_window(w, 2, [a]))
    assert result.grown == younger.job_id and not result.jobs
    assert len(w.queue().pending_job_ids()) == 2


def test_a_window_grows_a_waiting_job_while_a_starter_undoes_another_growth_of_it() -> None:
    """A starter found a grower's hold run out and cancelled it; deleting a window's copies takes
    it a while. Meanwhile the job still grows (decision 0783): a window of its own would wait beside
    it and start once it reaches its coalescing age."""
    w, a, _ = _running_world()
    [job] = led(staging_window(w, 1, [a])).jobs
    path = w.queue().job_path(job)
    held = job_record.apply(w.store, STATE, path, w.store.read(STATE, path), Event.HOLD,
                            Change(batch="dead", until=w.sim.clock() - 1.0))
    assert held is not None and held.generation is not None
    cancelled = job_record.apply(w.store, STATE, path, Record(held.data, held.generation), Event.CANCEL_HOLD,
                                 Change(batch="dead"))
    assert cancelled is not None
    result = led(staging_window(w, 2, [a]))
    assert result.grown == job and not result.jobs
    assert w.queue().try_start(job).coalescing  # the starter finishes its undo; the job waits
    assert "dead" not in w.store.json(STATE, path).get("holds", {})
