"""Upload patterns through the import pipeline, next to the naive one-import-per-file approach.

    python -m bench.import_patterns [--quick] [--json] [--patterns burst,trickle,bulk] [--files N]

Starts its own Pub/Sub emulator, fake-gcs-server and Healthcare emulator on free ports, and for
each pattern builds a fresh deployment (buckets, dataset/store, completions topic) with the
production settings (debounce 5 s, settle 2 s, at most 5 LROs per store, claim lease 30 s). The
emulator waits `--operation-delay` seconds (default 3) before an import starts working, to mimic
LRO overhead.

Events are delivered the way Eventarc would: each object's finalize event as soon as its upload
returned, into one of two handler "instances" (each an `ImportOnUpload` with its own thread pool
of concurrent requests). The poller runs every 2 s in a background thread (production: Cloud
Scheduler every 60 s). The naive approach then replays the same pattern on a fresh bucket and
store: every event starts `dicomStores.import` of exactly its object, no cap.

Patterns:
  burst    study folders (StudyInstanceUID/S{n}/IM{i}.dcm + a study.json sidecar) uploaded by 8
           threads under inbox/, where older studies already sit (imported before the run)
  trickle  random names into ward/ at a steady rate (several debounce windows)
  bulk     a tree bulk/<a>/<b>/<n>.dcm uploaded by 16 threads as fast as possible
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from pydicom.uid import generate_uid

from bench.common import dicom_instance, stored_sops
from bench.common import session as http_session
from localcloud import components

# Production values (functions/settings.py defaults); the harness's fast test values are overridden.
PRODUCTION = {"debounce_seconds": 5.0, "settle_seconds": 2.0, "max_concurrent_operations": 5,
              "claim_lease_seconds": 30.0, "retry_deadline_seconds": 30.0, "http_timeout_seconds": 60.0,
              "import_coalesce_seconds": 300.0}
LATENCY_SLACK = 5.0  # "debounce window + a few seconds"
POLL_INTERVAL = 2.0  # production: Cloud Scheduler every 60 s
INSTANCES = 2  # handler "processes"
REQUESTS_PER_INSTANCE = 16  # concurrent requests per instance
DRAIN_TIMEOUT = 600.0  # at least; a large bulk tree gets longer (`drain_timeout`)


@dataclass(frozen=True)
class Sizes:
    old_studies: int
    studies: int
    series: int
    instances: int
    trickle_rate: float  # files per second
    trickle_seconds: float
    bulk_a: int
    bulk_b: int
    bulk_per_folder: int


FULL = Sizes(old_studies=10, studies=20, series=2, instances=5, trickle_rate=2.0, trickle_seconds=30.0,
             bulk_a=10, bulk_b=30, bulk_per_folder=10)
QUICK = Sizes(old_studies=4, studies=6, series=2, instances=3, trickle_rate=2.0, trickle_seconds=12.0,
              bulk_a=4, bulk_b=10, bulk_per_folder=10)


@dataclass(frozen=True)
class File:
    name: str
    data: bytes
    sop: str  # "" for a non-DICOM sidecar
    at: float | None = None  # seconds after the pattern starts (None: as fast as possible)


@dataclass
class Pattern:
    key: str
    description: str
    old: list[File]  # already in the bucket (and the store) before the pattern starts
    files: list[File]
    threads: int


# -- file generation ----------------------------------------------------------------------------

def _studies(count: int, series: int, instances: int, sidecar: bool) -> list[File]:
    files = []
    for _ in range(count):
        study = generate_uid()
        folder = f"inbox/{study}"
        for s in range(series):
            series_uid = generate_uid()
            for i in range(instances):
                data, sop = dicom_instance(study, series_uid)
                files.append(File(f"{folder}/S{s + 1}/IM{i + 1:04d}.dcm", data, sop))
        if sidecar:
            files.append(File(f"{folder}/study.json", b'{"source": "bench"}', ""))
    return files


def patterns(sizes: Sizes, chosen: list[str]) -> Iterator[Pattern]:
    if "burst" in chosen:
        yield Pattern("burst", f"{sizes.studies} study folders x {sizes.series} series x {sizes.instances} "
                      f"instances (+1 sidecar each) into inbox/, {sizes.old_studies} old studies there",
                      _studies(sizes.old_studies, sizes.series, sizes.instances, sidecar=True),
                      _studies(sizes.studies, sizes.series, sizes.instances, sidecar=True), threads=8)
    if "trickle" in chosen:
        count = int(sizes.trickle_rate * sizes.trickle_seconds)
        study, series = generate_uid(), generate_uid()
        files = []
        for i in range(count):
            data, sop = dicom_instance(study, series)
            files.append(File(f"ward/{uuid.uuid4().hex}.dcm", data, sop, at=i / sizes.trickle_rate))
        yield Pattern("trickle", f"{count} random names into ward/ at {sizes.trickle_rate:g}/s",
                      [], files, threads=1)
    if "bulk" in chosen:
        files = []
        for a in range(sizes.bulk_a):
            study = generate_uid()
            for b in range(sizes.bulk_b):
                series = generate_uid()
                for n in range(sizes.bulk_per_folder):
                    data, sop = dicom_instance(study, series)
                    files.append(File(f"bulk/{a:02d}/{b:03d}/{n:04d}.dcm", data, sop))
        yield Pattern("bulk", f"{len(files)} files in bulk/<{sizes.bulk_a}>/<{sizes.bulk_b}>/, 16 upload threads",
                      [], files, threads=16)


# -- measurement helpers ------------------------------------------------------------------------

_tl = threading.local()


def _recording_gcs(inner: Any, recorder: Recorder) -> Any:
    """A Gcs that counts calls (in total and per calling thread) and keeps manifests and
    operation records (file -> job -> operation), which the pipeline deletes once done."""
    from functions.gcp.gcs import Gcs

    class RecordingGcs(Gcs):
        def __init__(self) -> None:
            super().__init__(inner._client, timeout=inner._timeout)
            self.calls = 0
            self.by_method: Counter[str] = Counter()
            self.seconds: dict[str, float] = {}  # summed over threads
            self._lock = threading.Lock()

        def _timed(self, method: str, call: Callable[[], Any]) -> Any:
            if getattr(_tl, "calls", None) is not None:
                _tl.calls += 1
                _tl.listed = _tl.listed or method == "list"
            started = time.perf_counter()
            try:
                return call()
            finally:
                with self._lock:
                    self.calls += 1
                    self.by_method[method] += 1
                    self.seconds[method] = self.seconds.get(method, 0.0) + time.perf_counter() - started

        def create(self, bucket: str, name: str, data: Any, metadata: dict[str, str] | None = None) -> int | None:
            generation = self._timed("create", lambda: super(RecordingGcs, self).create(bucket, name, data, metadata))
            if generation is not None:  # operation records are created, not written
                recorder.state_write(name, data)
            return generation

        def replace(self, bucket: str, name: str, data: dict[str, Any], generation: int) -> int | None:
            return self._timed("replace", lambda: super(RecordingGcs, self).replace(bucket, name, data, generation))

        def write(self, bucket: str, name: str, data: Any) -> None:
            recorder.state_write(name, data)
            self._timed("write", lambda: super(RecordingGcs, self).write(bucket, name, data))

        def delete(self, bucket: str, name: str, generation: int | None = None) -> bool:
            return self._timed("delete", lambda: super(RecordingGcs, self).delete(bucket, name, generation))

        def read(self, bucket: str, name: str) -> Any:
            return self._timed("read", lambda: super(RecordingGcs, self).read(bucket, name))

        def list(self, *args: Any, **kwargs: Any) -> Any:
            # Materialised, so that the time of the listing's pages is counted here.
            return iter(self._timed("list", lambda: [*super(RecordingGcs, self).list(*args, **kwargs)]))

        def list_prefixes(self, bucket: str, prefix: str) -> Any:
            return self._timed("list", lambda: super(RecordingGcs, self).list_prefixes(bucket, prefix))

        def copy(self, src_bucket: str, src_name: str, generation: int, dst_bucket: str, dst_name: str) -> None:
            self._timed("copy", lambda: super(RecordingGcs, self).copy(src_bucket, src_name, generation,
                                                                         dst_bucket, dst_name))

        def download(self, *args: Any, **kwargs: Any) -> Any:
            return self._timed("download", lambda: super(RecordingGcs, self).download(*args, **kwargs))

    return RecordingGcs()


class Recorder:
    """Manifests (job -> objects) and operation records (job -> operation) as they are written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.manifests: dict[str, list[dict[str, Any]]] = {}
        self.operations: dict[str, str] = {}  # job id -> operation name

    def state_write(self, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        with self._lock:
            if "/manifests/" in f"/{name}" and "objects" in data:
                self.manifests[name.rsplit("/", 1)[-1].removesuffix(".json")] = list(data["objects"])
            elif "/operations/" in f"/{name}" and "job" in data and "name" in data:
                self.operations[str(data["job"]["job_id"])] = str(data["name"])


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def drain_timeout(files: int, operation_delay: float) -> float:
    """How long the bench waits for the pipeline to finish after the last upload: the last import
    or two (overhead plus reading, at a conservative 20 files/s) on top of the fixed minimum."""
    return max(DRAIN_TIMEOUT, 4 * operation_delay + files / 20)


class Emulators:
    def __init__(self, workdir: Path, operation_delay: float, drain_seconds: float = DRAIN_TIMEOUT,
                 poll_seconds: float = POLL_INTERVAL) -> None:
        self.workdir = workdir
        self.operation_delay = operation_delay
        self.drain_seconds = drain_seconds
        self.poll_seconds = poll_seconds
        self.started: list[components.Component] = []
        self.healthcare_url = ""

    def start(self) -> None:
        pubsub = components.start_pubsub_emulator(self.workdir)
        self.started.append(pubsub)
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
        gcs = components.start_fake_gcs(self.workdir)
        self.started.append(gcs)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        healthcare = components.start_healthcare_emulator(self.workdir, storage_host=gcs.url)
        self.started.append(healthcare)
        self.healthcare_url = healthcare.url

    def stop(self) -> None:
        for component in reversed(self.started):
            component.stop()
        self.started.clear()

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.healthcare_url}/_emulator/{path}"
        response = (requests.post(url, json=body, timeout=30) if body is not None
                    else requests.get(url, timeout=30))
        response.raise_for_status()
        return response.json() if response.content else None

    def quiet_reset(self) -> None:
        """Waits until no operation runs, then clears the counters (not the data)."""
        deadline = time.monotonic() + self.drain_seconds
        while self.control("stats")["runningOperations"]:
            if time.monotonic() > deadline:
                raise RuntimeError("operations still running after the drain timeout")
            time.sleep(0.5)
        self.control("reset", {"data": False})
        self.control("config", {"operationDelaySeconds": self.operation_delay})


def _seed_old(d: Any, emu: Emulators, old: list[File]) -> None:
    """Old objects sit in the bucket and are already in the store (one import, before the run)."""
    if not old:
        return
    bucket = d.storage_client.bucket(d.upload_bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: bucket.blob(f.name).upload_from_string(f.data), old))
    folder = old[0].name.split("/", 1)[0]
    session = http_session()
    op = session.post(f"{emu.healthcare_url}/v1/{d.settings.dicom_store}:import",
                      json={"gcsSource": {"uri": f"gs://{d.upload_bucket}/{folder}/**.dcm"}}, timeout=60).json()
    while not session.get(f"{emu.healthcare_url}/v1/{op['name']}", timeout=60).json().get("done"):
        time.sleep(0.2)


@dataclass
class Delivery:
    file: File
    finished: float = 0.0  # epoch when the upload returned
    role: str = ""  # ignored | plain | waiter | leader | duplicate | error | naive
    seconds: float = 0.0
    gcs_calls: int = 0
    operation: str = ""
    create_time: float | None = None
    settled: float | None = None  # epoch when its window closed plus the settle time


def _upload_and_deliver(d: Any, pattern: Pattern, handle: Callable[[int, Any, Delivery], None]) -> list[Delivery]:
    """Uploads the pattern's files; each finalize event goes at once to one of the instances."""
    from tests.integration.harness import event_for

    bucket = d.storage_client.bucket(d.upload_bucket)
    deliveries = [Delivery(f) for f in pattern.files]
    pools = [ThreadPoolExecutor(REQUESTS_PER_INSTANCE, thread_name_prefix=f"instance{i}") for i in range(INSTANCES)]
    futures: list[Future[None]] = []
    futures_lock = threading.Lock()
    counter = iter(range(len(deliveries)))
    counter_lock = threading.Lock()
    start = time.time()

    def upload(delivery: Delivery) -> None:
        if delivery.file.at is not None:
            time.sleep(max(0.0, start + delivery.file.at - time.time()))
        blob = bucket.blob(delivery.file.name)
        blob.upload_from_string(delivery.file.data)
        delivery.finished = time.time()
        event = event_for(blob)
        with counter_lock:
            index = next(counter)
        future = pools[index % INSTANCES].submit(handle, index % INSTANCES, event, delivery)
        with futures_lock:
            futures.append(future)

    uploaders = ThreadPoolExecutor(pattern.threads, thread_name_prefix="uploader")
    try:
        list(uploaders.map(upload, deliveries))
        for future in futures:
            future.result()
    finally:
        # On Ctrl-C / SIGTERM, drop the uploads not begun: waiting for them could take an hour.
        for pool in (uploaders, *pools):
            pool.shutdown(wait=True, cancel_futures=True)
    return deliveries


@contextmanager
def _poller_thread(poller: Any, interval: float) -> Iterator[list[int]]:
    stop = threading.Event()
    runs = [0]

    def loop() -> None:
        while not stop.wait(interval):
            poller.run()
            runs[0] += 1

    thread = threading.Thread(target=loop, name="poller", daemon=True)
    thread.start()
    try:
        yield runs
    finally:
        stop.set()
        thread.join(timeout=120)


def _pull(subscriber: Any, subscription: str) -> list[dict[str, Any]]:
    response = subscriber.pull(subscription=subscription, max_messages=500, timeout=10, return_immediately=True)
    if response.received_messages:
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    return [json.loads(m.message.data) for m in response.received_messages]


def _reads(stats: dict[str, Any], d: Any, deliveries: list[Delivery], old: list[File],
           staged_of: dict[str, str]) -> dict[str, Any]:
    reads: dict[str, int] = stats["objectReads"]
    upload_prefix = f"gs://{d.upload_bucket}/"
    state_prefix = f"gs://{d.settings.state_bucket}/"
    per_file = []
    twice: list[str] = []
    for delivery in deliveries:
        if not delivery.file.sop:
            continue
        uri = upload_prefix + delivery.file.name
        per_file.append(reads.get(uri, 0) + reads.get(staged_of.get(uri, ""), 0))
        if per_file[-1] > 1 and len(twice) < 3:
            staged_reads = reads.get(staged_of.get(uri, ""), 0)
            twice.append(f"{delivery.file.name} (direct {reads.get(uri, 0)}, staged {staged_reads})")
    old_uris = {upload_prefix + f.name for f in old if f.sop}
    return {
        "uploadObjectsReadMoreThanOnce": sum(1 for u, n in reads.items() if u.startswith(upload_prefix) and n > 1),
        "oldObjectsReadAgain": sum(1 for u in old_uris if reads.get(u, 0) > 0),
        "stagedObjectsRead": sum(1 for u in reads if u.startswith(state_prefix)),
        "filesReadMoreThanOnce": sum(1 for n in per_file if n > 1),
        "maxReadsPerFile": max(per_file, default=0),
        "filesNeverRead": sum(1 for n in per_file if n == 0),
        "readTwiceExamples": twice,
    }


def run_pipeline(emu: Emulators, pattern: Pattern) -> dict[str, Any]:
    import google.cloud.pubsub_v1 as pubsub_v1

    from functions.core.windows import window_close, window_id
    from functions.imports.import_on_upload import ImportOnUpload
    from functions.imports.job_queue import JobQueue
    from functions.imports.poll_operations import Poller
    from functions.imports.window_batcher import WindowBatcher
    from tests.integration.harness import Deployment

    d = Deployment.create(emu.healthcare_url, **PRODUCTION)
    _seed_old(d, emu, pattern.old)
    emu.quiet_reset()
    recorder = Recorder()
    # The handlers' and the poller's Cloud Storage calls are counted apart.
    handler_gcs = _recording_gcs(d.deps.gcs, recorder)
    queue = JobQueue(d.settings, handler_gcs, d.deps.healthcare)
    handlers = [ImportOnUpload(d.settings, handler_gcs, WindowBatcher(d.settings, handler_gcs, queue))
                for _ in range(INSTANCES)]
    poller_gcs = _recording_gcs(d.deps.gcs, recorder)
    poller_queue = JobQueue(d.settings, poller_gcs, d.deps.healthcare)
    poller = Poller(d.settings, poller_gcs, d.deps.healthcare, poller_queue,
                    WindowBatcher(d.settings, poller_gcs, poller_queue), d.deps.publisher)
    subscriber = pubsub_v1.SubscriberClient()

    def handle(instance: int, event: Any, delivery: Delivery) -> None:
        _tl.calls, _tl.listed = 0, False
        started = time.perf_counter()
        try:
            window = window_id(event.time_created, d.settings.debounce_seconds)
            delivery.settled = window_close(window, d.settings.debounce_seconds) + d.settings.settle_seconds
            outcome = handlers[instance].handle(event)
        except Exception as exc:  # counted; the run goes on
            delivery.role = "error"
            logging.getLogger("bench").warning("handler failed: %s", exc)
        else:
            if outcome.action != "recorded":
                delivery.role = outcome.action
            elif outcome.led is not None and outcome.led.claimed:
                delivery.role = "leader"
            else:
                delivery.role = "waiter" if _tl.listed else "plain"
        finally:
            delivery.seconds = time.perf_counter() - started
            delivery.gcs_calls = _tl.calls
            _tl.calls = None

    began = time.monotonic()
    events: list[dict[str, Any]] = []
    with _poller_thread(poller, emu.poll_seconds) as runs:
        deliveries = _upload_and_deliver(d, pattern, handle)
        uploaded = time.monotonic()
        deadline = time.monotonic() + emu.drain_seconds
        while True:
            events += _pull(subscriber, d.completions_subscription)
            if (not _busy_state(d) and set(recorder.operations.values()) <= {e["operation"] for e in events}
                    and recorder.operations):
                break
            if time.monotonic() > deadline:
                print(f"  ! {pattern.key}: pipeline not drained after {emu.drain_seconds:.0f} s", file=sys.stderr)
                break
            time.sleep(0.5)
        poller_runs = runs[0]
    drained = time.monotonic()
    stats = emu.control("stats")

    # file -> job (manifests) -> operation (operation records) -> createTime (completion events)
    created = {e["operation"]: _epoch(e["createTime"]) for e in events if e.get("createTime")}
    op_of: dict[str, str] = {}
    staged_of: dict[str, str] = {}
    for manifest, entries in recorder.manifests.items():
        job = manifest.split(".", 1)[0]  # `J`, `J.adopted-B`, `J.coalesced-W`: job ids hold no dot
        for entry in entries:
            if not op_of.get(str(entry["uri"])):
                op_of[str(entry["uri"])] = recorder.operations.get(job, "")
            if entry.get("staged"):
                staged_of[str(entry["uri"])] = str(entry["staged"])
    for delivery in deliveries:
        delivery.operation = op_of.get(f"gs://{d.upload_bucket}/{delivery.file.name}", "")
        delivery.create_time = created.get(delivery.operation)
    expected = {f.sop for f in pattern.files + pattern.old if f.sop}
    stored = stored_sops(http_session(), emu.healthcare_url, d.settings.dicom_store)
    dicom = [x for x in deliveries if x.file.sop]
    by_role: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_role.setdefault(delivery.role, []).append(delivery)
    leaders = by_role.get("leader", [])
    non_leader_calls = sum(x.gcs_calls for x in deliveries if x.role != "leader")
    result = {
        "approach": "pipeline",
        "files": len(dicom),
        "otherFiles": len(deliveries) - len(dicom),
        **_common(stats, dicom),
        **_reads(stats, d, deliveries, pattern.old, staged_of),
        "staged": len(staged_of),
        "windows": len(leaders),
        "completionEvents": len(events),
        "completionStates": dict(Counter(e["state"] for e in events)),
        "completionSuccess": sum(int(e.get("counters", {}).get("success", 0)) for e in events),
        # LRO time (createTime -> endTime) next to the upload time: with coalescing (decision 0700)
        # the number of LROs should follow upload time / LRO time, not the number of files.
        "lroSecondsP50": _round(_pct([float(e["durationSeconds"]) for e in events if "durationSeconds" in e], 0.5)),
        "lroSecondsMean": _round(statistics.fmean([float(e["durationSeconds"]) for e in events
                                                   if "durationSeconds" in e] or [0.0])),
        "sources": sorted(Counter(e.get("source", "") for e in events).items(), key=lambda kv: -kv[1])[:5],
        "roles": {role: len(items) for role, items in sorted(by_role.items())},
        "handlerSecondsP50": {role: _round(_pct([x.seconds for x in items], 0.5))
                              for role, items in sorted(by_role.items())},
        "handlerSecondsMax": {role: _round(max(x.seconds for x in items)) for role, items in sorted(by_role.items())},
        "gcsCallsPerEvent": {role: _round(statistics.fmean(x.gcs_calls for x in items))
                             for role, items in sorted(by_role.items()) if role != "leader"},
        "gcsCallsPerEventMax": max((x.gcs_calls for x in deliveries if x.role != "leader"), default=0),
        "gcsCallsPerLeader": _round((handler_gcs.calls - non_leader_calls) / len(leaders)) if leaders else None,
        "gcsCallsHandlersPerEvent": _round(handler_gcs.calls / max(1, len(deliveries))),
        "gcsCallsPoller": poller_gcs.calls,
        "gcsHandlerByMethod": dict(handler_gcs.by_method),
        "gcsHandlerSecondsByMethod": {k: round(v, 1) for k, v in handler_gcs.seconds.items()},
        "gcsPollerByMethod": dict(poller_gcs.by_method),
        "gcsPollerSecondsByMethod": {k: round(v, 1) for k, v in poller_gcs.seconds.items()},
        # upload -> import start = (window close + settle - upload) + (import start - window close - settle)
        "waitForWindowP50": _round(_pct([x.settled - x.finished for x in dicom if x.settled], 0.5)),
        "afterSettleP50": _round(_pct([x.create_time - x.settled for x in dicom if x.settled and x.create_time], 0.5)),
        "afterSettleP95": _round(_pct([x.create_time - x.settled for x in dicom if x.settled and x.create_time], 0.95)),
        "pollerRuns": poller_runs,
        "allImported": expected <= stored,
        "missing": len(expected - stored),
        "deliverSeconds": round(uploaded - began, 1),
        "drainSeconds": round(drained - uploaded, 1),
    }
    return result


def _busy_state(d: Any) -> bool:
    for prefix in ("windows/", "claims/", "jobs/", "operations/"):
        if next(iter(d.storage_client.list_blobs(d.settings.state_bucket, prefix=d.settings.state_path(prefix),
                                                 max_results=1)), None) is not None:
            return True
    return False


def _common(stats: dict[str, Any], dicom: list[Delivery]) -> dict[str, Any]:
    latencies = [x.create_time - x.finished for x in dicom if x.create_time is not None]
    return {
        "lros": int(stats["calls"].get("import", 0)),
        "maxConcurrentLros": int(stats["maxConcurrentOperations"]),
        "latencyP50": _round(_pct(latencies, 0.5)),
        "latencyP95": _round(_pct(latencies, 0.95)),
        "latencyMax": _round(max(latencies, default=None) if latencies else None),
        "latencyMapped": len(latencies),
    }


def run_naive(emu: Emulators, pattern: Pattern) -> dict[str, Any]:
    """Every event starts an import of exactly its object, as it arrives; no cap, no batching."""
    from functions.core.selection import ignore_reason
    from tests.integration.harness import Deployment

    d = Deployment.create(emu.healthcare_url, **PRODUCTION)
    _seed_old(d, emu, pattern.old)
    emu.quiet_reset()
    session = http_session()
    url = f"{emu.healthcare_url}/v1/{d.settings.dicom_store}:import"

    def handle(instance: int, event: Any, delivery: Delivery) -> None:
        started = time.perf_counter()
        if ignore_reason(event, d.settings):
            delivery.role = "ignored"
        else:
            response = session.post(url, json={"gcsSource": {"uri": event.uri}}, timeout=60)
            response.raise_for_status()
            body = response.json()
            delivery.role = "naive"
            delivery.operation = body["name"]
            delivery.create_time = _epoch(body["metadata"]["createTime"])
        delivery.seconds = time.perf_counter() - started

    began = time.monotonic()
    deliveries = _upload_and_deliver(d, pattern, handle)
    uploaded = time.monotonic()
    deadline = time.monotonic() + emu.drain_seconds
    while emu.control("stats")["runningOperations"] and time.monotonic() < deadline:
        time.sleep(0.5)
    drained = time.monotonic()
    stats = emu.control("stats")
    expected = {f.sop for f in pattern.files + pattern.old if f.sop}
    stored = stored_sops(http_session(), emu.healthcare_url, d.settings.dicom_store)
    dicom = [x for x in deliveries if x.file.sop]
    return {
        "approach": "naive",
        "files": len(dicom),
        **_common(stats, dicom),
        **_reads(stats, d, deliveries, pattern.old, {}),
        "handlerSecondsP50": {"naive": _round(_pct([x.seconds for x in dicom], 0.5))},
        "allImported": expected <= stored,
        "missing": len(expected - stored),
        "deliverSeconds": round(uploaded - began, 1),
        "drainSeconds": round(drained - uploaded, 1),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- output ---------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def print_pattern(key: str, description: str, pipeline: dict[str, Any] | None, naive: dict[str, Any] | None) -> None:
    print(f"\n== {key}: {description}")
    if pipeline:
        p = pipeline
        print(f"  pipeline: {p['files']} files (+{p['otherFiles']} ignored sidecars), {p['windows']} windows led, "
              f"{p['lros']} LROs (max {p['maxConcurrentLros']} at once), {p['staged']} staged copies; "
              f"uploaded + handled in {p['deliverSeconds']} s, drained {p['drainSeconds']} s later, "
              f"{p['pollerRuns']} poller runs")
        print(f"    reads: files read >1: {p['filesReadMoreThanOnce']} (max {p['maxReadsPerFile']} per file, "
              f"staged copy counted with its original), upload objects read >1: {p['uploadObjectsReadMoreThanOnce']}, "
              f"old objects read again: {p['oldObjectsReadAgain']}, staged objects read: {p['stagedObjectsRead']}, "
              f"never read: {p['filesNeverRead']}")
        print(f"    upload -> import start: p50 {_fmt(p['latencyP50'])} s, p95 {_fmt(p['latencyP95'])} s, "
              f"max {_fmt(p['latencyMax'])} s ({p['latencyMapped']} of {p['files']} files mapped to their operation)")
        print(f"      = wait for window close + settle p50 {_fmt(p['waitForWindowP50'])} s, then plan/stage/start "
              f"p50 {_fmt(p['afterSettleP50'])} s, p95 {_fmt(p['afterSettleP95'])} s")
        print(f"    handler roles: {p['roles']}; wall p50 s: {p['handlerSecondsP50']}; max s: {p['handlerSecondsMax']}")
        print(f"    Cloud Storage calls per event (mean by role): {p['gcsCallsPerEvent']}, "
              f"max {p['gcsCallsPerEventMax']}; "
              f"per leader: {_fmt(p['gcsCallsPerLeader'])}; all handler calls / events: "
              f"{_fmt(p['gcsCallsHandlersPerEvent'])}; poller: {p['gcsCallsPoller']}")
        print(f"    handler Cloud Storage calls by method: {p['gcsHandlerByMethod']}, summed seconds "
              f"{p['gcsHandlerSecondsByMethod']}")
        print(f"    poller Cloud Storage calls by method: {p['gcsPollerByMethod']}, summed seconds "
              f"{p['gcsPollerSecondsByMethod']}")
        if p["readTwiceExamples"]:
            print(f"    read twice, e.g.: {'; '.join(p['readTwiceExamples'])}")
        print(f"    completion events: {p['completionEvents']} {p['completionStates']}, success counters "
              f"{p['completionSuccess']}; sources: {', '.join(f'{s} x{n}' for s, n in p['sources'])}")
        print(f"    LRO time p50 {_fmt(p['lroSecondsP50'])} s, mean {_fmt(p['lroSecondsMean'])} s; upload time / mean "
              f"LRO time = {_fmt(p['deliverSeconds'] / p['lroSecondsMean'] if p['lroSecondsMean'] else None)}")
        print(f"    every file imported (QIDO): {_fmt(p['allImported'])} (missing {p['missing']})")
    if naive:
        n = naive
        print(f"  naive: {n['files']} files, {n['lros']} LROs (max {n['maxConcurrentLros']} at once), files read >1: "
              f"{n['filesReadMoreThanOnce']}, upload -> import start p50 {_fmt(n['latencyP50'])} s / p95 "
              f"{_fmt(n['latencyP95'])} s, handler p50 {_fmt(n['handlerSecondsP50']['naive'])} s, "
              f"all imported: {_fmt(n['allImported'])}; uploaded + handled in {n['deliverSeconds']} s, "
              f"drained {n['drainSeconds']} s later")


def print_table(results: dict[str, dict[str, Any]]) -> None:
    columns = [("pattern", 8), ("approach", 8), ("files", 5), ("LROs", 5), ("maxLRO", 6), ("read>1", 6),
               ("maxRd", 5), ("oldRead", 7), ("staged", 6), ("p50 s", 6), ("p95 s", 6), ("hdl p50", 7), ("lead p50", 8),
               ("gcs/ev", 6), ("all in", 6)]
    print()
    print(" ".join(f"{name:>{width}}" if i > 1 else f"{name:<{width}}" for i, (name, width) in enumerate(columns)))
    for key, per in results.items():
        for approach in ("pipeline", "naive"):
            r = per.get(approach)
            if not r:
                continue
            p50 = r["handlerSecondsP50"]
            values = [key, approach, r["files"], r["lros"], r["maxConcurrentLros"], r["filesReadMoreThanOnce"],
                      r["maxReadsPerFile"], r["oldObjectsReadAgain"], r.get("staged", 0),
                      r["latencyP50"], r["latencyP95"],
                      p50.get("plain", p50.get("naive")), p50.get("leader"),
                      r["gcsCallsPerEvent"].get("plain") if approach == "pipeline" else None, r["allImported"]]
            print(" ".join(f"{_fmt(v):>{w}}" if i > 1 else f"{_fmt(v):<{w}}"
                           for i, (v, (_, w)) in enumerate(zip(values, columns, strict=True))))
    print("read>1: DICOM files of the pattern read more than once by imports (a staged copy counts for its "
          "original); oldRead: objects that sat there before, read again")
    print("p50/p95 s: upload finished -> createTime of the operation that imported the file (exact mapping: "
          "batch manifest -> operation record -> completion event)")
    print("hdl p50: handler wall time of a non-leading event ('plain': neither waits nor leads); lead p50: the "
          "window leader's (waits for window close + settle, then plans and starts); gcs/ev: Cloud Storage calls "
          "of a plain event")


BULK_MAX_LROS = 30


def check_targets(results: dict[str, dict[str, Any]], poll_seconds: float = POLL_INTERVAL
                  ) -> list[tuple[str, bool, str]]:
    """The targets (bench/README.md) this benchmark measures: (what, met, numbers)."""
    checks: list[tuple[str, bool, str]] = []
    limit = PRODUCTION["debounce_seconds"] + LATENCY_SLACK
    for key, per in results.items():
        p = per["pipeline"]
        if key == "bulk":  # a migration's LROs follow upload time / LRO time, not its size
            checks.append((f"{key}: at most {BULK_MAX_LROS} LROs", p["lros"] <= BULK_MAX_LROS,
                           f"{p['lros']} LROs, {p['windows']} windows"))
        if key == "burst":  # the LRO target is stated for study-folder bursts
            checks.append((f"{key}: 1 LRO per debounce window", p["lros"] <= max(1, p["windows"]),
                           f"{p['lros']} LROs, {p['windows']} windows"))
        checks.append((f"{key}: max concurrent LROs <= {PRODUCTION['max_concurrent_operations']}",
                       p["maxConcurrentLros"] <= PRODUCTION["max_concurrent_operations"], str(p["maxConcurrentLros"])))
        if key == "trickle":
            checks.append((f"{key}: every object read at most twice", p["maxReadsPerFile"] <= 2,
                           f"max {p['maxReadsPerFile']} reads"))
        else:
            rereads = p["filesReadMoreThanOnce"] + p["oldObjectsReadAgain"]
            checks.append((f"{key}: 0 objects imported twice", rereads == 0,
                           f"{p['filesReadMoreThanOnce']} new files read >1, "
                           f"{p['oldObjectsReadAgain']} old read again"))
        if key == "bulk":
            # A migration's uploads wait for the running import (decision 0700): at most the
            # coalescing age after their window's import was planned, plus a poller period.
            bound = (PRODUCTION["debounce_seconds"] + PRODUCTION["settle_seconds"]
                     + PRODUCTION["import_coalesce_seconds"] + poll_seconds + LATENCY_SLACK)
            checks.append((f"{key}: upload -> import start p95 <= debounce + settle + coalescing age + poller "
                           f"period + {LATENCY_SLACK:g} s ({bound:g} s)",
                           p["latencyP95"] is not None and p["latencyP95"] <= bound, f"p95 {_fmt(p['latencyP95'])} s"))
        else:
            checks.append((f"{key}: upload -> import start p95 <= debounce + {LATENCY_SLACK:g} s",
                           p["latencyP95"] is not None and p["latencyP95"] <= limit, f"p95 {_fmt(p['latencyP95'])} s"))
        calls = p["gcsCallsPerEvent"]
        checks.append((f"{key}: batched event <= 2 Cloud Storage calls", calls.get("plain", 0) <= 2,
                       f"plain {calls.get('plain')}, first-of-process {calls.get('waiter')}"))
        if "ignored" in calls:
            checks.append((f"{key}: ignored event makes no call", calls["ignored"] == 0, str(calls["ignored"])))
        checks.append((f"{key}: every file imported", bool(p["allImported"]), f"missing {p['missing']}"))
    return checks


def _max_rss() -> dict[str, float]:
    """Peak resident memory in MiB: this process (uploads, handlers, leaders, poller) and the largest
    of its finished children (the emulators; they are stopped by now). Linux reports KiB."""
    return {"bench": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "largestChild": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole run takes under 2 minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--patterns", default="burst,trickle,bulk")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive comparison")
    parser.add_argument("--operation-delay", type=float, default=3.0,
                        help="emulator seconds before an import starts working (LRO overhead)")
    parser.add_argument("--files", type=int, default=None,
                        help="bulk tree size (folders of 10 files, 30 folders per top folder); e.g. 100000")
    parser.add_argument("--poll-every", type=float, default=POLL_INTERVAL,
                        help="seconds between poller runs (production: 60; each run lists the state bucket)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.files:
        per_top = sizes.bulk_b * sizes.bulk_per_folder
        sizes = dataclasses.replace(sizes, bulk_a=max(1, -(-args.files // per_top)))
    chosen = [p.strip() for p in args.patterns.split(",") if p.strip()]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The storage client's pool holds 10 connections; 32 concurrent requests discard some (noise).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _on_sigterm)
    out = sys.stderr if args.json else sys.stdout
    results: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-patterns-") as tmp:
        bulk_files = sizes.bulk_a * sizes.bulk_b * sizes.bulk_per_folder
        emu = Emulators(Path(tmp), args.operation_delay, drain_timeout(bulk_files, args.operation_delay),
                        args.poll_every)
        try:
            emu.start()
            print(f"emulators up in {time.monotonic() - began:.1f} s; settings: debounce "
                  f"{PRODUCTION['debounce_seconds']:g} s, settle {PRODUCTION['settle_seconds']:g} s, max "
                  f"{PRODUCTION['max_concurrent_operations']} LROs, operation delay {args.operation_delay:g} s, "
                  f"poller every {args.poll_every:g} s (production 60 s), {INSTANCES} handler instances x "
                  f"{REQUESTS_PER_INSTANCE} concurrent requests", file=out, flush=True)
            for pattern in patterns(sizes, chosen):
                pipeline = run_pipeline(emu, pattern)
                naive = None if args.no_naive else run_naive(emu, pattern)
                results[pattern.key] = {"description": pattern.description, "pipeline": pipeline,
                                        **({"naive": naive} if naive else {})}
                if not args.json:
                    print_pattern(pattern.key, pattern.description, pipeline, naive)
                    sys.stdout.flush()
        finally:
            emu.stop()
    checks = check_targets(results, args.poll_every)
    summary = {"targets": [{"target": t, "met": m, "measured": v} for t, m, v in checks],
               "sizes": sizes.__dict__, "operationDelaySeconds": args.operation_delay,
               "pollIntervalSeconds": args.poll_every, "settings": PRODUCTION, "patterns": results,
               "seconds": round(time.monotonic() - began, 1), "maxRssMiB": _max_rss()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(results)
        print("\ntargets (bench/README.md):")
        for target, met, measured in checks:
            print(f"  {'ok  ' if met else 'MISS'} {target}: {measured}")
        print(f"total {summary['seconds']} s; {summary['maxRssMiB']}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; emulators stopped", file=sys.stderr)
        sys.exit(130)
