"""The job record (functions/imports/job_record.py): its JSON, its transition table, and the one write."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import TooManyRequests

from functions.gcp.clients import Record
from functions.imports import job_record
from functions.imports.job_record import TRANSITIONS, Change, Event, Hold, JobRecord, State

DOCS = Path(__file__).resolve().parents[2] / "docs" / "state.md"
JOB = {"job_id": "J", "kind": "import", "request_id": "B", "created_at": 1.0, "import_uri": "gs://s/staging/J/**",
       "manifest": "manifests/J.json", "object_count": 3, "staging_prefix": "staging/J/"}

# Records as the handlers have written them, one of each shape.
WRITTEN = [
    {"job": JOB, "state": "PENDING"},
    {"job": JOB, "state": "STARTING", "slot": 2, "claimedAt": 10.0, "leaseUntil": 70.0},
    {"job": JOB, "state": "STARTING", "slot": 0, "claimedAt": 10.0, "leaseUntil": 70.0, "attempted": 5.0},
    {"job": JOB, "state": "UNCONFIRMED", "slot": 1, "attemptedAt": 10.0},
    {"job": JOB, "state": "PENDING", "attempted": 10.0},
    {"job": {**JOB, "grown": ["B1"], "object_count": 7}, "state": "PENDING",
     "holds": {"B2": {"until": 20.0}, "B3": {"until": 30.0, "cancelled": True}}, "closing": True},
]


def _table_in_docs() -> str:
    text = DOCS.read_text()
    found = re.search(r"<!-- job-record-transitions:begin[^>]*-->\n(.*?)\n<!-- job-record-transitions:end -->",
                      text, re.S)
    assert found, "docs/state.md has no job-record transition table"
    return found.group(1)


def test_docs_state_shows_the_transition_table_as_it_is() -> None:
    assert _table_in_docs() == job_record.markdown_table()


def test_every_state_and_modifier_is_documented() -> None:
    text = DOCS.read_text()
    for word in ("`holds`", "`closing`", "`attempted`", "`job.grown`", "`refusals/"):
        assert word in text
    for state in State:
        assert f"| {state.value} |" in _table_in_docs()


@pytest.mark.parametrize("data", WRITTEN, ids=lambda d: f"{d['state']}-{sorted(d)}")
def test_records_read_back_as_written(data: dict[str, Any]) -> None:
    assert JobRecord.from_json(data).to_json() == data


def test_a_single_hold_is_read_as_one_of_holds_and_written_as_holds() -> None:
    record = JobRecord.from_json({"job": JOB, "state": "PENDING", "hold": {"batch": "B0", "until": 9.0}})
    assert record.holds == {"B0": Hold("B0", 9.0)}
    assert record.to_json() == {"job": JOB, "state": "PENDING", "holds": {"B0": {"until": 9.0}}}


def _after(data: dict[str, Any] | None, event: Event, change: Change = job_record.NO_CHANGE) -> dict[str, Any] | None:
    allowed, after = job_record.transition(JobRecord.from_json(data) if data else None, event, change)
    assert allowed
    return after.to_json() if after else None


def test_transitions_write_the_json_the_handlers_read() -> None:
    pending = {"job": JOB, "state": "PENDING", "attempted": 5.0}
    assert _after(None, Event.QUEUE, Change(job=JOB)) == {"job": JOB, "state": "PENDING"}
    assert _after(None, Event.QUEUE_STARTING, Change(job=JOB, slot=1, now=10.0, lease_seconds=60.0)) == {
        "job": JOB, "state": "STARTING", "slot": 1, "claimedAt": 10.0, "leaseUntil": 70.0}
    starting = _after(pending, Event.START, Change(slot=0, now=10.0, lease_seconds=60.0))
    assert starting == WRITTEN[2]  # `attempted` goes along
    assert _after(starting, Event.START_FAILED) == {"job": JOB, "state": "PENDING"}
    assert _after(starting, Event.OUTCOME_UNKNOWN, Change(now=11.0)) == {
        "job": JOB, "state": "UNCONFIRMED", "slot": 0, "attemptedAt": 11.0}
    unconfirmed = _after(starting, Event.LEASE_RAN_OUT, Change(now=70.0, lease_seconds=60.0))
    assert unconfirmed == {"job": JOB, "state": "UNCONFIRMED", "slot": 0, "attemptedAt": 10.0}
    assert _after(unconfirmed, Event.REQUEUE_UNCONFIRMED) == {"job": JOB, "state": "PENDING", "attempted": 10.0}
    for state in (starting, unconfirmed, pending):
        assert _after(state, Event.TRACK) is None


def test_growth_goes_hold_commit_and_a_dead_grower_is_cancelled_then_released() -> None:
    held = _after({"job": JOB, "state": "PENDING"}, Event.HOLD, Change(batch="B1", until=20.0))
    assert held == {"job": JOB, "state": "PENDING", "holds": {"B1": {"until": 20.0}}}
    assert _after(held, Event.COMMIT_GROWTH, Change(batch="B1", added=4)) == {
        "job": {**JOB, "grown": ["B1"], "object_count": 7}, "state": "PENDING"}
    cancelled = _after(held, Event.CANCEL_HOLD, Change(batch="B1"))
    assert cancelled == {"job": JOB, "state": "PENDING", "holds": {"B1": {"until": 20.0, "cancelled": True}}}
    assert _after(cancelled, Event.RELEASE_HOLD, Change(batch="B1")) == {"job": JOB, "state": "PENDING"}
    closing = _after(held, Event.CLOSE, Change(now=10.0))
    assert closing == dict(held, closing=True)
    assert _after(closing, Event.REOPEN) == held


@pytest.mark.parametrize(("data", "event", "change"), [
    ({"job": JOB, "state": "STARTING", "slot": 0, "leaseUntil": 70.0}, Event.HOLD, Change(batch="B")),
    ({"job": JOB, "state": "PENDING", "attempted": 5.0}, Event.HOLD, Change(batch="B")),  # its LRO may turn up
    ({"job": JOB, "state": "PENDING", "closing": True}, Event.HOLD, Change(batch="B")),
    ({"job": JOB, "state": "PENDING", "holds": {"B": {"until": 20.0, "cancelled": True}}}, Event.COMMIT_GROWTH,
     Change(batch="B")),  # a starter cancelled it: the copies may not be read
    ({"job": JOB, "state": "PENDING"}, Event.RENEW_HOLD, Change(batch="B")),  # no hold of ours
    ({"job": JOB, "state": "PENDING", "holds": {"B": {"until": 20.0}}}, Event.START, Change(now=10.0)),
    ({"job": JOB, "state": "PENDING"}, Event.CLOSE, Change(now=10.0)),  # no live holds: nothing to wait for
    ({"job": JOB, "state": "PENDING"}, Event.REOPEN, Change()),
    ({"job": JOB, "state": "STARTING", "slot": 0, "leaseUntil": 70.0}, Event.LEASE_RAN_OUT, Change(now=69.0)),
    ({"job": JOB, "state": "STARTING", "slot": 0, "leaseUntil": 70.0}, Event.ADOPT, Change()),
    ({"job": JOB, "state": "PENDING"}, Event.QUEUE, Change(job=JOB)),  # a job id is created once
])
def test_the_table_refuses(data: dict[str, Any], event: Event, change: Change) -> None:
    assert job_record.transition(JobRecord.from_json(data), event, change) == (False, None)


def test_every_event_has_a_row_and_every_row_lands_in_its_state() -> None:
    assert {event for _, event in TRANSITIONS} == set(Event)
    for (state, event), row in TRANSITIONS.items():
        assert row.to is None or row.to in State, (state, event)


class _Store:
    """Generations and preconditions as Cloud Storage has them; nothing else."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[dict[str, Any], int]] = {}
        self.generation = 0
        self.throttle = 0
        self.on_read: Any = None

    def _next(self) -> int:
        self.generation += 1
        return self.generation

    def read(self, bucket: str, name: str) -> Record | None:
        if self.on_read:
            self.on_read()
        found = self.objects.get(name)
        return Record(found[0], found[1]) if found else None

    def create(self, bucket: str, name: str, data: dict[str, Any]) -> int | None:
        if name in self.objects:
            return None
        self.objects[name] = (data, self._next())
        return self.generation

    def replace(self, bucket: str, name: str, data: dict[str, Any], generation: int) -> int | None:
        if self.throttle:
            self.throttle -= 1
            raise TooManyRequests("slow down")
        if name not in self.objects or self.objects[name][1] != generation:
            return None
        self.objects[name] = (data, self._next())
        return self.generation

    def delete(self, bucket: str, name: str, generation: int | None = None) -> bool:
        if name not in self.objects or (generation is not None and self.objects[name][1] != generation):
            return False
        del self.objects[name]
        return True


def _apply(store: _Store, current: Record | None, event: Event, change: Change = job_record.NO_CHANGE,
           **kwargs: Any) -> job_record.Applied | None:
    return job_record.apply(store, "b", "jobs/J.json", current, event, change, **kwargs)  # type: ignore[arg-type]


def test_apply_creates_once_and_swaps_only_the_generation_it_read() -> None:
    store = _Store()
    created = _apply(store, None, Event.QUEUE, Change(job=JOB))
    assert created is not None and created.generation == 1
    assert _apply(store, None, Event.QUEUE, Change(job=JOB)) is None  # exists already
    stale = store.read("b", "jobs/J.json")
    assert stale is not None
    assert _apply(store, stale, Event.HOLD, Change(batch="B1", until=20.0)) is not None
    assert _apply(store, stale, Event.HOLD, Change(batch="B2", until=20.0)) is None  # lost: B1 swapped first
    again = _apply(store, stale, Event.HOLD, Change(batch="B2", until=20.0), attempts=2)  # on a fresh read
    assert again is not None and set(again.data["holds"]) == {"B1", "B2"}
    assert store.objects["jobs/J.json"][0] == again.data


def test_apply_deletes_only_what_it_read_unless_told_to_read_again() -> None:
    store = _Store()
    _apply(store, None, Event.QUEUE_STARTING, Change(job=JOB, slot=0, now=10.0, lease_seconds=60.0))
    starting = store.read("b", "jobs/J.json")
    assert starting is not None
    # The poller turns it UNCONFIRMED while its starter calls the API; the starter then tracks it.
    assert _apply(store, starting, Event.LEASE_RAN_OUT, Change(now=70.0, lease_seconds=60.0)) is not None
    assert _apply(store, starting, Event.TRACK) is None
    assert "jobs/J.json" in store.objects
    assert _apply(store, starting, Event.TRACK, attempts=2) == job_record.Applied(None, None)
    assert store.objects == {}


def test_a_throttled_swap_is_a_lost_one_only_when_the_caller_says_so() -> None:
    store = _Store()
    _apply(store, None, Event.QUEUE, Change(job=JOB))
    current = store.read("b", "jobs/J.json")
    store.throttle = 1
    with pytest.raises(TooManyRequests):
        _apply(store, current, Event.HOLD, Change(batch="B", until=20.0))
    store.throttle = 1
    held = _apply(store, current, Event.HOLD, Change(batch="B", until=20.0), attempts=2, throttle_is_loss=True)
    assert held is not None and "B" in held.data["holds"]


def test_a_refused_event_writes_nothing() -> None:
    store = _Store()
    _apply(store, None, Event.QUEUE_STARTING, Change(job=JOB, slot=0, now=10.0, lease_seconds=60.0))
    before = dict(store.objects)
    current = store.read("b", "jobs/J.json")
    assert _apply(store, current, Event.HOLD, Change(batch="B", until=20.0), attempts=3) is None
    assert _apply(store, current, Event.LEASE_RAN_OUT, Change(now=50.0, lease_seconds=60.0)) is None
    assert store.objects == before


def test_unadopt_makes_a_pending_adoption_fail_or_brings_the_deleted_record_back() -> None:
    """A starter tracked the operation a resolver had adopted for another job: that job is
    UNCONFIRMED again, whether or not the adoption had deleted its record yet."""
    store = _Store()
    store.objects["jobs/J.json"] = (WRITTEN[3], store._next())
    unconfirmed = JobRecord.from_json(WRITTEN[3])
    read_by_resolver = store.read("b", "jobs/J.json")
    assert _apply(store, store.read("b", "jobs/J.json"), Event.UNADOPT, Change(from_record=unconfirmed)) is not None
    assert _apply(store, read_by_resolver, Event.ADOPT) is None  # the resolver's delete fails
    assert store.objects["jobs/J.json"][0] == WRITTEN[3]
    del store.objects["jobs/J.json"]  # the adoption came first
    assert _apply(store, None, Event.UNADOPT, Change(from_record=unconfirmed)) is not None
    assert store.objects["jobs/J.json"][0] == WRITTEN[3]
