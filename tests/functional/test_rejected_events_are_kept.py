"""A REJECTED request's event is kept in `done/` like an operation's (decision 0951), so that
`dicom-events status` and `events --since` show it to whoever was not subscribed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from functions.core.events import PubsubMessage
from functions.exports.export_on_message import ExportOutcome
from tests.functional.world import STATE, World


def _send(w: World, body: dict[str, object], message_id: str) -> ExportOutcome:
    message = PubsubMessage(event_id=message_id, message_id=message_id, data=json.dumps(body).encode(),
                            attributes={}, publish_time=datetime.fromtimestamp(w.sim.clock(), UTC))
    outcome: ExportOutcome = w.sim.call(lambda: w.exporter(None).handle(message), name="export").value()
    return outcome


def test_a_rejected_export_request_is_kept_in_done_as_published() -> None:
    w = World()
    outcome = _send(w, {"requestId": "r-1", "destination": "gs://elsewhere/x", "resources": ["/studies/1.2"]}, "m-1")

    assert outcome.action == "rejected"
    [published] = [e for e in w.completions() if e.data["state"] == "REJECTED"]
    kept = w.store.read(STATE, w.settings.state_path("done", f"{published.data['eventId']}.json"))
    assert kept is not None and kept.data == published.data
    assert w.state("done/") == [w.settings.state_path("done", f"{published.data['eventId']}.json")]


def test_a_redelivered_rejection_keeps_one_record() -> None:
    w = World()
    body = {"requestId": "r-2", "action": "setStorageClass", "storageClass": "FREEZER"}
    _send(w, body, "m-2")
    _send(w, body, "m-2")  # the same message again: the same eventId

    assert len(w.state("done/")) == 1
