"""A request claim (`exports/{R}.json`) has no lease (docs/decisions/0706): it is held by the message
that made it, however long that message takes to come back, and a second message with the same
requestId never takes it over. Real export function on the fakes and the simulated clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from google.api_core.exceptions import ServiceUnavailable

from functions.core.events import PubsubMessage
from functions.exports.export_on_message import ExportOutcome
from tests.functional.world import STATE, World


def _message(w: World, body: dict[str, object], message_id: str) -> PubsubMessage:
    return PubsubMessage(event_id=message_id, message_id=message_id, data=json.dumps(body).encode(), attributes={},
                         publish_time=datetime.fromtimestamp(w.sim.clock(), UTC))


def test_a_duplicate_request_long_after_every_lease_ran_out_does_not_take_the_claim_over() -> None:
    w = World()
    w.deliver(w.upload("in/a.dcm"), w.instance())
    w.settle()
    w.publisher.events.clear()
    study = next(iter(w.hc.instances.values())).study
    body = {"requestId": "once", "destination": "gs://exports/o", "resources": [f"/studies/{study}"]}
    # The first message claims the request, then fails before it queues a job: its redelivery is due.
    outage = [True]

    def unavailable() -> None:
        if outage[0]:
            raise ServiceUnavailable("x")

    w.faults.meanwhile(unavailable, client="store", method="write", name="filters/", times=1000)
    first = w.sim.call(lambda: w.exporter().handle(_message(w, body, "m-1")), name="export")
    assert first.error is not None
    outage[0] = False
    [claim] = w.state("exports/")
    held = w.store.read(STATE, claim)
    assert held is not None and held.data["messageId"] == "m-1" and "job" not in held.data

    w.sim.advance(20 * w.settings.claim_lease_seconds)
    second: ExportOutcome = w.sim.call(lambda: w.exporter().handle(_message(w, body, "m-2")), name="export").value()

    assert second.action == "duplicate", second
    assert w.state("jobs/") == [] and w.state("operations/") == []
    assert [op for op in w.hc.operations.values() if op.kind == "export"] == []
    after = w.store.read(STATE, claim)
    assert after is not None and after.data == held.data and after.generation == held.generation
