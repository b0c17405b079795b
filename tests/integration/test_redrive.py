"""Redrive on the emulators: a failed import's receipt is re-imported after the cause is fixed.

An import fails on purpose twice over: one object is not DICOM, and the emulator fails the next
operation as a whole (as a transient API failure would). After the object is fixed, a redrive of
each receipt re-imports exactly the objects that did not land, through the job queue and its
slots, and reports one SUCCEEDED `redrive` event per receipt. Redriving again does nothing and
says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from functions.exports.redrive import Redriver
from functions.imports.failed_objects import read_uids
from tests import dicom_factory
from tests.integration.harness import (
    Deployment,
    clear_faults,
    deliver_all,
    distinct,
    emulator_calls,
    pubsub_message,
)


@pytest.fixture
def d(healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str) -> Iterator[Deployment]:
    d = Deployment.create(healthcare_emulator)
    yield d
    clear_faults(d)


def _sops(d: Deployment) -> set[str]:
    return {i["00080018"]["Value"][0] for i in d.stored_instances()}


def _redrive(d: Deployment, receipt: str, request_id: str) -> str:
    body = {"action": "redrive", "receipt": receipt, "requestId": request_id}
    return Redriver.from_deps(d.deps).handle(pubsub_message(json.dumps(body).encode())).action


def test_a_failed_import_is_redriven_after_the_fix_and_a_second_redrive_does_nothing(d: Deployment) -> None:
    good = [dicom_factory.instance() for _ in range(3)]
    uploads = [d.upload(f"redrive/ok{i}.dcm", data) for i, data in enumerate(good)]
    uploads.append(d.upload("redrive/broken.dcm", b"this is not DICOM"))
    d.emulator("faults/operations", {"count": 1, "code": 14, "message": "injected: backend unavailable"})
    deliver_all(d.handler(), uploads)
    events = distinct(d.completions_until_quiet())
    failed = [e for e in events if e.get("failedObjectsTotal")]
    assert failed, f"the import was meant to fail: {events}"
    assert any(e["state"] == "FAILED" for e in failed)
    named = {uri for e in failed for uri in e["failedObjects"]}
    assert f"gs://{d.upload_bucket}/redrive/broken.dcm" in named
    assert len(named) >= 2, "the failed operation's objects should be named too"

    fixed = dicom_factory.instance()
    d.storage_client.bucket(d.upload_bucket).blob("redrive/broken.dcm").upload_from_string(fixed)
    imports_before = emulator_calls(d, "import")
    outcomes = [_redrive(d, e["eventId"], f"fix-{n}") for n, e in enumerate(failed)]
    assert set(outcomes) <= {"started", "queued"}, outcomes
    redriven = d.pull_completions(len(failed))
    assert [(e["kind"], e["state"]) for e in redriven] == [("redrive", "SUCCEEDED")] * len(failed), redriven
    assert {e["redriveOf"] for e in redriven} == {e["operation"] for e in failed}
    assert sum(e["counters"]["success"] for e in redriven) == len(named)
    assert emulator_calls(d, "import") == imports_before + len(failed)  # one LRO per receipt

    expected = {uids[2] for data in [*good, fixed] if (uids := read_uids(data))}
    assert len(expected) == 4
    assert _sops(d) == expected

    again = _redrive(d, failed[0]["eventId"], "fix-again")
    assert again == "nothing"
    [event] = d.pull_completions(1, poll=False)
    assert (event["kind"], event["state"], event["counters"]) == ("redrive", "SUCCEEDED",
                                                                  {"success": 0, "failure": 0, "pending": 0})
    assert "nothing to redrive" in event["reason"] and "operation" not in event
    assert emulator_calls(d, "import") == imports_before + len(failed)


def test_a_repeated_redrive_request_starts_one_import(d: Deployment) -> None:
    uploads = [d.upload("again/ok.dcm", dicom_factory.instance()), d.upload("again/bad.dcm", b"nope")]
    d.emulator("faults/operations", {"count": 1, "code": 14, "message": "injected: backend unavailable"})
    deliver_all(d.handler(), uploads)
    failed = [e for e in distinct(d.completions_until_quiet()) if e.get("failedObjectsTotal")]
    assert failed
    receipt = failed[0]["operation"]  # the full operation name works as a receipt reference
    imports_before = emulator_calls(d, "import")
    first = _redrive(d, receipt, "same-id")
    second = _redrive(d, receipt, "same-id")
    assert (first, second) == ("started", "duplicate")
    [event] = d.pull_completions(1)
    # ok.dcm is imported again; bad.dcm is still not DICOM: held back, named with its reason.
    assert (event["kind"], event["state"]) == ("redrive", "SUCCEEDED")
    assert event["failedObjects"] == [f"gs://{d.upload_bucket}/again/bad.dcm"]
    assert [f["reason"] for f in event["failures"]] == ["NOT_DICOM"]
    assert event["objects"] == {"total": 2, "landed": 1, "failed": 1, "undecided": 0, "heldBack": 1,
                                "countersAgree": True}
    assert emulator_calls(d, "import") == imports_before + 1
