"""A process killed before each call it makes, one test per call: the rest of the system finishes the work.

Each scenario runs once unharmed to record its calls (`TRACE`); then, per call, a fresh run kills
the caller right before that call (a kill right after a call is the same as a kill before the
next one), and recovery runs: the platform redelivers what the dead process was serving (or, in
`poller` mode, nothing is redelivered), and the poller ticks until no work is left. Then the
invariants: nothing lost, nothing imported twice, one eventId per operation, the cap kept, no
state left, and a late duplicate of every event starts nothing.

One known exception, asserted as such: a kill after an LRO start and before its operation record
is written leaves a job in STARTING that the poller starts again after its lease; the data is then
read twice (functions/imports/job_queue.py says why that is preferred to losing it).
"""

from __future__ import annotations

from typing import Any

import pytest

from functions.core.events import PubsubMessage
from tests.functional.faults import Call
from tests.functional.scenarios import record_trace, started_untracked
from tests.functional.world import STATE, World

REDELIVERY_DELAY = 10.0  # Eventarc / Pub/Sub push retry backoff: seconds, not minutes


def _names(folder: str, count: int) -> list[str]:
    return [f"{folder}/IM{i:04d}.dcm" for i in range(count)]


def _ids(trace: list[Call]) -> list[str]:
    return [f"{c.index:02d}-{c.client}.{c.method}-{c.name.split('/')[0] or 'root'}" for c in trace]


# -- the import function --------------------------------------------------------------------------


def _import_scenario(w: World) -> None:
    """Four uploads into one window, alternately on two instances; one of them leads."""
    a, b = w.instance("a"), w.instance("b")
    w.upload_burst(_names("crash/s1", 4), to=[a, b])
    w.sim.run_until_idle()


IMPORT_TRACE = record_trace(World, _import_scenario)


def test_the_import_scenario_is_what_the_crash_points_assume() -> None:
    methods = [(c.method, c.name.split("/")[0]) for c in IMPORT_TRACE]
    # One record per instance: each lists its two uploads (decision 0770).
    assert methods.count(("create", "windows")) == 2 and methods.count(("create", "seen")) == 1
    # The window's seen file is written once its job is durable, and before its records go: a kill
    # between the two is a crash point of its own.
    seen_file = methods.index(("create", "seen"))
    assert methods.index(("create", "jobs")) < seen_file < methods.index(("delete", "windows"))
    assert methods.count(("create", "claims")) == 1 and methods.count(("import_dicom", "gs:")) == 1
    start = methods.index(("import_dicom", "gs:"))
    assert methods[start:start + 3] == [("import_dicom", "gs:"), ("create", "operations"), ("delete", "jobs")]


@pytest.mark.parametrize("recovery", ["redelivery", "poller"])
@pytest.mark.parametrize("step", range(1, len(IMPORT_TRACE) + 1), ids=_ids(IMPORT_TRACE))
def test_an_import_killed_before_any_call_loses_nothing(step: int, recovery: str) -> None:
    w = World()
    w.faults.arm()
    w.faults.kill_at(step)
    _import_scenario(w)
    assert w.faults.fired, f"no call #{step}: the scenario changed"
    executed = w.faults.trace[:step - 1]
    if recovery == "redelivery":
        w.sim.advance(REDELIVERY_DELAY)
        w.redeliver_lost(w.instance("retry"))
        expected = list(w.sops)
    else:
        # Without redelivery, only what reached the state bucket can be imported.
        recorded = w.ever_recorded()
        expected = [n for n in w.sops if n in recorded]
    w.settle()
    w.check_invariants(expected=expected, may_import_twice=started_untracked(executed, "import_dicom"))
    _late_duplicates_start_nothing(w, expected)


def _late_duplicates_start_nothing(w: World, names: list[str]) -> None:
    operations, imported = len(w.hc.operations), dict(w.hc.imported)
    late = w.instance("late")
    for delivery in {d.event.name: d for d in w.deliveries}.values():
        if delivery.event.name in names:
            w.deliver(delivery.event, late)
    w.settle()
    assert (len(w.hc.operations), dict(w.hc.imported)) == (operations, imported), "a late duplicate was imported"
    assert w.quiet()


# -- the poller -----------------------------------------------------------------------------------


def _poller_world() -> World:
    """One import finished, one queued behind it (cap 1), one window whose only instance died."""
    w = World(max_concurrent_operations=1)
    first, second = w.instance("first"), w.instance("second")
    w.upload_burst(_names("poll/w1", 2), to=[first])
    w.sim.run_until_idle()
    w.sim.advance(w.settings.debounce_seconds)
    w.upload_burst(_names("poll/w2", 2), to=[second])
    w.sim.run_until_idle()
    w.sim.advance(w.settings.debounce_seconds)
    w.faults.kill(method="list", name="windows/")  # the third window's instance dies before leading
    w.upload_burst(_names("poll/w3", 2), to=[w.instance("third")])
    w.sim.run_until_idle()
    w.sim.advance(w.settings.claim_lease_seconds + 1)
    [running] = w.hc.running
    w.hc.finish(running.name)
    assert len(w.state("jobs/")) == 1 and len(w.waiting()) == 2  # two uploads waiting, no leader
    return w


def _poller_scenario(w: World) -> None:
    w.poll()


POLLER_TRACE = record_trace(_poller_world, _poller_scenario)


def test_the_poller_scenario_is_what_the_crash_points_assume() -> None:
    methods = {c.method for c in POLLER_TRACE}
    assert {"get_operation", "publish", "import_dicom", "replace"} <= methods  # finish, start, recover
    assert sum(c.method == "create" and c.name.startswith("claims/") for c in POLLER_TRACE) == 1


@pytest.mark.parametrize("step", range(1, len(POLLER_TRACE) + 1), ids=_ids(POLLER_TRACE))
def test_a_poller_killed_before_any_call_loses_nothing_and_keeps_event_ids(step: int) -> None:
    w = _poller_world()
    w.faults.arm()
    w.faults.kill_at(step)
    task = w.poll()
    assert task.killed, f"no call #{step}: the scenario changed"
    executed = w.faults.trace[:step - 1]
    w.settle()
    w.check_invariants(may_import_twice=started_untracked(executed, "import_dicom"))
    published = [e.event_id for e in w.completions()]
    assert len(set(published)) == 3  # one per import; a republished event keeps its id


# -- the export function --------------------------------------------------------------------------


def _stored_world() -> World:
    w = World()
    w.upload_burst(_names("stored", 2), to=[w.instance()])
    w.settle()
    w.publisher.events.clear()
    return w


def _message(w: World) -> PubsubMessage:
    import json

    study = w.hc.instances[next(iter(w.hc.instances))].study
    body = {"requestId": "r-1", "destination": "gs://exports/out", "resources": [f"/studies/{study}"]}
    return PubsubMessage(event_id="m-1", message_id="m-1", data=json.dumps(body).encode(), attributes={},
                         publish_time=_utc(w.sim.clock()))


def _utc(epoch: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


def _export_scenario(w: World) -> Any:
    return w.sim.call(lambda: w.exporter().handle(_message(w)), name="export")


EXPORT_TRACE = record_trace(_stored_world, _export_scenario)


def test_the_export_scenario_is_what_the_crash_points_assume() -> None:
    methods = [c.method for c in EXPORT_TRACE]
    assert methods.count("export_dicom") == 1 and methods[-1] == "write"  # the claim names its job


@pytest.mark.parametrize("step", range(1, len(EXPORT_TRACE) + 1), ids=_ids(EXPORT_TRACE))
def test_an_export_killed_before_any_call_is_started_once_on_redelivery(step: int) -> None:
    w = _stored_world()
    w.faults.arm()
    w.faults.kill_at(step)
    assert _export_scenario(w).killed, f"no call #{step}: the scenario changed"
    executed = w.faults.trace[:step - 1]
    w.sim.advance(REDELIVERY_DELAY)
    redelivered = _export_scenario(w).value()
    assert redelivered.action in ("started", "queued", "duplicate"), redelivered
    w.settle()
    exports = [op for op in w.hc.operations.values() if op.kind == "export"]
    twice = started_untracked(executed, "export_dicom")
    assert 1 <= len(exports) <= (2 if twice else 1), [op.name for op in exports]
    ids = {e.event_id for e in w.completions()}
    assert len(ids) == 1 and all(e.data["state"] == "SUCCEEDED" for e in w.completions()), w.completions()
    assert w.quiet(), w.work_left()
    # And once more, long after: the claim names the job, nothing starts.
    assert _export_scenario(w).value().action == "duplicate"
    w.settle()
    assert len([op for op in w.hc.operations.values() if op.kind == "export"]) == len(exports)
    assert w.store.names(STATE, "exports/"), "the dedup claim is kept"
