"""A zero-byte `.dcm` next to new uploads: the handler ignores it, so no planned glob may read it."""

from __future__ import annotations

from tests import dicom_factory
from tests.integration.harness import Deployment, deliver_all


def test_a_zero_byte_dcm_beside_new_uploads_does_not_fail_their_import(
    healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str
) -> None:
    d = Deployment.create(healthcare_emulator)
    placeholder = d.upload("inbox/s1/IM0000.dcm", b"")
    events = [d.upload(f"inbox/s1/IM000{i}.dcm", dicom_factory.instance()) for i in range(1, 6)]
    outcomes = deliver_all(d.handler(), [placeholder, *events])
    assert outcomes[0].action == "ignored" and "zero-byte" in outcomes[0].reason
    completions = d.pull_completions(len({o.window for o in outcomes[1:]}))
    for event in completions:
        assert event["state"] == "SUCCEEDED", event
        assert event["counters"]["failure"] == 0 and "failedObjects" not in event
    assert sum(e["counters"]["success"] for e in completions) == 5
    reads = d.emulator("stats")["objectReads"]
    assert not any(uri.endswith("/inbox/s1/IM0000.dcm") for uri in reads), reads
