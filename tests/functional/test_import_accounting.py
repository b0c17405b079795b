"""Every object of an import accounted for, on the fakes: landed, failed with its reason, or undecided.

The same rules as tests/integration/test_import_accounting.py, on the in-memory fakes (whose
store refuses a SOP Instance UID it holds with other bytes, as the emulator and Google do): the
same UIDs from a different object are not "landed", the counts of every event add up and agree
with the API's counters, every event matches the schema, and a redrive holds back a UID conflict
until the file is fixed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from functions.core.events import PubsubMessage
from functions.exports.redrive import Redriver
from tests import dicom_factory
from tests.contracts import validate_completion_event
from tests.functional.world import UPLOADS, World


def _events(world: World) -> list[dict]:
    events = [p.data for p in world.completions()]
    for event in events:
        validate_completion_event(event)
    return events


def _redrive(world: World, receipt: str, request_id: str) -> str:
    data = json.dumps({"action": "redrive", "receipt": receipt, "requestId": request_id}).encode()
    message = PubsubMessage(event_id=f"m-{request_id}", message_id=f"m-{request_id}", data=data, attributes={},
                            publish_time=datetime.fromtimestamp(world.sim.clock(), UTC))
    queue = world.queue()
    from functions.imports.window_batcher import WindowBatcher

    redriver = Redriver(world.settings, world.store, world.hc, queue,  # type: ignore[arg-type]
                        WindowBatcher(world.settings, world.store, queue, clock=world.sim.clock),
                        world.publisher, clock=world.sim.clock)  # type: ignore[arg-type]
    return redriver.handle(message).action


def test_each_object_is_landed_or_named_and_the_counts_add_up(world: World) -> None:
    a = world.instance()
    original = dicom_factory.instance(sop="1.2.3.4.5", study="1.2.3", series="1.2.3.4", patient_id="A")
    other_content = dicom_factory.instance(sop="1.2.3.4.5", study="1.2.3", series="1.2.3.4", patient_id="B")
    duplicate = dicom_factory.instance()
    files = {
        "in/good0.dcm": dicom_factory.instance(),
        "in/good1.dcm": dicom_factory.instance(),
        "in/dup-a.dcm": duplicate,
        "in/dup-b.dcm": duplicate,  # the same bytes twice: both land
        "in/x-conflict.dcm": other_content,  # same UIDs as in/a-original.dcm, other bytes
        "in/a-original.dcm": original,
        "in/notes.dcm": b"not DICOM at all, whatever the name says",
    }
    for name, data in files.items():
        world.deliver(world.upload(name, data), a)
    world.settle()
    [event] = [e for e in _events(world) if e["kind"] == "import"]
    assert event["state"] in ("SUCCEEDED_WITH_ERRORS", "FAILED")
    assert event["counters"]["success"] == 5 and event["counters"]["failure"] == 2
    assert event["objects"] == {"total": 7, "landed": 5, "failed": 2, "undecided": 0, "countersAgree": True}
    reasons = {f["object"]: f["reason"] for f in event["failures"]}
    # Whichever of the two same-UID objects the fake read first landed; the other is the conflict.
    conflict = next(uri for uri in reasons if reasons[uri] == "UID_CONFLICT")
    assert conflict in (f"gs://{UPLOADS}/in/x-conflict.dcm", f"gs://{UPLOADS}/in/a-original.dcm")
    assert reasons == {f"gs://{UPLOADS}/in/notes.dcm": "NOT_DICOM", conflict: "UID_CONFLICT"}
    assert event["failedObjects"] == [f["object"] for f in event["failures"]]
    [receipt] = world.state("receipts/")
    assert world.store.json("state", receipt)["failures"] == event["failures"]

    # A redrive before anything is fixed holds both back and says what to do.
    assert _redrive(world, event["eventId"], "early") == "nothing"
    nothing = _events(world)[-1]
    assert "1 held back as UID_CONFLICT" in nothing["reason"] and "delete the stored instance" in nothing["reason"]
    assert "1 held back as NOT_DICOM" in nothing["reason"]

    # The conflict gets new UIDs; the non-DICOM file stays broken: one is imported, one held back.
    conflict_name = conflict.split("/", 3)[3]
    world.store.put(UPLOADS, conflict_name, dicom_factory.instance(patient_id="B"))
    assert _redrive(world, event["eventId"], "fixed") in ("started", "queued")
    world.settle()
    redrive = _events(world)[-1]
    assert redrive["kind"] == "redrive" and redrive["redriveOf"] == event["operation"]
    assert redrive["objects"] == {"total": 2, "landed": 1, "failed": 1, "undecided": 0, "heldBack": 1,
                                  "countersAgree": True}
    assert [(f["object"], f["reason"]) for f in redrive["failures"]] == [(f"gs://{UPLOADS}/in/notes.dcm",
                                                                          "NOT_DICOM")]
    assert redrive["counters"] == {"success": 1, "failure": 0, "pending": 0}


def test_an_import_that_fails_as_a_whole_names_the_objects_it_never_read(world: World) -> None:
    a = world.instance()
    for index in range(3):
        world.deliver(world.upload(f"whole/{index}.dcm"), a)
    world.sim.run_until_idle()
    [op] = world.hc.running
    world.hc.operations[op.name].objects = []  # the API read nothing before it failed
    world.hc.finish(op.name, error={"code": 14, "message": "backend unavailable"})
    world.settle()
    [event] = _events(world)
    assert event["state"] == "FAILED"
    assert event["objects"] == {"total": 3, "landed": 0, "failed": 3, "undecided": 0, "countersAgree": False}
    assert {f["reason"] for f in event["failures"]} == {"NOT_STORED"}
