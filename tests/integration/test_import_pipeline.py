"""The import function and the poller against fake-gcs-server, the Pub/Sub emulator and our
Healthcare emulator: batching, duplicates, crashes, faults, odd names, failures by name.

How many debounce windows a burst of uploads falls into depends on the machine's speed, so these
tests never assume one: they wait until the pipeline is quiet and check what holds for any number
of windows (every object imported and reported once, one eventId per operation). The protocol
itself, step by step and at every crash point, is tested in tests/functional."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from functions.core.events import StorageObjectEvent
from tests import dicom_factory
from tests.integration.harness import (
    Deployment,
    deliver_all,
    distinct,
    successes,
    upload_and_deliver,
    wait_for,
    windows_of,
)


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
    # Every record is batched by exactly one leader (a slow machine may re-lead a window for late events).
    assert len(led) >= len(windows) and sum(r.uploads for r in led) == 12
    completions = distinct(d.completions_until_quiet())
    assert _import_calls(d) - before == len(completions) <= sum(len(r.jobs) for r in led)
    assert all(e["state"] == "SUCCEEDED" and e["kind"] == "import" for e in completions), completions
    # A later window's glob may read an earlier window's objects again (the planner's choice).
    assert len(_stored_uids(d)) == 12 <= successes(completions)
    assert all(e["counters"]["failure"] == 0 for e in completions)
    if len(windows) == len(led) == 1:
        assert [e["source"] for e in completions] == [f"gs://{d.upload_bucket}/inbox/**.dcm"]
        assert successes(completions) == 12
    else:  # uploads that spilled into the next window: globs inside inbox/, or staged copies
        assert all(e["source"].startswith((f"gs://{d.upload_bucket}/inbox/", f"gs://{d.settings.state_bucket}/"))
                   for e in completions), completions
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
    # A duplicate is listed again in a group record (decision 0770): the leader plans each upload once.
    assert [o.action for o in outcomes] == ["recorded"] * (2 * len(events))
    completions = distinct(d.completions_until_quiet())
    assert len(_stored_uids(d)) == len(events) <= successes(completions)
    imports = _import_calls(d) - before
    assert imports == len(completions) <= len(windows_of(d, events))
    if len(windows_of(d, events)) == 1:
        assert successes(completions) == len(events)
    # A redelivery long after the batch is done is still a duplicate.
    late = d.handler().handle(events[0])
    assert (late.action, late.reason) == ("duplicate", "already batched")
    assert _import_calls(d) - before == imports


def test_trickle_into_one_folder_stages_and_reads_each_object_at_most_twice(deployment: Deployment) -> None:
    d = deployment
    handler = d.handler()
    first = [d.upload(f"ward/{name}.dcm", dicom_factory.instance()) for name in ("k3x", "a9q")]
    deliver_all(handler, first)
    assert successes(d.completions_until_quiet()) == 2
    second = [d.upload(f"ward/{name}.dcm", dicom_factory.instance()) for name in ("m1z", "b7c")]
    deliver_all(handler, second)
    completions = distinct(d.completions_until_quiet())
    assert successes(completions) == 2
    # The old objects of the folder were not imported again: the new ones were staged (or, if
    # they fell into two windows, each imported by its own name).
    new_uris = {f"gs://{d.upload_bucket}/{e.name}" for e in second}
    if len(windows_of(d, second)) == 1:
        [event] = completions
        assert "/staging/" in event["source"]
    else:
        assert all("/staging/" in e["source"] or e["source"] in new_uris for e in completions), completions
    reads = d.emulator("stats")["objectReads"]
    ward = {uri: n for uri, n in reads.items() if f"/{d.upload_bucket}/ward/" in uri}
    assert ward and max(ward.values()) == 1
    assert len(_stored_uids(d)) == 4
    assert d.state_objects("staging/") == []  # cleaned up after success


def test_copies_staged_in_a_bucket_of_their_own_are_imported_from_it_and_deleted(
        healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str) -> None:
    staging = f"staging-{uuid.uuid4().hex[:10]}"
    d = Deployment.create(healthcare_emulator, staging_bucket=staging)
    d.storage_client.create_bucket(staging)
    handler = d.handler()
    # An old object beside the new ones (no event): a glob would read it again, so they are staged.
    d.upload("ward2/old.dcm", dicom_factory.instance())
    events = [d.upload(f"ward2/{name}.dcm", dicom_factory.instance()) for name in ("k3x", "a9q")]
    deliver_all(handler, events)
    completions = distinct(d.completions_until_quiet())
    assert successes(completions) == 2
    staged = [e for e in completions if e["source"].startswith(f"gs://{staging}/staging/")]
    assert staged or len(windows_of(d, events)) > 1, completions
    reads = d.emulator("stats")["objectReads"]
    assert not any(f"/{d.upload_bucket}/ward2/old.dcm" in uri for uri in reads)
    assert len(_stored_uids(d)) == 2
    assert d.state_objects("staging/") == []  # nothing staged in the state bucket
    assert list(d.storage_client.list_blobs(staging)) == []  # deleted after success


def test_odd_names_and_upper_case_extensions_are_imported(deployment: Deployment) -> None:
    d = deployment
    names = ["odd/with space.dcm", "odd/ünïcødé.dcm", "odd/star*.dcm", "odd/what?.dcm", "odd/[bracket].dcm",
             "odd/hash#1.dcm", "odd/UPPER.DCM"]
    events = [d.upload(name, dicom_factory.instance()) for name in names]
    events.append(d.upload("odd/notes.txt", b"not dicom"))
    outcomes = deliver_all(d.handler(), events)
    assert sum(o.action == "recorded" for o in outcomes) == len(names)
    completions = distinct(d.completions_until_quiet())
    assert len(_stored_uids(d)) == len(names) <= successes(completions)
    assert all(e["state"] == "SUCCEEDED" for e in completions)
    assert len(_stored_uids(d)) == len(names)


def test_a_non_dicom_dcm_is_named_in_failed_objects(deployment: Deployment) -> None:
    d = deployment
    good = [d.upload(f"mixed/ok{i}.dcm", dicom_factory.instance()) for i in range(3)]
    bad = d.upload("mixed/broken.dcm", b"this is not DICOM at all")
    deliver_all(d.handler(), [*good, bad])
    completions = distinct(d.completions_until_quiet())
    assert len(_stored_uids(d)) == 3 <= successes(completions)
    # The import whose batch held it names it (a later glob that read it again only counts it).
    [event] = [e for e in completions if e.get("failedObjects")]
    assert event["state"] in ("SUCCEEDED_WITH_ERRORS", "FAILED")
    assert event["failedObjects"] == [f"gs://{d.upload_bucket}/mixed/broken.dcm"]
    assert event["failedObjectsTotal"] == 1
    assert all(e["counters"]["failure"] <= 1 for e in completions)
    receipts = d.state_objects("receipts/")
    assert len(receipts) == 1


def test_a_leader_that_dies_after_claiming_is_replaced_by_the_poller(deployment: Deployment) -> None:
    d = deployment
    events = _upload_study_folders(d, ["crash/s1"])
    # Record the uploads without leading (as if every waiting process died), then claim the
    # window as a leader would, and die before planning.
    for event in events:
        d.deps.gcs.create(d.settings.state_bucket,
                          d.deps.batcher.window_prefix(_window(d, event)) + f"{event.generation}.json", {},
                          metadata={"bucket": event.bucket, "name": event.name, "generation": str(event.generation)})
    windows = {_window(d, event) for event in events}
    for window in windows:
        assert d.deps.batcher._claim(window) is not None
    # The poller takes each window over once the dead leader's lease is over (that it waits for
    # the lease, and not longer, is tested on a fake clock in tests/functional).
    completions = distinct(d.completions_until_quiet())
    assert len(_stored_uids(d)) == len(events) <= successes(completions)
    assert sum(s.windows_recovered for s in d.poll_summaries) == len(windows)


def test_503_bursts_are_retried_until_the_import_starts(healthcare_emulator: str, fake_gcs: str,
                                                        pubsub_emulator: str) -> None:
    # A retry budget no loaded machine runs out of during three backoffs (the budget itself is
    # unit-tested on a fake clock).
    d = Deployment.create(healthcare_emulator, retry_deadline_seconds=60.0)
    before = _import_calls(d)
    d.emulator("faults", {"method": "import", "count": 3, "status": 503})
    events = _upload_study_folders(d, ["flaky/s1"])
    outcomes = deliver_all(d.handler(), events)
    led = [o.led for o in outcomes if o.led]
    # The first leader met the three 503s; the retries inside its budget started the import.
    assert led and led[0].started, "the import should start after the retried 503s"
    completions = distinct(d.completions_until_quiet())
    assert len(_stored_uids(d)) == len(events) <= successes(completions)
    assert _import_calls(d) - before == 3 + len(completions)


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

    def republished(events: list[dict[str, Any]]) -> bool:
        return len(events) > len(distinct(events))

    events = d.completions_until_quiet(until=republished)
    by_operation: dict[str, list[str]] = {}
    for event in events:
        by_operation.setdefault(event["operation"], []).append(event["eventId"])
    assert all(len(set(ids)) == 1 for ids in by_operation.values()), by_operation  # the same eventId again
    deliveries = sorted(len(ids) for ids in by_operation.values())
    assert deliveries[-1] == 2 and deliveries[:-1] == [1] * (len(deliveries) - 1)  # one crash, one republish
    assert len(_stored_uids(d)) == 4 <= successes(events)
    assert d.state_objects("operations/") == []


def test_never_more_than_the_cap_of_operations_run_at_once(healthcare_emulator: str, fake_gcs: str,
                                                           pubsub_emulator: str) -> None:
    d = Deployment.create(healthcare_emulator, max_concurrent_operations=2)
    d.emulator("reset", {})
    d.emulator("config", {"operationDelaySeconds": 1.5})
    try:
        # One import per bucket: five buckets give five jobs, in one window or in several.
        buckets = [d.upload_bucket] + [f"{d.upload_bucket}-{n}" for n in range(1, 5)]
        for bucket in buckets[1:]:
            d.storage_client.create_bucket(bucket)
        uploaded = [d.upload(f"cap/IM{i}.dcm", data, bucket=bucket) for bucket in buckets
                    for i, data in enumerate(dicom_factory.study(1, 2))]
        led = [o.led for o in deliver_all(d.handler(), uploaded) if o.led]
        jobs, started = sum(len(r.jobs) for r in led), sum(len(r.started) for r in led)
        # Slots are released by the poller only, which has not run yet: the rest is queued.
        assert jobs >= len(buckets) and started == 2, (jobs, started)
        completions = distinct(d.completions_until_quiet(timeout=120))
        assert all(e["state"] == "SUCCEEDED" for e in completions)
        assert successes(completions) == len(uploaded)
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
    upload_and_deliver(d, files, threads=32)
    assert successes(d.completions_until_quiet(timeout=60)) >= len(files) == len(_stored_uids(d))
    most, name = counting.max_writes_per_second()
    assert most <= 2, f"{name} was written {most} times within one second"


def _window(d: Deployment, event: StorageObjectEvent) -> str:
    from functions.core.windows import window_id

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
        completions = distinct(d.completions_until_quiet(timeout=60))
        # Every object stored; each import reported (a glob may read an older object again).
        assert successes(completions) >= 4 == len(_stored_uids(d))
        assert _import_calls(d) - before == len(completions)
        if len(windows_of(d, first)) == 1:
            # One queued wildcard import for a0 and a1, which reads a2 too: a2 joins it.
            assert outcome.led is not None and outcome.led.jobs == ()
            bulk = [e for e in completions if "/bulk/" in e.get("source", "")]
            assert [e["counters"]["success"] for e in bulk] == [3]
            assert _import_calls(d) - before == 2
        else:  # a0 and a1 fell into two windows: no single glob was queued for all of them
            assert outcome.led is not None and len(outcome.led.jobs) <= 1
    finally:
        d.emulator("config", {"operationDelaySeconds": 0})


def test_an_import_planned_while_another_runs_waits_and_grows_although_slots_are_free(
        healthcare_emulator: str, fake_gcs: str, pubsub_emulator: str) -> None:
    """decision 0700 on the real emulators: five slots, one import held running by the emulator."""
    d = Deployment.create(healthcare_emulator)  # the production coalescing age (300 s)
    d.emulator("reset", {})
    d.emulator("config", {"operationDelaySeconds": 600})
    try:
        before = _import_calls(d)
        handler = d.handler()
        blocker = handler.handle(d.upload("blocker/one.dcm", dicom_factory.instance()))
        assert blocker.led is not None and len(blocker.led.started) == 1
        # An old object beside the new ones (no event): a glob would read it again, so they are staged.
        d.upload("mig/m.dcm", dicom_factory.instance())
        uploads = [d.upload(f"mig/{name}.dcm", dicom_factory.instance()) for name in ("a", "n", "z")]
        led = [o.led for o in deliver_all(handler, uploads) if o.led]
        assert led and not any(r.started for r in led)  # queued although four slots are free
        assert len(d.state_objects("slots/")) == 1
        # One job, grown by later windows; two only if a window planned before the first job existed.
        jobs = {job for r in led for job in r.jobs}
        assert 1 <= len(jobs) <= 2 and all(r.grown in (None, *jobs) for r in led)
        d.emulator("config", {"operationDelaySeconds": 0})  # for the imports still to start
        d.emulator(f"operations/{blocker.led.started[0].rsplit('/', 1)[1]}:release", {})
        completions = distinct(d.completions_until_quiet(timeout=120))
        assert successes(completions) == 4 and len(_stored_uids(d)) == 4
        assert _import_calls(d) - before == 1 + len(jobs)
        assert d.emulator("stats")["maxConcurrentOperations"] == 1  # each waited for the one before
    finally:
        d.emulator("config", {"operationDelaySeconds": 0})


def test_a_start_the_api_refuses_comes_back_as_a_failed_event(deployment: Deployment) -> None:
    from functions.imports.job_queue import Job

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
