"""A redrive does a bounded amount of work per run: a receipt of more than MAX_REDRIVE_OBJECTS
objects is redriven in parts, one request each; a permanent error frees its requestId with one
REJECTED event. The real redrive handler on the fakes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.api_core.exceptions import Forbidden

from functions.core.events import PubsubMessage
from functions.exports.redrive import MAX_REDRIVE_OBJECTS, RedriveOutcome, Redriver
from tests import dicom_factory
from tests.functional.world import STATE, UPLOADS, World

TOTAL = MAX_REDRIVE_OBJECTS * 2 + 7


def _world() -> World:
    w = World()
    names = [f"in/x{i:05d}.dcm" for i in range(TOTAL)]
    for name in names:
        # Readable DICOM files the store does not hold (NOT_STORED): a redrive imports them again.
        w.store.write(UPLOADS, name, dicom_factory.instance())
    w.store.write(STATE, w.settings.state_path("receipts", "op1.json"),
                  {"operation": f"{w.settings.dataset}/operations/op1",
                   "failedObjects": [f"gs://{UPLOADS}/{n}" for n in names], "failedObjectsTotal": TOTAL})
    return w


def _redrive(w: World, body: dict[str, Any], message_id: str) -> RedriveOutcome:
    message = PubsubMessage(event_id=message_id, message_id=message_id, data=json.dumps(body).encode(),
                            attributes={}, publish_time=datetime.fromtimestamp(w.sim.clock(), UTC))
    redriver = Redriver(w.settings, w.store, w.hc, w.queue(), w.batcher(), w.publisher,  # type: ignore[arg-type]
                        clock=w.sim.clock)
    outcome: RedriveOutcome = w.sim.call(lambda: redriver.handle(message), name="redrive").value()
    return outcome


def test_a_large_receipt_is_refused_whole_and_redriven_in_parts() -> None:
    w = _world()
    whole = _redrive(w, {"action": "redrive", "receipt": "op1", "requestId": "all"}, "m-0")
    assert whole.action == "rejected" and "send parts 1 to 3" in whole.detail, whole
    assert w.state("redrives/") == [] and w.hc.running == []
    last = _redrive(w, {"action": "redrive", "receipt": "op1", "requestId": "p3", "part": 3}, "m-3")
    assert last.action == "started", last
    assert [op.kind for op in w.hc.running] == ["import"]
    assert len(w.state("staging/")) == TOTAL - 2 * MAX_REDRIVE_OBJECTS, "part 3 is the last 7 objects"
    beyond = _redrive(w, {"action": "redrive", "receipt": "op1", "requestId": "p4", "part": 4}, "m-4")
    assert beyond.action == "rejected" and "part 4 cannot be redriven" in beyond.detail


def test_a_403_reading_the_receipts_objects_frees_the_request_id() -> None:
    w = _world()
    w.faults.fail(Forbidden("service text PAT-9"), client="store", method="list", name="in/")
    body = {"action": "redrive", "receipt": "op1", "requestId": "denied", "part": 1}
    outcome = _redrive(w, body, "m-1")
    assert outcome.action == "rejected" and "HTTP 403" in outcome.detail, outcome
    [event] = [e.data for e in w.completions()]
    assert (event["kind"], event["state"]) == ("redrive", "REJECTED") and "PAT-9" not in json.dumps(event)
    assert w.state("redrives/") == [] and w.hc.running == []
    assert _redrive(w, body, "m-2").action == "started"
