"""The import function and the poller against fake-gcs-server, the Pub/Sub emulator and our
Healthcare emulator: batching, duplicates, crashes, faults, odd names, failures by name."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from functions.events import StorageObjectEvent
from tests import dicom_factory
from tests.integration.harness import Deployment, deliver_all, upload_and_deliver, wait_for, windows_of


@pytest.fixture
def deployment(healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str) -> Iterator[Deployment]:
    yield Deployment.create(healthcare_emulator)


def _import_calls(d: Deployment) -> int:
    return int(d.emulator("stats")["calls"].get("import", 0))


def _stored_uids(d: Deployment) -> set[str]:
    return {i["00080018"]["Value"][0] for i in d.stored_instances()}


def _upload_study_folders(d: Deployment, folders: list[str], series: int = 2, per_series: int = 2
                          ) -> list[StorageObjectEvent]:
    events = []
    for folder in folders:
        for index, data in enumerate(dicom_factory.study(series, per_series)):
            events.append(d.upload(f"{folder}/IM{index:04d}.dcm", data))
    return events


def test_a_burst_of_study_folders_is_one_import_per_window(healthcare_emulator: str, fake_gcs: str,
                                                           pubsub_emulator: str) -> None:
    d = Deployment.create(healthcare_emulator, debounce_seconds=4.0)
    before = _import_calls(d)
    files = [(f"inbox/{folder}/IM{i:04d}.dcm", data) for folder in ("studyA", "studyB", "studyC")
             for i, data in enumerate(dicom_factory.study(2, 2))]
    files.append(("inbox/studyA/study.json", b'{"sidecar": true}'))
    events, outcomes = upload_and_deliver(d, files)

    assert [o.action for o in outcomes].count("ignored") == 1  # the sidecar
    windows = windows_of(d, events[:-1])
    led = [o.led for o in outcomes if o.led is not None]
    assert len(led) == len(windows) and sum(r.uploads for r in led) == 12
    assert _import_calls(d) - before == len(windows)
    completions = d.pull_completions(len(windows))
    assert all(e["state"] == "SUCCEEDED" and e["kind"] == "import" for e in completions), completions
    assert sum(e["counters"]["success"] for e in completions) == 12
    assert all(e["counters"]["failure"] == 0 for e in completions)
    if len(windows) == 1:
        assert completions[0]["source"] == f"gs://{d.upload_bucket}/inbox/**.dcm"
    assert all(e["_attributes"]["eventId"] == e["eventId"] for e in completions)
    assert len(_stored_uids(d)) == 12
    # The window's state is gone once the operation is reported.
    for prefix in ("windows/", "claims/", "jobs/", "slots/", "operations/"):
        assert d.state_objects(prefix) == [], prefix


def test_every_event_delivered_twice_starts_one_import(deployment: Deployment) -> None:
    d = deployment
    before = _import_calls(d)
    events = _upload_study_folders(d, ["dup/s1", "dup/s2"])
    outcomes = deliver_all(d.handler(), events + events)
    assert [o.action for o in outcomes].count("recorded") == len(events)
    windows = windows_of(d, events)
    completions = d.pull_completions(len(windows))
    assert sum(e["counters"]["success"] for e in completions) == len(events)
    assert _import_calls(d) - before == len(windows)
    # A redelivery long after the batch is done is still a duplicate.
    late = d.handler().handle(events[0])
    assert (late.action, late.reason) == ("duplicate", "already batched")
    assert _import_calls(d) - before == len(windows)


def test_trickle_into_one_folder_stages_and_reads_each_object_at_most_twice(deployment: Deployment) -> None:
    d = deployment
    handler = d.handler()
    first = [d.upload(f"ward/{name}.dcm", dicom_factory.instance()) for name in ("k3x", "a9q")]
    deliver_all(handler, first)
    d.pull_completions(1)
    second = [d.upload(f"ward/{name}.dcm", dicom_factory.instance()) for name in ("m1z", "b7c")]
    deliver_all(handler, second)
    [event] = d.pull_completions(1)
    assert event["counters"]["success"] == 2
    # The old objects of the folder were not imported again: the new ones were staged.
    assert "/staging/" in event["source"]
    reads = d.emulator("stats")["objectReads"]
    ward = {uri: n for uri, n in reads.items() if f"/{d.upload_bucket}/ward/" in uri}
    assert ward and max(ward.values()) == 1
    assert len(_stored_uids(d)) == 4
    assert d.state_objects("staging/") == []  # cleaned up after success


def test_odd_names_and_upper_case_extensions_are_imported(deployment: Deployment) -> None:
    d = deployment
    names = ["odd/with space.dcm", "odd/ünïcødé.dcm", "odd/star*.dcm", "odd/what?.dcm", "odd/[bracket].dcm",
             "odd/hash#1.dcm", "odd/UPPER.DCM"]
    events = [d.upload(name, dicom_factory.instance()) for name in names]
    events.append(d.upload("odd/notes.txt", b"not dicom"))
    outcomes = deliver_all(d.handler(), events)
    assert sum(o.action == "recorded" for o in outcomes) == len(names)
    completions = d.completions_for(events[:-1])
    _check_success_counts(completions, len(names))
    assert all(e["state"] == "SUCCEEDED" for e in completions)
    assert len(_stored_uids(d)) == len(names)


def test_a_non_dicom_dcm_is_named_in_failed_objects(deployment: Deployment) -> None:
    d = deployment
    good = [d.upload(f"mixed/ok{i}.dcm", dicom_factory.instance()) for i in range(3)]
    bad = d.upload("mixed/broken.dcm", b"this is not DICOM at all")
    deliver_all(d.handler(), [*good, bad])
    # The uploads may straddle two windows (a slow machine): the broken object's event names it.
    completions = d.completions_for([*good, bad])
    _check_success_counts(completions, 3)
    [event] = [e for e in completions if e["counters"]["failure"]]
    assert event["counters"]["failure"] == 1
    assert event["state"] in ("SUCCEEDED_WITH_ERRORS", "FAILED")
    assert event["failedObjects"] == [f"gs://{d.upload_bucket}/mixed/broken.dcm"]
    assert event["failedObjectsTotal"] == 1
    receipts = d.state_objects("receipts/")
    assert len(receipts) == 1


def _check_success_counts(completions: list[dict[str, Any]], objects: int) -> None:
    """Every object imported: read once with one window; an upload of a second window created
    within the clock-skew allowance of the first window's import start is read by both."""
    total = sum(e["counters"]["success"] for e in completions)
    assert total == objects if len(completions) == 1 else objects <= total <= 2 * objects, completions


def test_a_leader_that_dies_after_claiming_is_replaced_by_the_poller(deployment: Deployment) -> None:
    d = deployment
    events = _upload_study_folders(d, ["crash/s1"])
    # Record the uploads without leading (as if every waiting process died), then claim the
    # window as a leader would, and die before planning.
    for event in events:
        d.deps.gcs.create(d.settings.state_bucket,
                          d.deps.batcher.window_prefix(_window(d, event)) + f"{event.generation}.json", {},
                          metadata={"bucket": event.bucket, "name": event.name, "generation": str(event.generation)})
    window = _window(d, events[0])
    assert d.deps.batcher._claim(window) is not None
    assert d.poller().run().windows_recovered == 0  # the dead leader's lease still runs
    time.sleep(d.settings.claim_lease_seconds + d.settings.debounce_seconds + d.settings.settle_seconds)
    # The uploads may straddle two windows (a slow machine): one event per window.
    _check_success_counts(d.completions_for(events), len(events))


def test_503_bursts_are_retried_until_the_import_starts(deployment: Deployment) -> None:
    d = deployment
    d.emulator("faults", {"method": "import", "count": 3, "status": 503})
    events = _upload_study_folders(d, ["flaky/s1"])
    outcomes = deliver_all(d.handler(), events)
    led = [o.led for o in outcomes if o.led]
    assert led and led[0].started, "the import should start after the retried 503s"
    _check_success_counts(d.completions_for(events), len(events))


def test_a_poller_killed_between_publish_and_mark_republishes_the_same_event_id(deployment: Deployment) -> None:
    d = deployment
    uploads = _upload_study_folders(d, ["twice/s1"])
    deliver_all(d.handler(), uploads)
    queue = d.deps.queue
    original = queue.forget
    calls = {"n": 0}

    def crash_once(tracked: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("poller killed")
        original(tracked)

    queue.forget = crash_once  # type: ignore[method-assign]
    # One event per window (the uploads may straddle two), and the crashed one's again.
    events = d.pull_completions(len(windows_of(d, uploads)) + 1)
    published = Counter(e["eventId"] for e in events)
    assert sorted(published.values())[-1] == 2 and sum(published.values()) == len(published) + 1, published
    assert d.state_objects("operations/") == []


def test_never_more_than_the_cap_of_operations_run_at_once(healthcare_emulator: str, fake_gcs: str,
                                                           pubsub_emulator: str) -> None:
    d = Deployment.create(healthcare_emulator, max_concurrent_operations=2)
    d.emulator("reset", {})
    d.emulator("config", {"operationDelaySeconds": 1.5})
    try:
        # Five windows, one folder each, pushed through quickly.
        handler = d.handler()
        threads, uploaded = [], []
        for n in range(5):
            events = _upload_study_folders(d, [f"cap/w{n}"], series=1, per_series=2)
            uploaded.extend(events)
            thread = threading.Thread(target=deliver_all, args=(handler, events))
            thread.start()
            threads.append(thread)
            time.sleep(d.settings.debounce_seconds)
        for thread in threads:
            thread.join()
        completions = d.completions_for(uploaded, timeout=120)
        assert all(e["state"] == "SUCCEEDED" for e in completions)
        assert sum(e["counters"]["success"] for e in completions) == len(uploaded)
        assert d.emulator("stats")["maxConcurrentOperations"] <= 2
    finally:
        d.emulator("config", {"operationDelaySeconds": 0})


def test_no_state_object_is_written_more_than_about_once_a_second(healthcare_emulator: str, fake_gcs: str,
                                                                  pubsub_emulator: str) -> None:
    # Production timing (5 s windows): the test counts what the emulator does not limit.
    d = Deployment.create(healthcare_emulator, debounce_seconds=5.0, settle_seconds=1.0)
    counting = d.counting()
    files = [(f"hot/f{folder}/IM{index:03d}.dcm", data) for folder in range(10)
             for index, data in enumerate(dicom_factory.study(2, 10))]
    events, _ = upload_and_deliver(d, files, threads=32)
    d.pull_completions(len(windows_of(d, events)), timeout=60)
    most, name = counting.max_writes_per_second()
    assert most <= 2, f"{name} was written {most} times within one second"


def _window(d: Deployment, event: StorageObjectEvent) -> str:
    from functions.windows import window_id

    return window_id(event.time_created, d.settings.debounce_seconds)


def test_handlers_wait_for_their_window(deployment: Deployment) -> None:
    d = deployment
    event = d.upload("solo/one.dcm", dicom_factory.instance())
    outcome = d.handler().handle(event)
    # The only process of the window led it, and started the import itself (no scheduler).
    assert outcome.led is not None and outcome.led.started
    wait_for(lambda: _stored_uids(d), what="the instance stored")


def test_uploads_a_queued_wildcard_import_will_read_are_not_imported_again(healthcare_emulator: str, fake_gcs: str,
                                                                          pubsub_emulator: str) -> None:
    d = Deployment.create(healthcare_emulator, max_concurrent_operations=1)
    d.emulator("config", {"operationDelaySeconds": 3})
    try:
        before = _import_calls(d)
        handler = d.handler()
        blocker = handler.handle(d.upload("blocker/one.dcm", dicom_factory.instance()))
        assert blocker.led is not None and blocker.led.started  # holds the only slot for a while
        first = [d.upload(f"bulk/a{i}.dcm", dicom_factory.instance()) for i in range(2)]
        led = [o.led for o in deliver_all(handler, first) if o.led]
        assert led and not any(r.started for r in led)  # queued behind the blocker
        later = d.upload("bulk/a2.dcm", dicom_factory.instance())  # the next of the series
        outcome = handler.handle(later)
        # The first window's leader returned after its window closed, so this is a later window.
        assert outcome.window not in windows_of(d, first)
        assert outcome.led is not None and outcome.led.jobs == ()  # adopted by the queued import
        completions = d.pull_completions(2, timeout=60)  # the blocker and the bulk import
        reported = sum(e["counters"]["success"] for e in completions if "/bulk/" in e.get("source", ""))
        assert reported == 3
        assert len(_stored_uids(d)) == 4
        assert _import_calls(d) - before == 2
    finally:
        d.emulator("config", {"operationDelaySeconds": 0})


def test_a_start_the_api_refuses_comes_back_as_a_failed_event(deployment: Deployment) -> None:
    from functions.jobs import Job

    d = deployment
    # '**' followed by a path: the API answers 400 INVALID_ARGUMENT; a retry cannot help.
    job = Job(job_id="20260101T000000000Z-refused-00", kind="import", request_id="batch-x", created_at=time.time(),
              import_uri=f"gs://{d.upload_bucket}/a/**/b.dcm")
    result = d.deps.queue.submit(job)
    assert result.started is not None and result.started.rsplit("/", 1)[-1].startswith("refused-")
    [event] = d.pull_completions(1)
    assert (event["kind"], event["state"], event["requestId"]) == ("import", "FAILED", "batch-x")
    assert event["error"]["code"] == 3 and "400" in event["error"]["message"]
    for prefix in ("jobs/", "slots/", "operations/", "refusals/"):
        assert d.state_objects(prefix) == [], prefix


def test_an_unreadable_window_record_does_not_keep_its_window_open(deployment: Deployment) -> None:
    d = deployment
    event = d.upload("garbled/one.dcm", dicom_factory.instance())
    window = _window(d, event)
    prefix = d.deps.batcher.window_prefix(window)
    d.deps.gcs.create(d.settings.state_bucket, prefix + "garbled.json", {})  # no metadata: names no object
    d.deps.gcs.create(d.settings.state_bucket, prefix + "good.json", {}, metadata={
        "bucket": event.bucket, "name": event.name, "generation": str(event.generation)})
    result = d.deps.batcher.run(window)
    assert result.claimed and result.uploads == 1
    assert window not in d.deps.batcher.open_windows()
    [completion] = d.pull_completions(1)
    assert completion["counters"]["success"] == 1
