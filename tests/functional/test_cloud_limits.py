"""The import path under Cloud Storage's request limits and slow calls (tests/functional/cloud_limits.py).

First the limits of the fake themselves (a second write to one name within a second is answered
429 and retried as google-cloud-storage does; the bucket's write rate; listings in pages), then
the protocol under them: staged copies of a successful import all deleted, bounded per poller run,
and uploads across windows and instances imported once each with every call slow.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.api_core.exceptions import TooManyRequests

from functions.imports import poll_operations
from functions.imports.job_queue import Job
from tests import dicom_factory
from tests.functional.cloud_limits import INITIAL_BUCKET_WRITES, CloudConditions, Latency, Limits
from tests.functional.sim import Process, Simulation
from tests.functional.world import STATE, World


def _limited(scale: float | None = None, tail: float = 0.0) -> World:
    latency = Latency(scale=scale, tail_share=tail) if scale is not None else None
    return World(cloud=lambda sim: CloudConditions(sim, latency=latency, limits=Limits()))


@pytest.fixture
def limited() -> Iterator[World]:
    w = _limited()
    yield w
    w.close()


# -- the limits of the fake ----------------------------------------------------------------------


def test_a_second_write_to_one_name_within_a_second_waits_for_the_retry(limited: World) -> None:
    w = limited
    times: list[float] = []

    def twice() -> None:
        w.store.write(STATE, "x/one.json", {"n": 1})
        times.append(w.sim.clock())
        w.store.write(STATE, "x/one.json", {"n": 2})
        times.append(w.sim.clock())

    w.sim.call(twice, name="writer", process=Process("p"))
    w.sim.run_until_idle()
    assert w.cloud is not None
    assert w.cloud.observed.throttled_names["x/one.json"] == 1
    assert times[1] - times[0] >= 1.0  # the client's first backoff
    assert w.store.json(STATE, "x/one.json") == {"n": 2}
    assert w.cloud.observed.most_writes_one_name == 1


def test_writes_to_one_name_that_never_stop_coming_fail_after_the_retry_deadline() -> None:
    sim = Simulation(0.0)
    conditions = CloudConditions(sim, limits=Limits())
    errors: list[BaseException] = []

    def hammer() -> None:  # another writer renews the name every half second meanwhile
        for _ in range(400):
            conditions.wrote("b", "hot")
            sim.sleep(0.5)

    def writer() -> None:
        sim.sleep(0.1)
        try:
            conditions.before("store", "replace", "b", "hot")
        except Exception as exc:
            errors.append(exc)

    sim.spawn(hammer, name="hammer")
    sim.spawn(writer, name="writer")
    sim.run_until_idle()
    assert [type(e).__name__ for e in errors] == ["TooManyRequests"]
    assert conditions.observed.gave_up == 1


def test_the_bucket_takes_a_thousand_writes_a_second_at_first_and_doubles_every_twenty_minutes() -> None:
    sim = Simulation(0.0)
    conditions = CloudConditions(sim, limits=Limits())
    assert conditions.capacity("b", 0.0) == INITIAL_BUCKET_WRITES
    conditions.wrote("b", "first")
    assert conditions.capacity("b", 1199.0) == INITIAL_BUCKET_WRITES
    assert conditions.capacity("b", 1200.0) == 2 * INITIAL_BUCKET_WRITES
    for index in range(int(INITIAL_BUCKET_WRITES) - 1):
        conditions.wrote("b", f"n{index}")
    assert conditions._refusal("b", "another") == "429 rate of writes to the bucket"
    assert conditions._refusal("other-bucket", "another") is None


def test_a_listing_is_one_call_per_page_of_a_thousand(limited: World) -> None:
    w = limited
    for index in range(2500):
        w.store.put(STATE, f"many/{index:05d}", b"x")
    assert w.cloud is not None
    listed = w.sim.call(lambda: len(list(w.store.list(STATE, "many/"))), name="lister").value()
    assert listed == 2500
    assert w.cloud.observed.calls["store.list"] == 3 and w.cloud.observed.largest_listing == 2500


# -- the protocol under them ---------------------------------------------------------------------


def _staged_import(w: World, copies: int) -> Job:
    """A queued import of `copies` staged copies, started and finished."""
    data = dicom_factory.instance()
    prefix = w.settings.state_path("staging", "1-big") + "/"
    for index in range(copies):
        w.store.put(STATE, f"{prefix}{index:06d}.dcm", data)
    job = Job(job_id="1-big", kind="import", request_id="1", created_at=w.sim.clock(),
              import_uri=f"gs://{STATE}/{prefix}**", staging_prefix=prefix)
    w.sim.call(lambda: w.queue().submit(job), name="submit")
    w.hc.finish_all()
    return job


def test_every_staged_copy_of_a_successful_import_is_deleted(world: World) -> None:
    _staged_import(world, 2500)
    world.settle()
    assert world.hc.operations and all(op.success == 2500 for op in world.hc.operations.values())
    assert world.state("staging/") == [] and world.state("cleanup/") == []


def test_a_poller_run_deletes_a_bounded_number_of_copies_and_the_next_run_goes_on(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poll_operations, "RUN_OBJECTS", 1000)
    _staged_import(world, 2500)
    deleted = []
    for _ in range(3):
        task = world.poll()
        world.sim.run_until_idle()
        deleted.append(task.value().staged_deleted)
        world.sim.advance(60.0)
    assert deleted == [1000, 1000, 500]
    assert world.state("staging/") == [] and world.state("cleanup/") == []


def test_a_cleanup_record_never_deletes_outside_the_staging_prefix(world: World) -> None:
    world.store.put(STATE, "receipts/keep.json", b"{}")
    world.store.write(STATE, "cleanup/forged.json", {"prefix": "receipts/"})
    world.poll()
    world.sim.run_until_idle()
    assert world.state("receipts/") == ["receipts/keep.json"] and world.state("cleanup/") == []


@pytest.mark.parametrize("scale", [1.0, 5.0], ids=["x1", "x5"])
def test_uploads_across_windows_and_instances_are_imported_once_under_the_limits_and_slow_calls(
        scale: float) -> None:
    w = _limited(scale, tail=0.02)
    try:
        instances = [w.instance(f"i{n}") for n in range(3)]
        names = [f"mig/{n // 40:02d}/IM{n:04d}.dcm" for n in range(240)]
        deliveries = w.upload_burst(names, to=instances, gap=0.05)
        for delivery in deliveries[::10]:  # Eventarc delivers some events twice
            w.deliver(delivery.event, instances[0])
        w.settle()
        w.check_invariants()
        assert w.cloud is not None and w.cloud.observed.gave_up == 0
        assert w.state("staging/") == []
    finally:
        w.close()


def test_deleting_staged_copies_stops_at_the_first_429_and_the_next_run_goes_on(world: World) -> None:
    """A state bucket at its write rate (the uploads' records need it) answers a delete 429: the run
    stops deleting, without an error, and the next run deletes the rest (decision 0750)."""
    _staged_import(world, 2500)
    world.faults.fail(TooManyRequests("429 rate of writes to the bucket"), method="delete", name="staging/",
                      nth=1200)
    first = world.poll()
    world.sim.run_until_idle()
    assert first.value().errors == [] and 0 < first.value().staged_deleted < 2500
    assert world.state("cleanup/")
    world.sim.advance(60.0)
    second = world.poll()
    world.sim.run_until_idle()
    assert first.value().staged_deleted + second.value().staged_deleted == 2500
    assert world.state("staging/") == [] and world.state("cleanup/") == []
